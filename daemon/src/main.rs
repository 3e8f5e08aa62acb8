//! `spawnd`: the daemon, and `spawnd check-config`.

#![forbid(unsafe_code)]

use anyhow::{Context, Result, bail};
use clap::Parser;
use sd_notify::NotifyState;
use spawnd::cli::{Cli, Command};
use spawnd::config::{self, Config, OnShutdown};
use spawnd::launch::{Launcher, OWN_EXECUTABLE};
use spawnd::server::Daemon;
use spawnd::socket_access;
use spawnd::state::StateDir;
use spawnd::supervisor::Supervisor;
use spawnd::tree::TreeMode;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use tokio_seqpacket::UnixSeqpacketListener;

/// Listen backlog: a whole lecture logging in at once must not see EAGAIN (the kernel caps it
/// at net.core.somaxconn).
const BACKLOG: i32 = 4096;

fn main() -> std::process::ExitCode {
    // Descriptors 0 to 2 open (on /dev/null where they are closed), so that no socket or file
    // of the daemon's ever takes one of their numbers and is handed on as a standard stream.
    spawnd::sys::open_standard_descriptors();
    let cli = Cli::parse();
    match cli.command {
        Some(Command::CheckConfig { path }) => {
            let path = path.unwrap_or(cli.config);
            return if config::check_config_command(&path) {
                std::process::ExitCode::SUCCESS
            } else {
                std::process::ExitCode::FAILURE
            };
        }
        Some(Command::Launcher) => {
            return match spawnd::launch::process::run() {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("spawnd-launcher: {e}");
                    std::process::ExitCode::FAILURE
                }
            };
        }
        None => {}
    }
    spawnd::logging::init();
    match run(&cli.config) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("spawnd: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(config_path: &Path) -> Result<()> {
    let config = Config::load(config_path).map_err(|e| anyhow::anyhow!("{e}"))?;
    // Files the daemon creates are private unless it says otherwise.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    ensure_dir(&config.state_dir, 0o700)?;
    ensure_dir(&config.log_dir, 0o755)?;
    let socket_dir = config
        .socket
        .parent()
        .with_context(|| format!("socket path {} has no directory", config.socket.display()))?
        .to_path_buf();
    let listen_fd = spawnd::sys::systemd_listen_fd();
    if listen_fd.is_none() {
        ensure_dir(&socket_dir, 0o755)?;
    }
    // The cgroup base may sit in a directory only CAP_DAC_OVERRIDE can write (the hierarchy's
    // root is 0555): create it while the daemon still has every capability. Everything below
    // it is the daemon's own.
    let tree = TreeMode::detect(&config.cgroup);
    // One pidfd per server: allow as many descriptors as the hard limit (servers get the
    // original soft limit back before exec).
    let server_nofile = raise_nofile_limit();
    // Before any thread exists: capability sets are per thread.
    let kept =
        spawnd::privileges::reduce(&spawnd::privileges::DAEMON).context("dropping capabilities")?;
    tracing::info!(capabilities = ?kept, "capabilities reduced");
    // The process that creates every server: started now, so that it is a fresh process
    // executed from a daemon that holds no request yet (it shares nothing with the daemon
    // afterwards either).
    let launcher = Launcher::start(OWN_EXECUTABLE, server_nofile)
        .context("could not start the launcher process")?;
    tracing::info!(pid = launcher.pid(), "launcher ready");

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("spawnd")
        .build()
        .context("could not start the async runtime")?;
    let result = runtime.block_on(async move {
        // Signal handlers first: a SIGHUP or SIGTERM during start-up must not kill the daemon.
        let signals = Signals::install()?;
        if let TreeMode::ProcessGroup { reason } = &tree {
            tracing::warn!(
                "process trees are tracked by process group, not cgroup ({reason}); processes \
                 that leave their session can outlive a stop"
            );
        }
        let state = StateDir::open(&config.state_dir).with_context(|| {
            format!(
                "could not open the state directory {}",
                config.state_dir.display()
            )
        })?;
        let supervisor = std::sync::Arc::new(Supervisor::new(tree, state));
        let recovery = supervisor.recover(&config);
        tracing::info!(
            adopted = recovery.adopted,
            exited_while_away = recovery.exited,
            from_cgroups = recovery.from_cgroups,
            unreadable_records = recovery.unreadable,
            "recovered the servers of the previous daemon"
        );
        let listener = match listen_fd {
            Some(fd) => {
                set_nonblocking(&fd)?;
                UnixSeqpacketListener::try_from(fd)
                    .context("the socket passed by systemd (LISTEN_FDS) is not usable")?
            }
            None => bind(&config)?,
        };
        tracing::info!(
            socket = %config.socket.display(),
            tree = %supervisor.tree().describe(),
            hub_user = %config.hub_user,
            group = %config.group,
            "ready"
        );
        let source = config.source.clone();
        let daemon = Daemon::new(config, supervisor, launcher);
        tokio::spawn(daemon.clone().serve(listener));
        tokio::spawn(spawnd::log_limit::watch(daemon.clone()));
        notify(&[NotifyState::Ready]);
        // A socket the hub cannot reach looks fine from here: every spawn would fail in the
        // hub. Say so loudly (and in `spawnctl status`); checked after READY, so that a slow
        // directory service or a hung mount above the socket never holds up serving.
        let config = daemon.config();
        let (socket, hub_uid) = (config.socket.clone(), config.hub_uid);
        tokio::spawn(async move {
            let problems =
                tokio::task::spawn_blocking(move || socket_access::problems(&socket, hub_uid))
                    .await
                    .unwrap_or_default();
            for problem in problems {
                tracing::error!("{problem}");
            }
        });
        tokio::spawn(report_to_systemd(daemon.clone()));
        signals.run(daemon, source).await
    });
    // Blocking work still running (a log cut stuck on a file system that hangs) must not hold
    // the daemon's exit: the state is flushed by now.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    result
}

