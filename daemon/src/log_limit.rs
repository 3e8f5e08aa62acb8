//! `log_max_size`: the logs of running servers are root's and outside their users' quotas, so
//! the daemon cuts the ones that grow past the limit ([`watch`]; the cut itself is
//! [`logs::cut_if_over`]).

use crate::logs;
use crate::server::Daemon;
use spawnd_protocol::ServerId;
use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// How often the logs of running servers are checked against `log_max_size`.
const CHECK_INTERVAL: Duration = Duration::from_secs(2);

fn lock_set(set: &Mutex<HashSet<ServerId>>) -> MutexGuard<'_, HashSet<ServerId>> {
    set.lock().unwrap_or_else(|p| p.into_inner())
}

/// Cuts the logs of running servers that grew past `log_max_size`, every
/// [`CHECK_INTERVAL`]: a log is root's and outside its user's quota, so one that grows
/// without end would fill the log file system. It may overshoot by what the server writes
/// between two checks.
pub async fn watch(daemon: Arc<Daemon>) {
    // One look at every log per check (a stat each), and each cut on a thread of its own:
    // a cut that hangs (a write to the log stuck on a file system that hangs holds the
    // file's lock) holds up neither the other logs nor the next checks.
    let scanning = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let cutting: Arc<Mutex<HashSet<ServerId>>> = Arc::default();
    let mut tick = tokio::time::interval(CHECK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(max) = daemon.config().log_max_size else {
            continue;
        };
        let running = daemon.supervisor().running_logs();
        if running.is_empty() || scanning.swap(true, std::sync::atomic::Ordering::AcqRel) {
            continue;
        }
        let (scanning, cutting) = (scanning.clone(), cutting.clone());
        tokio::task::spawn_blocking(move || {
            for (id, path, file) in running {
                if !logs::is_over(&path, file, max) {
                    continue;
                }
                if !lock_set(&cutting).insert(id.clone()) {
                    tracing::warn!(
                        server = %id,
                        "its log is past log_max_size, but the last cut of it has not \
                         returned (its file system is slow or hangs); not cut again meanwhile"
                    );
                    continue;
                }
                let cutting = cutting.clone();
                tokio::runtime::Handle::current().spawn_blocking(move || {
                    match logs::cut_if_over(&path, file, max) {
                        Ok(Some(cut)) => tracing::warn!(
                            server = %id,
                            "its log passed log_max_size ({max} bytes) and was cut: {cut:?}"
                        ),
                        Ok(None) => {}
                        Err(e) => tracing::warn!(server = %id, "could not cut its log: {e}"),
                    }
                    lock_set(&cutting).remove(&id);
                });
            }
            scanning.store(false, std::sync::atomic::Ordering::Release);
        });
    }
}
