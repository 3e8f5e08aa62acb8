//! `spawnd-xtask`: build-time generators for the packages (`scripts/package` runs them).
//!
//! ```text
//! cargo run -p spawnd-xtask -- man DIR          # spawnd.8, spawnctl.1, spawnd.toml.5
//! cargo run -p spawnd-xtask -- completions DIR  # spawnctl.bash, _spawnctl, spawnctl.fish
//! ```
//!
//! `spawnd(8)` and `spawnctl(1)` come from the same clap definitions the binaries parse
//! (`spawnd::cli`, `spawnd_client::cli`), with the sections clap cannot know (files, signals,
//! exit status) written here. `spawnd.toml(5)` is written by hand in `docs/man/spawnd.toml.5`
//! (no clap definition describes the configuration file); its keys are checked against the
//! daemon's own lists by this crate's tests. A separate binary rather than a hidden subcommand
//! of the shipped programs: the root daemon and the admin tool carry no generator code.

#![forbid(unsafe_code)]

use anyhow::{Context, Result};
use clap::{Arg, ArgAction, CommandFactory, Parser, Subcommand};
use clap_complete::Shell;
use roff::{Roff, bold, italic, roman};
use std::fs;
use std::path::{Path, PathBuf};

/// The hand-written page, carried in the binary so that `man DIR` writes all three.
const SPAWND_TOML_5: &str = include_str!("../../docs/man/spawnd.toml.5");

#[derive(Debug, Parser)]
#[command(
    name = "spawnd-xtask",
    about = "Generates spawnd's man pages and shell completions"
)]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Write spawnd.8, spawnctl.1 and spawnd.toml.5 (uncompressed roff) into DIR.
    Man { dir: PathBuf },
    /// Write spawnctl's completions for bash (spawnctl.bash), zsh (_spawnctl) and fish
    /// (spawnctl.fish) into DIR.
    Completions { dir: PathBuf },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Task::Man { dir } => {
            fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            write(&dir.join("spawnd.8"), &spawnd_8()?)?;
            write(&dir.join("spawnctl.1"), &spawnctl_1()?)?;
            write(&dir.join("spawnd.toml.5"), SPAWND_TOML_5)?;
        }
        Task::Completions { dir } => {
            fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let mut cmd = spawnd_client::cli::Cli::command();
            for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
                let path = clap_complete::generate_to(shell, &mut cmd, "spawnctl", &dir)
                    .with_context(|| format!("writing the {shell} completion"))?;
                println!("{}", path.display());
            }
        }
    }
    Ok(())
}

fn write(path: &Path, text: &str) -> Result<()> {
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    println!("{}", path.display());
    Ok(())
}

/// The roff preamble each of clap_mangen's (and roff's) renderings starts with.
const PREAMBLE: &str = ".ie \\n(.g .ds Aq \\(aq\n.el .ds Aq '\n";

/// `.TH`, NAME, SYNOPSIS and DESCRIPTION. clap_mangen renders the title, name and
/// description; the synopsis is written here, one line per command with the value
/// names (clap_mangen's shows `[--socket]` without its PATH).
fn head(cmd: &clap::Command, section: &str, manual: &str) -> Result<String> {
    let man = clap_mangen::Man::new(cmd.clone())
        .title(cmd.get_name().to_uppercase())
        .section(section)
        .date(page_date())
        .source(format!("spawnd {}", env!("CARGO_PKG_VERSION")))
        .manual(manual);
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    out.extend_from_slice(synopsis(cmd).as_bytes());
    man.render_description_section(&mut out)?;
    Ok(String::from_utf8(out)?)
}

/// OPTIONS, as clap_mangen renders them.
fn options(cmd: &clap::Command) -> Result<String> {
    let mut out = Vec::new();
    clap_mangen::Man::new(cmd.clone()).render_options_section(&mut out)?;
    Ok(String::from_utf8(out)?)
}

/// The page's date: `SOURCE_DATE_EPOCH` (reproducible builds; `scripts/package` sets it to the
/// commit's time), else today.
fn page_date() -> String {
    let secs = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0))
        });
    // Howard Hinnant's days-to-civil.
    let z = secs.div_euclid(86_400) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

