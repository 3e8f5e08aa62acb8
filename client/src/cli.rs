//! The command line of `spawnctl`, in the library so that the man page `spawnctl(1)` and the
//! shell completions are generated from the same definition the binary parses (`xtask/`, run
//! by `scripts/package`).

use crate::DEFAULT_SOCKET;
use crate::protocol::{MAX_LOG_LINES, ServerId, validate_server_name, validate_user_name};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::str::FromStr;

/// What `spawnctl --help` prints after the options: target names and exit statuses.
pub const EXIT_HELP: &str = "\
Servers are named USER (the user's default server) or USER/SERVER (a named server).

Exit status:
  0  success
  1  the daemon refused or failed the request (its error is printed as `Kind: message`)
  2  usage error
  3  the daemon could not be reached (not running, wrong socket, no permission, backlog full,
     connection closed)
  4  any other failure (protocol error, local I/O error)";

/// Look at and control the Jupyter servers that spawnd supervises.
#[derive(Debug, Parser)]
#[command(name = "spawnctl", version, after_help = EXIT_HELP)]
pub struct Cli {
    /// The daemon's socket.
    #[arg(long, global = true, env = "SPAWND_SOCKET", default_value = DEFAULT_SOCKET, value_name = "PATH")]
    pub socket: PathBuf,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show the daemon's version, uptime, server counts, tree-kill mode and capabilities.
    Status,
    /// List the servers you may see (admins: all of them).
    ///
    /// UPTIME is how long a server has been up; for an exited server, how long it ran.
    List {
        /// Print a JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Stop a server (SIGINT, then SIGTERM, then SIGKILL of its whole process tree) and wait
    /// until it is gone.
    Stop {
        /// USER or USER/SERVER.
        #[arg(value_parser = parse_target, value_name = "USER[/SERVER]")]
        target: ServerId,
        /// Skip the SIGINT step: start with SIGTERM.
        #[arg(long)]
        now: bool,
        /// Only if this is the server's current instance.
        #[arg(long, value_name = "N")]
        instance: Option<u64>,
    },
    /// Send a signal to a server's main process.
    Kill {
        /// USER or USER/SERVER.
        #[arg(value_parser = parse_target, value_name = "USER[/SERVER]")]
        target: ServerId,
        /// Signal name (TERM, SIGTERM, KILL, HUP, ...) or number.
        #[arg(short, long, default_value = "TERM", value_parser = parse_signal, value_name = "SIG")]
        signal: i32,
        /// Only if this is the server's current instance.
        #[arg(long, value_name = "N")]
        instance: Option<u64>,
    },
    /// Print the last lines of a server's log.
    Logs {
        /// USER or USER/SERVER.
        #[arg(value_parser = parse_target, value_name = "USER[/SERVER]")]
        target: ServerId,
        /// How many lines.
        #[arg(
            short = 'n',
            long,
            default_value_t = 50,
            value_name = "LINES",
            value_parser = clap::value_parser!(u32).range(0..=i64::from(MAX_LOG_LINES))
        )]
        lines: u32,
        /// Print control characters as they are (by default they are shown as \x1b-style
        /// escapes: a log is its user's text, and escape sequences in it could rewrite what a
        /// terminal shows or does, also through a pipe into less -R or tail).
        #[arg(long)]
        raw: bool,
    },
}

/// `alice` is alice's default server, `alice/gpu` her server named `gpu`.
pub fn parse_target(s: &str) -> Result<ServerId, String> {
    let (user, server) = match s.split_once('/') {
        None => (s, ""),
        Some((_, "")) => {
            return Err(format!(
                "{s:?} has an empty server name after '/': write just USER for the default server"
            ));
        }
        Some(pair) => pair,
    };
    validate_user_name(user).map_err(|e| e.to_string())?;
    validate_server_name(server).map_err(|e| e.to_string())?;
    Ok(ServerId::new(user, server))
}

