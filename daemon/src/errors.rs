//! Where the daemon's typed errors become the wire's [`ErrorReply`]: each module says what
//! went wrong in its own error type, and the `ErrorKind` the hub sees is chosen here, in one
//! place, with the message unchanged.

use crate::supervisor::SupervisorError;
use spawnd_protocol::{ErrorKind, ErrorReply};

impl From<SupervisorError> for ErrorReply {
    fn from(error: SupervisorError) -> ErrorReply {
        let kind = match &error {
            SupervisorError::NotFound(_)
            | SupervisorError::StaleInstance { .. }
            | SupervisorError::NoProcess { .. }
            | SupervisorError::JustExited(_) => ErrorKind::NotFound,
            SupervisorError::AlreadyRunning { .. } => ErrorKind::AlreadyRunning,
            SupervisorError::StillStarting(_) => ErrorKind::Busy,
            SupervisorError::Signal { .. } | SupervisorError::StuckInKernel { .. } => {
                ErrorKind::Internal
            }
        };
        ErrorReply::new(kind, error.to_string())
    }
}
