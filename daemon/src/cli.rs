//! The command line of `spawnd`, in the library so that the man page `spawnd(8)` is generated
//! from the same definition the binary parses (`xtask/`, run by `scripts/package`).

use crate::config;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "spawnd",
    version,
    about = "Starts, supervises and stops JupyterHub single-user servers as their users, for an \
             unprivileged hub"
)]
pub struct Cli {
    /// Configuration file.
    #[arg(long, value_name = "PATH", default_value = config::DEFAULT_PATH)]
    pub config: PathBuf,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate a configuration file and print every problem with its key; exit 1 if any.
    CheckConfig {
        /// The file to check (default: --config).
        path: Option<PathBuf>,
    },
    /// The launcher process the daemon starts for itself (its channel is descriptor 3); not
    /// for use by hand.
    #[command(hide = true)]
    Launcher,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }
}
