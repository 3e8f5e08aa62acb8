//! Reading values out of the TOML table, collecting problems instead of stopping at the first.
//!
//! Every `take_*` removes its key from the table (what is left at the end is unknown keys),
//! records a [`Problem`] under the key's full name when the value is wrong, and says which it
//! was with [`Got`]. By convention the collector is the last parameter and is called `p`, in
//! every module of the configuration.
//!
//! Nothing here looks at the file system or at NSS.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use toml::{Table, Value};

/// Largest accepted timeout, in seconds (the stop timeouts of a profile, the daemon's own).
pub const MAX_TIMEOUT_SECS: u64 = 3600;

/// One thing wrong with the configuration. Displays as `KEY: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The TOML key (`socket`, `profiles.default.command`), or `(syntax)` / `(file)`.
    pub key: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

impl std::error::Error for Problem {}

/// The problems found so far, in the order found.
#[derive(Debug, Default)]
pub(super) struct Problems(Vec<Problem>);

impl Problems {
    pub(super) fn add(&mut self, key: &str, message: impl Into<String>) {
        self.0.push(Problem {
            key: key.to_owned(),
            message: message.into(),
        });
    }

    pub(super) fn wrong_type(&mut self, key: &str, expected: &str, found: &Value) {
        self.add(
            key,
            format!("must be {expected}, found {}", type_name(found)),
        );
    }

    /// How many have been found: a caller compares counts to know whether its part added any.
    pub(super) fn count(&self) -> usize {
        self.0.len()
    }

    pub(super) fn into_vec(self) -> Vec<Problem> {
        self.0
    }

    /// One problem per key of `table` that is not in `known`. `prefix` is prepended to keys.
    pub(super) fn unknown_keys(
        &mut self,
        table: &Table,
        known: &[&str],
        prefix: &str,
        place: &str,
    ) {
        for key in table.keys() {
            if known.contains(&key.as_str()) {
                continue;
            }
            let message = match suggest(key, known) {
                Some(s) => format!("unknown key; did you mean {s}?"),
                None => format!(
                    "unknown key; the keys allowed at {place} are {}",
                    known.join(", ")
                ),
            };
            self.add(&format!("{prefix}{}", quote_key(key)), message);
        }
    }
}

/// The closest known key to a misspelt one, if it is close enough to be a typo.
fn suggest<'a>(key: &str, known: &[&'a str]) -> Option<&'a str> {
    let lower = key.to_ascii_lowercase().replace('-', "_");
    known
        .iter()
        .map(|k| (edit_distance(&lower, k), *k))
        .filter(|(d, k)| *d <= 2 && *d < k.len() / 2 + 1)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Levenshtein distance, in characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// A key as it would be written in TOML: bare when possible, quoted otherwise.
pub(super) fn quote_key(key: &str) -> String {
    if !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        key.to_owned()
    } else {
        format!("{key:?}")
    }
}

/// What a value is, as a message says it ("an integer").
pub(super) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a date-time",
        Value::Array(_) => "an array",
        Value::Table(_) => "a table",
    }
}

/// The one problem of a file that is not TOML, with the line and column of the mistake.
pub(super) fn syntax_problem(text: &str, e: &toml::de::Error) -> Problem {
    let message = e.message().trim().to_owned();
    let message = match e.span() {
        Some(span) => {
            let start = span.start.min(text.len());
            let before = text.get(..start).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!("line {line}, column {column}: {message}")
        }
        None => message,
    };
    Problem {
        key: "(syntax)".to_owned(),
        message: format!("{message}; fix the TOML syntax"),
    }
}

/// The outcome of reading one key.
#[derive(Debug)]
pub(super) enum Got<T> {
    /// The key is not there.
    Absent,
    /// The key is there but wrong; a problem has been recorded.
    Invalid,
    Value(T),
}

impl<T> Got<T> {
    /// `None` when invalid (a problem was recorded), the value or the default otherwise.
    pub(super) fn or_default(self, default: T) -> Option<T> {
        match self {
            Got::Absent => Some(default),
            Got::Invalid => None,
            Got::Value(v) => Some(v),
        }
    }
}

/// Removes `name` from `t`: a string without NUL. `key` is its full name, for the problems (so
/// for every `take_*`).
pub(super) fn take_string(t: &mut Table, name: &str, key: &str, p: &mut Problems) -> Got<String> {
    match t.remove(name) {
        None => Got::Absent,
        Some(Value::String(s)) => {
            if s.contains('\0') {
                p.add(key, "contains a NUL character; remove it");
                Got::Invalid
            } else {
                Got::Value(s)
            }
        }
        Some(other) => {
            p.wrong_type(key, "a string", &other);
            Got::Invalid
        }
    }
}

pub(super) fn take_bool(t: &mut Table, name: &str, key: &str, p: &mut Problems) -> Got<bool> {
    match t.remove(name) {
        None => Got::Absent,
        Some(Value::Boolean(b)) => Got::Value(b),
        Some(other) => {
            p.wrong_type(key, "true or false", &other);
            Got::Invalid
        }
    }
}

pub(super) fn take_integer(t: &mut Table, name: &str, key: &str, p: &mut Problems) -> Got<i64> {
    match t.remove(name) {
        None => Got::Absent,
        Some(Value::Integer(n)) => Got::Value(n),
        Some(other) => {
            p.wrong_type(key, "an integer", &other);
            Got::Invalid
        }
    }
}