/// SYNOPSIS: `spawnd [--config PATH]`, `spawnctl [--socket PATH] stop [--now] ... USER[/SERVER]`.
fn synopsis(cmd: &clap::Command) -> String {
    let mut cmd = cmd.clone();
    cmd.build();
    let bin = cmd.get_name().to_owned();
    let top: Vec<String> = args(&cmd, true).map(synopsis_word).collect();
    let mut roff = Roff::default();
    roff.control("SH", ["SYNOPSIS"]);
    let mut lines = Vec::new();
    if !cmd.is_subcommand_required_set() {
        lines.push((bin.clone(), top.clone()));
    }
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let mut words = top.clone();
        words.push(sub.get_name().to_owned());
        words.extend(own_args(sub).map(synopsis_word));
        lines.push((bin.clone(), words));
    }
    for (i, (bin, words)) in lines.into_iter().enumerate() {
        if i > 0 {
            roff.control("br", []);
        }
        let mut line = vec![bold(bin)];
        for word in words {
            line.push(roman(" "));
            line.push(roman(word));
        }
        roff.text(line);
    }
    roff.to_roff()
}

/// One page from its pieces, with roff's preamble once, at the top.
fn assemble(pieces: &[&str]) -> String {
    let mut page = String::from(PREAMBLE);
    for piece in pieces {
        page.push_str(&piece.replace(PREAMBLE, ""));
    }
    page
}

/// One `.SS` per visible subcommand: its full usage, its help, and each of its arguments
/// (clap_mangen would only list the names and point to per-subcommand pages that do not exist).
fn commands_section(cmd: &clap::Command, heading: &str) -> String {
    let mut roff = Roff::default();
    roff.control("SH", [heading]);
    let bin = cmd.get_name().to_owned();
    let mut cmd = cmd.clone();
    cmd.build();
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let mut usage = vec![bold(format!("{bin} {}", sub.get_name()))];
        for arg in own_args(sub) {
            usage.push(roman(" "));
            usage.push(roman(synopsis_word(arg)));
        }
        roff.control("SS", []);
        roff.text(usage);
        if let Some(about) = sub.get_long_about().or_else(|| sub.get_about()) {
            paragraphs(&mut roff, &about.to_string());
        }
        for arg in own_args(sub) {
            roff.control("TP", []);
            roff.text(arg_term(arg));
            let mut help = arg
                .get_long_help()
                .or_else(|| arg.get_help())
                .map(|h| h.to_string())
                .unwrap_or_default();
            let defaults: Vec<String> = arg
                .get_default_values()
                .iter()
                .map(|v| v.to_string_lossy().into_owned())
                .collect();
            if !defaults.is_empty() && arg.get_num_args().is_some_and(|n| n.takes_values()) {
                help.push_str(&format!(" [default: {}]", defaults.join(",")));
            }
            roff.text([roman(help.replace('\n', " "))]);
        }
    }
    roff.to_roff()
}

/// The subcommand's own arguments, options before positionals: not the global ones it
/// inherits, not help or version.
fn own_args(sub: &clap::Command) -> impl Iterator<Item = &Arg> {
    args(sub, false)
}

/// A command's arguments without help and version, options first; `global`: with the global
/// ones too.
fn args(cmd: &clap::Command, global: bool) -> impl Iterator<Item = &Arg> {
    let visible = move |a: &&Arg| {
        !a.is_hide_set()
            && (global || !a.is_global_set())
            && !matches!(
                a.get_action(),
                ArgAction::Help | ArgAction::HelpShort | ArgAction::HelpLong | ArgAction::Version
            )
    };
    let options = cmd
        .get_arguments()
        .filter(move |a| visible(a) && !a.is_positional());
    let positionals = cmd
        .get_arguments()
        .filter(move |a| visible(a) && a.is_positional());
    options.chain(positionals)
}

fn value_name(arg: &Arg) -> String {
    arg.get_value_names()
        .map(|names| names.join(" "))
        .unwrap_or_else(|| arg.get_id().as_str().to_uppercase())
}

