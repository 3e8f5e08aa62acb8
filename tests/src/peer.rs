//! Connecting to the daemon's socket as another user, and a bare packet connection.

use nix::sys::socket::{AddressFamily, MsgFlags, SockFlag, SockType, UnixAddr};
use spawnd_protocol::{Envelope, Request, Response};
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

fn seqpacket_connect(path: &Path) -> io::Result<OwnedFd> {
    let fd = nix::sys::socket::socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let addr = UnixAddr::new(path)?;
    nix::sys::socket::connect(fd.as_raw_fd(), &addr)?;
    Ok(fd)
}

/// Connects a `SOCK_SEQPACKET` socket to `path` with the given credentials: a throw-away
/// thread sets its own (and only its own) groups, gid and uid with raw system calls, connects
/// (blocking), and hands the descriptor back. The kernel records the credentials at connect
/// time, so the daemon sees exactly `uid`, `gid` and `groups` in SO_PEERCRED / SO_PEERGROUPS.
///
/// glibc's `setuid`/`setgroups` (and nix's, which call them) broadcast the change to every
/// thread of the process; the raw `syscall` does not, which is why it is used here.
pub fn connect_as(path: &Path, uid: u32, gid: u32, groups: &[u32]) -> io::Result<OwnedFd> {
    let path: PathBuf = path.to_owned();
    let groups: Vec<libc::gid_t> = groups.to_vec();
    std::thread::spawn(move || -> io::Result<OwnedFd> {
        // SAFETY: SYS_setgroups reads `groups.len()` gids from a live Vec; as a raw system call
        // it changes only this thread's credentials.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_setgroups,
                groups.len() as libc::size_t,
                groups.as_ptr(),
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: SYS_setresgid takes three gids by value; only this thread changes.
        let rc = unsafe { libc::syscall(libc::SYS_setresgid, gid, gid, gid) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: SYS_setresuid takes three uids by value; only this thread changes. The
        // thread ends right after connecting, so its lost privileges don't matter.
        let rc = unsafe { libc::syscall(libc::SYS_setresuid, uid, uid, uid) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        seqpacket_connect(&path)
    })
    .join()
    .map_err(|_| io::Error::other("connect_as thread panicked"))?
}

/// Connects as the test process itself (root: an admin peer).
pub fn connect_root(path: &Path) -> io::Result<OwnedFd> {
    seqpacket_connect(path)
}

/// A bare `SOCK_SEQPACKET` connection: whole packets out and in, nothing checked.
#[derive(Debug)]
pub struct RawConn {
    pub fd: OwnedFd,
}

/// What one receive gave.
#[derive(Debug)]
pub enum RawRecv {
    /// One packet.
    Packet(Vec<u8>),
    /// The peer closed the connection (EOF or ECONNRESET).
    Closed(&'static str),
    /// Nothing arrived in time.
    TimedOut,
}

impl RawConn {
    pub fn new(fd: OwnedFd) -> Self {
        RawConn { fd }
    }

    /// Sends one packet (MSG_NOSIGNAL: a closed peer gives EPIPE, not SIGPIPE).
    pub fn send(&self, packet: &[u8]) -> io::Result<usize> {
        Ok(nix::sys::socket::send(
            self.fd.as_raw_fd(),
            packet,
            MsgFlags::MSG_NOSIGNAL,
        )?)
    }

    /// Waits up to `timeout` for one packet, EOF or a reset.
    pub fn recv(&self, timeout: Duration) -> io::Result<RawRecv> {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(self.fd.as_fd(), PollFlags::POLLIN)];
        let n = poll(&mut fds, PollTimeout::from(ms))?;
        if n == 0 {
            return Ok(RawRecv::TimedOut);
        }
        let mut buf = vec![0u8; spawnd_protocol::MAX_PACKET + 1024];
        match nix::sys::socket::recv(self.fd.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
            Ok(0) => Ok(RawRecv::Closed("EOF")),
            Ok(n) => {
                buf.truncate(n);
                Ok(RawRecv::Packet(buf))
            }
            Err(nix::errno::Errno::ECONNRESET) => Ok(RawRecv::Closed("ECONNRESET")),
            Err(e) => Err(e.into()),
        }
    }

    /// Sends a valid request and decodes the answer (panics on anything else).
    pub fn request(&self, id: u32, request: &Request) -> Envelope<Response> {
        let packet = spawnd_protocol::encode_request(id, request).expect("encode request");
        self.send(&packet).expect("send request");
        match self.recv(Duration::from_secs(10)).expect("recv") {
            RawRecv::Packet(p) => spawnd_protocol::decode_response(&p)
                .unwrap_or_else(|e| panic!("undecodable response {p:?}: {e}")),
            other => panic!("no response to {request:?}: {other:?}"),
        }
    }
}
