//! Who may have a server started, and what environment it gets.

use crate::config::{Config, Profile};
use nix::unistd::{User, getgrouplist};
use std::collections::BTreeMap;
use std::ffi::CString;
use std::path::PathBuf;

/// A user a server may be started for, with everything the launch needs from NSS, looked up
/// once, before fork.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// Full group list (primary first), from getgrouplist.
    pub groups: Vec<u32>,
    pub home: PathBuf,
    pub shell: PathBuf,
}

/// Why a user may not have a server started (or could not be looked up).
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("user {name} is listed in deny_users in {config}; remove it there to allow servers")]
    DeniedByName { name: String, config: String },
    #[error(
        "user {name} has uid {uid}, the uid of an account listed in deny_users in {config}; \
         remove it there to allow servers"
    )]
    DeniedByUid {
        name: String,
        uid: u32,
        config: String,
    },
    #[error("refusing to start a server for {name}: user id 0 (root) is never allowed")]
    Root { name: String },
    #[error(
        "user {name} has uid {uid} which is below min_uid {min_uid} (system accounts are \
         refused); lower min_uid in {config} if this user should have servers"
    )]
    BelowMinUid {
        name: String,
        uid: u32,
        min_uid: u32,
        config: String,
    },
    #[error(
        "user {name} is not a member of group {group}; add them with `gpasswd -a {name} {group}`"
    )]
    NotInGroup { name: String, group: String },
    #[error("user {name} does not exist on this host")]
    NoSuchUser { name: String },
    #[error(
        "user {requested} is called {canonical} in the passwd database (another name for the \
         same account); spawnd starts servers only under an account's own name: have the hub \
         use {canonical} (JupyterHub: Authenticator.username_map or normalize_username)"
    )]
    NotCanonical {
        requested: String,
        canonical: String,
    },
    #[error("user {name:?} has a NUL")]
    NulInName { name: String },
    /// NSS failed: not a decision about the user.
    #[error("could not look up user {name} in the passwd database: {source}")]
    Lookup { name: String, source: nix::Error },
    /// NSS failed: not a decision about the user.
    #[error("could not read the group list of user {name}: {source}")]
    GroupList { name: String, source: nix::Error },
}

impl PolicyError {
    /// True when the host failed to answer (NSS), false when the policy refused the user.
    pub fn is_lookup_failure(&self) -> bool {
        matches!(
            self,
            PolicyError::Lookup { .. } | PolicyError::GroupList { .. }
        )
    }
}

/// Users listed in `deny_users` are refused by name (before any NSS lookup).
fn check_not_denied(name: &str, config: &Config) -> Result<(), PolicyError> {
    if config.deny_users.contains(name) {
        return Err(PolicyError::DeniedByName {
            name: name.to_owned(),
            config: config.source.display().to_string(),
        });
    }
    Ok(())
}

/// The name a lookup asked for must be the account's own name (`pw_name`): a directory service
/// that also answers to aliases ("Mallory", "mallory@corp" for "mallory") would otherwise give
/// one account servers, logs and records under several names, and slip past `deny_users`.
pub fn check_canonical(requested: &str, canonical: &str) -> Result<(), PolicyError> {
    if requested == canonical {
        return Ok(());
    }
    Err(PolicyError::NotCanonical {
        requested: requested.to_owned(),
        canonical: canonical.to_owned(),
    })
}

