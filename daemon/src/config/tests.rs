use super::testing::{TempDir, make_dir, make_file, require_root, set_mode};
use super::*;

use nix::unistd::{Group, User};
use std::path::PathBuf;
use std::time::Duration;

// Real NSS names present on every Debian host.
const BASE: &str = r#"
hub_user = "daemon"
group = "nogroup"

[profiles.default]
command = ["/bin/sh"]
"#;

const FULL: &str = r#"
socket = "/run/spawnd-test/spawnd.sock"
socket_group = "nogroup"
hub_user = "daemon"
group = "nogroup"
admin_group = "root"
self_service = true
min_uid = 2000
deny_users = ["alice", "bob"]
state_dir = "/var/lib/spawnd-test"
log_dir = "/var/log/spawnd-test"
log_keep = 7
cgroup = "/sys/fs/cgroup/unified/spawnd"
default_profile = "main"

[profiles.main]
command = ["/bin/sh", "-c", "exec sleep 1000"]
path = "/usr/bin:/bin"
env = { JUPYTER_CONFIG_DIR = "/etc/jupyter", PYTHONUNBUFFERED = "1" }
env_keep = ["JUPYTERHUB_*", "LANG"]
umask = "077"
allow_args = false
interrupt_timeout = 2.5
term_timeout = 10
kill_timeout = 0

[profiles.gpu]
command = ["/bin/true"]
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("/etc/spawnd/test.toml"))
}

fn problems(text: &str) -> Vec<Problem> {
    match parse(text) {
        Ok(config) => panic!("expected problems, parsed {config:#?}"),
        Err(e) => e.problems,
    }
}

/// `BASE` with `extra` lines added to the top level (before the profile table).
fn with_top(extra: &str) -> String {
    format!("{extra}\n{BASE}")
}

/// `BASE` with `extra` lines added to `[profiles.default]`.
fn with_profile(extra: &str) -> String {
    format!("{BASE}{extra}\n")
}

#[track_caller]
fn assert_problem(text: &str, key: &str, needle: &str) {
    let found = problems(text);
    assert!(
        found
            .iter()
            .any(|p| p.key == key && p.message.contains(needle)),
        "no problem with key {key:?} containing {needle:?} in {found:#?}\nfor:\n{text}"
    );
}

#[test]
fn parses_full_example() {
    let c = parse(FULL).unwrap();
    let daemon = User::from_name("daemon").unwrap().unwrap();
    let nogroup = Group::from_name("nogroup").unwrap().unwrap();
    assert_eq!(c.source, Path::new("/etc/spawnd/test.toml"));
    assert_eq!(c.socket, Path::new("/run/spawnd-test/spawnd.sock"));
    assert_eq!(c.socket_gid, nogroup.gid.as_raw());
    assert_eq!(c.hub_user, "daemon");
    assert_eq!(c.hub_uid, daemon.uid.as_raw());
    assert_eq!(c.group, "nogroup");
    assert_eq!(c.group_gid, nogroup.gid.as_raw());
    assert_eq!(c.admin_group.as_deref(), Some("root"));
    assert_eq!(c.admin_gid, Some(0));
    assert!(c.self_service);
    assert_eq!(c.min_uid, 2000);
    assert_eq!(
        c.deny_users,
        ["alice", "bob"].iter().map(|s| s.to_string()).collect()
    );
    assert_eq!(c.state_dir, Path::new("/var/lib/spawnd-test"));
    assert_eq!(c.log_dir, Path::new("/var/log/spawnd-test"));
    assert_eq!(c.log_keep, 7);
    assert_eq!(
        c.cgroup,
        CgroupSetting::Path(PathBuf::from("/sys/fs/cgroup/unified/spawnd"))
    );
    assert_eq!(c.default_profile, "main");
    assert_eq!(c.profiles.len(), 2);

    let main = c.profile("main").unwrap();
    assert_eq!(c.profile(""), Some(main));
    assert_eq!(main.name, "main");
    assert_eq!(main.command, ["/bin/sh", "-c", "exec sleep 1000"]);
    assert_eq!(main.path, "/usr/bin:/bin");
    assert_eq!(main.env.len(), 2);
    assert_eq!(main.env["JUPYTER_CONFIG_DIR"], "/etc/jupyter");
    assert_eq!(main.env["PYTHONUNBUFFERED"], "1");
    assert_eq!(main.env_keep, ["JUPYTERHUB_*", "LANG"]);
    assert_eq!(main.umask, 0o077);
    assert!(!main.allow_args);
    assert_eq!(main.interrupt_timeout, Duration::from_millis(2500));
    assert_eq!(main.term_timeout, Duration::from_secs(10));
    assert_eq!(main.kill_timeout, Duration::ZERO);

    let gpu = c.profile("gpu").unwrap();
    assert_eq!(gpu.command, ["/bin/true"]);
    assert!(gpu.allow_args);
    assert!(c.profile("nope").is_none());
}

