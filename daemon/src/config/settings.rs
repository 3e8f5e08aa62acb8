//! The top level of the configuration file: the daemon's own settings (socket, accounts,
//! directories and logs, cgroups, connection limits, timeouts) and the table of profiles, read
//! into a [`Config`].
//!
//! Every key is read even after a problem, so that all problems are reported at once, in the
//! order of the keys below; a `Config` is returned only when there is none. Accounts are
//! resolved through NSS (`accounts.rs`), each profile is read by `profile.rs`; nothing else
//! here touches the system.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use spawnd_protocol::validate_user_name;
use toml::{Table, Value};

use super::accounts::{existing_uids, lookup_group, lookup_user};
use super::parse::{
    Got, Problems, parse_size, quote_key, syntax_problem, take_abs_path, take_bool, take_integer,
    take_seconds, take_string, take_string_array,
};
use super::profile::parse_profile;
use super::schema::{
    CgroupSetting, Config, ConfigError, ConnectionLimits, DEFAULT_FIRST_REQUEST_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT, DEFAULT_LAUNCH_TIMEOUT, DEFAULT_LOG_DIR, DEFAULT_LOG_KEEP,
    DEFAULT_LOG_MAX_SIZE, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_CONNECTIONS_PER_UID,
    DEFAULT_MAX_REQUESTS_IN_FLIGHT, DEFAULT_MAX_USER_CONNECTIONS,
    DEFAULT_MAX_USER_CONNECTIONS_PER_UID, DEFAULT_MIN_UID, DEFAULT_PROFILE, DEFAULT_SEND_TIMEOUT,
    DEFAULT_SOCKET, DEFAULT_STATE_DIR, MAX_LOG_KEEP, MIN_LOG_MAX_SIZE, OnShutdown, Profile,
};

/// `sun_path` holds 108 bytes including the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;

/// Every top-level key of the file (`spawnd.toml(5)` documents each; the xtask checks it).
pub const TOP_KEYS: &[&str] = &[
    "socket",
    "socket_group",
    "hub_user",
    "group",
    "admin_group",
    "self_service",
    "min_uid",
    "deny_users",
    "state_dir",
    "log_dir",
    "log_keep",
    "log_max_size",
    "cgroup",
    "on_shutdown",
    "max_connections",
    "max_connections_per_uid",
    "max_user_connections",
    "max_user_connections_per_uid",
    "max_requests_in_flight",
    "first_request_timeout",
    "launch_timeout",
    "idle_timeout",
    "send_timeout",
    "default_profile",
    "profiles",
];

/// The accounts of the top level, resolved; `None` where a problem was recorded.
#[derive(Debug)]
struct Accounts {
    /// `hub_user`: its name, uid and primary gid.
    hub: Option<(String, u32, u32)>,
    /// `group`: its name and gid.
    group: Option<(String, u32)>,
    /// `admin_group`: its name and gid, `Some(None)` when there is none.
    admin: Option<Option<(String, u32)>>,
    /// `socket_group`, by default the hub user's primary group.
    socket_gid: Option<u32>,
}

