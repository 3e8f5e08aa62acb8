//! One `[profiles.NAME]` table read into a [`Profile`]: what a server is started with.
//!
//! Guarantees of a profile that is returned: its name is valid; `command[0]` is absolute and
//! passed [`check_program`](super::check_program) with the profile's `path` (so every file it
//! runs, `#!` interpreters, what `env` finds, the ELF interpreter, is root's alone); `path`
//! holds absolute directories only; `env` and `env_keep` follow the environment rules
//! (`env.rs`); timeouts and limits are in range. A profile with any problem is not returned:
//! each problem is recorded, under the profile's key, in the order of the keys below.

use spawnd_protocol::validate_profile_name;
use toml::{Table, Value};

use super::env::{take_env, take_env_keep};
use super::parse::{
    Got, Problems, quote_key, take_bool, take_seconds, take_string, take_string_array,
};
use super::program;
use super::rlimits::parse_limits;
use super::schema::{
    DEFAULT_INTERRUPT_TIMEOUT, DEFAULT_KILL_TIMEOUT, DEFAULT_SERVER_PATH, DEFAULT_TERM_TIMEOUT,
    DEFAULT_UMASK, Profile,
};

/// Every key of a `[profiles.NAME]` table (`spawnd.toml(5)` documents each; the xtask checks
/// it).
pub const PROFILE_KEYS: &[&str] = &[
    "command",
    "path",
    "env",
    "env_keep",
    "umask",
    "allow_args",
    "interrupt_timeout",
    "term_timeout",
    "kill_timeout",
    "limits",
];

/// The profile `name`, or `None` when it has problems (all recorded in `p`).
pub(super) fn parse_profile(name: &str, value: Value, p: &mut Problems) -> Option<Profile> {
    let prefix = format!("profiles.{}", quote_key(name));
    let before = p.count();
    if name.is_empty() {
        p.add(&prefix, "the profile name is empty; give it a name");
    } else if let Err(e) = validate_profile_name(name) {
        p.add(&prefix, format!("{e}; rename the profile"));
    }
    let mut table = match value {
        Value::Table(table) => table,
        other => {
            p.wrong_type(&prefix, &format!("a table ([{prefix}])"), &other);
            return None;
        }
    };
    p.unknown_keys(
        &table,
        PROFILE_KEYS,
        &format!("{prefix}."),
        &format!("[{prefix}]"),
    );
    let key_of = |name: &str| format!("{prefix}.{name}");

    let before_command = p.count();
    let command = take_command(&mut table, &key_of("command"), p);
    let command_ok = p.count() == before_command;
    let before_path = p.count();
    let path = take_server_path(&mut table, &key_of("path"), p);
    let path_ok = p.count() == before_path;
    if command_ok {
        // `env` in the chain searches the profile's path; a bad path is reported above.
        check_command(
            &command,
            path_ok.then_some(path.as_str()),
            &key_of("command"),
            p,
        );
    }
    let env = take_env(&mut table, &key_of("env"), p);
    let env_keep = take_env_keep(&mut table, &key_of("env_keep"), p);
    let umask = take_umask(&mut table, &key_of("umask"), p);
    let allow_args = take_bool(&mut table, "allow_args", &key_of("allow_args"), p)
        .or_default(true)
        .unwrap_or(true);
    let interrupt_timeout = take_seconds(
        &mut table,
        "interrupt_timeout",
        &key_of("interrupt_timeout"),
        DEFAULT_INTERRUPT_TIMEOUT,
        p,
    );
    let term_timeout = take_seconds(
        &mut table,
        "term_timeout",
        &key_of("term_timeout"),
        DEFAULT_TERM_TIMEOUT,
        p,
    );
    let kill_timeout = take_seconds(
        &mut table,
        "kill_timeout",
        &key_of("kill_timeout"),
        DEFAULT_KILL_TIMEOUT,
        p,
    );
    let limits = parse_limits(table.remove("limits"), &key_of("limits"), p);

    (p.count() == before).then(|| Profile {
        name: name.to_owned(),
        command,
        path,
        env,
        env_keep,
        umask,
        allow_args,
        interrupt_timeout,
        term_timeout,
        kill_timeout,
        limits,
    })
}

