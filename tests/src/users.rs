//! The test users and groups: created once per test process, removed at its exit.

use crate::cmd::{CmdOutput, run_with_timeout};
use std::os::fd::{AsRawFd, IntoRawFd};
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// The passwd comment (GECOS) of every test user; how leftovers of crashed runs are found.
pub const GECOS: &str = "spawnd test user";
/// Every test user and group name starts with this.
pub const NAME_PREFIX: &str = "spwt";
/// Held (flock) for the whole life of a test process, so that two test processes never clean
/// up each other's users.
const LOCK_PATH: &str = "/run/spawnd-tests.lock";

/// A group made for the tests.
#[derive(Debug, Clone)]
pub struct TestGroup {
    pub name: String,
    pub gid: u32,
}

/// A user made for the tests, as passwd and `id -G` describe it.
#[derive(Debug, Clone)]
pub struct TestUser {
    pub name: String,
    pub uid: u32,
    /// Primary gid.
    pub gid: u32,
    pub home: PathBuf,
    pub shell: String,
    /// The full group list, as `id -G NAME` prints it (primary first), then sorted.
    pub groups: Vec<u32>,
}

/// Who is who in the tests.
#[derive(Debug)]
pub struct TestUsers {
    /// `spwt<pid>`: every name below starts with it.
    pub prefix: String,
    /// G: the notebook group (`group` in the daemon's configuration).
    pub group: TestGroup,
    /// X: an extra supplementary group of A, so that the full group list is checked.
    pub extra_group: TestGroup,
    /// M: the admin group (`admin_group`).
    pub admin_group: TestGroup,
    /// A: member of G (and X), with a home.
    pub a: TestUser,
    /// B: member of G, with a home.
    pub b: TestUser,
    /// O: not in G, with a home.
    pub outsider: TestUser,
    /// S: a system user (uid below 1000), member of G: only `min_uid` refuses it.
    pub system: TestUser,
    /// H: the hub user, not in G; its primary group is the socket group.
    pub hub: TestUser,
    /// D: member of the admin group M.
    pub admin: TestUser,
}

static USERS: OnceLock<TestUsers> = OnceLock::new();
/// Everything created so far, removed by the atexit handler (users first, then groups).
static CREATED: Mutex<Created> = Mutex::new(Created {
    users: Vec::new(),
    groups: Vec::new(),
});

struct Created {
    users: Vec<String>,
    groups: Vec<String>,
}

/// The test users and groups, created on first use (needs root).
pub fn users() -> &'static TestUsers {
    USERS.get_or_init(create_all)
}

fn create_all() -> TestUsers {
    assert!(crate::is_root(), "test users can only be made by root");
    take_process_lock();
    crate::daemon::remove_leftover_daemons();
    remove_leftovers();
    // SAFETY: `cleanup_at_exit` is an `extern "C" fn()` that never unwinds (it catches
    // panics) and only touches statics that live until the end of the process.
    let rc = unsafe { libc::atexit(cleanup_at_exit) };
    assert_eq!(rc, 0, "atexit failed");

    let prefix = format!("{NAME_PREFIX}{}", std::process::id() % 100_000);
    let group = add_group(&format!("{prefix}g"));
    let extra_group = add_group(&format!("{prefix}x"));
    let admin_group = add_group(&format!("{prefix}m"));

    let a = add_user(
        &format!("{prefix}a"),
        &["-m", "-G", &format!("{},{}", group.name, extra_group.name)],
    );
    let b = add_user(&format!("{prefix}b"), &["-m", "-G", &group.name]);
    let outsider = add_user(&format!("{prefix}o"), &["-m"]);
    let system = add_user(&format!("{prefix}s"), &["-r", "-M", "-G", &group.name]);
    let hub = add_user(&format!("{prefix}h"), &["-M", "-U"]);
    let admin = add_user(&format!("{prefix}d"), &["-M", "-G", &admin_group.name]);

    assert!(
        system.uid < 1000,
        "useradd -r gave {} uid {}, not a system uid below 1000",
        system.name,
        system.uid
    );
    for u in [&a, &b, &outsider, &hub, &admin] {
        assert!(u.uid >= 1000, "{} got uid {} < 1000", u.name, u.uid);
    }
    assert!(a.groups.contains(&group.gid) && a.groups.contains(&extra_group.gid));
    assert!(!outsider.groups.contains(&group.gid));
    assert!(!hub.groups.contains(&group.gid));
    TestUsers {
        prefix,
        group,
        extra_group,
        admin_group,
        a,
        b,
        outsider,
        system,
        hub,
        admin,
    }
}