/// Reads the configuration text; `source` is only used to name it.
pub(super) fn parse_config(text: &str, source: &Path) -> Result<Config, ConfigError> {
    let mut table: Table = match text.parse() {
        Ok(table) => table,
        Err(e) => {
            return Err(ConfigError {
                source: source.to_path_buf(),
                problems: vec![syntax_problem(text, &e)],
            });
        }
    };
    let mut p = Problems::default();
    p.unknown_keys(&table, TOP_KEYS, "", "top level");

    let socket = take_abs_path(&mut table, "socket", "socket", DEFAULT_SOCKET, &mut p);
    if let Some(socket) = &socket {
        check_socket_path(socket, &mut p);
    }

    let accounts = take_accounts(&mut table, &mut p);

    let self_service =
        take_bool(&mut table, "self_service", "self_service", &mut p).or_default(false);

    let min_uid = match take_integer(&mut table, "min_uid", "min_uid", &mut p) {
        Got::Absent => Some(DEFAULT_MIN_UID),
        Got::Invalid => None,
        Got::Value(n) => match u32::try_from(n) {
            Ok(n) if n >= 1 => Some(n),
            _ => {
                p.add(
                    "min_uid",
                    format!(
                        "{n} is out of range; use a uid between 1 and {}, usually 1000",
                        u32::MAX
                    ),
                );
                None
            }
        },
    };

    let deny_users = match take_string_array(&mut table, "deny_users", "deny_users", &mut p) {
        Got::Absent => Some(BTreeSet::new()),
        Got::Invalid => None,
        Got::Value(names) => {
            let mut ok = true;
            for name in &names {
                if let Err(e) = validate_user_name(name) {
                    p.add(
                        "deny_users",
                        format!("{name:?} is not a valid user name ({e}); fix or remove it"),
                    );
                    ok = false;
                }
            }
            ok.then(|| names.into_iter().collect())
        }
    };

    let state_dir = take_abs_path(
        &mut table,
        "state_dir",
        "state_dir",
        DEFAULT_STATE_DIR,
        &mut p,
    );
    let log_dir = take_abs_path(&mut table, "log_dir", "log_dir", DEFAULT_LOG_DIR, &mut p);

    let log_keep = match take_integer(&mut table, "log_keep", "log_keep", &mut p) {
        Got::Absent => Some(DEFAULT_LOG_KEEP),
        Got::Invalid => None,
        Got::Value(n) => match u32::try_from(n) {
            Ok(n) if n <= MAX_LOG_KEEP => Some(n),
            _ => {
                p.add(
                    "log_keep",
                    format!("{n} is out of range; keep between 0 and {MAX_LOG_KEEP} rotated logs"),
                );
                None
            }
        },
    };

    let log_max_size = match table.remove("log_max_size") {
        None => Some(Some(DEFAULT_LOG_MAX_SIZE)),
        Some(Value::String(s)) if s == "unlimited" => Some(None),
        Some(v) => {
            let size = match &v {
                Value::Integer(n) => u64::try_from(*n).ok(),
                Value::String(s) => parse_size(s),
                _ => None,
            };
            match size {
                Some(n) if n >= MIN_LOG_MAX_SIZE => Some(Some(n)),
                _ => {
                    p.add(
                        "log_max_size",
                        format!(
                            "{v} is not a size of at least 64K; give bytes or a size such \
                             as \"64M\", or \"unlimited\""
                        ),
                    );
                    None
                }
            }
        }
    };

    let cgroup = match take_string(&mut table, "cgroup", "cgroup", &mut p) {
        Got::Absent => Some(CgroupSetting::Auto),
        Got::Invalid => None,
        Got::Value(s) if s == "auto" => Some(CgroupSetting::Auto),
        Got::Value(s) if s == "off" => Some(CgroupSetting::Off),
        Got::Value(s) => {
            if s.starts_with('/') && !s.contains('\0') {
                Some(CgroupSetting::Path(PathBuf::from(s)))
            } else {
                p.add(
                    "cgroup",
                    format!(
                        "{s:?} is neither \"auto\", \"off\" nor an absolute path; use one \
                         of those"
                    ),
                );
                None
            }
        }
    };

    let on_shutdown = match take_string(&mut table, "on_shutdown", "on_shutdown", &mut p) {
        Got::Absent => Some(OnShutdown::Keep),
        Got::Invalid => None,
        Got::Value(s) if s == "keep" => Some(OnShutdown::Keep),
        Got::Value(s) if s == "stop" => Some(OnShutdown::Stop),
        Got::Value(s) => {
            p.add(
                "on_shutdown",
                format!("{s:?} is neither \"keep\" nor \"stop\"; use one of those"),
            );
            None
        }
    };

    let limits = take_connection_limits(&mut table, self_service.unwrap_or_default(), &mut p);

    let launch_timeout = take_seconds(
        &mut table,
        "launch_timeout",
        "launch_timeout",
        DEFAULT_LAUNCH_TIMEOUT,
        &mut p,
    );
    if launch_timeout.is_zero() {
        p.add(
            "launch_timeout",
            "0 would kill every server before it starts; give a number of seconds above 0",
        );
    }

    let default_profile =
        match take_string(&mut table, "default_profile", "default_profile", &mut p) {
            Got::Absent => Some(DEFAULT_PROFILE.to_owned()),
            Got::Invalid => None,
            Got::Value(s) => Some(s),
        };

    let profiles = take_profiles(&mut table, default_profile.as_deref(), &mut p);

    let problems = p.into_vec();
    if !problems.is_empty() {
        return Err(ConfigError {
            source: source.to_path_buf(),
            problems,
        });
    }
    // Every None above recorded a problem, so these defaults are never used.
    let (hub_user, hub_uid, _) = accounts.hub.unwrap_or_default();
    let (group, group_gid) = accounts.group.unwrap_or_default();
    let admin = accounts.admin.flatten();
    Ok(Config {
        source: source.to_path_buf(),
        socket: socket.unwrap_or_default(),
        socket_gid: accounts.socket_gid.unwrap_or_default(),
        hub_user,
        hub_uid,
        group,
        group_gid,
        admin_group: admin.as_ref().map(|(name, _)| name.clone()),
        admin_gid: admin.map(|(_, gid)| gid),
        self_service: self_service.unwrap_or_default(),
        min_uid: min_uid.unwrap_or(DEFAULT_MIN_UID),
        deny_uids: existing_uids(deny_users.iter().flatten()),
        deny_users: deny_users.unwrap_or_default(),
        state_dir: state_dir.unwrap_or_default(),
        log_dir: log_dir.unwrap_or_default(),
        log_keep: log_keep.unwrap_or_default(),
        log_max_size: log_max_size.flatten(),
        cgroup: cgroup.unwrap_or(CgroupSetting::Auto),
        on_shutdown: on_shutdown.unwrap_or_default(),
        limits,
        launch_timeout,
        default_profile: default_profile.unwrap_or_default(),
        profiles,
    })
}

