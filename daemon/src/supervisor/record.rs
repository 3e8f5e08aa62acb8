//! A table entry and its state record ([`crate::state::Record`]), both ways.

use super::{Entry, StopTimeouts};
use crate::state::{RECORD_VERSION, Record};
use nix::unistd::{Pid, Uid};
use spawnd_protocol::{ServerId, ServerState};
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub(super) fn epoch_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn millis(d: Duration) -> u64 {
    d.as_millis() as u64
}

impl StopTimeouts {
    pub(super) fn of_record(rec: &Record) -> StopTimeouts {
        StopTimeouts {
            interrupt: Duration::from_millis(rec.interrupt_timeout_ms),
            term: Duration::from_millis(rec.term_timeout_ms),
            kill: Duration::from_millis(rec.kill_timeout_ms),
        }
    }
}

impl Entry {
    /// What is persisted of this entry.
    pub(super) fn record(&self, id: &ServerId) -> Record {
        Record {
            version: RECORD_VERSION,
            user: id.user.clone(),
            server: id.server.clone(),
            uid: self.uid.as_raw(),
            owner_uid: self.owner_uid.as_raw(),
            instance: self.instance,
            pid: self.pid.as_raw(),
            start_ticks: self.start_ticks,
            cgroup: self.cgroup.clone(),
            profile: self.profile.clone(),
            port: self.port,
            log_file: self.log_file,
            started_at: epoch_secs(self.started_at),
            exit: match self.state {
                ServerState::Exited(status) => Some(status),
                _ => None,
            },
            exited_at: self.exited_at.map(epoch_secs),
            interrupt_timeout_ms: millis(self.timeouts.interrupt),
            term_timeout_ms: millis(self.timeouts.term),
            kill_timeout_ms: millis(self.timeouts.kill),
        }
    }

    /// An entry for a recorded server, without a process (the caller adds one if it adopts
    /// it). The log path is the caller's: it is never taken from a record.
    pub(super) fn from_record(rec: &Record, state: ServerState, log_path: PathBuf) -> Entry {
        let at = |secs: u64| UNIX_EPOCH + Duration::from_secs(secs);
        Entry {
            instance: rec.instance,
            uid: Uid::from_raw(rec.uid),
            owner_uid: Uid::from_raw(rec.owner_uid),
            profile: rec.profile.clone(),
            port: rec.port,
            started_at: at(rec.started_at),
            exited_at: rec.exited_at.map(at),
            log_path,
            log_file: rec.log_file,
            timeouts: StopTimeouts::of_record(rec),
            state,
            process: None,
            pid: Pid::from_raw(rec.pid),
            start_ticks: rec.start_ticks,
            cgroup: rec.cgroup.clone(),
        }
    }
}

/// What a server found running in its cgroup, without a record, is recorded as.
pub(super) struct Found<'a> {
    pub id: &'a ServerId,
    pub instance: u64,
    pub uid: Uid,
    pub owner_uid: Uid,
    pub pid: Pid,
    pub start_ticks: u64,
    pub cgroup: PathBuf,
    pub timeouts: StopTimeouts,
}

impl Found<'_> {
    pub(super) fn record(self) -> Record {
        Record {
            version: RECORD_VERSION,
            user: self.id.user.clone(),
            server: self.id.server.clone(),
            uid: self.uid.as_raw(),
            owner_uid: self.owner_uid.as_raw(),
            instance: self.instance,
            pid: self.pid.as_raw(),
            start_ticks: self.start_ticks,
            cgroup: Some(self.cgroup),
            profile: "(recovered)".into(),
            port: None,
            log_file: None,
            started_at: epoch_secs(SystemTime::now()),
            exit: None,
            exited_at: None,
            interrupt_timeout_ms: millis(self.timeouts.interrupt),
            term_timeout_ms: millis(self.timeouts.term),
            kill_timeout_ms: millis(self.timeouts.kill),
        }
    }
}
