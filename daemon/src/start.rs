//! Starting a server: one transaction.
//!
//! A start claims the server's name in the table, checks the program, opens the log, creates
//! the cgroup, has the launcher create the process, and records the server. Every step that
//! leaves something behind is held by a guard that undoes it when dropped: the claim releases
//! the name ([`Claim`]), a new cgroup removes itself and anything in it ([`NewCgroup`]). The
//! cgroup is committed once the process runs in it (from then on the supervisor's exit watcher
//! removes it), the claim once the server is recorded in the state directory; a server that
//! cannot be recorded is killed at once and forgotten, so that no server runs that a restarted
//! daemon could not find again.
//!
//! [`profile_for`] is the part without I/O, run on the async side; [`start`] the rest, on a
//! blocking thread (NSS, the file system and the launch all block).

use crate::config::{Config, Profile, ProgramError};
use crate::launch::{LaunchError, LaunchInput, LaunchSpec, Launcher};
use crate::logs;
use crate::policy::{self, PolicyError, Target};
use crate::supervisor::{NewServer, Reservation, StopTimeouts, Supervisor, SupervisorError};
use crate::tree;
use spawnd_protocol::{ServerId, StartRequest, Started};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;

/// Why a start failed. Nothing of it is left behind: not the name, the cgroup or a process.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("profile {profile:?} is not defined in {config}; defined profiles: {known}")]
    UnknownProfile {
        profile: String,
        config: String,
        known: String,
    },
    #[error("profile {profile} does not allow the hub to add arguments (allow_args = false)")]
    ArgumentsNotAllowed { profile: String },
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// The name could not be claimed (a server of that name runs).
    #[error(transparent)]
    Claim(SupervisorError),
    /// The program (or an interpreter it needs) is missing or cannot be executed: a broken
    /// installation.
    #[error("the program of profile {profile} cannot run: {source}")]
    ProgramCannotRun {
        profile: String,
        source: ProgramError,
    },
    /// The program (or an interpreter it needs) could be changed by someone other than root.
    #[error("profile {profile} is unsafe: {source}")]
    ProgramUnsafe {
        profile: String,
        source: ProgramError,
    },
    #[error("could not open the log file of {server} under {log_dir}: {source}")]
    Log {
        server: ServerId,
        log_dir: String,
        source: std::io::Error,
    },
    #[error("could not create the cgroup of {server}: {source}")]
    Cgroup {
        server: ServerId,
        source: std::io::Error,
    },
    #[error(transparent)]
    Launch(#[from] LaunchError),
    #[error(
        "could not record server {server} in {state_dir} ({source}); it was stopped again. \
         Check that the state directory is writable and not full"
    )]
    Record {
        server: ServerId,
        state_dir: String,
        source: std::io::Error,
    },
}

/// The profile a start request names, if it exists and allows what the request asks.
pub fn profile_for(config: &Config, req: &StartRequest) -> Result<Profile, StartError> {
    let profile = config.profile(&req.profile).ok_or_else(|| {
        let known: Vec<&str> = config.profiles.keys().map(String::as_str).collect();
        StartError::UnknownProfile {
            profile: req.profile.clone(),
            config: config.source.display().to_string(),
            known: known.join(", "),
        }
    })?;
    if !req.args.is_empty() && !profile.allow_args {
        return Err(StartError::ArgumentsNotAllowed {
            profile: profile.name.clone(),
        });
    }
    Ok(profile.clone())
}

/// What a start uses of the daemon.
#[derive(Debug, Clone, Copy)]
pub struct Starter<'a> {
    pub config: &'a Config,
    pub supervisor: &'a Arc<Supervisor>,
    pub launcher: &'a Launcher,
}

