//! Rules for the names that travel in requests. They are checked on both sides; the daemon's
//! check is the one that counts, since user and server names become path components (log files,
//! cgroups).

use crate::{MAX_PROFILE_LEN, MAX_SERVER_LEN, MAX_USER_LEN};

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("{what} name is empty")]
    Empty { what: &'static str },
    #[error("{what} name is {len} bytes long; the limit is {max}")]
    TooLong {
        what: &'static str,
        len: usize,
        max: usize,
    },
    #[error(
        "{what} name {name:?} contains {found:?}; allowed are ASCII letters, digits, '_', and (not \
         first) '-', '.' and, in user names, '@'"
    )]
    BadChar {
        what: &'static str,
        name: String,
        found: char,
    },
}

fn check(
    what: &'static str,
    name: &str,
    max: usize,
    dot_ok: bool,
    at_ok: bool,
) -> Result<(), NameError> {
    if name.len() > max {
        return Err(NameError::TooLong {
            what,
            len: name.len(),
            max,
        });
    }
    for (i, c) in name.chars().enumerate() {
        let ok = c.is_ascii_alphanumeric()
            || c == '_'
            || (i > 0 && c == '-')
            || (i > 0 && dot_ok && c == '.')
            || (i > 0 && at_ok && c == '@');
        if !ok {
            // Only echo short names: a hostile 16 KiB name should not fill the logs.
            let shown: String = name.chars().take(max).collect();
            return Err(NameError::BadChar {
                what,
                name: shown,
                found: c,
            });
        }
    }
    Ok(())
}

/// A user name: 1 to 64 bytes of ASCII letters, digits, `_`, and (not first) `-`, `.` and `@`
/// (directory services name users `name@domain`). No `/`, no NUL, never `.` or `..`.
pub fn validate_user_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty { what: "user" });
    }
    check("user", name, MAX_USER_LEN, true, true)
}

/// A server name: empty (the default server) or up to 64 bytes of ASCII letters, digits, `_`,
/// and (not first) `-` and `.`.
pub fn validate_server_name(name: &str) -> Result<(), NameError> {
    check("server", name, MAX_SERVER_LEN, true, false)
}

/// A profile name: empty (the configured default) or up to 64 bytes of ASCII letters, digits,
/// `_` and (not first) `-`.
pub fn validate_profile_name(name: &str) -> Result<(), NameError> {
    check("profile", name, MAX_PROFILE_LEN, false, false)
}

/// An environment variable name as POSIX shells accept it: a letter or `_`, then letters,
/// digits and `_`.
pub fn env_name_is_valid(name: &str) -> bool {
    let mut chars = name.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphabetic() || c == '_' => {}
        _ => return false,
    }
    chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}
