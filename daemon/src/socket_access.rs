//! Whether the hub can reach the socket it was given.
//!
//! A socket whose group is not one of the hub account's groups (a `SocketGroup=` drop-in
//! forgotten, `socket_group` set to the wrong group) looks fine from the daemon's side: it
//! starts, logs `ready`, and every spawn then fails in the hub with "permission denied". The
//! daemon checks at start-up (and for `spawnctl status`) what the kernel would check when the
//! hub connects: search permission on every directory above the socket and write permission on
//! the socket itself, for the hub's uid, primary group and supplementary groups, by the mode
//! bits. A file with an access control list is not judged (its group bits are the ACL's mask).

use nix::unistd::{Gid, Group, User, getgrouplist};
use std::ffi::CString;
use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// An account, as the kernel sees it on connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (the primary group may be among them).
    pub groups: Vec<u32>,
}

impl Account {
    /// Looks the account up (passwd and its full group list).
    pub fn lookup(uid: u32) -> Result<Account, String> {
        let user = User::from_uid(nix::unistd::Uid::from_raw(uid))
            .map_err(|e| format!("could not look up uid {uid}: {e}"))?
            .ok_or_else(|| format!("uid {uid} has no passwd entry"))?;
        let c_name = CString::new(user.name.clone())
            .map_err(|_| format!("the name of uid {uid} has a NUL"))?;
        let groups = getgrouplist(&c_name, user.gid)
            .map_err(|e| format!("could not read the group list of {}: {e}", user.name))?;
        Ok(Account {
            name: user.name,
            uid,
            gid: user.gid.as_raw(),
            groups: groups.iter().map(|g| g.as_raw()).collect(),
        })
    }

    fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.contains(&gid)
    }

    /// The permission bits (`rwx`, 0–7) that apply to this account for a file of this owner,
    /// group and mode: the owner's if it owns it, else the group's if it is in the group, else
    /// the others' (as the kernel decides: an owner denied by the owner bits is not asked
    /// about the group bits).
    fn bits(&self, uid: u32, gid: u32, mode: u32) -> u32 {
        if self.uid == 0 {
            return 0o7;
        }
        if self.uid == uid {
            (mode >> 6) & 0o7
        } else if self.in_group(gid) {
            (mode >> 3) & 0o7
        } else {
            mode & 0o7
        }
    }
}

/// Why an account cannot connect to the socket, or why that could not be told.
#[derive(Debug, thiserror::Error)]
pub enum Unreachable {
    #[error(
        "{who} cannot connect to {socket}: {dir} is {owner}:{group} mode {mode:04o}, which \
         {who} may not search"
    )]
    Directory {
        who: String,
        socket: PathBuf,
        dir: PathBuf,
        owner: Name,
        group: Name,
        mode: u32,
    },
    #[error(
        "{who} cannot connect to {socket}: the socket is {owner}:{group} mode {mode:04o}, and \
         {who} is not in group {group}; give the socket a group of the hub (`socket_group` in \
         spawnd.toml, or `SocketGroup=` in a drop-in for spawnd.socket when systemd creates \
         the socket) or add {who} to group {group}"
    )]
    Socket {
        who: String,
        socket: PathBuf,
        owner: Name,
        group: Name,
        mode: u32,
    },
    #[error("could not look at {path} to check that {who} can connect: {source}")]
    Inspect {
        who: String,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A user or group id, shown by name when it has one.
#[derive(Debug, Clone, Copy)]
pub struct Name {
    id: u32,
    group: bool,
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = if self.group {
            Group::from_gid(Gid::from_raw(self.id))
                .ok()
                .flatten()
                .map(|g| g.name)
        } else {
            User::from_uid(nix::unistd::Uid::from_raw(self.id))
                .ok()
                .flatten()
                .map(|u| u.name)
        };
        match name {
            Some(name) => f.write_str(&name),
            None => write!(f, "{}", self.id),
        }
    }
}

/// What the check found: the account can connect, or cannot (and why), or the answer depends
/// on an access control list the check does not read.
#[derive(Debug)]
pub enum Verdict {
    Reachable,
    DecidedByAcl(PathBuf),
    Unreachable(Unreachable),
}

