//! Who may do what: roles, decided from the kernel's account of the peer only (SO_PEERCRED and
//! SO_PEERGROUPS), and [`authorize`], the one decision of what a request may do and which
//! servers it may see. NSS is never asked who the peer is: the kernel's answer is the only one
//! that cannot race. Ownership is always by uid.

use crate::config::Config;
use spawnd_protocol::{Request, ServerId};
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

/// What a peer may do (README, "Roles").
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

/// Which servers a request may concern (and a `List` shows).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Every server (admins).
    All,
    /// For `List`, the servers this uid started (the hub sees what it started); the hub may act
    /// on any one server by name.
    StartedBy(u32),
    /// The servers that run as this uid (a self-service user's own).
    OwnedBy(u32),
}

/// Why a request was refused before anything was looked at.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error(
        "the {role} role may not {action}; self-service users may list, poll, read logs of and \
         stop their own servers"
    )]
    Action { role: Role, action: &'static str },
    #[error("uid {uid} may only act on its own servers, not on {server}")]
    NotOwner { uid: u32, server: ServerId },
}

/// The requests a self-service user may send at all.
fn user_may(request: &Request) -> bool {
    matches!(
        request,
        Request::Poll { .. }
            | Request::Stop { .. }
            | Request::List { .. }
            | Request::Logs { .. }
            | Request::Status
    )
}

/// Whether [`authorize`] needs the owner of the request's server to decide: only for a
/// self-service user's request on one server that the role may send at all (a refused action
/// costs no lookup).
pub fn needs_owner(role: Role, request: &Request) -> bool {
    role == Role::User && user_may(request) && request.target().is_some()
}

/// The one authorization decision: whether `peer`, in `role`, may send `request`, and which
/// servers it concerns. Admins and the hub may send every request; self-service users may
/// list, poll, read logs of and stop their own servers only. `owner` is the uid the request's
/// server belongs to (see [`needs_owner`]): the uid the server runs as when the daemon knows
/// it; for a server it does not know (one it has forgotten, or its log), the peer's own uid
/// when the server is named after the peer's own account, else `None`. Pure: the caller looks
/// the owner up.
pub fn authorize(
    peer: &Peer,
    role: Role,
    request: &Request,
    owner: Option<u32>,
) -> Result<Scope, Denied> {
    match role {
        Role::Admin => Ok(Scope::All),
        Role::Hub => Ok(Scope::StartedBy(peer.uid)),
        Role::User => {
            if !user_may(request) {
                return Err(Denied::Action {
                    role,
                    action: request.action(),
                });
            }
            if let Some(server) = request.target()
                && owner != Some(peer.uid)
            {
                return Err(Denied::NotOwner {
                    uid: peer.uid,
                    server: server.clone(),
                });
            }
            Ok(Scope::OwnedBy(peer.uid))
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

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

    /// One request of each action about server `a`'s default server.
    fn one_of_each() -> Vec<Request> {
        let id = ServerId::new("a", "");
        vec![
            Request::Start(spawnd_protocol::StartRequest {
                server: id.clone(),
                profile: String::new(),
                args: vec![],
                env: vec![],
                port: None,
            }),
            Request::Poll {
                server: id.clone(),
                instance: None,
            },
            Request::Stop {
                server: id.clone(),
                instance: None,
                now: false,
            },
            Request::Signal {
                server: id.clone(),
                instance: None,
                signal: 9,
            },
            Request::List {
                after: None,
                limit: 1,
            },
            Request::Logs {
                server: id,
                lines: 1,
            },
            Request::Status,
        ]
    }

    #[test]
    fn admins_and_the_hub_may_send_everything_and_see_their_scope() {
        let admin = peer(0, 0, &[]);
        let hub = peer(4000, 4000, &[]);
        for request in one_of_each() {
            // The owner is not needed (nor looked at) for them.
            assert!(!needs_owner(Role::Admin, &request) && !needs_owner(Role::Hub, &request));
            assert_eq!(
                authorize(&admin, Role::Admin, &request, None),
                Ok(Scope::All)
            );
            assert_eq!(
                authorize(&hub, Role::Hub, &request, Some(1)),
                Ok(Scope::StartedBy(4000))
            );
        }
    }

    #[test]
    fn self_service_users_may_only_read_and_stop_their_own() {
        let user = peer(5000, 5000, &[]);
        for request in one_of_each() {
            let action = request.action();
            let permitted = matches!(action, "poll" | "stop" | "list" | "logs" | "status");
            let targeted = request.target().is_some();
            // A refused action needs no lookup of the owner.
            assert_eq!(
                needs_owner(Role::User, &request),
                permitted && targeted,
                "{action}"
            );
            let own = authorize(&user, Role::User, &request, Some(5000));
            let other = authorize(&user, Role::User, &request, Some(5001));
            let no_account = authorize(&user, Role::User, &request, None);
            if !permitted {
                let refused = Err(Denied::Action {
                    role: Role::User,
                    action,
                });
                assert_eq!(own, refused, "{action}");
                assert_eq!(other, refused, "{action}");
                continue;
            }
            assert_eq!(own, Ok(Scope::OwnedBy(5000)), "{action}");
            if targeted {
                let not_owner = Err(Denied::NotOwner {
                    uid: 5000,
                    server: ServerId::new("a", ""),
                });
                assert_eq!(other, not_owner, "{action}");
                assert_eq!(no_account, not_owner, "{action}");
            } else {
                assert_eq!(other, Ok(Scope::OwnedBy(5000)), "{action}");
            }
        }
        let message = Denied::Action {
            role: Role::User,
            action: "signal",
        }
        .to_string();
        assert!(
            message.starts_with("the user role may not signal;"),
            "{message}"
        );
    }
}