/// `[--now]`, `[-n LINES]`, `USER[/SERVER]`, `[PATH]`.
fn synopsis_word(arg: &Arg) -> String {
    let takes_value = arg.get_num_args().is_some_and(|n| n.takes_values());
    let word = if arg.is_positional() {
        value_name(arg)
    } else {
        let flag = match (arg.get_short(), arg.get_long()) {
            (Some(s), _) => format!("-{s}"),
            (None, Some(l)) => format!("--{l}"),
            (None, None) => String::new(),
        };
        if takes_value {
            format!("{flag} {}", value_name(arg))
        } else {
            flag
        }
    };
    if arg.is_required_set() {
        word
    } else {
        format!("[{word}]")
    }
}

/// The term of an argument's `.TP` entry: `-n, --lines LINES`, or the value name.
fn arg_term(arg: &Arg) -> Vec<roff::Inline> {
    if arg.is_positional() {
        return vec![italic(value_name(arg))];
    }
    let mut term = Vec::new();
    if let Some(s) = arg.get_short() {
        term.push(bold(format!("-{s}")));
    }
    if let Some(l) = arg.get_long() {
        if !term.is_empty() {
            term.push(roman(", "));
        }
        term.push(bold(format!("--{l}")));
    }
    if arg.get_num_args().is_some_and(|n| n.takes_values()) {
        term.push(roman(" "));
        term.push(italic(value_name(arg)));
    }
    term
}

fn paragraphs(roff: &mut Roff, text: &str) {
    for (i, para) in text.split("\n\n").enumerate() {
        if i > 0 {
            roff.control("PP", []);
        }
        roff.text([roman(para.replace('\n', " "))]);
    }
}

/// `spawnd(8)`.
fn spawnd_8() -> Result<String> {
    // `help` is in the OPTIONS (`--help`); no page for it.
    let cmd = spawnd::cli::Cli::command().disable_help_subcommand(true);
    Ok(assemble(&[
        &head(&cmd, "8", "System Manager's Manual")?,
        SPAWND_8_DESCRIPTION,
        &options(&cmd)?,
        &commands_section(&cmd, "COMMANDS"),
        SPAWND_8_TAIL,
    ]))
}

/// `spawnctl(1)`.
fn spawnctl_1() -> Result<String> {
    let cmd = spawnd_client::cli::Cli::command().disable_help_subcommand(true);
    Ok(assemble(&[
        &head(&cmd, "1", "User Commands")?,
        SPAWNCTL_1_DESCRIPTION,
        &options(&cmd)?,
        &commands_section(&cmd, "COMMANDS"),
        SPAWNCTL_1_TAIL,
    ]))
}

/// More of `spawnd(8)`'s DESCRIPTION (clap's `about` is its first paragraph).
const SPAWND_8_DESCRIPTION: &str = r#".PP
\fBspawnd\fR is a root daemon that starts, supervises and stops each JupyterHub user's
single\-user server as that user, for a hub that runs as an ordinary service account.
The hub (through \fBSpawndSpawner\fR) and administrators (through \fBspawnctl\fR(1)) talk to it
over a Unix \fBSOCK_SEQPACKET\fR socket; the daemon decides what each peer may do from the
kernel's credentials of the connection (\fBSO_PEERCRED\fR, \fBSO_PEERGROUPS\fR), never from
anything the peer says.
.PP
The hub chooses a \fIprofile\fR by name and may append arguments; the executable is always the
profile's, from the configuration file \fBspawnd.toml\fR(5).
Each server runs with its user's uid, gid and full group list, in the user's home directory,
with an environment built from an allow\-list, its output in a per\-server log file.
The daemon holds a pidfd for every server, so exit statuses are exact and signals never reach a
recycled PID, and stops the server's whole process tree through a per\-server cgroup v2
(or its process group where the host has no usable cgroup v2).
.PP
Without a command, \fBspawnd\fR runs the daemon.
Under systemd, \fBspawnd.socket\fR creates the socket and \fBspawnd.service\fR runs
\fBspawnd \-\-config /etc/spawnd/spawnd.toml\fR (\fBType=notify\fR, with a watchdog);
without systemd the daemon binds the socket itself.
Servers outlive the daemon: with \fBon_shutdown = "keep"\fR (the default) a stopped, restarted
or upgraded daemon leaves them running, and the next one re\-adopts them from its state
directory.
"#;

