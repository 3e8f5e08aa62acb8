//! The messages between the daemon and its launcher process, over a `SOCK_SEQPACKET`
//! socketpair: one packet per message, postcard-encoded, descriptors with `SCM_RIGHTS`.
//!
//! The daemon sends one [`Request`] per server on the launcher's channel, with these
//! descriptors in this order: a reply socket of its own for this launch, the server's log file,
//! and (when [`Request::cgroup`] is set) the server's cgroup directory. The launcher answers on
//! the reply socket with one message: [`Reply::Cloned`] with the new process's pidfd and the
//! read end of its report pipe (the daemon then watches the set-up itself), or [`Reply::Done`]
//! when no process could be created.
//!
//! Strings travel as raw bytes that the daemon terminates with a NUL byte, so that the launcher
//! hands the child pointers into the packet it received: it copies no request data to its heap,
//! and clears the packet once the child has been created (see [`super::process`]).

use nix::errno::Errno;
use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};
use serde::de::{Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use std::ffi::CStr;
use std::fmt;
use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// The largest request the launcher accepts. AF_UNIX refuses a packet larger than the
/// sender's socket buffer (`net.core.wmem_default`, 208 KiB by default), and a hub's start
/// request is at most 64 KiB.
pub const MAX_REQUEST: usize = 192 * 1024;

/// The most descriptors a request carries: reply socket, log, cgroup directory.
pub const MAX_REQUEST_FDS: usize = 3;

/// The descriptors a [`Reply::Cloned`] carries: the pidfd and the report pipe's read end.
pub const CLONED_FDS: usize = 2;

/// Bytes borrowed from the received packet (postcard's byte string: a length, then the bytes).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Bytes<'a>(pub &'a [u8]);

impl fmt::Debug for Bytes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Arguments and environment carry tokens: never print them.
        write!(f, "Bytes({} bytes)", self.0.len())
    }
}

impl<'a> Bytes<'a> {
    /// The bytes as a C string: they must end with the only NUL byte.
    pub fn c_str(&self) -> Option<&'a CStr> {
        CStr::from_bytes_with_nul(self.0).ok()
    }
}

impl Serialize for Bytes<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Bytes<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Borrowed;
        impl<'de> Visitor<'de> for Borrowed {
            type Value = &'de [u8];
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("bytes borrowed from the packet")
            }
            fn visit_borrowed_bytes<E: serde::de::Error>(
                self,
                v: &'de [u8],
            ) -> Result<Self::Value, E> {
                Ok(v)
            }
            fn visit_bytes<E: serde::de::Error>(self, _: &[u8]) -> Result<Self::Value, E> {
                Err(E::custom("bytes must be borrowed from the packet"))
            }
        }
        d.deserialize_bytes(Borrowed).map(Bytes)
    }
}

/// One server to start.
#[derive(Debug, Serialize, Deserialize)]
pub struct Request<'a> {
    pub uid: u32,
    pub gid: u32,
    /// The full group list, passed to setgroups as it is.
    pub groups: Vec<u32>,
    pub umask: u32,
    /// Resource limits other than RLIMIT_NOFILE, as (resource, value); soft = hard.
    pub limits: Vec<(u32, u64)>,
    /// RLIMIT_NOFILE (soft, hard), set last.
    pub nofile: Option<(u64, u64)>,
    /// Whether failing to set `nofile` fails the start (the profile asked for it).
    pub nofile_required: bool,
    /// A cgroup directory descriptor follows the log's: the child is created inside it.
    pub cgroup: bool,
    /// Tests only: the child stops itself right before exec, as a user's SIGSTOP could. The
    /// daemon's start path never sets it.
    pub pause_before_exec: bool,
    #[serde(borrow)]
    pub program: Bytes<'a>,
    #[serde(borrow)]
    pub home: Bytes<'a>,
    #[serde(borrow)]
    pub argv: Vec<Bytes<'a>>,
    #[serde(borrow)]
    pub envp: Vec<Bytes<'a>>,
}

/// How the launcher created a process (the daemon says once which one the host allows).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Method {
    /// `clone3(CLONE_PARENT | CLONE_PIDFD | CLONE_INTO_CGROUP)`: born in its cgroup.
    Clone3,
    /// `clone(CLONE_PARENT | CLONE_PIDFD)` where a seccomp filter refuses clone3: the child
    /// enters its cgroup by writing `cgroup.procs`.
    Clone,
}

/// What the launcher says about one launch, on its reply socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// The process exists (a child of the daemon); its pidfd and the read end of its report
    /// pipe come with this message. It goes on with its set-up once this is sent.
    Cloned { pid: i32, method: Method },
    /// No process was created ([`Outcome::CloneFailed`] or [`Outcome::Invalid`]).
    Done(Outcome),
}

/// How a launch ended (the last three as the daemon reads them from the report pipe).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// The program was executed: the server runs.
    Exec,
    /// The child reported a failed step (see [`super::Step`]) and exited.
    Failed { step: u8, errno: i32 },
    /// The child died before executing its program, without reporting a failed step: killed by
    /// a signal (its user's, or the OOM killer's).
    KilledBeforeExec,
    /// The child had not executed its program within the launch timeout and was killed.
    TimedOut,
    /// No process could be created (clone3/clone failed with this errno).
    CloneFailed { errno: i32 },
    /// The request was malformed (a bug in spawnd, never a peer's doing): nothing was started.
    Invalid,
}

/// The largest encoded [`Reply`].
pub const MAX_REPLY: usize = 32;

