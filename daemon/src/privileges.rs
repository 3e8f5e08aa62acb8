//! Least privilege for a root daemon: after start-up spawnd keeps only the capabilities it
//! uses, in every set, and servers start with none.
//!
//! | capability | why spawnd keeps it |
//! | --- | --- |
//! | `CAP_SETUID`, `CAP_SETGID` | the child switches to the user (setgroups, setresgid, setresuid) before exec |
//! | `CAP_KILL` | signals to servers, which run as other users (pidfd_send_signal, kill of a process group) |
//! | `CAP_CHOWN` | each user's log directory and files are `root:<user's private group>`, and the socket `root:<socket_group>` |
//!
//! Everything else is dropped from the bounding set first (while `CAP_SETPCAP` is still held),
//! then from the inheritable, permitted and effective sets; the ambient set is cleared. The
//! daemon stays uid 0, so it still owns its root-owned directories, cgroups and state without
//! `CAP_DAC_OVERRIDE`. Capability sets are per thread: [`drop_to_needed`] must run before any
//! other thread exists (before the async runtime starts); every thread and child created
//! afterwards inherits the reduced sets.
//!
//! A server's child process switches every uid to the user's, which clears its permitted and
//! effective sets (no `SECBIT_KEEP_CAPS`); the inheritable and ambient sets are empty, and the
//! bounding set is the daemon's, so even a setuid-root or file-capability program run inside a
//! server cannot gain more than these four capabilities.

use caps::{CapSet, Capability, CapsHashSet};

/// What spawnd needs at run time (see the module documentation).
pub const NEEDED: [Capability; 4] = [
    Capability::CAP_SETUID,
    Capability::CAP_SETGID,
    Capability::CAP_KILL,
    Capability::CAP_CHOWN,
];

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

/// Reduces every capability set to [`NEEDED`] (intersected with what the process actually
/// holds). Returns the capabilities kept. Call before any thread is started.
pub fn drop_to_needed() -> Result<Vec<Capability>, PrivilegeError> {
    let permitted = caps::read(None, CapSet::Permitted).map_err(|source| PrivilegeError::Read {
        set: "permitted",
        source,
    })?;
    let keep: CapsHashSet = NEEDED
        .iter()
        .copied()
        .filter(|c| permitted.contains(c))
        .collect();
    let missing: Vec<String> = [Capability::CAP_SETUID, Capability::CAP_SETGID]
        .iter()
        .filter(|c| !keep.contains(c))
        .map(|c| c.to_string())
        .collect();
    if !missing.is_empty() {
        return Err(PrivilegeError::Missing {
            missing: missing.join(" and "),
        });
    }
    let bounding = caps::read(None, CapSet::Bounding).map_err(|source| PrivilegeError::Read {
        set: "bounding",
        source,
    })?;
    if caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP).unwrap_or(false) {
        for cap in bounding.iter().filter(|c| !keep.contains(c)) {
            caps::drop(None, CapSet::Bounding, *cap).map_err(|source| PrivilegeError::Set {
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
