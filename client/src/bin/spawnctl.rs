//! `spawnctl`: look at and control the servers spawnd supervises.

#![forbid(unsafe_code)]

use anyhow::Result;
use clap::Parser;
use serde::Serialize;
use spawnd_client::cli::{Cli, Command};
use spawnd_client::protocol::{DaemonStatus, ExitStatus, ServerInfo, ServerState};
use spawnd_client::{BlockingClient, ClientError};
use std::io::Write;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

fn signal_name(signal: i32) -> String {
    match nix::sys::signal::Signal::try_from(signal) {
        Ok(sig) => sig.as_str().to_string(),
        Err(_) => format!("signal {signal}"),
    }
}

/// `45s`, `5min 3s`, `3h 12min`, `2d 4h`: the two largest units, like systemd.
fn human_duration(secs: u64) -> String {
    let (d, h, m, s) = (
        secs / 86_400,
        secs % 86_400 / 3600,
        secs % 3600 / 60,
        secs % 60,
    );
    let (big, small) = if d > 0 {
        (format!("{d}d"), (h > 0).then(|| format!("{h}h")))
    } else if h > 0 {
        (format!("{h}h"), (m > 0).then(|| format!("{m}min")))
    } else if m > 0 {
        (format!("{m}min"), (s > 0).then(|| format!("{s}s")))
    } else {
        (format!("{s}s"), None)
    };
    match small {
        Some(small) => format!("{big} {small}"),
        None => big,
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// How long the server has been up, or for an exited one how long it ran.
fn uptime_secs(info: &ServerInfo, now: u64) -> u64 {
    let end = match info.state {
        ServerState::Exited(_) => info.exited_at.unwrap_or(now),
        ServerState::Starting | ServerState::Running | ServerState::Stopping => now,
    };
    end.saturating_sub(info.started_at)
}

fn state_text(state: &ServerState) -> String {
    match state {
        ServerState::Starting => "starting".into(),
        ServerState::Running => "running".into(),
        ServerState::Stopping => "stopping".into(),
        ServerState::Exited(ExitStatus::Code(c)) => format!("exited (code {c})"),
        ServerState::Exited(ExitStatus::Signal(s)) => format!("exited (signal {s})"),
        ServerState::Exited(ExitStatus::Unknown) => "exited (status unknown)".into(),
    }
}

fn render_table(servers: &[ServerInfo], now: u64) -> String {
    let header = [
        "USER", "SERVER", "INSTANCE", "PID", "STATE", "UPTIME", "PROFILE",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
    for info in servers {
        let server = if info.server.server.is_empty() {
            "(default)".to_string()
        } else {
            info.server.server.clone()
        };
        rows.push(vec![
            info.server.user.clone(),
            server,
            info.instance.to_string(),
            info.pid.to_string(),
            state_text(&info.state),
            human_duration(uptime_secs(info, now)),
            info.profile.clone(),
        ]);
    }
    let mut widths = vec![0; header.len()];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    if !servers.is_empty() {
        for row in &rows {
            let mut line = String::new();
            for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
                if i + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    line.push_str(&format!("{cell:<w$}  "));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out.push('\n');
    }
    out.push_str(&format!("{} servers listed.\n", servers.len()));
    out
}

#[derive(Debug, Serialize)]
struct JsonServer<'a> {
    user: &'a str,
    server: &'a str,
    instance: u64,
    uid: u32,
    pid: u32,
    state: &'static str,
    exit_code: Option<i32>,
    exit_signal: Option<i32>,
    profile: &'a str,
    port: Option<u16>,
    started_at: u64,
    exited_at: Option<u64>,
    uptime_secs: u64,
}

fn render_json(servers: &[ServerInfo], now: u64) -> Result<String> {
    let rows: Vec<JsonServer<'_>> = servers
        .iter()
        .map(|info| {
            let (state, exit_code, exit_signal) = match info.state {
                ServerState::Starting => ("starting", None, None),
                ServerState::Running => ("running", None, None),
                ServerState::Stopping => ("stopping", None, None),
                ServerState::Exited(ExitStatus::Code(c)) => ("exited", Some(c), None),
                ServerState::Exited(ExitStatus::Signal(s)) => ("exited", None, Some(s)),
                ServerState::Exited(ExitStatus::Unknown) => ("exited", None, None),
            };
            JsonServer {
                user: &info.server.user,
                server: &info.server.server,
                instance: info.instance,
                uid: info.uid,
                pid: info.pid,
                state,
                exit_code,
                exit_signal,
                profile: &info.profile,
                port: info.port,
                started_at: info.started_at,
                exited_at: info.exited_at,
                uptime_secs: uptime_secs(info, now),
            }
        })
        .collect();
    let mut text = serde_json::to_string_pretty(&rows)?;
    text.push('\n');
    Ok(text)
}

/// The status, then the problems the daemon sees with its set-up (`None`: it could not say,
/// an older daemon or a role that may not ask).
fn render_status(status: &DaemonStatus, problems: Option<&[String]>) -> String {
    let capabilities = if status.capabilities.is_empty() {
        "(none)".to_string()
    } else {
        status.capabilities.join(" ")
    };
    let problems = match problems {
        None => String::new(),
        Some([]) => "problems:      none\n".to_string(),
        Some(problems) => problems
            .iter()
            .map(|p| format!("PROBLEM:       {p}\n"))
            .collect(),
    };
    let mut text = format!(
        "spawnd {} (protocol {}), pid {}\n\
         uptime:        {}\n\
         servers:       {} running, {} exited\n\
         tree kill:     {}\n\
         capabilities:  {}\n\
         your role:     {}\n",
        status.version,
        status.protocol,
        status.pid,
        human_duration(status.uptime_secs),
        status.running,
        status.exited,
        status.tree_kill,
        capabilities,
        status.your_role,
    );
    text.push_str(&problems);
    text
}

/// A log line as it may be shown to an admin: every control character but the tab (ESC and
/// the C1 controls that start escape sequences, carriage returns, backspaces, DEL) and every
/// bidirectional override (which makes text read other than it is) becomes a visible
/// `\x1b`-style escape, so that a user's output cannot retitle, recolour, rewrite, disguise or
/// answer back through the terminal of the admin who reads it.
fn escape_controls(line: &str) -> std::borrow::Cow<'_, str> {
    fn needs_escape(c: char) -> bool {
        (c.is_control() && c != '\t')
            || matches!(
                c,
                '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
            )
    }
    if !line.chars().any(needs_escape) {
        return std::borrow::Cow::Borrowed(line);
    }
    let mut out = String::with_capacity(line.len() + 8);
    for c in line.chars() {
        match c {
            c if needs_escape(c) && (c as u32) < 0x100 => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c if needs_escape(c) => out.push_str(&format!("\\u{{{:04x}}}", c as u32)),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Writes to stdout; a closed pipe (`spawnctl logs | head`) is not an error.
fn print(text: &str) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

fn run(cli: Cli) -> Result<()> {
    let client = BlockingClient::connect(&cli.socket)?;
    match cli.command {
        Command::Status => {
            let status = client.status()?;
            // Health is the admin's and the hub's (a self-service user's request would only be
            // refused, and audited); an older daemon does not know it.
            let problems = match status.your_role.as_str() {
                "admin" | "hub" => client.health().ok(),
                _ => None,
            };
            print(&render_status(&status, problems.as_deref()))
        }
        Command::List { json } => {
            let servers = client.list()?;
            let now = now_secs();
            if json {
                print(&render_json(&servers, now)?)
            } else {
                print(&render_table(&servers, now))
            }
        }
        Command::Stop {
            target,
            now,
            instance,
        } => {
            let (instance, exit) = client.stop(&target, instance, now)?;
            print(&format!("stopped {target} (instance {instance}): {exit}\n"))
        }
        Command::Kill {
            target,
            signal,
            instance,
        } => {
            client.signal(&target, instance, signal)?;
            print(&format!("sent {} to {target}\n", signal_name(signal)))
        }
        Command::Logs { target, lines, raw } => {
            let tail = client.logs(&target, lines)?;
            let escape = !raw;
            let mut text = String::new();
            for line in &tail.lines {
                if escape {
                    text.push_str(&escape_controls(line));
                } else {
                    text.push_str(line);
                }
                text.push('\n');
            }
            print(&text)?;
            if tail.truncated {
                eprintln!(
                    "spawnctl: only the last {} lines of {} fit in one response",
                    tail.lines.len(),
                    tail.path
                );
            }
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let code = match err.downcast_ref::<ClientError>() {
                // Exactly as the daemon wrote it: `Kind: message`.
                Some(ClientError::Daemon(_)) => 1,
                Some(e) if e.is_daemon_unreachable() => 3,
                _ => 4,
            };
            eprintln!("spawnctl: {err}");
            ExitCode::from(code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spawnd_client::protocol::ServerId;

    #[test]
    fn control_characters_are_escaped_for_terminals() {
        assert_eq!(escape_controls("plain\ttext é"), "plain\ttext é");
        assert!(matches!(
            escape_controls("plain"),
            std::borrow::Cow::Borrowed(_)
        ));
        assert_eq!(
            escape_controls("\u{1b}]0;pwned\u{7}\u{1b}[2Jok\r\u{8}\u{7f}"),
            "\\x1b]0;pwned\\x07\\x1b[2Jok\\x0d\\x08\\x7f"
        );
        // The 8-bit CSI (U+009B) that some terminals honour.
        assert_eq!(escape_controls("a\u{9b}31mb"), "a\\x9b31mb");
        // Bidirectional overrides that make a line read other than it is.
        assert_eq!(
            escape_controls("x\u{202e}y\u{2066}z"),
            "x\\u{202e}y\\u{2066}z"
        );
    }

    #[test]
    fn signal_names() {
        assert_eq!(signal_name(15), "SIGTERM");
        assert_eq!(signal_name(40), "signal 40");
    }

    #[test]
    fn durations() {
        assert_eq!(human_duration(0), "0s");
        assert_eq!(human_duration(45), "45s");
        assert_eq!(human_duration(60), "1min");
        assert_eq!(human_duration(303), "5min 3s");
        assert_eq!(human_duration(3 * 3600 + 12 * 60 + 9), "3h 12min");
        assert_eq!(human_duration(7200), "2h");
        assert_eq!(human_duration(2 * 86_400 + 4 * 3600 + 59), "2d 4h");
    }

    fn info(user: &str, server: &str, state: ServerState) -> ServerInfo {
        ServerInfo {
            server: ServerId::new(user, server),
            instance: 3,
            uid: 1001,
            pid: 4242,
            state,
            profile: "default".into(),
            port: Some(8888),
            started_at: 1_000,
            exited_at: matches!(state, ServerState::Exited(_)).then_some(1_100),
        }
    }

    #[test]
    fn table() {
        let servers = vec![
            info("alice", "", ServerState::Running),
            info("bob", "gpu", ServerState::Exited(ExitStatus::Code(3))),
            info("carol", "", ServerState::Exited(ExitStatus::Signal(9))),
        ];
        let text = render_table(&servers, 1_000 + 3 * 3600 + 12 * 60);
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].starts_with("USER   SERVER     INSTANCE  PID   STATE"),
            "{text}"
        );
        assert!(
            lines[1].contains("(default)") && lines[1].contains("3h 12min"),
            "{text}"
        );
        assert!(
            lines[2].contains("exited (code 3)") && lines[2].contains("1min 40s"),
            "{text}"
        );
        assert!(lines[3].contains("exited (signal 9)"), "{text}");
        assert_eq!(lines.last(), Some(&"3 servers listed."));
        assert_eq!(render_table(&[], 0), "0 servers listed.\n");
    }

    #[test]
    fn json() {
        let servers = vec![
            info("alice", "", ServerState::Running),
            info("bob", "gpu", ServerState::Exited(ExitStatus::Signal(9))),
        ];
        let text = render_json(&servers, 1_060).unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        let rows = value.as_array().unwrap();
        assert_eq!(rows.len(), 2);
        let alice = &rows[0];
        for key in [
            "user",
            "server",
            "instance",
            "uid",
            "pid",
            "state",
            "exit_code",
            "exit_signal",
            "profile",
            "port",
            "started_at",
            "uptime_secs",
        ] {
            assert!(alice.get(key).is_some(), "missing {key}");
        }
        assert_eq!(alice["user"], "alice");
        assert_eq!(alice["server"], "");
        assert_eq!(alice["state"], "running");
        assert!(alice["exit_code"].is_null() && alice["exit_signal"].is_null());
        assert_eq!(alice["port"], 8888);
        assert_eq!(alice["uptime_secs"], 60);
        let bob = &rows[1];
        assert_eq!(bob["state"], "exited");
        assert_eq!(bob["exit_signal"], 9);
        assert!(bob["exit_code"].is_null());
        assert_eq!(bob["uptime_secs"], 100);
        assert_eq!(render_json(&[], 0).unwrap(), "[]\n");
    }

    #[test]
    fn status_text() {
        let status = DaemonStatus {
            version: "0.1.0".into(),
            protocol: 1,
            pid: 77,
            uptime_secs: 90,
            running: 2,
            exited: 1,
            tree_kill: "process-group".into(),
            capabilities: vec!["CAP_KILL".into(), "CAP_SETUID".into()],
            your_role: "admin".into(),
        };
        let text = render_status(&status, Some(&[]));
        assert!(text.ends_with("problems:      none\n"), "{text}");
        assert!(!render_status(&status, None).contains("problems"));
        let problem = "THE HUB CANNOT CONNECT: jupyterhub cannot connect".to_string();
        let text = render_status(&status, Some(std::slice::from_ref(&problem)));
        assert!(
            text.ends_with(&format!("PROBLEM:       {problem}\n")),
            "{text}"
        );
        assert!(
            text.starts_with("spawnd 0.1.0 (protocol 1), pid 77\n"),
            "{text}"
        );
        assert!(
            text.contains("1min 30s") && text.contains("2 running, 1 exited"),
            "{text}"
        );
        assert!(text.contains("CAP_KILL CAP_SETUID"), "{text}");
    }
}
