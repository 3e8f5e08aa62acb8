//! Finding and killing a server's whole process tree.
//!
//! Where the host offers a writable cgroup v2 hierarchy with `cgroup.kill` (Linux ≥ 5.14), each
//! server gets its own cgroup, entered by the child before exec, so that every process it ever
//! starts (kernels in their own sessions included) is found and killed in one write. Otherwise
//! the server's process group (the server calls setsid, so its group id is its pid) is the best
//! the host allows: processes that leave the group escape it.

use crate::config::CgroupSetting;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How trees are tracked on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TreeMode {
    /// Per-server cgroups under this base directory.
    Cgroup { base: PathBuf },
    /// The server's process group.
    ProcessGroup { reason: String },
}

impl TreeMode {
    /// Decides the mode from the configuration and what the host offers. Never fails: a host
    /// without usable cgroups falls back to process groups, and says why.
    pub fn detect(setting: &CgroupSetting) -> TreeMode {
        let base = match setting {
            CgroupSetting::Off => {
                return TreeMode::ProcessGroup {
                    reason: "cgroup = \"off\" in the config".into(),
                };
            }
            CgroupSetting::Path(p) => p.clone(),
            CgroupSetting::Auto => match auto_base() {
                Ok(b) => b,
                Err(reason) => return TreeMode::ProcessGroup { reason },
            },
        };
        if let Err(e) = std::fs::create_dir_all(&base) {
            return TreeMode::ProcessGroup {
                reason: format!("cannot create cgroup {}: {e}", base.display()),
            };
        }
        if !base.join("cgroup.kill").exists() {
            return TreeMode::ProcessGroup {
                reason: format!(
                    "{} has no cgroup.kill (kernel older than 5.14?)",
                    base.display()
                ),
            };
        }
        TreeMode::Cgroup { base }
    }

    /// For `spawnctl status`.
    pub fn describe(&self) -> String {
        match self {
            TreeMode::Cgroup { base } => format!("cgroup-v2 ({})", base.display()),
            TreeMode::ProcessGroup { reason } => format!("process-group ({reason})"),
        }
    }

    /// Creates the cgroup for one server instance and opens its directory for the launch
    /// (the process is created inside it). `None` in process-group mode.
    pub fn prepare(
        &self,
        user: &str,
        server: &str,
        instance: u64,
    ) -> io::Result<Option<(PathBuf, std::os::fd::OwnedFd)>> {
        let TreeMode::Cgroup { base } = self else {
            return Ok(None);
        };
        let dir = cgroup_dir(base, user, server, instance);
        std::fs::create_dir_all(&dir)?;
        let dir_fd = std::fs::File::open(&dir)?;
        Ok(Some((dir, dir_fd.into())))
    }
}

/// `<base>/<user>/<server or @default>.<instance>`.
pub fn cgroup_dir(base: &Path, user: &str, server: &str, instance: u64) -> PathBuf {
    base.join(user).join(format!(
        "{}.{instance}",
        crate::logs::server_file_stem(server)
    ))
}

/// The server and instance a server cgroup's directory name (`<server or @default>.<instance>`)
/// stands for: the inverse of [`cgroup_dir`]'s last component.
pub fn parse_cgroup_name(name: &str) -> Option<(&str, u64)> {
    let (stem, instance) = name.rsplit_once('.')?;
    let instance = instance.parse().ok()?;
    Some((crate::logs::server_of_file_stem(stem), instance))
}