/// Why a message could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("malformed message: {0}")]
    Malformed(#[from] postcard::Error),
    #[error("malformed message: {0} bytes after its end")]
    Trailing(usize),
}

/// Decodes a request, refusing trailing bytes.
pub fn decode_request(packet: &[u8]) -> Result<Request<'_>, DecodeError> {
    let (request, rest) = postcard::take_from_bytes::<Request<'_>>(packet)?;
    if !rest.is_empty() {
        return Err(DecodeError::Trailing(rest.len()));
    }
    Ok(request)
}

/// Decodes a reply, refusing trailing bytes.
pub fn decode_reply(packet: &[u8]) -> Result<Reply, DecodeError> {
    let (reply, rest) = postcard::take_from_bytes::<Reply>(packet)?;
    if !rest.is_empty() {
        return Err(DecodeError::Trailing(rest.len()));
    }
    Ok(reply)
}

/// Sends one packet with descriptors (SCM_RIGHTS), never raising SIGPIPE.
pub fn send(socket: BorrowedFd<'_>, bytes: &[u8], fds: &[RawFd]) -> io::Result<()> {
    let rights = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &rights };
    loop {
        match sendmsg::<()>(
            socket.as_raw_fd(),
            &[IoSlice::new(bytes)],
            cmsgs,
            MsgFlags::MSG_NOSIGNAL,
            None,
        ) {
            Ok(_) => return Ok(()),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(io::Error::from_raw_os_error(e as i32)),
        }
    }
}

/// One received packet: its length in the buffer, the descriptors it carried (close-on-exec,
/// owned), and whether the packet or its descriptors were cut short.
#[derive(Debug)]
pub struct Received {
    pub len: usize,
    pub fds: Vec<OwnedFd>,
    pub truncated: bool,
}

impl Received {
    /// End of file: the other end is closed.
    pub fn is_end(&self) -> bool {
        self.len == 0 && self.fds.is_empty()
    }
}

/// Receives one packet into `buf`, with at most `MAX_FDS` descriptors.
pub fn recv<const MAX_FDS: usize>(socket: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Received> {
    let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = loop {
        match recvmsg::<()>(
            socket.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Err(Errno::EINTR) => continue,
            other => break other.map_err(|e| io::Error::from_raw_os_error(e as i32))?,
        }
    };
    let mut fds = Vec::new();
    for c in msg.cmsgs().into_iter().flatten() {
        if let ControlMessageOwned::ScmRights(received) = c {
            // SAFETY: the kernel has just installed these descriptors for this process.
            fds.extend(
                received
                    .into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    Ok(Received {
        len: msg.bytes,
        fds,
        truncated: msg
            .flags
            .intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample<'a>(argv: Vec<Bytes<'a>>) -> Request<'a> {
        Request {
            uid: 1000,
            gid: 1000,
            groups: vec![1000, 27],
            umask: 0o022,
            limits: vec![(libc::RLIMIT_NPROC, 10)],
            nofile: Some((1024, 4096)),
            nofile_required: false,
            cgroup: true,
            pause_before_exec: false,
            program: Bytes(b"/bin/true\0"),
            home: Bytes(b"/home/a\0"),
            argv,
            envp: vec![Bytes(b"TOKEN=secret\0")],
        }
    }

    #[test]
    fn requests_round_trip_and_borrow_their_strings() {
        let request = sample(vec![Bytes(b"/bin/true\0"), Bytes(b"-x\0")]);
        let packet = postcard::to_stdvec(&request).expect("encode");
        let decoded = decode_request(&packet).expect("decode");
        assert_eq!(decoded.argv, request.argv);
        assert_eq!(decoded.groups, request.groups);
        // Borrowed from the packet, not copied: the launcher can clear it afterwards.
        let range = packet.as_ptr_range();
        for b in decoded.argv.iter().chain(&decoded.envp) {
            assert!(range.contains(&b.0.as_ptr()), "a string was copied");
        }
        assert_eq!(decoded.program.c_str(), Some(c"/bin/true"));
        // Trailing bytes are refused.
        let mut longer = packet.clone();
        longer.push(0);
        assert!(decode_request(&longer).is_err());
        // The debug form never shows what the strings hold.
        assert!(!format!("{decoded:?}").contains("secret"));
    }

    #[test]
    fn c_strings_must_end_with_their_only_nul() {
        assert_eq!(Bytes(b"a\0").c_str(), Some(c"a"));
        assert_eq!(Bytes(b"a").c_str(), None);
        assert_eq!(Bytes(b"a\0b\0").c_str(), None);
        assert_eq!(Bytes(b"").c_str(), None);
    }

    #[test]
    fn replies_fit_their_buffer() {
        let all = [
            Reply::Cloned {
                pid: i32::MAX,
                method: Method::Clone,
            },
            Reply::Done(Outcome::Exec),
            Reply::Done(Outcome::Failed {
                step: u8::MAX,
                errno: i32::MIN,
            }),
            Reply::Done(Outcome::KilledBeforeExec),
            Reply::Done(Outcome::TimedOut),
            Reply::Done(Outcome::CloneFailed { errno: i32::MAX }),
            Reply::Done(Outcome::Invalid),
        ];
        for reply in all {
            let bytes = postcard::to_stdvec(&reply).expect("encode");
            assert!(bytes.len() <= MAX_REPLY, "{reply:?}: {} bytes", bytes.len());
            assert_eq!(decode_reply(&bytes).expect("decode"), reply);
        }
    }
}
