//! A real `spawnd` in a fresh directory, and the configurations the tests give it.

use crate::cmd::{CmdOutput, run_with_timeout};
use crate::peer::{RawConn, connect_as, connect_root};
use crate::users::{TestUser, users};
use spawnd_client::Client;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Where the daemon's per-server cgroups go when the host has this cgroup v2 mount.
const CGROUP_V2_ROOT: &str = "/sys/fs/cgroup/unified";
/// The PATH every test profile gives its servers.
pub const PROFILE_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

static NEXT_DIR: AtomicUsize = AtomicUsize::new(0);

/// The cgroup v2 mount the tests put per-daemon cgroup bases under, when it is usable.
pub fn cgroup_v2_root() -> Option<PathBuf> {
    let root = PathBuf::from(CGROUP_V2_ROOT);
    root.join("cgroup.procs").exists().then_some(root)
}

/// Path of one of the workspace's binaries: `$<env>` if set, else next to the test executable
/// (`target/<profile>/deps/xxx` → `target/<profile>/<name>`).
pub fn bin_path(name: &str, env: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env) {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe.parent().expect("test executable has a directory");
    if dir.ends_with("deps") {
        dir = dir.parent().expect("deps has a parent");
    }
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} does not exist: run `cargo build --workspace --bins` first (or set {env})",
        path.display()
    );
    path
}

/// One `[profiles.NAME]` table.
#[derive(Debug, Clone)]
pub struct Profile {
    pub name: String,
    pub command: Vec<String>,
    pub path: String,
    pub env: Vec<(String, String)>,
    /// `None`: the daemon's default allow-list.
    pub env_keep: Option<Vec<String>>,
    pub allow_args: Option<bool>,
    pub interrupt_timeout: Option<f64>,
    pub term_timeout: Option<f64>,
    pub kill_timeout: Option<f64>,
    /// `[profiles.NAME.limits]` entries: the limit's name and its TOML value as written.
    pub limits: Vec<(String, String)>,
}

impl Profile {
    /// A profile running `/bin/sh -c SCRIPT srv`.
    pub fn shell(name: &str, script: &str) -> Profile {
        Profile {
            name: name.to_owned(),
            command: vec!["/bin/sh".into(), "-c".into(), script.into(), "srv".into()],
            path: PROFILE_PATH.into(),
            env: Vec::new(),
            env_keep: None,
            allow_args: None,
            interrupt_timeout: Some(5.0),
            term_timeout: Some(5.0),
            kill_timeout: Some(5.0),
            limits: Vec::new(),
        }
    }

    /// A profile that runs `argv` directly (no shell).
    pub fn command(name: &str, argv: &[&str]) -> Profile {
        let mut p = Profile::shell(name, "");
        p.command = argv.iter().map(|s| (*s).to_owned()).collect();
        p
    }

    pub fn env(mut self, name: &str, value: &str) -> Profile {
        self.env.push((name.into(), value.into()));
        self
    }

    pub fn timeouts(mut self, interrupt: f64, term: f64, kill: f64) -> Profile {
        self.interrupt_timeout = Some(interrupt);
        self.term_timeout = Some(term);
        self.kill_timeout = Some(kill);
        self
    }
}

/// The log line each standard profile prints once it is set up (traps installed).
pub mod ready {
    pub const DEFAULT: &str = "READY";
    pub const EXIT3: &str = "exit3-says-bye";
    pub const IGNORE: &str = "ignoring-int-and-term";
    pub const INT7: &str = "int7-ready";
    pub const NOW: &str = "now-ready";
}

/// The environment the `default` profile adds.
pub const DEFAULT_PROFILE_ENV: [(&str, &str); 2] = [
    ("SPAWND_TEST_PROFILE", "default"),
    ("JUPYTER_CONFIG_DIR", "/etc/jupyter-spawnd-test"),
];