/// Creates one more test user, `<prefix><tag>`, for a test that changes the user (removes it
/// from a group, fills its process table, gives it no home) and so must not share A or B with
/// tests running beside it. `tag` is lowercase ASCII letters; `useradd_args` come before the
/// name (for example `["-M", "-G", &group]`). The user is removed with the others when the test
/// process exits. Each tag may be used once per test process.
pub fn add_test_user(tag: &str, useradd_args: &[&str]) -> TestUser {
    assert!(
        !tag.is_empty() && tag.bytes().all(|b| b.is_ascii_lowercase()),
        "a test user tag is lowercase ASCII letters, not {tag:?}"
    );
    let name = format!("{}{tag}", users().prefix);
    add_user(&name, useradd_args)
}

/// A second passwd entry named after `tag` with the uid and home of `of` (`useradd -o`), in the
/// server group: another name for the same account, as a directory service's alias or a
/// local entry sharing an LDAP uid would be.
pub fn add_second_entry(tag: &str, of: &TestUser) -> TestUser {
    let uid = of.uid.to_string();
    let home = of.home.display().to_string();
    let group = users().group.name.clone();
    let second = add_test_user(tag, &["-o", "-u", &uid, "-g", &group, "-M", "-d", &home]);
    assert_eq!(second.uid, of.uid, "useradd -o kept the uid");
    second
}

/// `gpasswd -d USER GROUP` (retrying while another process holds the group file's lock).
pub fn remove_from_group(user: &str, group: &str) {
    let out = run_account_tool("gpasswd", &["-d", user, group]);
    assert!(out.success(), "gpasswd -d {user} {group}: {out}");
}

fn take_process_lock() {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(LOCK_PATH)
        .unwrap_or_else(|e| panic!("cannot open {LOCK_PATH}: {e}"));
    // SAFETY: flock on a descriptor we own; it blocks until no other test process holds it.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(
        rc,
        0,
        "flock {LOCK_PATH}: {}",
        std::io::Error::last_os_error()
    );
    // Held until the process exits.
    let _ = file.into_raw_fd();
}

/// Runs an account tool, retrying while another process holds the passwd/group lock.
fn run_account_tool(program: &str, args: &[&str]) -> CmdOutput {
    let mut last = None;
    for _ in 0..20 {
        let mut cmd = Command::new(program);
        cmd.args(args);
        let out = run_with_timeout(cmd, Duration::from_secs(30));
        let locked = out.stderr.contains("lock") || out.code == Some(10);
        if out.success() || !locked {
            return out;
        }
        last = Some(out);
        std::thread::sleep(Duration::from_millis(250));
    }
    last.expect("at least one attempt")
}

fn add_group(name: &str) -> TestGroup {
    let out = run_account_tool("groupadd", &[name]);
    assert!(out.success(), "groupadd {name}: {out}");
    CREATED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .groups
        .push(name.to_owned());
    let group = nix::unistd::Group::from_name(name)
        .expect("getgrnam")
        .unwrap_or_else(|| panic!("group {name} missing right after groupadd"));
    TestGroup {
        name: name.to_owned(),
        gid: group.gid.as_raw(),
    }
}

fn add_user(name: &str, extra: &[&str]) -> TestUser {
    let mut args = vec!["-c", GECOS, "-s", "/bin/sh"];
    args.extend_from_slice(extra);
    args.push(name);
    let out = run_account_tool("useradd", &args);
    assert!(out.success(), "useradd {args:?}: {out}");
    CREATED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .users
        .push(name.to_owned());
    lookup_user(name)
}