/// `command`: present, not empty, and starting with an absolute path (what that runs is
/// checked by [`check_command`]).
fn take_command(table: &mut Table, key: &str, p: &mut Problems) -> Vec<String> {
    match take_string_array(table, "command", key, p) {
        Got::Absent => {
            p.add(
                key,
                "missing; give the server's command line, e.g. command = \
                 [\"/opt/jupyterhub/bin/jupyterhub-singleuser\"]",
            );
            Vec::new()
        }
        Got::Invalid => Vec::new(),
        Got::Value(command) => {
            match command.first() {
                None => p.add(
                    key,
                    "is empty; give at least the executable, e.g. command = \
                     [\"/opt/jupyterhub/bin/jupyterhub-singleuser\"]",
                ),
                Some(exe) if !exe.starts_with('/') => p.add(
                    key,
                    format!(
                        "the executable {exe:?} is not an absolute path; write its full \
                         path (PATH is not searched)"
                    ),
                ),
                // Checked with the profile's path, by `check_command`.
                Some(_) => {}
            }
            command
        }
    }
}

/// `path`, the servers' PATH: absolute directories only, no empty entry.
fn take_server_path(table: &mut Table, key: &str, p: &mut Problems) -> String {
    match take_string(table, "path", key, p) {
        Got::Absent => DEFAULT_SERVER_PATH.to_owned(),
        Got::Invalid => String::new(),
        Got::Value(path) => {
            if path.is_empty() {
                p.add(
                    key,
                    format!("is empty; give a PATH such as {DEFAULT_SERVER_PATH:?}"),
                );
            } else {
                for entry in path.split(':') {
                    if entry.is_empty() {
                        p.add(
                            key,
                            format!(
                                "{path:?} has an empty entry (it would mean the current \
                                 directory); remove the extra ':'"
                            ),
                        );
                    } else if !entry.starts_with('/') {
                        p.add(
                            key,
                            format!(
                                "entry {entry:?} is not an absolute directory; use absolute \
                                 directories only"
                            ),
                        );
                    }
                }
            }
            path
        }
    }
}

/// What the command runs, checked as a whole; `search_path` is where `env` looks (`None`: the
/// profile's path is invalid, and what `env` finds is not looked up). A broken install and an
/// unsafe one are told apart by the error's kind, and worded apart.
fn check_command(command: &[String], search_path: Option<&str>, key: &str, p: &mut Problems) {
    let Some(exe) = command.first() else {
        return;
    };
    match program::check_chain(command, search_path) {
        Ok(()) => {}
        Err(e) if e.is_missing() => {
            p.add(key, format!("the executable {exe:?} cannot run: {e}"));
        }
        Err(e) => p.add(
            key,
            format!("the executable {exe:?} cannot be trusted: {e}"),
        ),
    }
}

/// `umask`: an octal string of at most `0777`.
fn take_umask(table: &mut Table, key: &str, p: &mut Problems) -> u32 {
    match table.remove("umask") {
        None => DEFAULT_UMASK,
        Some(Value::String(s)) => match parse_umask(&s) {
            Some(umask) => umask,
            None => {
                p.add(
                    key,
                    format!(
                        "{s:?} is not an octal umask of at most 0777; write it like \
                         \"0022\" or \"077\""
                    ),
                );
                DEFAULT_UMASK
            }
        },
        Some(Value::Integer(n)) => {
            p.add(
                key,
                format!(
                    "must be an octal string, found the integer {n}; write it in quotes, \
                     e.g. umask = \"0022\""
                ),
            );
            DEFAULT_UMASK
        }
        Some(other) => {
            p.wrong_type(key, "an octal string such as \"0022\"", &other);
            DEFAULT_UMASK
        }
    }
}

fn parse_umask(s: &str) -> Option<u32> {
    if s.is_empty() || s.len() > 4 || !s.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return None;
    }
    u32::from_str_radix(s, 8).ok().filter(|m| *m <= 0o777)
}