#[test]
fn defaults() {
    let c = parse(BASE).unwrap();
    let daemon = User::from_name("daemon").unwrap().unwrap();
    assert_eq!(c.socket, Path::new(DEFAULT_SOCKET));
    assert_eq!(c.socket, Path::new("/run/spawnd/spawnd.sock"));
    // Default socket group: the hub user's primary group.
    assert_eq!(c.socket_gid, daemon.gid.as_raw());
    assert_eq!(c.admin_group, None);
    assert_eq!(c.admin_gid, None);
    assert!(!c.self_service);
    assert_eq!(c.min_uid, 1000);
    assert!(c.deny_users.is_empty());
    assert_eq!(c.state_dir, Path::new("/var/lib/spawnd"));
    assert_eq!(c.log_dir, Path::new("/var/log/spawnd"));
    assert_eq!(c.log_keep, 3);
    assert_eq!(c.cgroup, CgroupSetting::Auto);
    assert_eq!(c.default_profile, "default");

    let p = c.profile("").unwrap();
    assert_eq!(p, c.profile("default").unwrap());
    assert_eq!(p.name, "default");
    assert_eq!(p.command, ["/bin/sh"]);
    assert_eq!(p.path, "/usr/local/bin:/usr/bin:/bin");
    assert!(p.env.is_empty());
    assert_eq!(p.env_keep, ["JUPYTERHUB_*", "JPY_*", "LANG", "LC_*", "TZ"]);
    assert_eq!(p.umask, 0o022);
    assert!(p.allow_args);
    assert_eq!(p.interrupt_timeout, Duration::from_secs(30));
    assert_eq!(p.term_timeout, Duration::from_secs(30));
    assert_eq!(p.kill_timeout, Duration::from_secs(5));
}

#[test]
fn cgroup_keywords() {
    assert_eq!(
        parse(&with_top("cgroup = \"off\"")).unwrap().cgroup,
        CgroupSetting::Off
    );
    assert_eq!(
        parse(&with_top("cgroup = \"auto\"")).unwrap().cgroup,
        CgroupSetting::Auto
    );
}

#[test]
fn on_shutdown_keywords() {
    assert_eq!(parse(&with_top("")).unwrap().on_shutdown, OnShutdown::Keep);
    assert_eq!(
        parse(&with_top("on_shutdown = \"stop\""))
            .unwrap()
            .on_shutdown,
        OnShutdown::Stop
    );
    assert_problem(
        &with_top("on_shutdown = \"kill\""),
        "on_shutdown",
        "\"keep\"",
    );
}

#[test]
fn connection_limits() {
    assert_eq!(parse(BASE).unwrap().limits, ConnectionLimits::default());
    let l = parse(&with_top(
        "self_service = true\nmax_connections = 500\nmax_connections_per_uid = 200\n\
         max_user_connections = 100\nmax_user_connections_per_uid = 2\n\
         max_requests_in_flight = 8\nfirst_request_timeout = 2\nidle_timeout = 60\n\
         send_timeout = 2.5",
    ))
    .unwrap()
    .limits;
    assert_eq!(
        l,
        ConnectionLimits {
            max_connections: 500,
            max_connections_per_uid: 200,
            max_user_connections: 100,
            max_user_connections_per_uid: 2,
            max_requests_in_flight: 8,
            first_request_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_millis(2500),
        }
    );
    for key in [
        "max_user_connections",
        "max_user_connections_per_uid",
        "max_connections",
    ] {
        assert_problem(&with_top(&format!("{key} = 0")), key, "out of range");
    }
    for key in ["idle_timeout", "send_timeout"] {
        assert_problem(
            &with_top(&format!("{key} = 0")),
            key,
            "must be more than 0 seconds",
        );
        assert_problem(&with_top(&format!("{key} = -1")), key, "out of range");
    }
}