/// The policy checks on a looked-up user (no I/O): not denied by name or uid, not root, uid at
/// least `min_uid`, a member of `group` (primary or supplementary).
pub fn check_target(target: &Target, config: &Config) -> Result<(), PolicyError> {
    let name = &target.name;
    if target.uid == 0 {
        return Err(PolicyError::Root { name: name.clone() });
    }
    check_not_denied(name, config)?;
    if config.deny_uids.contains(&target.uid) {
        return Err(PolicyError::DeniedByUid {
            name: name.clone(),
            uid: target.uid,
            config: config.source.display().to_string(),
        });
    }
    if target.uid < config.min_uid {
        return Err(PolicyError::BelowMinUid {
            name: name.clone(),
            uid: target.uid,
            min_uid: config.min_uid,
            config: config.source.display().to_string(),
        });
    }
    if target.gid != config.group_gid && !target.groups.contains(&config.group_gid) {
        return Err(PolicyError::NotInGroup {
            name: name.clone(),
            group: config.group.clone(),
        });
    }
    Ok(())
}

/// Looks the user up (passwd + full group list) and applies [`check_target`]. Called at every
/// start, so that group changes take effect at once.
pub fn resolve_target(name: &str, config: &Config) -> Result<Target, PolicyError> {
    check_not_denied(name, config)?;
    let user = match User::from_name(name) {
        Ok(Some(u)) => u,
        Ok(None) => {
            return Err(PolicyError::NoSuchUser {
                name: name.to_owned(),
            });
        }
        Err(source) => {
            return Err(PolicyError::Lookup {
                name: name.to_owned(),
                source,
            });
        }
    };
    check_canonical(name, &user.name)?;
    let c_name = CString::new(name).map_err(|_| PolicyError::NulInName {
        name: name.to_owned(),
    })?;
    let groups = getgrouplist(&c_name, user.gid).map_err(|source| PolicyError::GroupList {
        name: name.to_owned(),
        source,
    })?;
    let mut groups: Vec<u32> = groups.iter().map(|g| g.as_raw()).collect();
    // getgrouplist puts the primary group in the list; keep it first and unique.
    groups.retain(|&g| g != user.gid.as_raw());
    groups.insert(0, user.gid.as_raw());
    let target = Target {
        name: user.name,
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
        groups,
        home: user.dir,
        shell: user.shell,
    };
    check_target(&target, config)?;
    Ok(target)
}

/// The environment a server gets, and the client's names that were dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Environment {
    pub vars: BTreeMap<String, String>,
    /// Sorted, without duplicates. Values are never recorded.
    pub dropped: Vec<String>,
}

