//! Taking back, after a restart, the servers a previous daemon left: from their records (each
//! vetted, then re-adopted only if its pid is still the recorded process) and, in cgroup mode,
//! from server cgroups that no record explains.

use super::record::Found;
use super::{AdoptError, Entry, StopTimeouts, Supervisor, VetError};
use crate::config::Config;
use crate::host::{Host, Pidfd};
use crate::state::Record;
use crate::tree::{self, TreeMode};
use nix::unistd::{Pid, Uid};
use spawnd_protocol::{ExitStatus, ServerId, ServerState};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

/// What [`Supervisor::recover`] found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Recovery {
    /// Recorded servers still running, now supervised again.
    pub adopted: u32,
    /// Recorded servers that were gone (or whose pid now belongs to something else).
    pub exited: u32,
    /// Servers found in cgroups without a record.
    pub from_cgroups: u32,
    /// Records that could not be read (moved aside).
    pub unreadable: u32,
}

/// What recovery takes from the configuration.
#[derive(Debug, Clone)]
pub(super) struct RecoveryRules {
    /// The lowest uid that may have a server (root never may).
    pub min_uid: u32,
    /// The owner of a server recovered from its cgroup alone.
    pub hub_uid: u32,
    /// Where the servers' logs are (a record's log path is never used).
    pub log_dir: PathBuf,
    /// The stop timeouts of a server recovered from its cgroup alone.
    pub default_timeouts: StopTimeouts,
}

impl RecoveryRules {
    fn of(config: &Config) -> RecoveryRules {
        RecoveryRules {
            min_uid: config.min_uid,
            hub_uid: config.hub_uid,
            log_dir: config.log_dir.clone(),
            default_timeouts: StopTimeouts::of(config.profile("")),
        }
    }

    fn may_have_server(&self, uid: u32) -> bool {
        uid != 0 && uid >= self.min_uid
    }
}

impl Supervisor {
    /// Takes back the servers a previous daemon left: every record whose pid still has the
    /// recorded start time and uid is re-adopted (a pidfd, an exit watcher, stop works as
    /// before; its exit status will be unknown, since it is not our child). The others are
    /// reported as exited and never signalled. In cgroup mode, server cgroups that no record
    /// explains (a lost or corrupt record) are re-adopted too. Call once, before serving.
    pub fn recover(self: &Arc<Self>, config: &Config) -> Recovery {
        self.recover_with(&RecoveryRules::of(config))
    }

    pub(super) fn recover_with(self: &Arc<Self>, rules: &RecoveryRules) -> Recovery {
        let mut report = Recovery::default();
        let (records, unreadable) = self.state.load_all();
        for bad in unreadable {
            tracing::error!(
                path = %bad.path.display(),
                moved_to = ?bad.moved_to,
                "UNREADABLE SERVER RECORD, moved aside; the server it described is recovered \
                 from its cgroup if it has one: {}",
                bad.error
            );
            report.unreadable += 1;
        }
        for rec in records {
            self.bump_instance(rec.instance);
            let id = rec.id();
            let rec = match vet(rec, rules, &self.tree) {
                Ok(rec) => rec,
                Err(why) => {
                    let moved_to = self.state.set_aside(&id.user, &id.server, "invalid");
                    tracing::error!(
                        server = %id,
                        moved_to = ?moved_to,
                        "INVALID SERVER RECORD, moved aside and not used (nothing it names is \
                         signalled, read or removed): {why}"
                    );
                    report.unreadable += 1;
                    continue;
                }
            };
            if rec.exit.is_some() {
                self.insert_exited(&id, &rec, &rules.log_dir);
                continue;
            }
            let (pid, uid) = (Pid::from_raw(rec.pid), Uid::from_raw(rec.uid));
            match adopt(
                &*self.host,
                pid,
                rec.start_ticks,
                uid,
                rec.cgroup.as_deref(),
            ) {
                Ok(pidfd) => {
                    tracing::info!(server = %id, pid = rec.pid, instance = rec.instance, "re-adopted");
                    self.insert_adopted(&id, &rec, pidfd, &rules.log_dir);
                    report.adopted += 1;
                }
                Err(why) => {
                    tracing::warn!(
                        server = %id,
                        pid = rec.pid,
                        "not re-adopted ({why}); reported as exited, pid not signalled"
                    );
                    report.exited += 1;
                    self.insert_exited(&id, &rec, &rules.log_dir);
                }
            }
        }
        if let TreeMode::Cgroup { base } = &self.tree {
            report.from_cgroups = self.recover_cgroups(base, rules);
        }
        let ids: Vec<ServerId> = self.table().keys().cloned().collect();
        for id in ids {
            if let Err(e) = self.persist(&id) {
                tracing::error!(server = %id, "could not update the state directory: {e}");
            }
        }
        report
    }