/// Self-service users can never hold every connection, nor can one uid (the hub) hold all the
/// users leave: an admin can always connect.
#[test]
fn connection_limits_keep_a_reserve_for_the_hub_and_admins() {
    let users = "self_service = true\n";
    assert_problem(
        &with_top(&format!("{users}max_connections = 64")),
        "max_user_connections",
        "would let self-service users take every connection (max_connections is 64)",
    );
    assert_problem(
        &with_top(&format!(
            "{users}max_connections = 1000\nmax_connections_per_uid = 936"
        )),
        "max_connections_per_uid",
        "use less than 936, so that an admin can always connect",
    );
    assert!(
        parse(&with_top(&format!(
            "{users}max_connections = 1000\nmax_connections_per_uid = 935"
        )))
        .is_ok()
    );
    // Without self-service there are no user connections to reserve against.
    assert!(
        parse(&with_top(
            "max_connections = 64\nmax_connections_per_uid = 63"
        ))
        .is_ok()
    );
    assert_problem(
        &with_top("max_connections = 500"),
        "max_connections_per_uid",
        "1024 would let one uid (the hub) take every connection (max_connections 500)",
    );
}

#[test]
fn syntax_error_is_one_problem_with_position() {
    let text = "hub_user = \"daemon\"\ngroup = = \"nogroup\"\n";
    let found = problems(text);
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(found[0].key, "(syntax)");
    assert!(
        found[0].message.starts_with("line 2, column "),
        "{found:#?}"
    );

    let found = problems("hub_user = \"daemon\"\nhub_user = \"daemon\"\n");
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(found[0].key, "(syntax)");
    assert!(found[0].message.contains("line 2"), "{found:#?}");
}

#[test]
fn unknown_keys_are_refused() {
    assert_problem(
        &with_top("hub_usr = \"x\""),
        "hub_usr",
        "did you mean hub_user",
    );
    assert_problem(
        &with_top("colour = 1"),
        "colour",
        "keys allowed at top level are",
    );
    assert_problem(
        &with_profile("comand = [\"/bin/sh\"]"),
        "profiles.default.comand",
        "did you mean command",
    );
    assert_problem(
        &with_profile("\"odd key\" = 1"),
        "profiles.default.\"odd key\"",
        "unknown key",
    );
}

