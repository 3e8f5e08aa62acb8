//! User and group lookups through NSS: the accounts the configuration names (`hub_user`,
//! `group`, `admin_group`, `socket_group`, `deny_users`), and the owner of a file named in a
//! message.
//!
//! Nothing is cached: a configuration is resolved when it is loaded (and again at each
//! reload). A lookup that fails records a problem under the key being read and gives `None`,
//! so that the caller goes on with the other keys.

use std::collections::BTreeSet;

use nix::unistd::{Group, Uid, User};

use super::parse::Problems;

/// The passwd entry of `name`, the value of `key`.
pub(super) fn lookup_user(name: &str, key: &str, p: &mut Problems) -> Option<User> {
    if name.is_empty() {
        p.add(key, "is empty; give a user name");
        return None;
    }
    match User::from_name(name) {
        Ok(Some(user)) => Some(user),
        Ok(None) => {
            p.add(
                key,
                format!("user {name:?} does not exist; create it or correct the name"),
            );
            None
        }
        Err(e) => {
            p.add(key, format!("cannot look up user {name:?}: {e}; check NSS"));
            None
        }
    }
}

/// The gid of the group `name`, the value of `key`.
pub(super) fn lookup_group(name: &str, key: &str, p: &mut Problems) -> Option<u32> {
    if name.is_empty() {
        p.add(key, "is empty; give a group name");
        return None;
    }
    match Group::from_name(name) {
        Ok(Some(group)) => Some(group.gid.as_raw()),
        Ok(None) => {
            p.add(
                key,
                format!("group {name:?} does not exist; create it or correct the name"),
            );
            None
        }
        Err(e) => {
            p.add(
                key,
                format!("cannot look up group {name:?}: {e}; check NSS"),
            );
            None
        }
    }
}

/// The uids of those of `names` that exist (a name that does not is no problem: `deny_users`
/// may name accounts that are gone, or not made yet).
pub(super) fn existing_uids<'a>(names: impl IntoIterator<Item = &'a String>) -> BTreeSet<u32> {
    names
        .into_iter()
        .filter_map(|name| User::from_name(name).ok().flatten())
        .map(|user| user.uid.as_raw())
        .collect()
}

/// The owner `uid` as a message shows it: `nobody (uid 65534)`, or `uid 12345` when no passwd
/// entry has it.
pub(super) fn user_and_uid(uid: u32) -> String {
    match User::from_uid(Uid::from_raw(uid)) {
        Ok(Some(user)) => format!("{} (uid {uid})", user.name),
        _ => format!("uid {uid}"),
    }
}