/// Checks whether `who` may connect to the socket at `socket`: search (`x`) on every directory
/// from `/` down, write (`w`) on the socket file.
pub fn check(socket: &Path, who: &Account) -> Verdict {
    let owner = |id| Name { id, group: false };
    let group = |id| Name { id, group: true };
    let mut dirs: Vec<&Path> = socket.ancestors().skip(1).collect();
    dirs.reverse();
    for dir in dirs {
        let meta = match std::fs::metadata(dir) {
            Ok(meta) => meta,
            Err(source) => {
                return Verdict::Unreachable(Unreachable::Inspect {
                    who: who.name.clone(),
                    path: dir.to_path_buf(),
                    source,
                });
            }
        };
        if has_acl(dir) {
            return Verdict::DecidedByAcl(dir.to_path_buf());
        }
        if who.bits(meta.uid(), meta.gid(), meta.mode()) & 0o1 == 0 {
            return Verdict::Unreachable(Unreachable::Directory {
                who: who.name.clone(),
                socket: socket.to_path_buf(),
                dir: dir.to_path_buf(),
                owner: owner(meta.uid()),
                group: group(meta.gid()),
                mode: meta.mode() & 0o7777,
            });
        }
    }
    let meta = match std::fs::metadata(socket) {
        Ok(meta) => meta,
        Err(source) => {
            return Verdict::Unreachable(Unreachable::Inspect {
                who: who.name.clone(),
                path: socket.to_path_buf(),
                source,
            });
        }
    };
    if has_acl(socket) {
        return Verdict::DecidedByAcl(socket.to_path_buf());
    }
    if who.bits(meta.uid(), meta.gid(), meta.mode()) & 0o2 == 0 {
        return Verdict::Unreachable(Unreachable::Socket {
            who: who.name.clone(),
            socket: socket.to_path_buf(),
            owner: owner(meta.uid()),
            group: group(meta.gid()),
            mode: meta.mode() & 0o7777,
        });
    }
    Verdict::Reachable
}

/// Whether the file has a POSIX access ACL (then its group bits are the ACL's mask, and named
/// users or groups may be allowed that the bits do not show).
fn has_acl(path: &Path) -> bool {
    crate::sys::has_xattr(path, c"system.posix_acl_access").unwrap_or(false)
}

/// The problems of the daemon's own set-up that an operator must hear of: today, a hub that
/// cannot reach the socket. Each is a sentence for the operator; none when all is well.
pub fn problems(socket: &Path, hub_uid: u32) -> Vec<String> {
    let hub = match Account::lookup(hub_uid) {
        Ok(hub) => hub,
        Err(why) => {
            return vec![format!(
                "cannot check that the hub can connect to {}: {why}",
                socket.display()
            )];
        }
    };
    match check(socket, &hub) {
        Verdict::Reachable | Verdict::DecidedByAcl(_) => Vec::new(),
        // Not knowing is a problem to report too, but not the same claim.
        Verdict::Unreachable(why @ Unreachable::Inspect { .. }) => vec![why.to_string()],
        Verdict::Unreachable(why) => vec![format!("THE HUB CANNOT CONNECT: {why}")],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn account(uid: u32, gid: u32, groups: &[u32]) -> Account {
        Account {
            name: format!("u{uid}"),
            uid,
            gid,
            groups: groups.to_vec(),
        }
    }

    #[test]
    fn the_bits_of_the_owner_then_the_group_then_the_others_apply() {
        let mode = 0o640;
        assert_eq!(account(10, 20, &[]).bits(10, 99, mode), 0o6);
        // The owner gets the owner's bits even when the group's would allow more.
        assert_eq!(account(10, 99, &[]).bits(10, 99, 0o070), 0);
        assert_eq!(account(11, 99, &[]).bits(10, 99, mode), 0o4);
        assert_eq!(account(11, 1, &[7, 99]).bits(10, 99, mode), 0o4);
        assert_eq!(account(11, 1, &[7]).bits(10, 99, mode), 0);
        assert_eq!(account(0, 0, &[]).bits(10, 99, 0), 0o7);
    }

    /// A socket-like file in a directory the test owns: the verdicts follow the modes. Root
    /// passes every check, so the account is made up (uid and groups no file here has).
    #[test]
    fn a_socket_the_hub_cannot_write_or_reach_is_named_with_what_to_change() {
        let base = std::env::temp_dir().join(format!("spawnd-reach-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let dir = base.join("run");
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("spawnd.sock");
        std::fs::write(&socket, b"").unwrap();
        let meta = std::fs::metadata(&socket).unwrap();
        let (file_gid, stranger) = (meta.gid(), 4_000_000_001);
        let set = |path: &Path, mode: u32| {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
        };
        set(&base, 0o755);
        set(&dir, 0o755);
        set(&socket, 0o660);
        let member = account(stranger, 4_000_000_002, &[file_gid]);
        let outsider = account(stranger, 4_000_000_002, &[]);
        assert!(matches!(check(&socket, &member), Verdict::Reachable));
        match check(&socket, &outsider) {
            Verdict::Unreachable(why @ Unreachable::Socket { .. }) => {
                let text = why.to_string();
                assert!(
                    text.contains(&format!(
                        "{} cannot connect to {}",
                        outsider.name,
                        socket.display()
                    )) && text.contains("mode 0660")
                        && text.contains("SocketGroup="),
                    "{text}"
                );
            }
            other => panic!("{other:?}"),
        }
        set(&socket, 0o666);
        assert!(matches!(check(&socket, &outsider), Verdict::Reachable));
        set(&dir, 0o750);
        match check(&socket, &outsider) {
            Verdict::Unreachable(Unreachable::Directory { dir: refused, .. }) => {
                assert_eq!(refused, dir)
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(check(&socket, &member), Verdict::Reachable));
        std::fs::remove_dir_all(&base).unwrap();
    }
}
