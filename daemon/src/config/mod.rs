//! The daemon's configuration: `/etc/spawnd/spawnd.toml` (or `spawnd --config PATH`).
//!
//! [`Config::parse`] reads the TOML text, resolves the configured accounts through NSS and
//! validates everything it can without touching the directories the daemon will write (those
//! are checked by the daemon at start with [`check_private_dir`]). It never stops at the first
//! mistake: every problem is collected, each with the key it belongs to, so that an operator
//! running `spawnd check-config` sees the whole list at once.
//!
//! The file-system checks ([`check_program`], [`check_private_dir`], [`check_config_file`]) are
//! the guard against a root process being tricked into running or writing something a user
//! controls. Their errors are typed: whether a path is missing, unusable or unsafe is in the
//! value ([`PathProblem`], [`ProgramProblem`]), never found out by looking again.
//!
//! The parts:
//! - `schema`: the types and defaults: what a valid configuration is;
//! - `settings`: the top-level keys, read into a [`Config`];
//! - `profile`: one `[profiles.NAME]` table, read into a [`Profile`];
//! - `parse`: taking typed values out of TOML, collecting [`Problem`]s;
//! - `accounts`: user and group lookups through NSS;
//! - `env`: the environment rules (forbidden names, `env_keep` patterns);
//! - `rlimits`: the resource limits of a server;
//! - `paths`: the path safety walker (a security boundary, with its own tests);
//! - `program`: what a command really runs (`#!` interpreters, `env`, the ELF interpreter),
//!   each file checked by the walker.

use std::fs;
use std::io;
use std::path::Path;

mod accounts;
mod env;
mod parse;
mod paths;
mod profile;
mod program;
mod rlimits;
mod schema;
mod settings;

pub use env::{DEFAULT_ENV_KEEP, env_forbidden};
pub use parse::{MAX_TIMEOUT_SECS, Problem};
pub use paths::{PathError, PathProblem, check_config_file, check_private_dir};
pub use profile::PROFILE_KEYS;
pub use program::{ProgramError, ProgramProblem, check_program};
pub use rlimits::{Rlimit, UNLIMITED};
pub use schema::*;
pub use settings::TOP_KEYS;

impl Config {
    /// Reads, parses and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        // A missing file is reported by the read below, with its hint.
        if path.exists()
            && let Err(e) = check_config_file(path)
        {
            return Err(ConfigError {
                source: path.to_path_buf(),
                problems: vec![Problem {
                    key: "(file)".to_owned(),
                    message: format!(
                        "the configuration file must be root's and writable only by root: \
                         {e}"
                    ),
                }],
            });
        }
        match fs::read_to_string(path) {
            Ok(text) => Config::parse(&text, path),
            Err(e) => {
                let hint = if e.kind() == io::ErrorKind::NotFound {
                    "; create it (see the example spawnd.toml) or pass --config PATH".to_owned()
                } else {
                    String::new()
                };
                Err(ConfigError {
                    source: path.to_path_buf(),
                    problems: vec![Problem {
                        key: "(file)".to_owned(),
                        message: format!("cannot read the configuration file: {e}{hint}"),
                    }],
                })
            }
        }
    }

    /// Parses and validates configuration text; `source` is only used to name it.
    pub fn parse(text: &str, source: &Path) -> Result<Config, ConfigError> {
        settings::parse_config(text, source)
    }
}

/// What `spawnd check-config [PATH]` does: prints `PATH: ok` to stdout and returns true, or
/// prints each problem as `PATH: KEY: message` to stderr and returns false.
pub fn check_config_command(path: &Path) -> bool {
    match Config::load(path) {
        Ok(_) => {
            println!("{}: ok", path.display());
            true
        }
        Err(e) => {
            for problem in &e.problems {
                eprintln!("{}: {problem}", path.display());
            }
            false
        }
    }
}

#[cfg(test)]
mod testing;
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
