//! The environment rules of a server: which variable names are never passed to it, how a
//! profile's `env_keep` patterns admit the client's variables, and reading the profile's `env`
//! and `env_keep`.
//!
//! Guarantees: a name [`env_forbidden`] refuses (the loader's `LD_*`, `MALLOC_*`, glibc's
//! "unsecure" variables, the identity variables spawnd sets itself) is never accepted in a
//! profile's `env`, never admitted by a pattern a profile may write, and never passes
//! [`env_allowed`] whatever the patterns say.

use std::collections::BTreeMap;

use spawnd_protocol::env_name_is_valid;
use toml::{Table, Value};

use super::parse::{Got, Problems, take_string_array, type_name};

/// Default for a profile's `env_keep`.
pub const DEFAULT_ENV_KEEP: &[&str] = &["JUPYTERHUB_*", "JPY_*", "LANG", "LC_*", "TZ"];

/// Variable names that start with one of these are never passed to a server.
const FORBIDDEN_PREFIXES: &[&str] = &["LD_", "MALLOC_"];
/// Variable names that are never passed to a server: glibc's "unsecure" variables (those it
/// strips for set-uid programs; TMPDIR excepted) and the ones spawnd sets from the passwd entry
/// and the profile.
const FORBIDDEN_NAMES: &[&str] = &[
    "GCONV_PATH",
    "GETCONF_DIR",
    "GLIBC_TUNABLES",
    "HOSTALIASES",
    "LOCALDOMAIN",
    "LOCPATH",
    "NIS_PATH",
    "NLSPATH",
    "RESOLV_HOST_CONF",
    "RES_OPTIONS",
    "TZDIR",
    "HOME",
    "USER",
    "LOGNAME",
    "SHELL",
    "PATH",
];

/// Whether a client-supplied variable name may pass with these `env_keep` patterns: it matches
/// one and is not forbidden.
pub(super) fn env_allowed(env_keep: &[String], name: &str) -> bool {
    env_name_is_valid(name)
        && !env_forbidden(name)
        && env_keep
            .iter()
            .any(|pattern| pattern_matches(pattern, name))
}

fn pattern_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => name == pattern,
    }
}

/// Names never passed to a server (LD_*, glibc unsecure vars..., HOME/USER/LOGNAME/SHELL/PATH).
pub fn env_forbidden(name: &str) -> bool {
    FORBIDDEN_PREFIXES
        .iter()
        .any(|prefix| name.starts_with(prefix))
        || FORBIDDEN_NAMES.contains(&name)
}

/// A forbidden name (or `PREFIX*` family) that `pattern` would admit, if any.
fn pattern_admits_forbidden(pattern: &str) -> Option<String> {
    match pattern.strip_suffix('*') {
        None => env_forbidden(pattern).then(|| pattern.to_owned()),
        Some(prefix) => {
            if let Some(family) = FORBIDDEN_PREFIXES
                .iter()
                .find(|family| family.starts_with(prefix) || prefix.starts_with(*family))
            {
                return Some(format!("{family}*"));
            }
            FORBIDDEN_NAMES
                .iter()
                .find(|forbidden| forbidden.starts_with(prefix))
                .map(|forbidden| (*forbidden).to_owned())
        }
    }
}

/// A profile's `env`: fixed variables for its servers, set after the client's.
pub(super) fn take_env(table: &mut Table, key: &str, p: &mut Problems) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    match table.remove("env") {
        None => {}
        Some(Value::Table(vars)) => {
            for (var, value) in vars {
                if !env_name_is_valid(&var) {
                    p.add(
                        key,
                        format!(
                            "{var:?} is not a valid variable name; use letters, digits and \
                             '_', not starting with a digit"
                        ),
                    );
                } else if env_forbidden(&var) {
                    p.add(
                        key,
                        format!(
                            "{var} may not be set for a server (loader, libc and \
                             identity variables are never passed); remove it"
                        ),
                    );
                }
                match value {
                    Value::String(s) if s.contains('\0') => p.add(
                        key,
                        format!("the value of {var} contains a NUL character; remove it"),
                    ),
                    Value::String(s) => {
                        env.insert(var, s);
                    }
                    other => p.add(
                        key,
                        format!(
                            "the value of {var} must be a string, found {}; quote it",
                            type_name(&other)
                        ),
                    ),
                }
            }
        }
        Some(other) => p.wrong_type(key, "a table of NAME = \"value\"", &other),
    }
    env
}