/// The signals the daemon handles, installed before anything else can be interrupted.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            hup: signal(SignalKind::hangup()).context("installing the SIGHUP handler")?,
        })
    }

    /// Waits for SIGTERM/SIGINT (exit) and handles SIGHUP (reload).
    async fn run(mut self, daemon: std::sync::Arc<Daemon>, source: PathBuf) -> Result<()> {
        loop {
            tokio::select! {
                _ = self.term.recv() => break,
                _ = self.int.recv() => break,
                _ = self.hup.recv() => {
                    notify(&[NotifyState::Reloading]);
                    match Config::load(&source) {
                        Ok(new) => {
                            tracing::info!("configuration reloaded from {}", source.display());
                            daemon.set_config(new);
                        }
                        Err(e) => tracing::error!(
                            "configuration reload refused, keeping the old one:\n{e}"
                        ),
                    }
                    notify(&[NotifyState::Ready]);
                }
            }
        }
        notify(&[NotifyState::Stopping]);
        shutdown(&daemon).await;
        Ok(())
    }
}

async fn shutdown(daemon: &Daemon) {
    if daemon.config().on_shutdown == OnShutdown::Stop {
        let servers = daemon.supervisor().live_servers();
        tracing::info!(
            "stopping; on_shutdown = \"stop\": stopping {} servers",
            servers.len()
        );
        let stops: Vec<_> = servers
            .into_iter()
            .map(|id| {
                let sup = daemon.supervisor().clone();
                tokio::spawn(async move {
                    if let Err(e) = sup.stop(&id, None, false).await {
                        tracing::error!(server = %id, "could not stop at shutdown: {e}");
                    }
                })
            })
            .collect();
        for stop in stops {
            let _ = stop.await;
        }
    } else {
        let (running, _) = daemon.supervisor().counts();
        tracing::info!("stopping; {running} servers keep running and will be re-adopted");
    }
    let sup = daemon.supervisor().clone();
    let flushed =
        tokio::task::spawn_blocking(move || sup.flush_state(std::time::Duration::from_secs(10)))
            .await
            .unwrap_or(false);
    if !flushed {
        tracing::warn!("the state directory's last writes may not be on disk yet (fsync is slow)");
    }
}

