//! Connecting to the daemon's socket.
//!
//! tokio-seqpacket 0.9's async `connect` treats `EAGAIN` from a non-blocking `connect(2)` as
//! "in progress" and returns an unconnected socket. On Linux, `EAGAIN` from a non-blocking
//! `AF_UNIX` connect means the listener's backlog is full, and nothing will ever complete that
//! connection. So the socket is created and connected here, with a retry on `EAGAIN`.

use crate::ClientError;
use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, UnixAddr, sockopt};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::time::Duration;
use std::time::Instant;

/// First pause after a full backlog; doubled after each retry up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(1);
const MAX_BACKOFF: Duration = Duration::from_millis(50);

/// One non-blocking connect attempt on a fresh socket.
pub(crate) fn connect_once(path: &Path) -> Result<OwnedFd, Errno> {
    let addr = UnixAddr::new(path)?;
    let fd = socket::socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    // An AF_UNIX connect completes at once or fails; it never answers EINPROGRESS. EAGAIN means
    // the listener's backlog is full.
    socket::connect(fd.as_raw_fd(), &addr)?;
    Ok(fd)
}

fn is_socket(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.file_type().is_socket())
}

/// The retry policy of a connect: back off while the listener's backlog is full, until the
/// deadline; every other failure is final.
struct Retry<'a> {
    path: &'a Path,
    started: Instant,
    deadline: Instant,
    backoff: Duration,
}

impl<'a> Retry<'a> {
    fn new(path: &'a Path, timeout: Duration) -> Retry<'a> {
        let started = Instant::now();
        Retry {
            path,
            started,
            deadline: started + timeout,
            backoff: MIN_BACKOFF,
        }
    }

    /// After a failed attempt: how long to wait before the next one, or the error to give up
    /// with.
    fn after(&mut self, e: Errno) -> Result<Duration, ClientError> {
        match e {
            Errno::EAGAIN => {
                let now = Instant::now();
                if now >= self.deadline {
                    return Err(ClientError::Busy {
                        path: self.path.to_path_buf(),
                        waited: now - self.started,
                    });
                }
                let wait = self.backoff.min(self.deadline - now);
                self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                Ok(wait)
            }
            Errno::EINTR => Ok(Duration::ZERO),
            // connect(2) answers ECONNREFUSED for any existing non-socket path too; say which.
            Errno::ECONNREFUSED if !is_socket(self.path) => Err(ClientError::Connect {
                path: self.path.to_path_buf(),
                source: Errno::ENOTSOCK.into(),
            }),
            e => Err(ClientError::Connect {
                path: self.path.to_path_buf(),
                source: e.into(),
            }),
        }
    }
}

/// Connects to `path`, retrying while the listener's backlog is full until `timeout` has
/// passed. Returns a connected, non-blocking, close-on-exec socket.
pub(crate) async fn connect_fd(path: &Path, timeout: Duration) -> Result<OwnedFd, ClientError> {
    let mut retry = Retry::new(path, timeout);
    loop {
        match connect_once(path) {
            Ok(fd) => return Ok(fd),
            Err(e) => tokio::time::sleep(retry.after(e)?).await,
        }
    }
}

/// [`connect_fd`] for a blocking caller: sleeps the thread between attempts.
pub(crate) fn connect_fd_blocking(path: &Path, timeout: Duration) -> Result<OwnedFd, ClientError> {
    let mut retry = Retry::new(path, timeout);
    loop {
        match connect_once(path) {
            Ok(fd) => return Ok(fd),
            Err(e) => std::thread::sleep(retry.after(e)?),
        }
    }
}

/// Checks that `fd` is a `SOCK_SEQPACKET` socket and makes it non-blocking (for the async
/// client: a blocking descriptor would stall the runtime) or blocking (for the blocking one).
pub(crate) fn prepare_fd(fd: &OwnedFd, nonblocking: bool) -> Result<(), ClientError> {
    let ty = socket::getsockopt(fd, sockopt::SockType).map_err(|e| {
        ClientError::io(
            "the descriptor handed to the client is not a socket",
            e.into(),
        )
    })?;
    if ty != SockType::SeqPacket {
        return Err(ClientError::io(
            "the descriptor handed to the client is not a SOCK_SEQPACKET socket",
            std::io::Error::from(Errno::EPROTOTYPE),
        ));
    }
    let flags = fcntl(fd.as_fd(), FcntlArg::F_GETFL)
        .map_err(|e| ClientError::io("cannot read the socket's flags", e.into()))?;
    let flags = OFlag::from_bits_retain(flags);
    let wanted = if nonblocking {
        flags | OFlag::O_NONBLOCK
    } else {
        flags - OFlag::O_NONBLOCK
    };
    if wanted != flags {
        fcntl(fd.as_fd(), FcntlArg::F_SETFL(wanted))
            .map_err(|e| ClientError::io("cannot set the socket's blocking mode", e.into()))?;
    }
    Ok(())
}
