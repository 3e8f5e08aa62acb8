//! Least privilege for a root daemon: after start-up spawnd and its launcher keep only the
//! capabilities each uses, and servers start with none.
//!
//! | capability | who keeps it | why |
//! | --- | --- | --- |
//! | `CAP_SETUID`, `CAP_SETGID` | the launcher | its child switches to the user (setgroups, setresgid, setresuid) before exec |
//! | `CAP_KILL` | both | signals to servers, which run as other users (pidfd_send_signal, kill of a process group); the launcher kills a child that does not get to exec in time |
//! | `CAP_CHOWN` | the daemon | each user's log directory and files are `root:<user's private group>`, and the socket `root:<socket_group>` |
//!
//! The bounding set is reduced to these four first (while `CAP_SETPCAP` is still held); then
//! the daemon's inheritable, permitted and effective sets to `CAP_KILL` and `CAP_CHOWN`; the
//! ambient set is cleared. The launcher, which the daemon executes afterwards, gets the
//! bounding set back as root does at exec, and keeps `CAP_SETUID`, `CAP_SETGID` and `CAP_KILL`.
//! Both stay uid 0, so they still own their root-owned directories, cgroups and state without
//! `CAP_DAC_OVERRIDE`. Capability sets are per thread: [`reduce`] must run before any other
//! thread exists; every thread and child created afterwards inherits the reduced sets.
//!
//! A server's process switches every uid to the user's, which clears its permitted and
//! effective sets (no `SECBIT_KEEP_CAPS`); the inheritable and ambient sets are empty, and the
//! bounding set is these four, so even a setuid-root or file-capability program run inside a
//! server cannot gain more than them.

use caps::{CapSet, Capability, CapsHashSet};

/// Every capability any process of spawnd may ever hold: the bounding set.
pub const BOUNDING: [Capability; 4] = [
    Capability::CAP_SETUID,
    Capability::CAP_SETGID,
    Capability::CAP_KILL,
    Capability::CAP_CHOWN,
];

/// What the daemon keeps.
pub const DAEMON: [Capability; 2] = [Capability::CAP_KILL, Capability::CAP_CHOWN];

/// What the launcher keeps.
pub const LAUNCHER: [Capability; 3] = [
    Capability::CAP_SETUID,
    Capability::CAP_SETGID,
    Capability::CAP_KILL,
];

/// Without these no server can be started as its user.
const REQUIRED: [Capability; 2] = [Capability::CAP_SETUID, Capability::CAP_SETGID];

/// Why dropping failed.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error("could not read the capability set {set}: {source}")]
    Read {
        set: &'static str,
        source: caps::errors::CapsError,
    },
    #[error("could not reduce the capability set {set}: {source}")]
    Set {
        set: &'static str,
        source: caps::errors::CapsError,
    },
    #[error(
        "spawnd lacks {missing} in its permitted capabilities; it cannot start servers as their \
         users without it (run it as root, and do not remove it with CapabilityBoundingSet=)"
    )]
    Missing { missing: String },
}

/// Reduces the bounding set to [`BOUNDING`] and every other set to `keep` (intersected with
/// what the process actually holds). Returns the capabilities kept. Call before any thread is
/// started.
pub fn reduce(keep: &[Capability]) -> Result<Vec<Capability>, PrivilegeError> {
    let permitted = caps::read(None, CapSet::Permitted).map_err(|source| PrivilegeError::Read {
        set: "permitted",
        source,
    })?;
    let missing: Vec<String> = REQUIRED
        .iter()
        .filter(|c| !permitted.contains(c))
        .map(|c| c.to_string())
        .collect();
    if !missing.is_empty() {
        return Err(PrivilegeError::Missing {
            missing: missing.join(" and "),
        });
    }
    let keep: CapsHashSet = keep
        .iter()
        .copied()
        .filter(|c| permitted.contains(c))
        .collect();
    let bounding = caps::read(None, CapSet::Bounding).map_err(|source| PrivilegeError::Read {
        set: "bounding",
        source,
    })?;
    let surplus: Vec<Capability> = bounding
        .iter()
        .copied()
        .filter(|c| !BOUNDING.contains(c))
        .collect();
    if surplus.is_empty() {
        // Already reduced (the launcher inherits the daemon's bounding set).
    } else if caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP).unwrap_or(false) {
        for cap in surplus {
            caps::drop(None, CapSet::Bounding, cap).map_err(|source| PrivilegeError::Set {
                set: "bounding",
                source,
            })?;
        }
    } else {
        tracing::warn!(
            "no CAP_SETPCAP: the capability bounding set cannot be reduced (it is inherited by \
             servers as it is)"
        );
    }
    caps::clear(None, CapSet::Ambient).map_err(|source| PrivilegeError::Set {
        set: "ambient",
        source,
    })?;
    caps::set(None, CapSet::Inheritable, &CapsHashSet::new()).map_err(|source| {
        PrivilegeError::Set {
            set: "inheritable",
            source,
        }
    })?;
    caps::set(None, CapSet::Effective, &keep).map_err(|source| PrivilegeError::Set {
        set: "effective",
        source,
    })?;
    caps::set(None, CapSet::Permitted, &keep).map_err(|source| PrivilegeError::Set {
        set: "permitted",
        source,
    })?;
    let mut kept: Vec<Capability> = keep.into_iter().collect();
    kept.sort_by_key(|c| c.index());
    Ok(kept)
}
