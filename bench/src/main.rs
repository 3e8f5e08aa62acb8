//! `spawnd-bench`: the Rust-level measurements of `scripts/bench` (see BENCHMARKS.md).
//!
//! Each subcommand measures one thing and prints one JSON object on stdout; `bench/run.py`
//! runs them (as root, beside a spawnd it started) and writes the tables. Latencies are
//! summarised as median and p99 (nearest rank) in microseconds.

mod daemon;
mod floor;
mod stats;

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(name = "spawnd-bench", about = "spawnd benchmarks (JSON on stdout)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Bare SOCK_SEQPACKET echo between two processes (the floor of a poll round trip).
    Echo {
        #[arg(long, default_value_t = 20_000)]
        iters: usize,
        #[arg(long, default_value_t = 2_000)]
        warmup: usize,
        #[arg(long, value_enum)]
        placement: floor::Placement,
        /// Ask through the spawnd client library instead of bare send/recv.
        #[arg(long)]
        client: bool,
    },
    /// Bare fork + setgroups/setresgid/setresuid + exec of ARGV as USER, until the exec (the
    /// floor of start-to-running).
    BareSpawn {
        #[arg(long)]
        user: String,
        #[arg(long, default_value_t = 300)]
        iters: usize,
        #[arg(long, default_value_t = 20)]
        warmup: usize,
        /// Pause between spawns, in milliseconds (outside the timed part).
        #[arg(long, default_value_t = 30.0)]
        gap_ms: f64,
        #[arg(long, value_enum, default_value_t = floor::CgroupEntry::None)]
        cgroup: floor::CgroupEntry,
        /// A cgroup v2 directory to create the per-spawn cgroups in.
        #[arg(long)]
        cgroup_base: Option<PathBuf>,
        #[arg(required = true, last = true)]
        argv: Vec<String>,
    },
    /// Durable write of a small record (write, fsync, rename, fsync the directory).
    StateWrite {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 200)]
        iters: usize,
        #[arg(long, default_value_t = 5)]
        warmup: usize,
        #[arg(long, default_value_t = 30.0)]
        gap_ms: f64,
    },
    /// `setpriv --reuid --regid --init-groups PROGRAM` run to completion.
    Setpriv {
        #[arg(long)]
        user: String,
        #[arg(long, default_value = "/bin/true")]
        program: String,
        #[arg(long, default_value_t = 100)]
        iters: usize,
        #[arg(long, default_value_t = 5)]
        warmup: usize,
    },
    /// Poll, status and list round trips through the Rust client.
    Rtt {
        #[arg(long)]
        socket: PathBuf,
        #[arg(long)]
        user: String,
        #[arg(long)]
        profile: String,
        #[arg(long, default_value_t = 20_000)]
        iters: usize,
        #[arg(long, default_value_t = 2_000)]
        warmup: usize,
        /// Pin the client to this CPU.
        #[arg(long)]
        cpu: Option<usize>,
    },
    /// Start-to-running and stop latency of one server, repeatedly.
    Spawn {
        #[arg(long)]
        socket: PathBuf,
        #[arg(long)]
        user: String,
        #[arg(long)]
        profile: String,
        #[arg(long, default_value_t = 200)]
        iters: usize,
        #[arg(long, default_value_t = 10)]
        warmup: usize,
        /// Pause between a stop and the next start, in milliseconds.
        #[arg(long, default_value_t = 30.0)]
        gap_ms: f64,
        /// The daemon's own cgroup v2 directory (for its CPU time per request).
        #[arg(long)]
        daemon_cgroup: Option<PathBuf>,
    },
    /// Start, poll or stop every scale server (USERS × PER_USER servers named s0000…).
    Many {
        #[arg(long)]
        socket: PathBuf,
        #[arg(long, value_enum)]
        action: daemon::Action,
        /// Comma-separated user names.
        #[arg(long, value_delimiter = ',')]
        users: Vec<String>,
        #[arg(long)]
        per_user: usize,
        #[arg(long, default_value = "")]
        profile: String,
        #[arg(long, default_value_t = 1)]
        connections: usize,
        /// Requests in flight per connection; 0 = all at once.
        #[arg(long, default_value_t = 64)]
        window: usize,
    },
    /// Client::list of every server, timed.
    ListAll {
        #[arg(long)]
        socket: PathBuf,
        #[arg(long, default_value_t = 10)]
        iters: usize,
    },
    /// Closed-loop poll throughput with CLIENTS connections.
    Throughput {
        #[arg(long)]
        socket: PathBuf,
        #[arg(long, value_delimiter = ',')]
        users: Vec<String>,
        #[arg(long)]
        per_user: usize,
        #[arg(long)]
        clients: usize,
        /// Polls in flight per connection.
        #[arg(long, default_value_t = 1)]
        depth: usize,
        #[arg(long, default_value_t = 4.0)]
        seconds: f64,
        #[arg(long)]
        daemon_cgroup: Option<PathBuf>,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(v) => {
            println!("{v}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("spawnd-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<serde_json::Value> {
    match command {
        Command::Echo {
            iters,
            warmup,
            placement,
            client,
        } => floor::echo(iters, warmup, placement, client),
        Command::BareSpawn {
            user,
            iters,
            warmup,
            gap_ms,
            cgroup,
            cgroup_base,
            argv,
        } => floor::bare_spawn(
            &user,
            &argv,
            iters,
            warmup,
            std::time::Duration::from_secs_f64(gap_ms / 1e3),
            cgroup,
            cgroup_base.as_deref(),
        ),
        Command::StateWrite {
            dir,
            iters,
            warmup,
            gap_ms,
        } => floor::state_write(
            &dir,
            iters,
            warmup,
            std::time::Duration::from_secs_f64(gap_ms / 1e3),
        ),
        Command::Setpriv {
            user,
            program,
            iters,
            warmup,
        } => floor::setpriv(&user, &program, iters, warmup),
        Command::Rtt {
            socket,
            user,
            profile,
            iters,
            warmup,
            cpu,
        } => daemon::rtt(&socket, &user, &profile, iters, warmup, cpu),
        Command::Spawn {
            socket,
            user,
            profile,
            iters,
            warmup,
            gap_ms,
            daemon_cgroup,
        } => daemon::spawn(
            &socket,
            &user,
            &profile,
            iters,
            warmup,
            std::time::Duration::from_secs_f64(gap_ms / 1e3),
            daemon_cgroup.as_deref(),
        ),
        Command::Many {
            socket,
            action,
            users,
            per_user,
            profile,
            connections,
            window,
        } => daemon::many(
            &socket,
            daemon::scale_ids(&users, per_user),
            action,
            &profile,
            connections,
            window,
        ),
        Command::ListAll { socket, iters } => daemon::list_all(&socket, iters),
        Command::Throughput {
            socket,
            users,
            per_user,
            clients,
            depth,
            seconds,
            daemon_cgroup,
        } => daemon::throughput(
            &socket,
            daemon::scale_ids(&users, per_user),
            clients,
            depth,
            seconds,
            daemon_cgroup,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn scale_ids_cover_every_pair() {
        let users = vec!["a".to_string(), "b".to_string()];
        let ids = daemon::scale_ids(&users, 3);
        assert_eq!(ids.len(), 6);
        assert_eq!(ids[0].user, "a");
        assert_eq!(ids[0].server, "s0000");
        assert_eq!(ids[5].user, "b");
        assert_eq!(ids[5].server, "s0002");
    }

    #[test]
    fn echo_packets_are_real_protocol_packets() {
        let (req, resp) = floor::poll_packets().expect("encode");
        assert!(spawnd_protocol::decode_request(&req).is_ok());
        assert!(spawnd_protocol::decode_response(&resp).is_ok());
    }
}