#[test]
fn top_level_validation() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "socket = \"run/spawnd.sock\"",
            "socket",
            "not an absolute path",
        ),
        (
            "socket = \"/run/spawnd/\"",
            "socket",
            "does not name a file",
        ),
        ("socket = 5", "socket", "must be a string, found an integer"),
        (
            "socket_group = \"no-such-group-spawnd\"",
            "socket_group",
            "does not exist",
        ),
        (
            "admin_group = \"no-such-group-spawnd\"",
            "admin_group",
            "does not exist",
        ),
        ("admin_group = \"\"", "admin_group", "is empty"),
        ("self_service = 1", "self_service", "must be true or false"),
        ("min_uid = 0", "min_uid", "0 is out of range"),
        ("min_uid = -5", "min_uid", "out of range"),
        ("min_uid = 5000000000", "min_uid", "out of range"),
        (
            "min_uid = \"1000\"",
            "min_uid",
            "must be an integer, found a string",
        ),
        (
            "deny_users = [\"ok\", \"../etc\"]",
            "deny_users",
            "\"../etc\" is not a valid user name",
        ),
        ("deny_users = [\"\"]", "deny_users", "not a valid user name"),
        (
            "deny_users = [1]",
            "deny_users",
            "element 0 must be a string",
        ),
        (
            "deny_users = \"alice\"",
            "deny_users",
            "must be an array of strings",
        ),
        (
            "state_dir = \"var/lib/spawnd\"",
            "state_dir",
            "not an absolute path",
        ),
        ("log_dir = \"logs\"", "log_dir", "not an absolute path"),
        ("log_dir = \"/var/log/\\u0000x\"", "log_dir", "NUL"),
        ("log_keep = 101", "log_keep", "101 is out of range"),
        ("log_keep = -1", "log_keep", "out of range"),
        (
            "cgroup = \"sometimes\"",
            "cgroup",
            "neither \"auto\", \"off\" nor an absolute path",
        ),
        ("cgroup = \"sys/fs/cgroup\"", "cgroup", "absolute path"),
        (
            "default_profile = \"gpu\"",
            "default_profile",
            "\"gpu\" names no profile; use one of default",
        ),
    ];
    for (line, key, needle) in cases {
        assert_problem(&with_top(line), key, needle);
    }
    assert_problem(
        "hub_user = \"daemon\"\ngroup = \"nogroup\"\nprofiles = 3\n",
        "profiles",
        "must be a table of [profiles.NAME] tables, found an integer",
    );
    let long = format!("socket = \"/run/{}/s.sock\"", "x".repeat(120));
    assert_problem(&with_top(&long), "socket", "limited to 107 bytes");
}

#[test]
fn accounts() {
    assert_problem(
        "hub_user = \"root\"\ngroup = \"nogroup\"\n[profiles.default]\ncommand = [\"/bin/sh\"]\n",
        "hub_user",
        "is root (uid 0)",
    );
    assert_problem(
        "hub_user = \"no-such-user-spawnd\"\ngroup = \"nogroup\"\n[profiles.default]\ncommand = [\"/bin/sh\"]\n",
        "hub_user",
        "user \"no-such-user-spawnd\" does not exist",
    );
    assert_problem(
        "group = \"nogroup\"\n[profiles.default]\ncommand = [\"/bin/sh\"]\n",
        "hub_user",
        "missing",
    );
    assert_problem(
        "hub_user = \"daemon\"\ngroup = \"no-such-group-spawnd\"\n[profiles.default]\ncommand = [\"/bin/sh\"]\n",
        "group",
        "group \"no-such-group-spawnd\" does not exist",
    );
    assert_problem(
        "hub_user = \"daemon\"\n[profiles.default]\ncommand = [\"/bin/sh\"]\n",
        "group",
        "missing",
    );
    // nobody works as well as daemon.
    let c = parse(
        "hub_user = \"nobody\"\ngroup = \"root\"\n[profiles.default]\ncommand = [\"/bin/sh\"]\n",
    )
    .unwrap();
    assert_eq!(c.hub_uid, 65534);
    assert_eq!(c.group_gid, 0);
}

#[test]
fn profiles_required() {
    assert_problem(
        "hub_user = \"daemon\"\ngroup = \"nogroup\"\n",
        "profiles",
        "no profile is defined",
    );
    assert_problem(
        "hub_user = \"daemon\"\ngroup = \"nogroup\"\nprofiles = {}\n",
        "profiles",
        "no profile is defined",
    );
    assert_problem(
        "hub_user = \"daemon\"\ngroup = \"nogroup\"\nprofiles = {}\n",
        "default_profile",
        "names no profile",
    );
    assert_problem(
        &format!("{BASE}[profiles.\"bad.name\"]\ncommand = [\"/bin/sh\"]\n"),
        "profiles.\"bad.name\"",
        "rename the profile",
    );
    assert_problem(
        &format!("{BASE}[profiles.\"\"]\ncommand = [\"/bin/sh\"]\n"),
        "profiles.\"\"",
        "profile name is empty",
    );
    assert_problem(
        &format!("{BASE}[profiles.other]\n"),
        "profiles.other.command",
        "missing",
    );
    assert_problem(
        "hub_user = \"daemon\"\ngroup = \"nogroup\"\nprofiles.default = 1\n",
        "profiles.default",
        "must be a table",
    );
}

