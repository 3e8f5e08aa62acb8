//! The man pages against the definitions they describe: every key the daemon accepts is in
//! `spawnd.toml(5)` with the daemon's default, and nothing else; the generated pages have the
//! sections and commands they should.

use super::*;
use spawnd::config::{self, PROFILE_KEYS, Rlimit, TOP_KEYS};
use std::collections::{BTreeMap, BTreeSet};

/// The keys of `.TP` + `.B key` entries, by the `.SH`/`.SS` heading they are under, each with
/// its entry's text.
fn entries(page: &str) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut out: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut heading = String::new();
    let mut current: Option<String> = None;
    let mut after_tp = false;
    for line in page.lines() {
        if let Some(h) = line
            .strip_prefix(".SH ")
            .or_else(|| line.strip_prefix(".SS "))
        {
            heading = h.trim_matches('"').to_owned();
            current = None;
        } else if line == ".TP" {
            after_tp = true;
            current = None;
            continue;
        } else if after_tp && let Some(key) = line.strip_prefix(".B ") {
            let key = key.to_owned();
            out.entry(heading.clone())
                .or_default()
                .insert(key.clone(), String::new());
            current = Some(key);
        } else if line.starts_with(".PP") {
            current = None;
        } else if let Some(key) = &current
            && let Some(text) = out.get_mut(&heading).and_then(|m| m.get_mut(key))
        {
            text.push_str(line);
            text.push('\n');
        }
        after_tp = false;
    }
    out
}

fn keys(page: &str, heading: &str) -> BTreeSet<String> {
    entries(page)
        .get(heading)
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

fn set(items: impl IntoIterator<Item = impl Into<String>>) -> BTreeSet<String> {
    items.into_iter().map(Into::into).collect()
}

#[test]
fn the_toml_page_documents_exactly_the_daemons_keys() {
    // `profiles` is the PROFILES section itself.
    let top = set(TOP_KEYS.iter().filter(|k| **k != "profiles").copied());
    assert_eq!(keys(SPAWND_TOML_5, "KEYS"), top, "top-level keys");
    assert_eq!(
        keys(SPAWND_TOML_5, "PROFILES"),
        set(PROFILE_KEYS.iter().copied())
    );
    assert_eq!(
        keys(SPAWND_TOML_5, "Resource limits"),
        set(Rlimit::ALL.iter().map(|l| l.key()))
    );
}

#[test]
fn the_toml_page_states_the_daemons_defaults() {
    let secs = |d: std::time::Duration| d.as_secs().to_string();
    let quoted = |s: &str| format!("\"{s}\"");
    let top = [
        ("socket", quoted(config::DEFAULT_SOCKET)),
        ("self_service", "false".to_owned()),
        ("min_uid", config::DEFAULT_MIN_UID.to_string()),
        ("deny_users", "[]".to_owned()),
        ("state_dir", quoted(config::DEFAULT_STATE_DIR)),
        ("log_dir", quoted(config::DEFAULT_LOG_DIR)),
        ("log_keep", config::DEFAULT_LOG_KEEP.to_string()),
        (
            "log_max_size",
            quoted(&format!("{}M", config::DEFAULT_LOG_MAX_SIZE >> 20)),
        ),
        ("cgroup", quoted("auto")),
        ("on_shutdown", quoted("keep")),
        (
            "max_connections",
            config::DEFAULT_MAX_CONNECTIONS.to_string(),
        ),
        (
            "max_connections_per_uid",
            config::DEFAULT_MAX_CONNECTIONS_PER_UID.to_string(),
        ),
        (
            "max_user_connections",
            config::DEFAULT_MAX_USER_CONNECTIONS.to_string(),
        ),
        (
            "max_user_connections_per_uid",
            config::DEFAULT_MAX_USER_CONNECTIONS_PER_UID.to_string(),
        ),
        (
            "max_requests_in_flight",
            config::DEFAULT_MAX_REQUESTS_IN_FLIGHT.to_string(),
        ),
        (
            "first_request_timeout",
            secs(config::DEFAULT_FIRST_REQUEST_TIMEOUT),
        ),
        ("idle_timeout", secs(config::DEFAULT_IDLE_TIMEOUT)),
        ("send_timeout", secs(config::DEFAULT_SEND_TIMEOUT)),
        ("launch_timeout", secs(config::DEFAULT_LAUNCH_TIMEOUT)),
        ("default_profile", quoted(config::DEFAULT_PROFILE)),
    ];
    let env_keep: Vec<String> = config::DEFAULT_ENV_KEEP.iter().map(|p| quoted(p)).collect();
    let profile = [
        ("path", quoted(config::DEFAULT_SERVER_PATH)),
        ("env", "{}".to_owned()),
        ("env_keep", format!("[{}]", env_keep.join(", "))),
        ("umask", quoted(&format!("{:04o}", config::DEFAULT_UMASK))),
        ("allow_args", "true".to_owned()),
        ("interrupt_timeout", secs(config::DEFAULT_INTERRUPT_TIMEOUT)),
        ("term_timeout", secs(config::DEFAULT_TERM_TIMEOUT)),
        ("kill_timeout", secs(config::DEFAULT_KILL_TIMEOUT)),
    ];
    let page = entries(SPAWND_TOML_5);
    for (heading, defaults) in [("KEYS", &top[..]), ("PROFILES", &profile[..])] {
        for (key, value) in defaults {
            let text = &page[heading][*key];
            let want = format!("Default: \\fB{}\\fR.", value.replace('-', "\\-"));
            assert!(text.contains(&want), "{key}: wanted {want:?} in:\n{text}");
        }
    }
    // The page's SYNOPSIS and FILES name the default file.
    assert!(SPAWND_TOML_5.contains(&format!(".I {}\n", config::DEFAULT_PATH)));
}

#[test]
fn spawnd_8_has_its_commands_and_sections() {
    let page = spawnd_8().unwrap();
    assert!(page.contains("\n.TH SPAWND 8 "), "{}", &page[..80]);
    for want in [
        ".SH NAME",
        ".SH SYNOPSIS",
        ".SH DESCRIPTION",
        ".SH OPTIONS",
        "\\-\\-config",
        ".SH COMMANDS",
        "spawnd check\\-config",
        ".SH SIGNALS",
        ".SH FILES",
        ".SH SEE ALSO",
    ] {
        assert!(page.contains(want), "spawnd.8 lacks {want:?}");
    }
    // The launcher is the daemon's own business.
    assert!(
        !page.contains("launcher"),
        "spawnd.8 shows the hidden launcher command"
    );
}

#[test]
fn spawnctl_1_has_every_command_with_its_options() {
    let page = spawnctl_1().unwrap();
    assert!(page.contains("\n.TH SPAWNCTL 1 "));
    let cmd = spawnd_client::cli::Cli::command();
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("spawnctl {}", sub.get_name());
        assert!(page.contains(&name), "spawnctl.1 lacks {name:?}");
    }
    for want in [
        "\\-\\-socket",
        "SPAWND_SOCKET",
        "\\-\\-json",
        "\\-\\-now",
        "\\-\\-signal",
        "\\-\\-lines",
        "\\-\\-raw",
        "USER[/SERVER]",
        ".SH EXIT STATUS",
    ] {
        assert!(page.contains(want), "spawnctl.1 lacks {want:?}");
    }
}