/// The profiles every test daemon has:
/// - `default`: prints `args=COUNT:ARGS` (the arguments the hub appended), `uid=`, `gid=`, `groups=`, `pwd=`, then between `ENV-BEGIN` and
///   `ENV-END` the environment it was executed with (its own `/proc/$$/environ`, sorted),
///   then `READY`, then execs `sleep 1000` (same pid).
/// - `exit3`: prints `exit3-says-bye`, sleeps 1 s, exits 3.
/// - `ignore`: ignores SIGINT and SIGTERM; interrupt and term timeouts 0.5 s.
/// - `int7`: exits 7 on SIGINT.
/// - `now`: exits 7 on SIGINT, 9 on SIGTERM.
/// - `setsid`: starts `sleep 1000` in its own session, prints `child=PID`, waits.
pub fn standard_profiles() -> Vec<Profile> {
    let mut default = Profile::shell(
        "default",
        "echo \"args=$#:$*\"; echo \"uid=$(id -u)\"; echo \"gid=$(id -g)\"; echo \"groups=$(id -G)\"; \
         echo \"pwd=$(pwd)\"; echo ENV-BEGIN; tr '\\0' '\\n' < /proc/$$/environ | sort; \
         echo ENV-END; echo READY; exec sleep 1000",
    );
    for (k, v) in DEFAULT_PROFILE_ENV {
        default = default.env(k, v);
    }
    vec![
        default,
        Profile::shell("exit3", "echo exit3-says-bye; sleep 1; exit 3"),
        Profile::shell(
            "ignore",
            "trap '' INT TERM; echo ignoring-int-and-term; while :; do sleep 0.1; done",
        )
        .timeouts(0.5, 0.5, 5.0),
        Profile::shell(
            "int7",
            "trap 'exit 7' INT; echo int7-ready; sleep 1000 & wait",
        ),
        Profile::shell(
            "now",
            "trap 'exit 7' INT; trap 'exit 9' TERM; echo now-ready; sleep 1000 & wait",
        ),
        Profile::shell("setsid", "setsid sleep 1000 & echo child=$!; wait"),
    ]
}

/// What goes into a test daemon's `spawnd.toml`.
#[derive(Debug, Clone)]
pub struct DaemonOptions {
    pub self_service: bool,
    pub deny_users: Vec<String>,
    pub min_uid: u32,
    pub profiles: Vec<Profile>,
    pub default_profile: String,
    /// Use a per-daemon cgroup v2 base when the host has one (else `cgroup = "off"`).
    /// `SPAWND_TEST_CGROUP=off` in the environment turns it off for every test daemon.
    pub cgroup: bool,
    /// More top-level `key = value` lines for the config (limits, on_shutdown, ...).
    pub extra_config: String,
    /// Extra environment for the daemon process (e.g. NOTIFY_SOCKET).
    pub env: Vec<(String, String)>,
    /// A command the daemon runs under (e.g. `keyctl session -`, as PAM gives a service a
    /// session keyring); empty: run it directly.
    pub wrapper: Vec<String>,
}

impl Default for DaemonOptions {
    fn default() -> Self {
        DaemonOptions {
            self_service: false,
            deny_users: Vec::new(),
            min_uid: 1000,
            profiles: standard_profiles(),
            default_profile: "default".into(),
            cgroup: std::env::var("SPAWND_TEST_CGROUP").as_deref() != Ok("off"),
            extra_config: String::new(),
            env: Vec::new(),
            wrapper: Vec::new(),
        }
    }
}