#[test]
fn profile_validation() {
    let cases: &[(&str, &str, &str)] = &[
        ("command = []", "profiles.x.command", "is empty"),
        (
            "command = [\"python3\"]",
            "profiles.x.command",
            "\"python3\" is not an absolute path",
        ),
        (
            "command = [\"/nonexistent/spawnd/server\"]",
            "profiles.x.command",
            "/nonexistent does not exist",
        ),
        (
            "command = [\"/bin\"]",
            "profiles.x.command",
            "not a regular file",
        ),
        (
            "command = [\"/etc/passwd\"]",
            "profiles.x.command",
            "is not executable (mode 0644)",
        ),
        (
            "command = [\"/bin/sh\", 3]",
            "profiles.x.command",
            "element 1 must be a string",
        ),
        (
            "command = \"/bin/sh\"",
            "profiles.x.command",
            "must be an array of strings",
        ),
        (
            "command = [\"/bin/sh\"]\npath = \"bin:/usr/bin\"",
            "profiles.x.path",
            "entry \"bin\" is not an absolute directory",
        ),
        (
            "command = [\"/bin/sh\"]\npath = \"/usr/bin::/bin\"",
            "profiles.x.path",
            "empty entry",
        ),
        (
            "command = [\"/bin/sh\"]\npath = \"\"",
            "profiles.x.path",
            "is empty",
        ),
        (
            "command = [\"/bin/sh\"]\nenv = { LD_PRELOAD = \"/x.so\" }",
            "profiles.x.env",
            "LD_PRELOAD may not be set",
        ),
        (
            "command = [\"/bin/sh\"]\nenv = { PATH = \"/bin\" }",
            "profiles.x.env",
            "PATH may not be set",
        ),
        (
            "command = [\"/bin/sh\"]\nenv = { GLIBC_TUNABLES = \"x\" }",
            "profiles.x.env",
            "GLIBC_TUNABLES may not be set",
        ),
        (
            "command = [\"/bin/sh\"]\nenv = { 1BAD = \"x\" }",
            "profiles.x.env",
            "\"1BAD\" is not a valid variable name",
        ),
        (
            "command = [\"/bin/sh\"]\nenv = { A = \"a\\u0000b\" }",
            "profiles.x.env",
            "value of A contains a NUL",
        ),
        (
            "command = [\"/bin/sh\"]\nenv = { A = 1 }",
            "profiles.x.env",
            "value of A must be a string, found an integer",
        ),
        (
            "command = [\"/bin/sh\"]\nenv = [\"A=1\"]",
            "profiles.x.env",
            "must be a table",
        ),
        (
            "command = [\"/bin/sh\"]\nenv_keep = [\"LD_*\"]",
            "profiles.x.env_keep",
            "\"LD_*\" would admit LD_*",
        ),
        (
            "command = [\"/bin/sh\"]\nenv_keep = [\"*\"]",
            "profiles.x.env_keep",
            "\"*\" would admit",
        ),
        (
            "command = [\"/bin/sh\"]\nenv_keep = [\"L*\"]",
            "profiles.x.env_keep",
            "\"L*\" would admit LD_*",
        ),
        (
            "command = [\"/bin/sh\"]\nenv_keep = [\"P*\"]",
            "profiles.x.env_keep",
            "would admit PATH",
        ),
        (
            "command = [\"/bin/sh\"]\nenv_keep = [\"LD_LIBRARY_PATH\"]",
            "profiles.x.env_keep",
            "would admit LD_LIBRARY_PATH",
        ),
        (
            "command = [\"/bin/sh\"]\nenv_keep = [\"LD_FOO*\"]",
            "profiles.x.env_keep",
            "would admit LD_*",
        ),
        (
            "command = [\"/bin/sh\"]\nenv_keep = [\"MALLOC*\"]",
            "profiles.x.env_keep",
            "would admit MALLOC_*",
        ),
        (
            "command = [\"/bin/sh\"]\nenv_keep = [\"HOME\"]",
            "profiles.x.env_keep",
            "would admit HOME",
        ),
        (
            "command = [\"/bin/sh\"]\nenv_keep = [\"BAD-NAME\"]",
            "profiles.x.env_keep",
            "not a valid pattern",
        ),
        (
            "command = [\"/bin/sh\"]\nenv_keep = [\"A*B\"]",
            "profiles.x.env_keep",
            "not a valid pattern",
        ),
        (
            "command = [\"/bin/sh\"]\nenv_keep = [\"\"]",
            "profiles.x.env_keep",
            "not a valid pattern",
        ),
        (
            "command = [\"/bin/sh\"]\numask = \"0999\"",
            "profiles.x.umask",
            "\"0999\" is not an octal umask",
        ),
        (
            "command = [\"/bin/sh\"]\numask = \"1777\"",
            "profiles.x.umask",
            "at most 0777",
        ),
        (
            "command = [\"/bin/sh\"]\numask = \"\"",
            "profiles.x.umask",
            "not an octal umask",
        ),
        (
            "command = [\"/bin/sh\"]\numask = \"0o22\"",
            "profiles.x.umask",
            "not an octal umask",
        ),
        (
            "command = [\"/bin/sh\"]\numask = 22",
            "profiles.x.umask",
            "must be an octal string, found the integer 22",
        ),
        (
            "command = [\"/bin/sh\"]\nallow_args = \"yes\"",
            "profiles.x.allow_args",
            "must be true or false, found a string",
        ),
        (
            "command = [\"/bin/sh\"]\ninterrupt_timeout = -1",
            "profiles.x.interrupt_timeout",
            "-1 is out of range",
        ),
        (
            "command = [\"/bin/sh\"]\nterm_timeout = 3601",
            "profiles.x.term_timeout",
            "3601 is out of range",
        ),
        (
            "command = [\"/bin/sh\"]\nkill_timeout = nan",
            "profiles.x.kill_timeout",
            "out of range",
        ),
        (
            "command = [\"/bin/sh\"]\nkill_timeout = inf",
            "profiles.x.kill_timeout",
            "out of range",
        ),
        (
            "command = [\"/bin/sh\"]\nkill_timeout = -0.5",
            "profiles.x.kill_timeout",
            "out of range",
        ),
        (
            "command = [\"/bin/sh\"]\nkill_timeout = 3600.5",
            "profiles.x.kill_timeout",
            "out of range",
        ),
        (
            "command = [\"/bin/sh\"]\nkill_timeout = \"5\"",
            "profiles.x.kill_timeout",
            "must be a number of seconds, found a string",
        ),
    ];
    for (lines, key, needle) in cases {
        let text = format!("{BASE}[profiles.x]\n{lines}\n");
        assert_problem(&text, key, needle);
    }
}

