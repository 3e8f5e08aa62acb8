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
use tokio::time::Instant;

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

/// Connects to `path`, retrying while the listener's backlog is full until `timeout` has
/// passed. Returns a connected, non-blocking, close-on-exec socket.
pub(crate) async fn connect_fd(path: &Path, timeout: Duration) -> Result<OwnedFd, ClientError> {
    let started = Instant::now();
    let deadline = started + timeout;
    let mut backoff = MIN_BACKOFF;
    loop {
        match connect_once(path) {
            Ok(fd) => return Ok(fd),
            Err(Errno::EAGAIN) => {
                let now = Instant::now();
                if now >= deadline {
                    return Err(ClientError::Busy {
                        path: path.to_path_buf(),
                        waited: now - started,
                    });
                }
                tokio::time::sleep(backoff.min(deadline - now)).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            Err(Errno::EINTR) => {}
            Err(e) => {
                // connect(2) answers ECONNREFUSED for any existing non-socket path too; say which.
                let e = match e {
                    Errno::ECONNREFUSED if !is_socket(path) => Errno::ENOTSOCK,
                    e => e,
                };
                return Err(ClientError::Connect {
                    path: path.to_path_buf(),
                    source: e.into(),
                });
            }
        }
    }
}

/// Checks that `fd` is a `SOCK_SEQPACKET` socket and makes it non-blocking (a descriptor
/// connected elsewhere may be blocking, which would stall the runtime).
pub(crate) fn prepare_fd(fd: &OwnedFd) -> Result<(), ClientError> {
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
    if !flags.contains(OFlag::O_NONBLOCK) {
        fcntl(fd.as_fd(), FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))
            .map_err(|e| ClientError::io("cannot make the socket non-blocking", e.into()))?;
    }
    Ok(())
}