    fn bump_instance(&self, seen: u64) {
        self.next_instance
            .fetch_max(seen.saturating_add(1), Ordering::Relaxed);
    }

    /// A recorded server whose process is still the recorded one: running, supervised again.
    fn insert_adopted(self: &Arc<Self>, id: &ServerId, rec: &Record, pidfd: Pidfd, log_dir: &Path) {
        let log_path = crate::logs::log_path(log_dir, &rec.user, &rec.server);
        let mut entry = Entry::from_record(rec, ServerState::Running, log_path);
        let (pid, cgroup) = (entry.pid, entry.cgroup.clone());
        self.supervise(id, rec.instance, pid, pidfd, cgroup, |table, process| {
            entry.process = Some(process);
            table.insert(id.clone(), entry);
        });
    }

    /// A server that is gone (or cannot be vouched for): exited, with its recorded status or
    /// unknown. Its pid is never signalled; leftovers in its own cgroup are killed.
    fn insert_exited(&self, id: &ServerId, rec: &Record, log_dir: &Path) {
        let status = rec.exit.unwrap_or(ExitStatus::Unknown);
        let log_path = crate::logs::log_path(log_dir, &rec.user, &rec.server);
        let mut entry = Entry::from_record(rec, ServerState::Exited(status), log_path);
        entry.exited_at = entry.exited_at.or(Some(SystemTime::now()));
        let cgroup = entry.cgroup.clone();
        self.table().insert(id.clone(), entry);
        if let Some(dir) = cgroup.filter(|dir| self.host.cgroup_exists(dir)) {
            self.reap_cgroup_later(id, dir);
        }
    }

    /// Server cgroups (`<base>/<user>/<server>.<instance>`) that no record explains; returns
    /// how many servers were re-adopted from them.
    fn recover_cgroups(self: &Arc<Self>, base: &Path, rules: &RecoveryRules) -> u32 {
        let mut found = 0;
        for user in self.host.cgroup_children(base) {
            let user_dir = base.join(&user);
            for name in self.host.cgroup_children(&user_dir) {
                let Some((server, instance)) = tree::parse_cgroup_name(&name) else {
                    continue;
                };
                let id = ServerId::new(user.clone(), server.to_string());
                if id.validate().is_ok()
                    && self.recover_cgroup(&id, instance, &user_dir.join(&name), rules)
                {
                    found += 1;
                }
            }
        }
        found
    }

    /// One server cgroup: left alone if its instance is recorded, removed if empty, killed if
    /// another instance of the server is recorded (a leftover tree), and otherwise its server
    /// re-adopted if it can be found in it. True if it was re-adopted.
    fn recover_cgroup(
        self: &Arc<Self>,
        id: &ServerId,
        instance: u64,
        dir: &Path,
        rules: &RecoveryRules,
    ) -> bool {
        let known = self.table().get(id).map(|entry| entry.instance);
        if known == Some(instance) {
            return false;
        }
        if !self.host.cgroup_populated(dir) {
            let _ = self.host.remove_cgroup(dir);
            return false;
        }
        if known.is_some() {
            tracing::warn!(server = %id, cgroup = %dir.display(), "killing a stale server tree");
            let _ = self.host.kill_cgroup(dir);
            return false;
        }
        match recover_from_cgroup(&*self.host, id, instance, dir, rules) {
            Ok((rec, pidfd)) => {
                tracing::warn!(
                    server = %id,
                    pid = rec.pid,
                    instance,
                    "re-adopted from its cgroup (its record was lost)"
                );
                self.bump_instance(instance);
                self.insert_adopted(id, &rec, pidfd, &rules.log_dir);
                true
            }
            Err(why) => {
                tracing::warn!(
                    server = %id,
                    cgroup = %dir.display(),
                    "cannot re-adopt the processes in this cgroup: {why}"
                );
                false
            }
        }
    }
}