#[test]
fn accepted_profile_values() {
    let c = parse(&format!(
        "{BASE}[profiles.x]\ncommand = [\"/bin/sh\"]\numask = \"0\"\nkill_timeout = 3600\n\
         term_timeout = 3600.0\ninterrupt_timeout = 0.001\nenv_keep = [\"LC_*\", \"TMPDIR\", \
         \"_X*\"]\nenv = {{ TMPDIR = \"/var/tmp\" }}\n"
    ))
    .unwrap();
    let x = c.profile("x").unwrap();
    assert_eq!(x.umask, 0);
    assert_eq!(x.kill_timeout, Duration::from_secs(3600));
    assert_eq!(x.term_timeout, Duration::from_secs(3600));
    assert_eq!(x.interrupt_timeout, Duration::from_millis(1));
    assert_eq!(x.env["TMPDIR"], "/var/tmp");
    assert!(x.env_allowed("TMPDIR"));
    assert!(x.env_allowed("_X1"));
}

#[test]
fn profile_limits() {
    let c = parse(&with_profile(
        "limits = { nproc = 512, nofile = 4096, as = \"16G\", core = 0, stack = \"8m\", \
         cpu = \"unlimited\", memlock = \"64K\", data = 1048576 }",
    ))
    .unwrap();
    let limits = &c.profile("default").unwrap().limits;
    assert_eq!(
        limits,
        &vec![
            (Rlimit::As, 16 << 30),
            (Rlimit::Core, 0),
            (Rlimit::Cpu, UNLIMITED),
            (Rlimit::Data, 1 << 20),
            (Rlimit::Memlock, 64 << 10),
            (Rlimit::Nofile, 4096),
            (Rlimit::Nproc, 512),
            (Rlimit::Stack, 8 << 20),
        ]
    );
    // No limits table: none set (the daemon's own pass through, as before).
    assert!(
        parse(BASE)
            .unwrap()
            .profile("default")
            .unwrap()
            .limits
            .is_empty()
    );

    let k = "profiles.default.limits";
    assert_problem(
        &with_profile("limits = { rss = 1 }"),
        k,
        "unknown limit \"rss\"",
    );
    assert_problem(
        &with_profile("limits = { nproc = -1 }"),
        k,
        "nproc = -1 is not a valid",
    );
    assert_problem(
        &with_profile("limits = { nproc = \"5K\" }"),
        k,
        "give a count",
    );
    assert_problem(
        &with_profile("limits = { as = \"16Q\" }"),
        k,
        "a size such as",
    );
    assert_problem(&with_profile("limits = { cpu = 1.5 }"), k, "give seconds");
    assert_problem(&with_profile("limits = 5"), k, "a table of LIMIT = value");
    assert_problem(
        &with_profile("limits = { nofile = \"unlimited\" }"),
        k,
        "nofile cannot be unlimited",
    );
}

