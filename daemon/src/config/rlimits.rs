//! The resource limits of a server (`[profiles.NAME.limits]`): which `RLIMIT_*` a profile may
//! set, and reading their values.
//!
//! A profile sets soft and hard both, as `limits.conf` does through PAM for a login (spawnd
//! opens no PAM session). Values are counts, seconds (`cpu`) or bytes, the byte limits also as
//! sizes (`"16G"`), and `"unlimited"` (`RLIM_INFINITY`), except `nofile`, which Linux cannot
//! leave unlimited. A profile without the table sets none: its servers keep the daemon's.

use toml::Value;

use super::parse::{Problems, parse_size};

/// A resource limit a profile may set for its servers (`[profiles.NAME.limits]`), as
/// `limits.conf` does through PAM for a login: soft and hard both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Rlimit {
    As,
    Core,
    Cpu,
    Data,
    Fsize,
    Memlock,
    Nofile,
    Nproc,
    Stack,
}

impl Rlimit {
    /// Every limit a profile may set.
    pub const ALL: [Rlimit; 9] = [
        Rlimit::As,
        Rlimit::Core,
        Rlimit::Cpu,
        Rlimit::Data,
        Rlimit::Fsize,
        Rlimit::Memlock,
        Rlimit::Nofile,
        Rlimit::Nproc,
        Rlimit::Stack,
    ];

    /// The key in the configuration (the name `limits.conf` uses).
    pub fn key(self) -> &'static str {
        match self {
            Rlimit::As => "as",
            Rlimit::Core => "core",
            Rlimit::Cpu => "cpu",
            Rlimit::Data => "data",
            Rlimit::Fsize => "fsize",
            Rlimit::Memlock => "memlock",
            Rlimit::Nofile => "nofile",
            Rlimit::Nproc => "nproc",
            Rlimit::Stack => "stack",
        }
    }

    /// The `RLIMIT_*` resource.
    pub fn resource(self) -> libc::__rlimit_resource_t {
        match self {
            Rlimit::As => libc::RLIMIT_AS,
            Rlimit::Core => libc::RLIMIT_CORE,
            Rlimit::Cpu => libc::RLIMIT_CPU,
            Rlimit::Data => libc::RLIMIT_DATA,
            Rlimit::Fsize => libc::RLIMIT_FSIZE,
            Rlimit::Memlock => libc::RLIMIT_MEMLOCK,
            Rlimit::Nofile => libc::RLIMIT_NOFILE,
            Rlimit::Nproc => libc::RLIMIT_NPROC,
            Rlimit::Stack => libc::RLIMIT_STACK,
        }
    }

    /// Whether the limit counts bytes (and so takes K, M, G, T suffixes).
    fn is_bytes(self) -> bool {
        !matches!(self, Rlimit::Cpu | Rlimit::Nofile | Rlimit::Nproc)
    }
}

/// A limit's value: a number, or `u64::MAX` (`RLIM_INFINITY`) for "unlimited".
pub const UNLIMITED: u64 = libc::RLIM_INFINITY;

/// `[profiles.NAME.limits]`: `KEY = number`, a size such as `"16G"` for the byte limits, or
/// `"unlimited"`.
pub(super) fn parse_limits(
    value: Option<Value>,
    key: &str,
    p: &mut Problems,
) -> Vec<(Rlimit, u64)> {
    let table = match value {
        None => return Vec::new(),
        Some(Value::Table(t)) => t,
        Some(other) => {
            p.wrong_type(key, "a table of LIMIT = value", &other);
            return Vec::new();
        }
    };
    let mut limits = Vec::new();
    for (name, value) in table {
        let Some(limit) = Rlimit::ALL
            .into_iter()
            .find(|candidate| candidate.key() == name)
        else {
            let known: Vec<&str> = Rlimit::ALL.iter().map(|limit| limit.key()).collect();
            p.add(
                key,
                format!(
                    "unknown limit {name:?}; the limits are {}",
                    known.join(", ")
                ),
            );
            continue;
        };
        let unit = if limit.is_bytes() {
            "bytes, or a size such as \"16G\" (K, M, G, T: powers of 1024)"
        } else if limit == Rlimit::Cpu {
            "seconds"
        } else {
            "a count"
        };
        let parsed = match &value {
            Value::Integer(n) => u64::try_from(*n).ok(),
            Value::String(s) if s == "unlimited" || s == "infinity" => Some(UNLIMITED),
            Value::String(s) if limit.is_bytes() => parse_size(s),
            _ => None,
        };
        match parsed {
            Some(UNLIMITED) if limit == Rlimit::Nofile => p.add(
                key,
                "nofile cannot be unlimited on Linux; give a number (at most \
                 /proc/sys/fs/nr_open)",
            ),
            Some(v) => limits.push((limit, v)),
            None => p.add(
                key,
                format!("{name} = {value} is not a valid limit; give {unit}, or \"unlimited\""),
            ),
        }
    }
    limits.sort();
    limits
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_limit_has_its_own_key_and_resource() {
        let keys: std::collections::BTreeSet<&str> = Rlimit::ALL.iter().map(|l| l.key()).collect();
        let resources: std::collections::BTreeSet<_> =
            Rlimit::ALL.iter().map(|l| l.resource()).collect();
        assert_eq!(keys.len(), Rlimit::ALL.len());
        assert_eq!(resources.len(), Rlimit::ALL.len());
        assert_eq!(Rlimit::Nofile.resource(), libc::RLIMIT_NOFILE);
        let counted: Vec<Rlimit> = Rlimit::ALL.into_iter().filter(|l| !l.is_bytes()).collect();
        assert_eq!(counted, [Rlimit::Cpu, Rlimit::Nofile, Rlimit::Nproc]);
    }

    #[test]
    fn values_sizes_and_unlimited() {
        let table: toml::Table = "as = \"1G\"\ncpu = \"infinity\"\nnofile = 64\nstack = 8192"
            .parse()
            .unwrap();
        let mut p = Problems::default();
        let limits = parse_limits(Some(Value::Table(table)), "limits", &mut p);
        assert_eq!(p.count(), 0, "{p:?}");
        assert_eq!(
            limits,
            [
                (Rlimit::As, 1 << 30),
                (Rlimit::Cpu, UNLIMITED),
                (Rlimit::Nofile, 64),
                (Rlimit::Stack, 8192),
            ]
        );
        assert!(parse_limits(None, "limits", &mut p).is_empty());
        assert_eq!(p.count(), 0);
    }
}
