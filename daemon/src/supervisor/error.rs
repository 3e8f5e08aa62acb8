//! What can go wrong in the supervisor, typed. The messages are the operator's (the hub and
//! `spawnctl` show them, and tests compare some); [`crate::errors`] turns a
//! [`SupervisorError`] into the wire's `ErrorReply`.

use nix::unistd::{Pid, Uid};
use spawnd_protocol::{ServerId, ServerState};
use std::io;
use std::path::PathBuf;

/// Why a request about a server was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("no server {0} is known to spawnd")]
    NotFound(ServerId),
    #[error(
        "server {id} instance {asked} is gone; the current instance is {current} (the caller's \
         record is stale, so nothing was done)"
    )]
    StaleInstance {
        id: ServerId,
        asked: u64,
        current: u64,
    },
    #[error("server {id} is already {state} (instance {instance}, pid {pid}); stop it first")]
    AlreadyRunning {
        id: ServerId,
        state: ServerState,
        instance: u64,
        pid: Pid,
    },
    #[error("server {0} is still starting; stop it again in a moment")]
    StillStarting(ServerId),
    #[error("server {id} is {state}; there is no process to signal")]
    NoProcess { id: ServerId, state: ServerState },
    #[error("server {0} has just exited")]
    JustExited(ServerId),
    #[error("could not signal {id}: {source}")]
    Signal { id: ServerId, source: io::Error },
    #[error(
        "server {id} (pid {pid}) did not exit after SIGKILL; it may be stuck in the kernel \
         (state D): check `cat /proc/{pid}/stack`"
    )]
    StuckInKernel { id: ServerId, pid: Pid },
}

/// Why a recorded (or found) process is not taken back after a restart. Nothing is signalled
/// on any of these.
#[derive(Debug, thiserror::Error)]
pub enum AdoptError {
    #[error("recorded pid {0} is not a server")]
    NotAServer(Pid),
    #[error("pid {pid} is gone ({source})")]
    Gone { pid: Pid, source: io::Error },
    #[error("pid {0} now belongs to another process (its start time differs)")]
    StartTimeDiffers(Pid),
    #[error(
        "pid {pid} now belongs to another process (it is not in the server's cgroup {})",
        cgroup.display()
    )]
    NotInCgroup { pid: Pid, cgroup: PathBuf },
    #[error("pid {pid} runs as uid {actual}, not the recorded uid {recorded}")]
    WrongUid {
        pid: Pid,
        actual: Uid,
        recorded: Uid,
    },
    /// From a cgroup without a record: its process list could not be read.
    #[error("{0}")]
    CgroupUnreadable(io::Error),
    #[error("user {0} no longer exists")]
    NoSuchUser(String),
    #[error(
        "user {user} has uid {uid}, which may not have a server (root, or below min_uid \
         {min_uid})"
    )]
    UidNotAllowed {
        user: String,
        uid: Uid,
        min_uid: u32,
    },
    #[error("no process of user {0} leads a session in it")]
    NoSessionLeader(String),
}

/// Why a state record is not used at all (it is moved aside).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VetError {
    #[error("uid {uid} may not have a server (root, or below min_uid {min_uid})")]
    UidNotAllowed { uid: u32, min_uid: u32 },
    #[error("pid {0} is not a server's")]
    NotAServersPid(i32),
    #[error("its cgroup {} is not the one spawnd makes for this server ({})", recorded.display(), expected.display())]
    ForeignCgroup {
        recorded: PathBuf,
        expected: PathBuf,
    },
}
