//! The wire's answer to every typed error of the daemon: the one place that decides which
//! [`ErrorKind`] a client sees for each failure. The messages themselves are the errors'
//! `Display`, written for the operator who reads them in the hub's spawn page or in `spawnctl`.
//!
//! The kinds mean: `PolicyDenied`, the configuration or the policy refuses it (change the
//! configuration or the request); `Unauthorized`, the peer's role may not do it; `SpawnFailed`,
//! the host could not start it (a broken installation, a full disk, a failed set-up step);
//! `Internal`, the host failed to answer (NSS) or the daemon failed.

use crate::auth::Denied;
use crate::policy::PolicyError;
use crate::start::StartError;
use crate::supervisor::SupervisorError;
use spawnd_protocol::{ErrorKind, ErrorReply};

fn reply(kind: ErrorKind, error: &impl std::fmt::Display) -> ErrorReply {
    ErrorReply::new(kind, error.to_string())
}

impl From<Denied> for ErrorReply {
    fn from(e: Denied) -> ErrorReply {
        reply(ErrorKind::Unauthorized, &e)
    }
}

fn policy_kind(e: &PolicyError) -> ErrorKind {
    if e.is_lookup_failure() {
        ErrorKind::Internal
    } else {
        ErrorKind::PolicyDenied
    }
}

impl From<PolicyError> for ErrorReply {
    fn from(e: PolicyError) -> ErrorReply {
        reply(policy_kind(&e), &e)
    }
}

impl From<StartError> for ErrorReply {
    fn from(e: StartError) -> ErrorReply {
        let kind = match &e {
            StartError::UnknownProfile { .. }
            | StartError::ArgumentsNotAllowed { .. }
            | StartError::ProgramUnsafe { .. } => ErrorKind::PolicyDenied,
            StartError::Policy(policy) => policy_kind(policy),
            StartError::Claim(claim) => supervisor_kind(claim),
            StartError::ProgramCannotRun { .. }
            | StartError::Log { .. }
            | StartError::Cgroup { .. }
            | StartError::Launch(_)
            | StartError::Record { .. } => ErrorKind::SpawnFailed,
        };
        reply(kind, &e)
    }
}

fn supervisor_kind(e: &SupervisorError) -> ErrorKind {
    match e {
        SupervisorError::NotFound(_)
        | SupervisorError::StaleInstance { .. }
        | SupervisorError::NoProcess { .. }
        | SupervisorError::JustExited(_) => ErrorKind::NotFound,
        SupervisorError::AlreadyRunning { .. } => ErrorKind::AlreadyRunning,
        SupervisorError::StillStarting(_) => ErrorKind::Busy,
        SupervisorError::Signal { .. } | SupervisorError::StuckInKernel { .. } => {
            ErrorKind::Internal
        }
    }
}

impl From<SupervisorError> for ErrorReply {
    fn from(e: SupervisorError) -> ErrorReply {
        reply(supervisor_kind(&e), &e)
    }
}