/// An array of strings; every bad element is reported.
pub(super) fn take_string_array(
    t: &mut Table,
    name: &str,
    key: &str,
    p: &mut Problems,
) -> Got<Vec<String>> {
    match t.remove(name) {
        None => Got::Absent,
        Some(Value::Array(items)) => {
            let mut out = Vec::with_capacity(items.len());
            let mut ok = true;
            for (i, item) in items.into_iter().enumerate() {
                match item {
                    Value::String(s) if s.contains('\0') => {
                        p.add(
                            key,
                            format!("element {i} ({s:?}) contains a NUL character; remove it"),
                        );
                        ok = false;
                    }
                    Value::String(s) => out.push(s),
                    other => {
                        p.add(
                            key,
                            format!("element {i} must be a string, found {}", type_name(&other)),
                        );
                        ok = false;
                    }
                }
            }
            if ok { Got::Value(out) } else { Got::Invalid }
        }
        Some(other) => {
            p.wrong_type(key, "an array of strings", &other);
            Got::Invalid
        }
    }
}

/// An absolute path; `default` when absent.
pub(super) fn take_abs_path(
    t: &mut Table,
    name: &str,
    key: &str,
    default: &str,
    p: &mut Problems,
) -> Option<PathBuf> {
    match take_string(t, name, key, p) {
        Got::Absent => Some(PathBuf::from(default)),
        Got::Invalid => None,
        Got::Value(s) if s.starts_with('/') => Some(PathBuf::from(s)),
        Got::Value(s) => {
            p.add(
                key,
                format!(
                    "{s:?} is not an absolute path; write it starting with '/', e.g. {default:?}"
                ),
            );
            None
        }
    }
}

/// A number of seconds (integer or float) from 0 to `MAX_TIMEOUT_SECS`; `default` when absent or
/// wrong (a problem is then recorded).
pub(super) fn take_seconds(
    t: &mut Table,
    name: &str,
    key: &str,
    default: Duration,
    p: &mut Problems,
) -> Duration {
    let out_of_range = |shown: String| {
        format!(
            "{shown} is out of range; give a number of seconds between 0 and {MAX_TIMEOUT_SECS}"
        )
    };
    match t.remove(name) {
        None => default,
        Some(Value::Integer(n)) => match u64::try_from(n) {
            Ok(secs) if secs <= MAX_TIMEOUT_SECS => Duration::from_secs(secs),
            _ => {
                p.add(key, out_of_range(n.to_string()));
                default
            }
        },
        Some(Value::Float(f)) => {
            // `MAX_TIMEOUT_SECS` is small: exact as f64.
            #[allow(clippy::cast_precision_loss)]
            let max = MAX_TIMEOUT_SECS as f64;
            if f.is_finite() && (0.0..=max).contains(&f) {
                Duration::from_secs_f64(f)
            } else {
                p.add(key, out_of_range(f.to_string()));
                default
            }
        }
        Some(other) => {
            p.wrong_type(key, "a number of seconds", &other);
            default
        }
    }
}

/// `"512"`, `"64K"`, `"16G"` (powers of 1024) as bytes.
pub(super) fn parse_size(s: &str) -> Option<u64> {
    let (digits, shift) = match s.as_bytes().last()? {
        b'K' | b'k' => (&s[..s.len() - 1], 10),
        b'M' | b'm' => (&s[..s.len() - 1], 20),
        b'G' | b'g' => (&s[..s.len() - 1], 30),
        b'T' | b't' => (&s[..s.len() - 1], 40),
        _ => (s, 0),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<u64>().ok()?.checked_mul(1u64 << shift)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        for (text, bytes) in [
            ("0", Some(0)),
            ("512", Some(512)),
            ("64K", Some(64 << 10)),
            ("8m", Some(8 << 20)),
            ("16G", Some(16 << 30)),
            ("1t", Some(1 << 40)),
            ("", None),
            ("K", None),
            ("1.5G", None),
            ("-1", None),
            ("16Q", None),
            (" 1K", None),
            ("99999999999T", None),
        ] {
            assert_eq!(parse_size(text), bytes, "{text:?}");
        }
    }

    #[test]
    fn misspelt_keys_get_the_closest_one() {
        let known = ["hub_user", "group", "admin_group", "socket"];
        assert_eq!(suggest("hub_usr", &known), Some("hub_user"));
        assert_eq!(suggest("Hub-User", &known), Some("hub_user"));
        assert_eq!(suggest("grop", &known), Some("group"));
        assert_eq!(suggest("colour", &known), None);
        // Short keys need closer typos: two edits of "group" are not a suggestion.
        assert_eq!(suggest("gr", &known), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("same", "same"), 0);
    }

    #[test]
    fn keys_are_quoted_only_when_toml_needs_it() {
        assert_eq!(quote_key("default"), "default");
        assert_eq!(quote_key("gpu-2_x"), "gpu-2_x");
        assert_eq!(quote_key("bad.name"), "\"bad.name\"");
        assert_eq!(quote_key(""), "\"\"");
    }

    #[test]
    fn problems_are_kept_in_order() {
        let mut table: Table = "a = 1\nb = \"x\"\nc = true".parse().unwrap();
        let mut p = Problems::default();
        assert!(matches!(
            take_string(&mut table, "a", "top.a", &mut p),
            Got::Invalid
        ));
        assert!(matches!(
            take_integer(&mut table, "b", "top.b", &mut p),
            Got::Invalid
        ));
        assert!(matches!(
            take_bool(&mut table, "c", "top.c", &mut p),
            Got::Value(true)
        ));
        assert!(matches!(
            take_bool(&mut table, "c", "top.c", &mut p),
            Got::Absent
        ));
        assert!(table.is_empty());
        let problems = p.into_vec();
        let shown: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "top.a: must be a string, found an integer",
                "top.b: must be an integer, found a string",
            ]
        );
    }
}