/// A profile's `env_keep`: the patterns of the client variables that may pass.
pub(super) fn take_env_keep(table: &mut Table, key: &str, p: &mut Problems) -> Vec<String> {
    match take_string_array(table, "env_keep", key, p) {
        Got::Absent => DEFAULT_ENV_KEEP.iter().map(|s| (*s).to_owned()).collect(),
        Got::Invalid => Vec::new(),
        Got::Value(patterns) => {
            for pattern in &patterns {
                let base = pattern.strip_suffix('*').unwrap_or(pattern);
                if pattern.is_empty() || (!base.is_empty() && !env_name_is_valid(base)) {
                    p.add(
                        key,
                        format!(
                            "{pattern:?} is not a valid pattern; use a variable name, \
                             optionally ending in '*' to match a prefix"
                        ),
                    );
                } else if let Some(bad) = pattern_admits_forbidden(pattern) {
                    p.add(
                        key,
                        format!(
                            "{pattern:?} would admit {bad}, which is never passed to a \
                             server; use a narrower pattern"
                        ),
                    );
                }
            }
            patterns
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forbidden_names() {
        for name in [
            "LD_PRELOAD",
            "LD_LIBRARY_PATH",
            "LD_AUDIT",
            "MALLOC_CHECK_",
            "MALLOC_TRACE",
            "GCONV_PATH",
            "GLIBC_TUNABLES",
            "HOSTALIASES",
            "NLSPATH",
            "RES_OPTIONS",
            "HOME",
            "USER",
            "LOGNAME",
            "SHELL",
            "PATH",
        ] {
            assert!(env_forbidden(name), "{name}");
        }
        for name in [
            "JUPYTERHUB_API_TOKEN",
            "TMPDIR",
            "LANG",
            "LC_ALL",
            "TZ",
            "PATHX",
            "HOMEDIR",
        ] {
            assert!(!env_forbidden(name), "{name}");
        }
    }

    /// A pattern a profile may write admits no forbidden name: the one it would admit is named.
    #[test]
    fn patterns_that_admit_a_forbidden_name() {
        for (pattern, admitted) in [
            ("*", "LD_*"),
            ("L*", "LD_*"),
            ("LD_*", "LD_*"),
            ("LD_FOO*", "LD_*"),
            ("MALLOC*", "MALLOC_*"),
            ("P*", "PATH"),
            ("HOME", "HOME"),
            ("LD_LIBRARY_PATH", "LD_LIBRARY_PATH"),
        ] {
            assert_eq!(
                pattern_admits_forbidden(pattern).as_deref(),
                Some(admitted),
                "{pattern}"
            );
        }
        for pattern in ["LC_*", "TMPDIR", "PATHX", "_X*", "JUPYTER*"]
            .into_iter()
            .chain(DEFAULT_ENV_KEEP.iter().copied())
        {
            assert_eq!(pattern_admits_forbidden(pattern), None, "{pattern}");
        }
    }

    /// The last word on a client's variable: valid, matched by a pattern, and never forbidden,
    /// whatever the patterns say.
    #[test]
    fn allowed_names() {
        let patterns = |list: &[&str]| list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let keep = patterns(&["JUPYTERHUB_*", "LANG"]);
        assert!(env_allowed(&keep, "JUPYTERHUB_API_TOKEN"));
        assert!(env_allowed(&keep, "LANG"));
        assert!(!env_allowed(&keep, "LANGUAGE"));
        assert!(!env_allowed(&keep, "JUPYTERHUB"));
        assert!(!env_allowed(&[], "LANG"));

        let wide = patterns(&["*", "LD_PRELOAD", "PATH"]);
        for name in ["LD_PRELOAD", "PATH", "HOME", "BAD=NAME", ""] {
            assert!(!env_allowed(&wide, name), "{name}");
        }
        assert!(env_allowed(&wide, "ANYTHING_ELSE"));
    }
}