/// A TOML basic string (JSON's escapes are a subset of TOML's).
fn toml_str(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

fn toml_list(items: &[String]) -> String {
    let items: Vec<String> = items.iter().map(|s| toml_str(s)).collect();
    format!("[{}]", items.join(", "))
}

/// A fresh root-owned 0755 directory `/tmp/spawnd-test-<pid>-<n>` holding `run/` (0755, the
/// socket), `state/` (0700) and `log/` (0755). Removed on drop unless `SPAWND_TEST_KEEP` is set.
#[derive(Debug)]
pub struct TestDir {
    pub path: PathBuf,
    /// `spawnd-test-<pid>-<n>`: also names the daemon's cgroup base.
    pub name: String,
}

impl TestDir {
    pub fn new() -> TestDir {
        // Creating the users takes the process lock and clears what crashed runs left.
        let _ = users();
        let n = NEXT_DIR.fetch_add(1, Ordering::SeqCst);
        let name = format!("spawnd-test-{}-{n}", std::process::id());
        let path = PathBuf::from("/tmp").join(&name);
        if path.symlink_metadata().is_ok() {
            // A crashed run with the same pid left it behind.
            let _ = std::fs::remove_dir_all(&path);
        }
        let dir = TestDir { path, name };
        dir.mkdir("", 0o755);
        dir.mkdir("run", 0o755);
        dir.mkdir("state", 0o700);
        dir.mkdir("log", 0o755);
        dir
    }

    /// Makes `self/rel` with exactly `mode` (root-owned, as we are root).
    pub fn mkdir(&self, rel: &str, mode: u32) -> PathBuf {
        let p = if rel.is_empty() {
            self.path.clone()
        } else {
            self.path.join(rel)
        };
        std::fs::create_dir(&p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", p.display()));
        p
    }

    pub fn socket(&self) -> PathBuf {
        self.path.join("run/spawnd.sock")
    }

    pub fn log_dir(&self) -> PathBuf {
        self.path.join("log")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.path.join("state")
    }

    /// The cgroup base a daemon in this directory uses, when `opts.cgroup` and the host allow.
    pub fn cgroup_base(&self, opts: &DaemonOptions) -> Option<PathBuf> {
        if !opts.cgroup {
            return None;
        }
        cgroup_v2_root().map(|root| root.join(&self.name))
    }

    /// The configuration text for `opts`.
    pub fn render_config(&self, opts: &DaemonOptions) -> String {
        let u = users();
        let cgroup = match self.cgroup_base(opts) {
            Some(base) => base.display().to_string(),
            None => "off".into(),
        };
        let mut t = String::new();
        let mut kv = |k: &str, v: String| t.push_str(&format!("{k} = {v}\n"));
        kv("socket", toml_str(&self.socket().display().to_string()));
        kv("hub_user", toml_str(&u.hub.name));
        kv("group", toml_str(&u.group.name));
        kv("admin_group", toml_str(&u.admin_group.name));
        kv("self_service", opts.self_service.to_string());
        kv("min_uid", opts.min_uid.to_string());
        kv("deny_users", toml_list(&opts.deny_users));
        kv(
            "state_dir",
            toml_str(&self.state_dir().display().to_string()),
        );
        kv("log_dir", toml_str(&self.log_dir().display().to_string()));
        kv("cgroup", toml_str(&cgroup));
        kv("default_profile", toml_str(&opts.default_profile));
        t.push_str(&opts.extra_config);
        for p in &opts.profiles {
            t.push_str(&format!("\n[profiles.{}]\n", p.name));
            t.push_str(&format!("command = {}\n", toml_list(&p.command)));
            t.push_str(&format!("path = {}\n", toml_str(&p.path)));
            let env: Vec<String> = p
                .env
                .iter()
                .map(|(k, v)| format!("{k} = {}", toml_str(v)))
                .collect();
            t.push_str(&format!("env = {{ {} }}\n", env.join(", ")));
            if let Some(keep) = &p.env_keep {
                t.push_str(&format!("env_keep = {}\n", toml_list(keep)));
            }
            if let Some(a) = p.allow_args {
                t.push_str(&format!("allow_args = {a}\n"));
            }
            for (k, v) in [
                ("interrupt_timeout", p.interrupt_timeout),
                ("term_timeout", p.term_timeout),
                ("kill_timeout", p.kill_timeout),
            ] {
                if let Some(v) = v {
                    t.push_str(&format!("{k} = {v:?}\n"));
                }
            }
            if !p.limits.is_empty() {
                let limits: Vec<String> =
                    p.limits.iter().map(|(k, v)| format!("{k} = {v}")).collect();
                t.push_str(&format!("limits = {{ {} }}\n", limits.join(", ")));
            }
        }
        t
    }

    /// Writes the configuration for `opts` to `self/<file>` (0644) and returns its path.
    pub fn write_config(&self, file: &str, opts: &DaemonOptions) -> PathBuf {
        let path = self.path.join(file);
        std::fs::write(&path, self.render_config(opts))
            .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))
            .expect("chmod config");
        path
    }
}