/// `hub_user`, `group`, `admin_group` and `socket_group`.
fn take_accounts(table: &mut Table, p: &mut Problems) -> Accounts {
    let hub = match take_string(table, "hub_user", "hub_user", p) {
        Got::Absent => {
            p.add(
                "hub_user",
                "missing; set it to the account JupyterHub runs as, e.g. hub_user = \
                 \"jupyterhub\"",
            );
            None
        }
        Got::Invalid => None,
        Got::Value(name) => lookup_user(&name, "hub_user", p).and_then(|user| {
            if user.uid.is_root() {
                p.add(
                    "hub_user",
                    format!(
                        "{name:?} is root (uid 0); the hub must run as an unprivileged \
                         account, e.g. hub_user = \"jupyterhub\""
                    ),
                );
                None
            } else {
                Some((name, user.uid.as_raw(), user.gid.as_raw()))
            }
        }),
    };

    let group = match take_string(table, "group", "group", p) {
        Got::Absent => {
            p.add(
                "group",
                "missing; set it to the group whose members may have a server started, \
                 e.g. group = \"jupyterhub-users\"",
            );
            None
        }
        Got::Invalid => None,
        Got::Value(name) => lookup_group(&name, "group", p).map(|gid| (name, gid)),
    };

    let admin = match take_string(table, "admin_group", "admin_group", p) {
        Got::Absent => Some(None),
        Got::Invalid => None,
        Got::Value(name) => lookup_group(&name, "admin_group", p).map(|gid| Some((name, gid))),
    };

    let socket_gid = match take_string(table, "socket_group", "socket_group", p) {
        Got::Absent => hub.as_ref().map(|(_, _, gid)| *gid),
        Got::Invalid => None,
        Got::Value(name) => lookup_group(&name, "socket_group", p),
    };

    Accounts {
        hub,
        group,
        admin,
        socket_gid,
    }
}

/// The connection limits and timeouts; each wrong value is recorded and its default kept.
fn take_connection_limits(
    table: &mut Table,
    self_service: bool,
    p: &mut Problems,
) -> ConnectionLimits {
    let mut count = |name: &str, default: u32, max: u32| -> u32 {
        match take_integer(table, name, name, p) {
            Got::Absent | Got::Invalid => default,
            Got::Value(n) => match u32::try_from(n) {
                Ok(n) if (1..=max).contains(&n) => n,
                _ => {
                    p.add(name, format!("{n} is out of range; use 1 to {max}"));
                    default
                }
            },
        }
    };
    let max_connections = count("max_connections", DEFAULT_MAX_CONNECTIONS, 1 << 20);
    let max_connections_per_uid = count(
        "max_connections_per_uid",
        DEFAULT_MAX_CONNECTIONS_PER_UID,
        1 << 20,
    );
    let max_user_connections = count(
        "max_user_connections",
        DEFAULT_MAX_USER_CONNECTIONS,
        1 << 20,
    );
    let max_user_connections_per_uid = count(
        "max_user_connections_per_uid",
        DEFAULT_MAX_USER_CONNECTIONS_PER_UID,
        1 << 20,
    );
    let max_requests_in_flight = count(
        "max_requests_in_flight",
        DEFAULT_MAX_REQUESTS_IN_FLIGHT,
        1 << 16,
    );
    let mut seconds = |name: &str, default: Duration, positive: bool| -> Duration {
        let duration = take_seconds(table, name, name, default, p);
        if positive && duration.is_zero() {
            p.add(
                name,
                format!(
                    "must be more than 0 seconds (the default is {})",
                    default.as_secs()
                ),
            );
            return default;
        }
        duration
    };
    let first_request_timeout = seconds(
        "first_request_timeout",
        DEFAULT_FIRST_REQUEST_TIMEOUT,
        false,
    );
    let idle_timeout = seconds("idle_timeout", DEFAULT_IDLE_TIMEOUT, true);
    let send_timeout = seconds("send_timeout", DEFAULT_SEND_TIMEOUT, true);
    let limits = ConnectionLimits {
        max_connections,
        max_connections_per_uid,
        max_user_connections,
        max_user_connections_per_uid,
        max_requests_in_flight,
        first_request_timeout,
        idle_timeout,
        send_timeout,
    };
    check_reserve(&limits, self_service, p);
    limits
}