/// `TERM`, `SIGTERM`, `term` or `15`.
pub fn parse_signal(s: &str) -> Result<i32, String> {
    let s = s.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return match s.parse::<i32>() {
            Ok(n) if (1..=64).contains(&n) => Ok(n),
            _ => Err(format!("signal number {s} is out of range (1 to 64)")),
        };
    }
    let upper = s.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    nix::sys::signal::Signal::from_str(&format!("SIG{name}"))
        .map(|sig| sig as i32)
        .map_err(|_| {
            format!("unknown signal {s:?}: give a name such as TERM, SIGKILL or HUP, or a number")
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn targets() {
        assert_eq!(parse_target("alice").unwrap(), ServerId::new("alice", ""));
        assert_eq!(
            parse_target("alice/gpu").unwrap(),
            ServerId::new("alice", "gpu")
        );
        assert_eq!(
            parse_target("bob.smith/gpu-2.x").unwrap(),
            ServerId::new("bob.smith", "gpu-2.x")
        );
        assert!(
            parse_target("alice/")
                .unwrap_err()
                .contains("empty server name")
        );
        assert!(
            parse_target("/gpu")
                .unwrap_err()
                .contains("user name is empty")
        );
        assert!(parse_target("").unwrap_err().contains("user name is empty"));
        assert!(parse_target("a/b/c").unwrap_err().contains("server name"));
        assert!(parse_target("../etc").is_err());
        assert!(parse_target("alice/..").is_err());
        assert!(
            parse_target(&"a".repeat(65))
                .unwrap_err()
                .contains("65 bytes")
        );
    }

    #[test]
    fn signals() {
        assert_eq!(parse_signal("TERM"), Ok(15));
        assert_eq!(parse_signal("SIGTERM"), Ok(15));
        assert_eq!(parse_signal("term"), Ok(15));
        assert_eq!(parse_signal("KILL"), Ok(9));
        assert_eq!(parse_signal("sigkill"), Ok(9));
        assert_eq!(parse_signal("HUP"), Ok(1));
        assert_eq!(parse_signal("USR1"), Ok(libc::SIGUSR1));
        assert_eq!(parse_signal("9"), Ok(9));
        assert_eq!(parse_signal("64"), Ok(64));
        assert!(parse_signal("0").is_err());
        assert!(parse_signal("65").is_err());
        assert!(parse_signal("99999999999").is_err());
        assert!(parse_signal("-9").is_err());
        assert!(parse_signal("NOPE").unwrap_err().contains("unknown signal"));
        assert!(parse_signal("").is_err());
    }

    #[test]
    fn command_lines() {
        let cli =
            Cli::try_parse_from(["spawnctl", "kill", "alice/gpu", "--signal", "KILL"]).unwrap();
        match cli.command {
            Command::Kill {
                target,
                signal,
                instance,
            } => {
                assert_eq!(target, ServerId::new("alice", "gpu"));
                assert_eq!(signal, 9);
                assert_eq!(instance, None);
            }
            other => panic!("{other:?}"),
        }
        let cli = Cli::try_parse_from(["spawnctl", "kill", "alice"]).unwrap();
        assert!(matches!(cli.command, Command::Kill { signal: 15, .. }));
        let cli = Cli::try_parse_from([
            "spawnctl",
            "--socket",
            "/tmp/s",
            "stop",
            "bob",
            "--now",
            "--instance",
            "7",
        ])
        .unwrap();
        assert_eq!(cli.socket, PathBuf::from("/tmp/s"));
        assert!(matches!(
            cli.command,
            Command::Stop {
                now: true,
                instance: Some(7),
                ..
            }
        ));
        let cli = Cli::try_parse_from(["spawnctl", "logs", "bob", "--raw"]).unwrap();
        assert!(matches!(cli.command, Command::Logs { raw: true, .. }));
        let cli = Cli::try_parse_from(["spawnctl", "logs", "bob"]).unwrap();
        assert!(matches!(cli.command, Command::Logs { lines: 50, .. }));
        let cli = Cli::try_parse_from(["spawnctl", "logs", "bob", "-n", "5"]).unwrap();
        assert!(matches!(cli.command, Command::Logs { lines: 5, .. }));
        // The socket option may come after the subcommand too.
        let cli = Cli::try_parse_from(["spawnctl", "list", "--json", "--socket", "/x"]).unwrap();
        assert_eq!(cli.socket, PathBuf::from("/x"));
        assert!(matches!(cli.command, Command::List { json: true }));
        for bad in [
            vec!["spawnctl", "logs", "bob", "-n", "10001"],
            vec!["spawnctl", "kill", "bob", "-s", "NOPE"],
            vec!["spawnctl", "stop", "bob/"],
            vec!["spawnctl", "stop"],
        ] {
            let err = Cli::try_parse_from(&bad).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{bad:?}");
        }
    }
}