#[test]
fn multiple_problems_at_once() {
    let text = "hub_user = \"root\"\ngroup = \"nogroup\"\nmin_uid = 0\nlog_keep = 500\n\
                colour = \"blue\"\n[profiles.default]\ncommand = [\"relative\"]\numask = \"9\"\n\
                [profiles.gpu]\nkill_timeout = -3\n";
    let found = problems(text);
    let keys: Vec<&str> = found.iter().map(|p| p.key.as_str()).collect();
    for key in [
        "colour",
        "hub_user",
        "min_uid",
        "log_keep",
        "profiles.default.command",
        "profiles.default.umask",
        "profiles.gpu.command",
        "profiles.gpu.kill_timeout",
    ] {
        assert!(keys.contains(&key), "{key} missing from {found:#?}");
    }
    assert_eq!(found.len(), 8, "{found:#?}");

    let e = parse(text).unwrap_err();
    let shown = e.to_string();
    assert_eq!(shown.lines().count(), 8, "{shown}");
    for line in shown.lines() {
        assert!(line.starts_with("/etc/spawnd/test.toml: "), "{line}");
    }
    assert!(
        shown.contains("/etc/spawnd/test.toml: min_uid: 0 is out of range"),
        "{shown}"
    );
}

#[test]
fn problem_display() {
    let p = Problem {
        key: "socket".into(),
        message: "is wrong".into(),
    };
    assert_eq!(p.to_string(), "socket: is wrong");
    let e = ConfigError {
        source: PathBuf::from("/x.toml"),
        problems: vec![p.clone(), p],
    };
    assert_eq!(
        e.to_string(),
        "/x.toml: socket: is wrong\n/x.toml: socket: is wrong"
    );
}

/// The environment rules, as a profile applies them to the client's variables (the rules
/// themselves are tested in `env.rs`).
#[test]
fn profile_env_allowed() {
    let c = parse(BASE).unwrap();
    let p = c.profile("").unwrap();
    assert!(p.env_allowed("JUPYTERHUB_API_TOKEN"));
    assert!(p.env_allowed("JPY_API_TOKEN"));
    assert!(p.env_allowed("LC_ALL"));
    assert!(p.env_allowed("LANG"));
    assert!(p.env_allowed("TZ"));
    assert!(!p.env_allowed("LANGUAGE"));
    assert!(!p.env_allowed("PATH"));
    assert!(!p.env_allowed("LD_PRELOAD"));
    assert!(!p.env_allowed("PYTHONPATH"));
    assert!(!p.env_allowed(""));

    // Even a pattern that matches a forbidden name (refused at load, but the check holds
    // whatever the patterns say).
    let mut wide = p.clone();
    wide.env_keep = vec!["*".into(), "LD_PRELOAD".into(), "PATH".into()];
    assert!(!wide.env_allowed("LD_PRELOAD"));
    assert!(!wide.env_allowed("PATH"));
    assert!(!wide.env_allowed("HOME"));
    assert!(!wide.env_allowed("BAD=NAME"));
    assert!(wide.env_allowed("JUPYTERHUB_API_TOKEN"));
}

