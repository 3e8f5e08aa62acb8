//! Roles, decided from the kernel's account of the peer only (SO_PEERCRED and SO_PEERGROUPS).
//! NSS is never asked who the peer is: the kernel's answer is the only one that cannot race.

use crate::config::Config;
use std::fmt;

/// Who is on the other end of a connection, as the kernel recorded it at connect time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub pid: i32,
    /// Supplementary groups (SO_PEERGROUPS); the primary group is `gid`.
    pub groups: Vec<u32>,
}

impl Peer {
    fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.contains(&gid)
    }
}

/// What a peer may do (DESIGN.md, "Roles").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// uid 0 or a member of `admin_group`: everything, for every server.
    Admin,
    /// The configured `hub_user`: start/poll/stop/signal/list/logs.
    Hub,
    /// A member of `group` with `self_service = true`: list/poll/logs/stop of their own servers.
    User,
}

impl Role {
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Hub => "hub",
            Role::User => "user",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The role of `peer` under `config`, or `None`: such a peer is disconnected unread.
pub fn role_of(peer: &Peer, config: &Config) -> Option<Role> {
    if peer.uid == 0 || config.admin_gid.is_some_and(|g| peer.in_group(g)) {
        Some(Role::Admin)
    } else if peer.uid == config.hub_uid {
        Some(Role::Hub)
    } else if config.self_service && peer.in_group(config.group_gid) {
        Some(Role::User)
    } else {
        None
    }
}

/// Whether `role` may send a request with this action at all (per-server ownership for
/// [`Role::User`] is checked by the caller against the server's uid).
pub fn may(role: Role, request: &spawnd_protocol::Request) -> bool {
    use spawnd_protocol::Request as R;
    match role {
        Role::Admin | Role::Hub => true,
        Role::User => matches!(
            request,
            R::Poll { .. } | R::Stop { .. } | R::List { .. } | R::Logs { .. } | R::Status
        ),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use spawnd_protocol::{Request, ServerId};

    /// A configuration whose names exist on every Debian host: hub `nobody`, group `nogroup`,
    /// admin group `adm`.
    pub(crate) fn sample(extra: &str) -> Config {
        let text = format!(
            r#"
hub_user = "nobody"
group = "nogroup"
admin_group = "adm"
{extra}
[profiles.default]
command = ["/bin/sh"]
env = {{ FIXED = "yes" }}
"#
        );
        Config::parse(&text, std::path::Path::new("/test/spawnd.toml")).unwrap()
    }

    fn peer(uid: u32, gid: u32, groups: &[u32]) -> Peer {
        Peer {
            uid,
            gid,
            pid: 1,
            groups: groups.to_vec(),
        }
    }

    #[test]
    fn roles_follow_the_table() {
        let c = sample("");
        let adm = c.admin_gid.unwrap();
        assert_eq!(role_of(&peer(0, 0, &[]), &c), Some(Role::Admin));
        assert_eq!(role_of(&peer(5000, 5000, &[adm]), &c), Some(Role::Admin));
        assert_eq!(role_of(&peer(5000, adm, &[]), &c), Some(Role::Admin));
        assert_eq!(role_of(&peer(c.hub_uid, 1, &[]), &c), Some(Role::Hub));
        // A group member is nobody while self_service is off...
        assert_eq!(role_of(&peer(5000, c.group_gid, &[]), &c), None);
        assert_eq!(role_of(&peer(5000, 5000, &[c.group_gid]), &c), None);
        assert_eq!(role_of(&peer(5000, 5000, &[]), &c), None);
        // ...and a self-service user when it is on.
        let c = sample("self_service = true");
        assert_eq!(
            role_of(&peer(5000, 5000, &[c.group_gid]), &c),
            Some(Role::User)
        );
        assert_eq!(role_of(&peer(5000, 5000, &[]), &c), None);
    }

    #[test]
    fn self_service_users_may_only_read_and_stop() {
        let id = ServerId::new("a", "");
        assert!(may(
            Role::User,
            &Request::Poll {
                server: id.clone(),
                instance: None
            }
        ));
        assert!(may(
            Role::User,
            &Request::Stop {
                server: id.clone(),
                instance: None,
                now: false
            }
        ));
        assert!(may(
            Role::User,
            &Request::Logs {
                server: id.clone(),
                lines: 1
            }
        ));
        assert!(may(
            Role::User,
            &Request::List {
                after: None,
                limit: 1
            }
        ));
        assert!(!may(
            Role::User,
            &Request::Signal {
                server: id.clone(),
                instance: None,
                signal: 9
            }
        ));
        assert!(!may(
            Role::User,
            &Request::Start(spawnd_protocol::StartRequest {
                server: id,
                profile: String::new(),
                args: vec![],
                env: vec![],
                port: None
            })
        ));
        assert!(may(Role::Hub, &Request::Status) && may(Role::Admin, &Request::Status));
    }
}
