//! The daemon's own log: journald when systemd connected stderr to the journal
//! (`JOURNAL_STREAM` names stderr's device and inode), plain stderr otherwise.

use std::os::fd::AsFd;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// True when `JOURNAL_STREAM=<dev>:<ino>` matches our stderr.
fn stderr_is_journal() -> bool {
    let Ok(value) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = value.split_once(':') else {
        return false;
    };
    let Ok(st) = nix::sys::stat::fstat(std::io::stderr().as_fd()) else {
        return false;
    };
    dev.parse::<u64>().ok() == Some(st.st_dev) && ino.parse::<u64>().ok() == Some(st.st_ino)
}

/// Installs the global subscriber. The level comes from `SPAWND_LOG` (tracing's filter
/// syntax, e.g. `debug` or `info,audit=debug`), default `info`.
pub fn init() {
    let filter = EnvFilter::try_from_env("SPAWND_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    if stderr_is_journal() {
        match tracing_journald::layer() {
            Ok(layer) => {
                registry
                    .with(layer.with_syslog_identifier("spawnd".into()))
                    .init();
                return;
            }
            Err(e) => eprintln!("spawnd: journald is not reachable ({e}); logging to stderr"),
        }
    }
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    registry
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(ansi)
                .with_writer(std::io::stderr),
        )
        .init();
}