/// Cleared, then HOME, USER, LOGNAME, SHELL from passwd, PATH from the profile, then the
/// client's variables the profile allows, then the profile's fixed variables.
pub fn build_env(target: &Target, profile: &Profile, client: &[(String, String)]) -> Environment {
    let mut vars = BTreeMap::new();
    vars.insert(
        "HOME".to_string(),
        target.home.to_string_lossy().into_owned(),
    );
    vars.insert("USER".to_string(), target.name.clone());
    vars.insert("LOGNAME".to_string(), target.name.clone());
    vars.insert(
        "SHELL".to_string(),
        target.shell.to_string_lossy().into_owned(),
    );
    vars.insert("PATH".to_string(), profile.path.clone());
    let mut dropped = Vec::new();
    for (name, value) in client {
        if profile.env_allowed(name) {
            vars.insert(name.clone(), value.clone());
        } else {
            dropped.push(name.clone());
        }
    }
    for (name, value) in &profile.env {
        vars.insert(name.clone(), value.clone());
    }
    dropped.sort();
    dropped.dedup();
    Environment { vars, dropped }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::tests::sample;
    use spawnd_protocol::{ErrorKind, ErrorReply};

    fn target(name: &str, uid: u32, gid: u32, groups: &[u32]) -> Target {
        Target {
            name: name.into(),
            uid,
            gid,
            groups: groups.to_vec(),
            home: "/home/x".into(),
            shell: "/bin/bash".into(),
        }
    }

    fn kind(r: Result<(), PolicyError>) -> (ErrorKind, String) {
        let e = ErrorReply::from(r.unwrap_err());
        (e.kind, e.message)
    }

    #[test]
    fn target_policy() {
        let c = sample("deny_users = [\"mallory\"]\nmin_uid = 2000");
        let g = c.group_gid;
        check_target(&target("alice", 2001, 2001, &[2001, g]), &c).unwrap();
        check_target(&target("alice", 2001, g, &[g]), &c).unwrap();
        let (k, m) = kind(check_target(&target("root", 0, 0, &[g]), &c));
        assert!(k == ErrorKind::PolicyDenied && m.contains("root"), "{m}");
        let (k, m) = kind(check_target(&target("sys", 999, 999, &[g]), &c));
        assert!(
            k == ErrorKind::PolicyDenied && m.contains("min_uid 2000"),
            "{m}"
        );
        let (k, m) = kind(check_target(&target("bob", 2002, 2002, &[2002]), &c));
        assert!(
            k == ErrorKind::PolicyDenied && m.contains("not a member of group nogroup"),
            "{m}"
        );
        let (k, m) = kind(check_target(&target("mallory", 2003, 2003, &[g]), &c));
        assert!(
            k == ErrorKind::PolicyDenied && m.contains("deny_users"),
            "{m}"
        );
    }

    #[test]
    fn only_an_accounts_own_name_gets_servers() {
        check_canonical("mallory", "mallory").unwrap();
        for alias in ["Mallory", "mallory@corp"] {
            let (k, m) = kind(check_canonical(alias, "mallory"));
            assert!(
                k == ErrorKind::PolicyDenied && m.contains("called mallory") && m.contains(alias),
                "{m}"
            );
        }
    }

    #[test]
    fn deny_users_refuses_the_accounts_uid_under_any_name() {
        // `nobody` exists on every Debian host: its uid is denied, whatever the name asked.
        let c = sample("deny_users = [\"nobody\"]\nmin_uid = 1000");
        let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
        let g = c.group_gid;
        let uid = nobody.uid.as_raw();
        let (k, m) = kind(check_target(&target("other-name", uid, uid, &[uid, g]), &c));
        assert!(
            k == ErrorKind::PolicyDenied && m.contains("deny_users"),
            "{m}"
        );
    }

    #[test]
    fn unknown_user_is_denied() {
        let c = sample("");
        let e = ErrorReply::from(resolve_target("no-such-user-xyz", &c).unwrap_err());
        assert_eq!(e.kind, ErrorKind::PolicyDenied);
        assert!(e.message.contains("does not exist"), "{}", e.message);
        // `nobody` exists but is not in nogroup's member list... its primary group is nogroup
        // on Debian, so the group check passes; its uid 65534 >= 1000 passes too.
    }

    #[test]
    fn environment_is_built_from_passwd_profile_and_allowed_names() {
        let c = sample("");
        let p = c.profile("").unwrap();
        let t = target("alice", 2001, 2001, &[2001]);
        let client = vec![
            ("JUPYTERHUB_API_TOKEN".to_string(), "tok".to_string()),
            ("LD_PRELOAD".to_string(), "/tmp/evil.so".to_string()),
            ("LC_ALL".to_string(), "C.UTF-8".to_string()),
            ("HOME".to_string(), "/tmp".to_string()),
            ("PYTHONPATH".to_string(), "/tmp".to_string()),
            ("FIXED".to_string(), "client".to_string()),
            ("LD_PRELOAD".to_string(), "again".to_string()),
        ];
        let env = build_env(&t, p, &client);
        let keys: Vec<&str> = env.vars.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "FIXED",
                "HOME",
                "JUPYTERHUB_API_TOKEN",
                "LC_ALL",
                "LOGNAME",
                "PATH",
                "SHELL",
                "USER"
            ]
        );
        assert_eq!(env.vars["HOME"], "/home/x");
        assert_eq!(env.vars["FIXED"], "yes");
        assert_eq!(env.vars["PATH"], p.path);
        assert_eq!(env.dropped, ["FIXED", "HOME", "LD_PRELOAD", "PYTHONPATH"]);
    }
}