/// The connections self-service users may hold must leave some for the hub and the admins, and
/// one uid at its limit (the hub) must leave some for an admin. Without `self_service` there are
/// no user connections.
fn check_reserve(limits: &ConnectionLimits, self_service: bool, p: &mut Problems) {
    let users = if self_service {
        if limits.max_user_connections >= limits.max_connections {
            p.add(
                "max_user_connections",
                format!(
                    "{} would let self-service users take every connection (max_connections is \
                     {}); use less than max_connections, so that the hub and the admins keep \
                     the rest",
                    limits.max_user_connections, limits.max_connections
                ),
            );
            return;
        }
        limits.max_user_connections
    } else {
        0
    };
    let left = limits.max_connections - users;
    if limits.max_connections_per_uid >= left {
        let what = if self_service {
            format!(
                "every connection the self-service users leave (max_connections {} - \
                 max_user_connections {users})",
                limits.max_connections
            )
        } else {
            format!(
                "every connection (max_connections {})",
                limits.max_connections
            )
        };
        p.add(
            "max_connections_per_uid",
            format!(
                "{} would let one uid (the hub) take {what}; use less than {left}, so that an \
                 admin can always connect",
                limits.max_connections_per_uid
            ),
        );
    }
}

/// The `[profiles.NAME]` tables; `default_profile` must name one of them.
fn take_profiles(
    table: &mut Table,
    default_profile: Option<&str>,
    p: &mut Problems,
) -> BTreeMap<String, Profile> {
    let mut profiles = BTreeMap::new();
    match table.remove("profiles") {
        None => p.add(
            "profiles",
            "no profile is defined; add at least one, e.g. [profiles.default] with command = \
             [\"/opt/jupyterhub/bin/jupyterhub-singleuser\"]",
        ),
        Some(Value::Table(tables)) => {
            if tables.is_empty() {
                p.add(
                    "profiles",
                    "no profile is defined; add at least one, e.g. [profiles.default] with \
                     command = [\"/opt/jupyterhub/bin/jupyterhub-singleuser\"]",
                );
            }
            if let Some(default) = default_profile
                && !tables.contains_key(default)
            {
                let known: Vec<&str> = tables.keys().map(String::as_str).collect();
                p.add(
                    "default_profile",
                    if known.is_empty() {
                        format!("{default:?} names no profile; define [profiles.{default}]")
                    } else {
                        format!(
                            "{default:?} names no profile; use one of {} or define \
                             [profiles.{}]",
                            known.join(", "),
                            quote_key(default)
                        )
                    },
                );
            }
            for (name, value) in tables {
                if let Some(profile) = parse_profile(&name, value, p) {
                    profiles.insert(name, profile);
                }
            }
        }
        Some(other) => p.wrong_type("profiles", "a table of [profiles.NAME] tables", &other),
    }

    profiles
}

fn check_socket_path(socket: &Path, p: &mut Problems) {
    let len = socket.as_os_str().len();
    if socket.file_name().is_none() || socket.as_os_str().to_string_lossy().ends_with('/') {
        p.add(
            "socket",
            format!(
                "{:?} does not name a file; give the socket's full path, e.g. {DEFAULT_SOCKET:?}",
                socket.display().to_string()
            ),
        );
    } else if len > MAX_SOCKET_PATH {
        p.add(
            "socket",
            format!(
                "{:?} is {len} bytes long; Unix socket paths are limited to {MAX_SOCKET_PATH} \
                 bytes, choose a shorter one",
                socket.display().to_string()
            ),
        );
    }
}