impl Default for TestDir {
    fn default() -> Self {
        TestDir::new()
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::env::var_os("SPAWND_TEST_KEEP").is_some() {
            eprintln!("spawnd-tests: keeping {}", self.path.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A running `spawnd --config DIR/spawnd.toml`, with `SPAWND_LOG=debug` and its stderr in
/// `DIR/spawnd.stderr` (printed when the test fails). Dropping it SIGTERMs the daemon, kills
/// every server it left (its cgroup base, or the sessions of its children) and removes the
/// directory.
#[derive(Debug)]
pub struct TestDaemon {
    pub config: PathBuf,
    pub socket: PathBuf,
    pub stderr_path: PathBuf,
    pub cgroup_base: Option<PathBuf>,
    env: Vec<(String, String)>,
    wrapper: Vec<String>,
    child: Option<Child>,
    // Declared last: dropped after the daemon is stopped.
    pub dir: TestDir,
}

impl TestDaemon {
    /// Starts a daemon in a fresh [`TestDir`] and waits (up to 10 s) until its socket accepts a
    /// connection. Panics (with the daemon's stderr) if it exits or never listens.
    pub fn start(opts: DaemonOptions) -> TestDaemon {
        TestDaemon::start_in(TestDir::new(), opts)
    }

    /// [`TestDaemon::start`] in a directory the test prepared first (for example with a small
    /// tmpfs mounted on its `state/` or `log/`).
    pub fn start_in(dir: TestDir, opts: DaemonOptions) -> TestDaemon {
        let config = dir.write_config("spawnd.toml", &opts);
        let cgroup_base = dir.cgroup_base(&opts);
        let stderr_path = dir.path.join("spawnd.stderr");
        let mut daemon = TestDaemon {
            config,
            socket: dir.socket(),
            stderr_path,
            cgroup_base,
            env: opts.env.clone(),
            wrapper: opts.wrapper.clone(),
            child: None,
            dir,
        };
        daemon.spawn_process(None);
        daemon
    }

    /// Starts a daemon that gets its listening socket from "systemd": the test binds it
    /// (0660, root:hub group) and passes it as fd 3 with LISTEN_FDS=1 and LISTEN_PID set to
    /// the daemon's own pid (through `sh -c 'LISTEN_PID=$$ exec spawnd ...'`).
    pub fn start_socket_activated(opts: DaemonOptions) -> TestDaemon {
        use std::os::fd::{AsRawFd, OwnedFd};
        let dir = TestDir::new();
        let config = dir.write_config("spawnd.toml", &opts);
        let cgroup_base = dir.cgroup_base(&opts);
        let stderr_path = dir.path.join("spawnd.stderr");
        let socket = dir.socket();
        let fd: OwnedFd = {
            use nix::sys::socket::{
                AddressFamily, Backlog, SockFlag, SockType, UnixAddr, bind, listen,
                socket as mksocket,
            };
            let fd = mksocket(
                AddressFamily::Unix,
                SockType::SeqPacket,
                SockFlag::SOCK_CLOEXEC,
                None,
            )
            .expect("socket");
            bind(fd.as_raw_fd(), &UnixAddr::new(&socket).expect("addr")).expect("bind");
            listen(&fd, Backlog::new(128).expect("backlog")).expect("listen");
            fd
        };
        nix::unistd::chown(
            &socket,
            Some(nix::unistd::Uid::from_raw(0)),
            Some(nix::unistd::Gid::from_raw(users().hub.gid)),
        )
        .expect("chown socket");
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o660))
            .expect("chmod socket");
        let mut daemon = TestDaemon {
            config,
            socket,
            stderr_path,
            cgroup_base,
            env: opts.env.clone(),
            wrapper: opts.wrapper.clone(),
            child: None,
            dir,
        };
        daemon.spawn_process(Some(fd));
        daemon
    }

    /// Runs the spawnd binary on this daemon's config (again), appending to its stderr file,
    /// and waits until it accepts connections.
    fn spawn_process(&mut self, listen_fd: Option<std::os::fd::OwnedFd>) {
        use std::os::fd::AsRawFd;
        use std::os::unix::process::CommandExt;
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.stderr_path)
            .expect("open stderr file");
        let stdout = stderr.try_clone().expect("dup stderr file");
        let bin = bin_path("spawnd", "SPAWND_BIN");
        let mut cmd = match &listen_fd {
            None if !self.wrapper.is_empty() => {
                let mut c = Command::new(&self.wrapper[0]);
                c.args(&self.wrapper[1..]).arg(&bin);
                c
            }
            None => Command::new(&bin),
            Some(_) => {
                let mut c = Command::new("/bin/sh");
                c.arg("-c")
                    .arg("LISTEN_PID=$$ LISTEN_FDS=1 exec \"$0\" \"$@\"")
                    .arg(&bin);
                c
            }
        };
        cmd.arg("--config")
            .arg(&self.config)
            .env("SPAWND_LOG", "debug")
            .env_remove("JOURNAL_STREAM")
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .env_remove("NOTIFY_SOCKET")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        if let Some(fd) = &listen_fd {
            let raw = fd.as_raw_fd();
            // SAFETY: dup2 is async-signal-safe; it runs in the child between fork and exec
            // and only duplicates an fd we own onto 3 (dup2 clears close-on-exec on the copy).
            unsafe {
                cmd.pre_exec(move || {
                    if libc::dup2(raw, 3) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        self.child = Some(cmd.spawn().expect("run spawnd"));
        drop(listen_fd);
        self.wait_ready(Duration::from_secs(10));
    }

    /// `kill -9` of the daemon: its servers keep running, its state stays as it was.
    pub fn kill_hard(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, and waits (up to `timeout`) for the daemon to exit; returns its status.
    pub fn terminate(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("the daemon is running");
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "spawnd did not exit within {timeout:?} of SIGTERM:\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Starts a new daemon process on the same directory, config and state.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the daemon before restarting it");
        self.spawn_process(None);
    }

    /// Sends SIGHUP (reload the configuration).
    pub fn sighup(&self) {
        let pid = nix::unistd::Pid::from_raw(self.pid() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).expect("SIGHUP spawnd");
    }

    /// The state record of a server.
    pub fn record_path(&self, user: &str, server: &str) -> PathBuf {
        let stem = if server.is_empty() {
            "@default"
        } else {
            server
        };
        self.dir
            .state_dir()
            .join("servers")
            .join(user)
            .join(format!("{stem}.json"))
    }

    fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "spawnd exited during start-up ({status}); its stderr:\n{}\nconfig:\n{}",
                    self.stderr(),
                    std::fs::read_to_string(&self.config).unwrap_or_default()
                );
            }
            if connect_root(&self.socket).is_ok() {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "spawnd did not accept a connection on {} within {timeout:?}; its stderr:\n{}",
                    self.socket.display(),
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Makes the socket file 0666, as if its mode were wrong (or an ACL let users in): peers
    /// without a role then reach the daemon, whose kernel-credential check must refuse them.
    /// Self-service users need this too, since the socket is 0660 for the hub's group.
    pub fn open_socket_to_all(&self) {
        std::fs::set_permissions(&self.socket, std::fs::Permissions::from_mode(0o666))
            .unwrap_or_else(|e| panic!("chmod 0666 {}: {e}", self.socket.display()));
    }

    /// The daemon's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// Everything the daemon wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn log_dir(&self) -> PathBuf {
        self.dir.log_dir()
    }

    /// Wraps a connected descriptor in a client (must run inside a tokio runtime).
    pub fn client_from_fd(&self, fd: std::os::fd::OwnedFd) -> Client {
        Client::from_fd(fd).expect("Client::from_fd")
    }

    /// A client whose peer credentials are `user`'s uid, gid and groups.
    pub async fn client_as(&self, user: &TestUser) -> Client {
        let fd = connect_as(&self.socket, user.uid, user.gid, &user.groups)
            .unwrap_or_else(|e| panic!("connect as {}: {e}", user.name));
        self.client_from_fd(fd)
    }

    /// A client as the hub user H.
    pub async fn hub_client(&self) -> Client {
        self.client_as(&users().hub).await
    }

    /// A client as root (an admin peer).
    pub async fn admin_client(&self) -> Client {
        let fd = connect_root(&self.socket).expect("connect as root");
        self.client_from_fd(fd)
    }

    /// A client as a member of the notebook group (a user peer where self_service is on).
    pub async fn user_client(&self, user: &TestUser) -> Client {
        self.client_as(user).await
    }

    /// A client as O, who has no role.
    pub async fn outsider_client(&self) -> Client {
        self.client_as(&users().outsider).await
    }

    /// A connected descriptor with the hub user H's credentials (for `Client::from_fd`, when
    /// a test opens many connections at once).
    pub fn hub_fd(&self) -> std::os::fd::OwnedFd {
        let h = &users().hub;
        connect_as(&self.socket, h.uid, h.gid, &h.groups).expect("connect as the hub")
    }

    /// A bare packet connection with `user`'s credentials.
    pub fn raw_as(&self, user: &TestUser) -> RawConn {
        RawConn::new(
            connect_as(&self.socket, user.uid, user.gid, &user.groups)
                .unwrap_or_else(|e| panic!("connect as {}: {e}", user.name)),
        )
    }

    /// `spawnctl --socket SOCKET ARGS...` as root (30 s limit).
    pub fn spawnctl(&self, args: &[&str]) -> CmdOutput {
        let mut cmd = Command::new(bin_path("spawnctl", "SPAWNCTL_BIN"));
        cmd.arg("--socket").arg(&self.socket).args(args);
        run_with_timeout(cmd, Duration::from_secs(30))
    }

    fn stop_daemon(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // The servers are the daemon's children, each the leader of its own session.
        let servers = crate::procfs::servers_of(child.id());
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                _ => {
                    eprintln!("spawnd-tests: spawnd ignored SIGTERM for 5 s; killing it");
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
            }
        }
        for s in servers {
            if crate::procfs::session(s) == Some(s) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(-(s as i32)),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        if let Some(base) = &self.cgroup_base {
            remove_cgroup_tree(base);
        }
    }
}

/// Clears what crashed test processes left behind: their daemons (found by a command-line
/// argument inside their `/tmp/spawnd-test-<pid>-<n>` directory), those directories, and their
/// cgroup bases (with every process in them). Call only while holding the process lock, so that
/// no other live test process owns any of it.
pub(crate) fn remove_leftover_daemons() {
    let own = format!("spawnd-test-{}-", std::process::id());
    let is_leftover = |name: &str| name.starts_with("spawnd-test-") && !name.starts_with(&own);
    let dirs: Vec<PathBuf> = std::fs::read_dir("/tmp")
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_name().to_str().is_some_and(is_leftover))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    if !dirs.is_empty() {
        for pid in crate::procfs::all_pids() {
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                continue;
            };
            let stale = cmdline.split(|&b| b == 0).any(|arg| {
                let arg = Path::new(std::ffi::OsStr::from_bytes(arg));
                dirs.iter().any(|d| arg.starts_with(d))
            });
            if stale {
                eprintln!("spawnd-tests: killing leftover daemon {pid}");
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
    if let Some(root) = cgroup_v2_root()
        && let Ok(rd) = std::fs::read_dir(&root)
    {
        for e in rd.flatten() {
            if e.file_name().to_str().is_some_and(is_leftover) {
                eprintln!(
                    "spawnd-tests: removing leftover cgroup {}",
                    e.path().display()
                );
                remove_cgroup_tree(&e.path());
            }
        }
    }
    for d in dirs {
        eprintln!("spawnd-tests: removing leftover {}", d.display());
        let _ = std::fs::remove_dir_all(&d);
    }
}

/// Kills every process under `base` (cgroup.kill in each cgroup) and removes the cgroups,
/// deepest first.
fn remove_cgroup_tree(base: &Path) {
    fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    collect(&e.path(), out);
                }
            }
        }
        out.push(dir.to_owned());
    }
    if !base.exists() {
        return;
    }
    let mut dirs = Vec::new();
    collect(base, &mut dirs); // children before parents
    for d in &dirs {
        let _ = std::fs::write(d.join("cgroup.kill"), b"1");
    }
    for d in &dirs {
        let gone = crate::wait_for(Duration::from_secs(3), || {
            let events = std::fs::read_to_string(d.join("cgroup.events")).unwrap_or_default();
            (!events.lines().any(|l| l == "populated 1")).then_some(())
        });
        if gone.is_none() {
            eprintln!(
                "spawnd-tests: processes survived cgroup.kill in {}",
                d.display()
            );
        }
        if let Err(e) = std::fs::remove_dir(d) {
            eprintln!("spawnd-tests: rmdir {}: {e}", d.display());
        }
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- spawnd stderr ({}) ----\n{}\n---- end of spawnd stderr ----",
                self.stderr_path.display(),
                self.stderr()
            );
        }
        self.stop_daemon();
    }
}