#[test]
#[ignore = "needs root: run as root with --include-ignored"]
fn load_and_check_config_command() {
    require_root();
    let dir = TempDir::new("load");
    let good = dir.path().join("good.toml");
    fs::write(&good, BASE).unwrap();
    assert_eq!(Config::load(&good).unwrap().source, good);
    assert!(check_config_command(&good));

    let bad = dir.path().join("bad.toml");
    fs::write(&bad, with_top("min_uid = 0\nlog_keep = 1000")).unwrap();
    let e = Config::load(&bad).unwrap_err();
    assert_eq!(e.source, bad);
    assert_eq!(e.problems.len(), 2, "{e}");
    assert!(!check_config_command(&bad));

    let missing = dir.path().join("missing.toml");
    let e = Config::load(&missing).unwrap_err();
    assert_eq!(e.problems.len(), 1);
    assert_eq!(e.problems[0].key, "(file)");
    assert!(e.problems[0].message.contains("cannot read"), "{e}");
    assert!(!check_config_command(&missing));
}

/// Whoever can change the configuration file decides who is an admin and what runs as every
/// user: `Config::load` refuses such a file before reading it (the walker's own tests are in
/// `paths/tests.rs`).
#[test]
#[ignore = "needs root: run as root with --include-ignored"]
fn load_refuses_a_config_file_others_can_change() {
    require_root();
    let dir = TempDir::new("cfgfile-load");
    let base = dir.path();
    let config = base.join("spawnd.toml");
    fs::write(&config, BASE).unwrap();
    set_mode(&config, 0o644);
    assert!(Config::load(&config).is_ok());

    set_mode(&config, 0o666);
    let e = Config::load(&config).unwrap_err();
    assert_eq!(e.problems.len(), 1, "{e}");
    assert_eq!(e.problems[0].key, "(file)");
    assert_eq!(
        e.to_string(),
        format!(
            "{}: (file): the configuration file must be root's and writable only by root: {} is \
             writable by group or others (mode 0666); run chmod go-w {}",
            config.display(),
            config.display(),
            config.display()
        )
    );
    assert!(!check_config_command(&config));

    // A missing file is reported by the read (with its hint), even in a directory others can
    // write to: there is nothing to trust yet.
    let open = base.join("open");
    make_dir(&open, 0o777);
    for missing in [base.join("missing.toml"), open.join("missing.toml")] {
        let e = Config::load(&missing).unwrap_err().to_string();
        assert!(
            e.contains("cannot read the configuration file")
                && e.contains("create it (see the example spawnd.toml) or pass --config PATH"),
            "{e}"
        );
    }
    // ... but a file that is there in such a directory is refused.
    let inside = open.join("spawnd.toml");
    make_file(&inside, 0o644);
    let e = Config::load(&inside).unwrap_err().to_string();
    assert!(
        e.contains(&format!(
            "{} is writable by group or others",
            open.display()
        )),
        "{e}"
    );
}

/// A command the walker refuses is reported under the profile's command key, as unsafe.
#[test]
#[ignore = "needs root: run as root with --include-ignored"]
fn unsafe_command_is_reported_under_its_key() {
    require_root();
    let dir = TempDir::new("cmd-key");
    let writable = dir.path().join("gw");
    make_dir(&writable, 0o775);
    let server = writable.join("server");
    make_file(&server, 0o755);
    let text = format!(
        "hub_user = \"daemon\"\ngroup = \"nogroup\"\n[profiles.default]\ncommand = [{:?}]\n",
        server.display().to_string()
    );
    assert_problem(&text, "profiles.default.command", "cannot be trusted");
    set_mode(&server, 0o644);
    set_mode(&writable, 0o755);
    assert_problem(&text, "profiles.default.command", "cannot run");
}