const SPAWND_8_TAIL: &str = r#".SH SIGNALS
.TP
.B SIGHUP
Reload the configuration file.
A file with any problem is refused and logged, and the old configuration stays.
Policy changes apply to the next start of a server.
.TP
.BR SIGTERM ", " SIGINT
Exit.
With \fBon_shutdown = "keep"\fR servers keep running and are re\-adopted by the next daemon;
with \fBon_shutdown = "stop"\fR every server is stopped first.
.SH ENVIRONMENT
.TP
.B SPAWND_LOG
What to log, in the filter syntax of Rust's \fBtracing\fR (default \fBinfo\fR).
Every start, stop, signal and refused request is audited at \fBinfo\fR.
.TP
.B JOURNAL_STREAM
When systemd connects standard error to the journal, the daemon logs to journald directly.
.TP
.BR LISTEN_FDS ", " LISTEN_PID
The listening socket passed by \fBspawnd.socket\fR (socket activation).
.SH EXIT STATUS
\fBspawnd check\-config\fR exits 0 when the file is valid and 1 when it has any problem.
The daemon exits 0 after a clean shutdown and 1 when it cannot start (an invalid or unsafe
configuration, directories not owned by root, a socket it cannot bind).
.SH FILES
.TP
.I /etc/spawnd/spawnd.toml
The configuration, \fBspawnd.toml\fR(5).
It must be owned by root and writable by nobody else.
.TP
.I /run/spawnd/spawnd.sock
The socket (mode 0660, group \fBsocket_group\fR).
.TP
.I /var/lib/spawnd
The state directory: one record per server, from which a restarted daemon re\-adopts its
servers (mode 0700).
.TP
.I /var/log/spawnd
One log file per server, below one directory per user.
.TP
.IR /usr/lib/systemd/system/spawnd.service ", " spawnd.socket
The systemd units.
Local changes belong in a drop\-in (\fBsystemctl edit spawnd.service\fR).
.TP
.I /usr/lib/tmpfiles.d/spawnd.conf
Creates the three directories above at boot (\fBsystemd\-tmpfiles\fR(8)).
.SH SEE ALSO
\fBspawnd.toml\fR(5), \fBspawnctl\fR(1), \fBsystemd.service\fR(5), \fBsystemd\-tmpfiles\fR(8)
"#;

/// More of `spawnctl(1)`'s DESCRIPTION.
const SPAWNCTL_1_DESCRIPTION: &str = r#".PP
\fBspawnctl\fR is the administrator's tool for \fBspawnd\fR(8): it shows the daemon's state and
the servers it supervises, stops them, signals them and prints their logs.
It connects to the daemon's socket, and the daemon decides what it may do from its uid and
groups (see PERMISSIONS).
Errors from the daemon are printed as the daemon wrote them.
A log is its user's text: \fBspawnctl logs\fR shows control characters and bidirectional
overrides as \fB\\x1b\fR\-style escapes unless \fB\-\-raw\fR.
"#;

const SPAWNCTL_1_TAIL: &str = r#".SH TARGETS
A server is named \fIUSER\fR (the user's default server) or \fIUSER\fR/\fISERVER\fR
(a named server).
.SH EXIT STATUS
.TP
.B 0
Success.
.TP
.B 1
The daemon refused or failed the request (its error is printed as \fIKind\fR: \fImessage\fR).
.TP
.B 2
Usage error.
.TP
.B 3
The daemon could not be reached (not running, wrong socket, no permission, backlog full,
connection closed).
.TP
.B 4
Any other failure (protocol error, local I/O error).
.SH ENVIRONMENT
.TP
.B SPAWND_SOCKET
The daemon's socket, as \fB\-\-socket\fR.
.SH PERMISSIONS
Root and members of spawnd's \fBadmin_group\fR may do everything, for every server.
With \fBself_service = true\fR, members of spawnd's \fBgroup\fR may list, poll, read the logs
of and stop their own servers (the socket's group must let them reach it).
Anyone else is refused.
.SH FILES
.TP
.I /run/spawnd/spawnd.sock
The default socket.
.SH SEE ALSO
\fBspawnd\fR(8), \fBspawnd.toml\fR(5)
"#;

#[cfg(test)]
mod tests;