/// Checks a record against the policy before anything in it is used (records live in a
/// root-only directory, but one restored from a backup, edited by hand or written by a bug must
/// not make the daemon signal, read or remove what it names): the uid must be one that may
/// have a server, the pid a process's, the cgroup exactly the one the daemon makes for this
/// server under its own base, the timeouts within the configuration's bounds. The log path is
/// never taken from a record: it is derived from the configuration.
pub(super) fn vet(
    mut rec: Record,
    rules: &RecoveryRules,
    tree: &TreeMode,
) -> Result<Record, VetError> {
    if !rules.may_have_server(rec.uid) {
        return Err(VetError::UidNotAllowed {
            uid: rec.uid,
            min_uid: rules.min_uid,
        });
    }
    if rec.pid <= 1 && rec.exit.is_none() {
        return Err(VetError::NotAServersPid(rec.pid));
    }
    match (tree, &rec.cgroup) {
        (_, None) => {}
        (TreeMode::Cgroup { base }, Some(dir)) => {
            let expected = tree::cgroup_dir(base, &rec.user, &rec.server, rec.instance);
            if *dir != expected {
                return Err(VetError::ForeignCgroup {
                    recorded: dir.clone(),
                    expected,
                });
            }
        }
        (TreeMode::ProcessGroup { .. }, Some(dir)) => {
            tracing::warn!(
                server = %rec.id(),
                "the recorded cgroup {} is not used: cgroups are off now",
                dir.display()
            );
            rec.cgroup = None;
        }
    }
    let max_ms = crate::config::MAX_TIMEOUT_SECS * 1000;
    for ms in [
        &mut rec.interrupt_timeout_ms,
        &mut rec.term_timeout_ms,
        &mut rec.kill_timeout_ms,
    ] {
        *ms = (*ms).min(max_ms);
    }
    Ok(rec)
}

/// Opens a pidfd to `pid` and checks that it is still the recorded process: same start time
/// and same real uid (and, with a cgroup, a member of it). The pidfd is opened first and
/// liveness checked after reading /proc, so the /proc data cannot belong to a process that
/// replaced it. Nothing is signalled but the final liveness probe (signal 0).
pub(super) fn adopt(
    host: &dyn Host,
    pid: Pid,
    start_ticks: u64,
    uid: Uid,
    cgroup: Option<&Path>,
) -> Result<Pidfd, AdoptError> {
    if pid.as_raw() <= 1 {
        return Err(AdoptError::NotAServer(pid));
    }
    let gone = |source| AdoptError::Gone { pid, source };
    let pidfd = host.pidfd_open(pid).map_err(gone)?;
    let ticks = host.start_time(pid).map_err(gone)?;
    if ticks != start_ticks {
        return Err(AdoptError::StartTimeDiffers(pid));
    }
    let real_uid = host.real_uid(pid).map_err(gone)?;
    // Start times have a clock tick's resolution: a process of the same user started in the
    // same tick could match. A server also lives in its own cgroup, which nothing else enters.
    if let Some(dir) = cgroup {
        let procs = host.cgroup_procs(dir).unwrap_or_default();
        if !procs.contains(&pid) {
            return Err(AdoptError::NotInCgroup {
                pid,
                cgroup: dir.to_path_buf(),
            });
        }
    }
    if real_uid != uid {
        return Err(AdoptError::WrongUid {
            pid,
            actual: real_uid,
            recorded: uid,
        });
    }
    host.pidfd_signal(&pidfd, 0).map_err(gone)?;
    Ok(pidfd)
}

/// Finds a server's main process in its cgroup: the session leader (servers call setsid)
/// that started first, owned by the server's user.
fn recover_from_cgroup(
    host: &dyn Host,
    id: &ServerId,
    instance: u64,
    cgroup: &Path,
    rules: &RecoveryRules,
) -> Result<(Record, Pidfd), AdoptError> {
    let procs = host
        .cgroup_procs(cgroup)
        .map_err(AdoptError::CgroupUnreadable)?;
    let uid = host
        .user_uid(&id.user)
        .ok_or_else(|| AdoptError::NoSuchUser(id.user.clone()))?;
    if !rules.may_have_server(uid.as_raw()) {
        return Err(AdoptError::UidNotAllowed {
            user: id.user.clone(),
            uid,
            min_uid: rules.min_uid,
        });
    }
    let (start_ticks, pid) = procs
        .into_iter()
        .filter(|&pid| host.session(pid).ok() == Some(pid))
        .filter(|&pid| host.real_uid(pid).ok() == Some(uid))
        .filter_map(|pid| host.start_time(pid).ok().map(|ticks| (ticks, pid)))
        .min_by_key(|&(ticks, pid)| (ticks, pid.as_raw()))
        .ok_or_else(|| AdoptError::NoSessionLeader(id.user.clone()))?;
    let pidfd = adopt(host, pid, start_ticks, uid, Some(cgroup))?;
    let record = Found {
        id,
        instance,
        uid,
        owner_uid: Uid::from_raw(rules.hub_uid),
        pid,
        start_ticks,
        cgroup: cgroup.to_path_buf(),
        timeouts: rules.default_timeouts,
    }
    .record();
    Ok((record, pidfd))
}