/// The daemon's own cgroup v2 directory + `/spawnd`. Among the cgroup2 mounts (there may be
/// several, some showing only a subtree), the one whose root is the hierarchy's root and where
/// the daemon's own cgroup really lists the daemon is the right one.
fn auto_base() -> Result<PathBuf, String> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
    let own = std::fs::read_to_string("/proc/self/cgroup")
        .map_err(|e| format!("cannot read /proc/self/cgroup: {e}"))?;
    let own = own
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or_else(|| "the daemon is in no cgroup v2 cgroup".to_string())?
        .trim_start_matches('/')
        .to_string();
    let me = std::process::id().to_string();
    let mounts: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|line| {
            let (pre, post) = line.split_once(" - ")?;
            let fields: Vec<&str> = pre.split_whitespace().collect();
            // fields[3] is the mount's root within the hierarchy, fields[4] its mount point.
            (post.split_whitespace().next()? == "cgroup2" && fields.get(3) == Some(&"/"))
                .then(|| fields.get(4).map(PathBuf::from))
                .flatten()
        })
        .collect();
    if mounts.is_empty() {
        return Err("no cgroup v2 hierarchy is mounted".into());
    }
    let dir = mounts
        .iter()
        .rev()
        .map(|m| m.join(&own))
        .find(|dir| {
            std::fs::read_to_string(dir.join("cgroup.procs"))
                .is_ok_and(|procs| procs.lines().any(|p| p.trim() == me))
        })
        .ok_or_else(|| {
            format!("the daemon's own cgroup /{own} is not visible in any cgroup2 mount")
        })?;
    let base = dir.join("spawnd");
    // Only the last component is created: the daemon's own cgroup must already exist.
    match std::fs::create_dir(&base) {
        Ok(()) => Ok(base),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(base),
        Err(e) => Err(format!("cannot create cgroup {}: {e}", base.display())),
    }
}

/// Kills every process in the cgroup (`cgroup.kill`).
pub fn kill_cgroup(dir: &Path) -> io::Result<()> {
    std::fs::write(dir.join("cgroup.kill"), b"1")
}

/// SIGKILLs the process group `pgid` (process-group mode: a server's group id is its pid).
/// Only for a caller that knows the group's leader has not been reaped: a group id is handed
/// out again once its leader is reaped and its last member gone (see
/// `supervisor::process::Leader::kill_group`).
pub fn kill_group(pgid: i32) -> io::Result<()> {
    use nix::sys::signal::{Signal, killpg};
    match killpg(nix::unistd::Pid::from_raw(pgid), Signal::SIGKILL) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
        Err(e) => Err(io::Error::from(e)),
    }
}

/// The processes in the cgroup (`cgroup.procs`).
pub fn cgroup_procs(dir: &Path) -> io::Result<Vec<i32>> {
    let procs = std::fs::read_to_string(dir.join("cgroup.procs"))?;
    Ok(procs
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect())
}

/// Whether the cgroup still holds processes (`populated 1` in `cgroup.events`).
pub fn populated(cgroup: &Path) -> bool {
    std::fs::read_to_string(cgroup.join("cgroup.events"))
        .map(|s| s.lines().any(|l| l == "populated 1"))
        .unwrap_or(false)
}

/// Removes the cgroup of a start that failed: kills what may be in it (a child the launcher
/// killed may still be dying), waits a moment for it to empty, removes it and, when no other
/// server of the user has one, the user's directory.
pub fn discard(dir: &Path) {
    if populated(dir) {
        let _ = kill_cgroup(dir);
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while populated(dir) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let _ = remove_cgroup(dir);
}

/// Removes an empty server cgroup and, when no other server of the user has one, the user's
/// directory.
pub fn remove_cgroup(dir: &Path) -> io::Result<()> {
    std::fs::remove_dir(dir)?;
    if let Some(user_dir) = dir.parent() {
        // Only succeeds when no other server of this user has a cgroup.
        let _ = std::fs::remove_dir(user_dir);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_names_read_back_as_they_are_made() {
        for server in ["", "lab", "lab.v2"] {
            let dir = cgroup_dir(Path::new("/cg"), "alice", server, 42);
            let name = dir.file_name().and_then(|n| n.to_str()).expect("a name");
            assert_eq!(parse_cgroup_name(name), Some((server, 42)), "{name}");
        }
        assert_eq!(parse_cgroup_name("@default"), None);
        assert_eq!(parse_cgroup_name("lab.v2"), None);
    }
}