/// A user as passwd and `id -G` describe it.
pub fn lookup_user(name: &str) -> TestUser {
    let user = nix::unistd::User::from_name(name)
        .expect("getpwnam")
        .unwrap_or_else(|| panic!("user {name} not found"));
    let mut cmd = Command::new("id");
    cmd.args(["-G", name]);
    let out = run_with_timeout(cmd, Duration::from_secs(10));
    assert!(out.success(), "id -G {name}: {out}");
    let mut groups: Vec<u32> = out
        .stdout
        .split_whitespace()
        .map(|g| g.parse().expect("numeric gid from id -G"))
        .collect();
    groups.sort_unstable();
    groups.dedup();
    TestUser {
        name: name.to_owned(),
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
        home: user.dir,
        shell: user.shell.to_string_lossy().into_owned(),
        groups,
    }
}

fn kill_user_processes(name: &str) {
    let mut cmd = Command::new("pkill");
    cmd.args(["-9", "-u", name]);
    let _ = run_with_timeout(cmd, Duration::from_secs(10));
    // Give the kernel a moment to reap what was killed; userdel refuses while processes live.
    for _ in 0..50 {
        let mut cmd = Command::new("pgrep");
        cmd.args(["-u", name]);
        if run_with_timeout(cmd, Duration::from_secs(10)).code != Some(0) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn remove_user(name: &str) {
    kill_user_processes(name);
    let out = run_account_tool("userdel", &["-r", "-f", name]);
    // 6: no such user; 12: home could not be removed (users made with -M have none).
    if !matches!(out.code, Some(0 | 6 | 12)) {
        eprintln!("spawnd-tests: userdel -r -f {name} failed: {out}");
    }
}

fn remove_group(name: &str) {
    let out = run_account_tool("groupdel", &[name]);
    // 6: no such group (a user's private group is removed by userdel).
    if !matches!(out.code, Some(0 | 6)) {
        eprintln!("spawnd-tests: groupdel {name} failed: {out}");
    }
}

/// True for names this harness makes: `spwt`, digits, then lowercase letters.
fn is_test_name(name: &str) -> bool {
    let Some(rest) = name.strip_prefix(NAME_PREFIX) else {
        return false;
    };
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let tail = &rest[digits..];
    digits > 0 && !tail.is_empty() && tail.bytes().all(|b| b.is_ascii_lowercase())
}

/// Removes users (and then groups) that earlier, crashed runs left behind: users whose name
/// is a test name and whose GECOS is exactly [`GECOS`]; groups whose name is a test name.
fn remove_leftovers() {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    for line in passwd.lines() {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() >= 5 && is_test_name(fields[0]) && fields[4] == GECOS {
            eprintln!("spawnd-tests: removing leftover test user {}", fields[0]);
            remove_user(fields[0]);
        }
    }
    let group = std::fs::read_to_string("/etc/group").unwrap_or_default();
    for line in group.lines() {
        let name = line.split(':').next().unwrap_or("");
        if is_test_name(name) {
            eprintln!("spawnd-tests: removing leftover test group {name}");
            remove_group(name);
        }
    }
}

extern "C" fn cleanup_at_exit() {
    // A panic must not unwind out of an extern "C" fn (that aborts): catch it.
    let _ = std::panic::catch_unwind(|| {
        let created = {
            let mut c = CREATED.lock().unwrap_or_else(|e| e.into_inner());
            Created {
                users: std::mem::take(&mut c.users),
                groups: std::mem::take(&mut c.groups),
            }
        };
        for user in created.users.iter().rev() {
            remove_user(user);
        }
        for group in created.groups.iter().rev() {
            remove_group(group);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::is_test_name;

    #[test]
    fn test_names() {
        assert!(is_test_name("spwt1234a"));
        assert!(is_test_name("spwt1g"));
        assert!(!is_test_name("spwt"));
        assert!(!is_test_name("spwta"));
        assert!(!is_test_name("spwt12"));
        assert!(!is_test_name("spwt12A"));
        assert!(!is_test_name("alice"));
    }
}