/// Starts the server `req` asks for, for the peer with uid `owner_uid`, under `profile` (from
/// [`profile_for`]). Blocks: run it on a blocking thread.
pub fn start(
    starter: Starter<'_>,
    owner_uid: u32,
    req: &StartRequest,
    profile: &Profile,
) -> Result<Started, StartError> {
    let Starter {
        config,
        supervisor,
        launcher,
    } = starter;
    let target = policy::resolve_target(&req.server.user, config)?;
    let claim = Claim::new(
        supervisor,
        NewServer {
            id: req.server.clone(),
            uid: target.uid,
            owner_uid,
            profile: profile.name.clone(),
            port: req.port,
            log_path: logs::log_path(&config.log_dir, &target.name, &req.server.server),
            timeouts: StopTimeouts::of(Some(profile)),
        },
    )?;
    // Checked at load and again here: the file system may have changed since.
    crate::config::check_program(&profile.command, &profile.path).map_err(|source| {
        let profile = profile.name.clone();
        if source.is_missing() {
            StartError::ProgramCannotRun { profile, source }
        } else {
            StartError::ProgramUnsafe { profile, source }
        }
    })?;
    let env = policy::build_env(&target, profile, &req.env);
    let (log, log_path) = logs::open_server_log(
        &config.log_dir,
        &target.name,
        target.gid,
        &req.server.server,
        config.log_keep,
    )
    .map_err(|source| StartError::Log {
        server: req.server.clone(),
        log_dir: config.log_dir.display().to_string(),
        source,
    })?;
    let (cgroup, cgroup_fd) = NewCgroup::create(supervisor, &target, req, claim.instance)?;
    let mut argv = profile.command.clone();
    argv.extend(req.args.iter().cloned());
    let vars: Vec<(String, String)> = env.vars.into_iter().collect();
    let spec = LaunchSpec::new(LaunchInput {
        user: &target.name,
        uid: target.uid,
        gid: target.gid,
        groups: &target.groups,
        home: &target.home,
        argv: &argv,
        env: &vars,
        umask: profile.umask,
        limits: &profile.limits,
        log,
        cgroup: cgroup_fd,
        timeout: config.launch_timeout,
    })?;
    let launched = launcher.launch(&spec)?;

    // The process runs: the supervisor watches it from here on; the start holds until the
    // server is recorded.
    let pid = launched.pid;
    let instance = claim.instance;
    let log_file = logs::file_id(&spec.into_log()).ok();
    supervisor.record_launch(
        claim.reservation(),
        launched,
        cgroup.commit(),
        log_path.clone(),
        log_file,
    );
    if let Err(source) = supervisor.persist(&req.server) {
        // A server the next daemon could not find again must not run: take it down (the claim,
        // dropped on return, forgets it).
        tracing::error!(server = %req.server, "could not record the server, stopping it: {source}");
        supervisor.kill_now(&req.server, instance);
        return Err(StartError::Record {
            server: req.server.clone(),
            state_dir: config.state_dir.display().to_string(),
            source,
        });
    }
    claim.commit();
    tracing::info!(
        server = %req.server,
        instance,
        pid,
        uid = target.uid,
        profile = %profile.name,
        dropped_env = ?env.dropped,
        "server started"
    );
    Ok(Started {
        instance,
        pid: pid as u32,
        dropped_env: env.dropped,
        log_path: log_path.to_string_lossy().into_owned(),
    })
}

/// The server's name, claimed in the supervisor's table for this start: released when dropped
/// (with the table's entry, whatever state it reached), unless committed once the server is
/// recorded.
struct Claim<'a> {
    supervisor: &'a Supervisor,
    instance: u64,
    reservation: Option<Reservation>,
}

impl<'a> Claim<'a> {
    fn new(supervisor: &'a Supervisor, new: NewServer) -> Result<Claim<'a>, StartError> {
        let reservation = supervisor.reserve(new).map_err(StartError::Claim)?;
        Ok(Claim {
            supervisor,
            instance: reservation.instance,
            reservation: Some(reservation),
        })
    }

    fn reservation(&self) -> &Reservation {
        self.reservation
            .as_ref()
            .expect("a claim holds its reservation until it is committed or dropped")
    }

    /// The server is recorded: the name stays its own.
    fn commit(mut self) {
        self.reservation = None;
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if let Some(reservation) = self.reservation.take() {
            self.supervisor.abandon(&reservation);
        }
    }
}

/// The cgroup made for this start (none when cgroups are off): removed when dropped, with
/// anything that entered it, unless committed once the process runs in it.
struct NewCgroup {
    dir: Option<PathBuf>,
}

impl NewCgroup {
    /// Creates it; the descriptor is for the launch (the child is born in it).
    fn create(
        supervisor: &Supervisor,
        target: &Target,
        req: &StartRequest,
        instance: u64,
    ) -> Result<(NewCgroup, Option<OwnedFd>), StartError> {
        let made = supervisor
            .tree()
            .prepare(&target.name, &req.server.server, instance)
            .map_err(|source| StartError::Cgroup {
                server: req.server.clone(),
                source,
            })?;
        Ok(match made {
            Some((dir, fd)) => (NewCgroup { dir: Some(dir) }, Some(fd)),
            None => (NewCgroup { dir: None }, None),
        })
    }