/// Tells systemd (when it started us with NOTIFY_SOCKET) how many servers run, and pets the
/// watchdog at half its interval when one is set. The count takes the server table's lock, so
/// a daemon wedged on it stops petting the watchdog and is restarted.
async fn report_to_systemd(daemon: std::sync::Arc<Daemon>) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    // The status line follows the counts within a second (sent only when it changes); the
    // watchdog is fed at half its interval.
    let watchdog = sd_notify::watchdog_enabled().map(|w| w / 2);
    let mut last_status = String::new();
    let mut last_ping = tokio::time::Instant::now();
    // Ticks at half the ping period at most: a tick handled late never puts a ping past the
    // watchdog's deadline.
    let mut tick = tokio::time::interval(watchdog.map_or(STATUS_CHECK_INTERVAL, |w| {
        (w / 2).min(STATUS_CHECK_INTERVAL)
    }));
    loop {
        tick.tick().await;
        let (running, exited) = daemon.supervisor().counts();
        let status = format!("{running} servers running, {exited} exited");
        let mut states = Vec::with_capacity(2);
        if status != last_status {
            states.push(NotifyState::Status(&status));
        }
        if watchdog.is_some_and(|period| last_ping.elapsed() >= period) {
            states.push(NotifyState::Watchdog);
            last_ping = tokio::time::Instant::now();
        }
        if !states.is_empty() {
            notify(&states);
        }
        last_status = status;
    }
}

/// How often the status line shown by `systemctl status` is brought up to date.
const STATUS_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

fn notify(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!("could not notify systemd: {e}");
    }
}

/// Raises the soft RLIMIT_NOFILE to the hard limit (one pidfd per server). Returns the limit
/// servers should get instead: the soft limit from before.
fn raise_nofile_limit() -> Option<libc::rlimit> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!("could not raise the open-file limit to {hard}: {e}");
                return None;
            }
            Some(libc::rlimit {
                rlim_cur: soft,
                rlim_max: hard,
            })
        }
        Ok(_) => None,
        Err(e) => {
            tracing::warn!("could not read the open-file limit: {e}");
            None
        }
    }
}

/// Creates a root-owned directory if missing, then insists it is private to root.
fn ensure_dir(dir: &Path, mode: u32) -> Result<()> {
    if !dir.exists() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("could not create {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("could not set the mode of {}", dir.display()))?;
    }
    config::check_private_dir(dir).map_err(|e| anyhow::anyhow!("refusing to start: {e}"))
}

fn set_nonblocking(fd: &OwnedFd) -> Result<()> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let flags = fcntl(fd, FcntlArg::F_GETFL).context("F_GETFL on the systemd socket")?;
    fcntl(
        fd,
        FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK),
    )
    .context("F_SETFL on the systemd socket")?;
    Ok(())
}

/// Binds the socket: removes a stale socket file, binds with a large backlog under a temporary
/// name beside it, gives it mode 0660 and group `socket_group` (root stays the owner), then
/// renames it into place, so that no peer ever finds the socket with other permissions (the hub
/// would be refused while they were still root's alone).
fn bind(config: &Config) -> Result<UnixSeqpacketListener> {
    let path = &config.socket;
    let mut temporary = path.as_os_str().to_owned();
    temporary.push("~");
    let temporary = PathBuf::from(temporary);
    // sun_path holds 107 bytes: a socket path at that length is bound in place.
    let staged = temporary.as_os_str().len() <= 107;
    let bound = if staged { &temporary } else { path };
    for p in [path, bound] {
        match std::fs::symlink_metadata(p) {
            Ok(m) if m.file_type().is_socket() => std::fs::remove_file(p)
                .with_context(|| format!("could not remove the stale socket {}", p.display()))?,
            Ok(_) => bail!(
                "{} exists and is not a socket; remove it or choose another `socket` path",
                p.display()
            ),
            Err(_) => {}
        }
    }
    let listener = UnixSeqpacketListener::bind_with_backlog(bound, BACKLOG)
        .with_context(|| format!("could not bind {}", bound.display()))?;
    nix::unistd::chown(
        bound,
        Some(nix::unistd::Uid::from_raw(0)),
        Some(nix::unistd::Gid::from_raw(config.socket_gid)),
    )
    .with_context(|| format!("could not chown {}", bound.display()))?;
    std::fs::set_permissions(bound, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("could not chmod {}", bound.display()))?;
    if staged {
        std::fs::rename(bound, path).with_context(|| {
            format!("could not rename {} to {}", bound.display(), path.display())
        })?;
    }
    Ok(listener)
}