    fn commit(mut self) -> Option<PathBuf> {
        self.dir.take()
    }
}

impl Drop for NewCgroup {
    fn drop(&mut self) {
        if let Some(dir) = self.dir.take() {
            tree::discard(&dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::tests::sample;
    use crate::state::StateDir;
    use crate::tree::TreeMode;
    use spawnd_protocol::{ErrorKind, ErrorReply};

    fn supervisor(tag: &str) -> (Arc<Supervisor>, PathBuf) {
        let dir = std::env::temp_dir().join(format!("spawnd-start-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let state = StateDir::open(&dir).unwrap();
        let tree = TreeMode::ProcessGroup {
            reason: "unit test".into(),
        };
        (Arc::new(Supervisor::new(tree, state)), dir)
    }

    fn new_server(user: &str) -> NewServer {
        NewServer {
            id: ServerId::new(user, ""),
            uid: 5000,
            owner_uid: 4000,
            profile: "default".into(),
            port: None,
            log_path: PathBuf::from("/nonexistent/log"),
            timeouts: StopTimeouts::of(None),
        }
    }

    fn request(profile: &str, args: &[&str]) -> StartRequest {
        StartRequest {
            server: ServerId::new("alice", ""),
            profile: profile.into(),
            args: args.iter().map(|a| a.to_string()).collect(),
            env: vec![],
            port: None,
        }
    }

    #[test]
    fn a_dropped_claim_frees_the_name_and_a_committed_one_keeps_it() {
        let (sup, dir) = supervisor("claim");
        let claim = Claim::new(&sup, new_server("alice")).unwrap();
        // Held: a second start of the same name is refused.
        let again = Claim::new(&sup, new_server("alice")).map(|_| ());
        assert!(
            matches!(
                &again,
                Err(StartError::Claim(SupervisorError::AlreadyRunning { .. }))
            ),
            "{again:?}"
        );
        drop(claim);
        assert!(sup.uid_of(&ServerId::new("alice", "")).is_none());
        let claim = Claim::new(&sup, new_server("alice")).expect("the name is free again");
        claim.commit();
        assert_eq!(sup.uid_of(&ServerId::new("alice", "")), Some(5000));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn the_profile_must_exist_and_allow_arguments() {
        let config = sample("[profiles.fixed]\ncommand = [\"/bin/sh\"]\nallow_args = false\n");
        assert_eq!(
            profile_for(&config, &request("", &["--x"])).unwrap().name,
            "default"
        );
        assert_eq!(
            profile_for(&config, &request("fixed", &[])).unwrap().name,
            "fixed"
        );
        let unknown = ErrorReply::from(profile_for(&config, &request("gpu", &[])).unwrap_err());
        assert_eq!(unknown.kind, ErrorKind::PolicyDenied);
        assert!(
            unknown
                .message
                .contains("profile \"gpu\" is not defined in /test/spawnd.toml")
                && unknown.message.contains("defined profiles: default, fixed"),
            "{}",
            unknown.message
        );
        let args = ErrorReply::from(profile_for(&config, &request("fixed", &["--x"])).unwrap_err());
        assert_eq!(args.kind, ErrorKind::PolicyDenied);
        assert!(
            args.message
                .contains("profile fixed does not allow the hub to add arguments"),
            "{}",
            args.message
        );
    }
}
