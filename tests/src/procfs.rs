//! What the kernel says about a process, from /proc.

use std::collections::BTreeMap;
use std::path::PathBuf;

fn proc_path(pid: u32, what: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/{what}"))
}

/// The numbers of a `/proc/PID/status` line such as `Uid:` (real, effective, saved, fs) or
/// `Groups:`. `None` when the process or the line is missing.
pub fn status_ids(pid: u32, field: &str) -> Option<Vec<u32>> {
    let status = std::fs::read_to_string(proc_path(pid, "status")).ok()?;
    let prefix = format!("{field}:");
    let line = status.lines().find(|l| l.starts_with(&prefix))?;
    Some(
        line[prefix.len()..]
            .split_whitespace()
            .map(|n| n.parse().expect("numeric id in /proc status"))
            .collect(),
    )
}

/// The fields of `/proc/PID/stat` after the command name: index 0 is the state (field 3),
/// 1 the ppid, 2 the process group, 3 the session.
pub fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(proc_path(pid, "stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    Some(after.split_whitespace().map(str::to_owned).collect())
}

/// The process's state letter (`R`, `S`, `Z`, ...), or `None` when it is gone.
pub fn state(pid: u32) -> Option<char> {
    stat_fields(pid)?.first()?.chars().next()
}

/// True while the process exists and is not a zombie.
pub fn is_alive(pid: u32) -> bool {
    matches!(state(pid), Some(s) if s != 'Z' && s != 'X')
}

pub fn ppid(pid: u32) -> Option<u32> {
    stat_fields(pid)?.get(1)?.parse().ok()
}

pub fn pgrp(pid: u32) -> Option<u32> {
    stat_fields(pid)?.get(2)?.parse().ok()
}

pub fn session(pid: u32) -> Option<u32> {
    stat_fields(pid)?.get(3)?.parse().ok()
}

/// `/proc/PID/comm` without the newline.
pub fn comm(pid: u32) -> Option<String> {
    std::fs::read_to_string(proc_path(pid, "comm"))
        .ok()
        .map(|s| s.trim_end().to_owned())
}

pub fn cwd(pid: u32) -> Option<PathBuf> {
    std::fs::read_link(proc_path(pid, "cwd")).ok()
}

/// Open descriptors and what they point to.
pub fn fds(pid: u32) -> Option<BTreeMap<i32, PathBuf>> {
    let mut map = BTreeMap::new();
    for entry in std::fs::read_dir(proc_path(pid, "fd")).ok()? {
        let entry = entry.ok()?;
        let fd: i32 = entry.file_name().to_str()?.parse().ok()?;
        // A descriptor can close between readdir and readlink; record what is left.
        let target = std::fs::read_link(entry.path()).unwrap_or_default();
        map.insert(fd, target);
    }
    Some(map)
}

/// The environment the process was executed with (`/proc/PID/environ`), as `NAME=value`
/// entries in order.
pub fn environ(pid: u32) -> Option<Vec<String>> {
    let raw = std::fs::read(proc_path(pid, "environ")).ok()?;
    Some(
        raw.split(|&b| b == 0)
            .filter(|e| !e.is_empty())
            .map(|e| String::from_utf8_lossy(e).into_owned())
            .collect(),
    )
}

/// The process's cgroup v2 path (the `0::` line of `/proc/PID/cgroup`).
pub fn cgroup(pid: u32) -> Option<String> {
    let text = std::fs::read_to_string(proc_path(pid, "cgroup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_owned)
}

/// Every pid in /proc.
pub fn all_pids() -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// Live (non-zombie) processes whose real uid is `uid`.
pub fn pids_of_uid(uid: u32) -> Vec<u32> {
    all_pids()
        .into_iter()
        .filter(|&p| {
            is_alive(p) && status_ids(p, "Uid").and_then(|ids| ids.first().copied()) == Some(uid)
        })
        .collect()
}

/// Live (non-zombie) children of `parent`.
pub fn children_of(parent: u32) -> Vec<u32> {
    all_pids()
        .into_iter()
        .filter(|&p| ppid(p) == Some(parent) && is_alive(p))
        .collect()
}

/// Whether `pid`, a child of `daemon`, is its launcher: root, named `spawnd-launcher`, in the
/// daemon's own cgroup (a server process at its birth is a copy of the launcher, with its name
/// and uid, but born in its server's cgroup).
fn is_launcher_of(daemon: u32, pid: u32) -> bool {
    comm(pid).as_deref() == Some("spawnd-launcher")
        && status_ids(pid, "Uid").and_then(|ids| ids.first().copied()) == Some(0)
        && cgroup(pid) == cgroup(daemon)
}

/// The daemon's live children other than its launcher: the servers it supervises.
pub fn servers_of(daemon: u32) -> Vec<u32> {
    children_of(daemon)
        .into_iter()
        .filter(|&p| !is_launcher_of(daemon, p))
        .collect()
}

/// The daemon's launcher process(es): normally exactly one.
pub fn launchers_of(daemon: u32) -> Vec<u32> {
    children_of(daemon)
        .into_iter()
        .filter(|&p| is_launcher_of(daemon, p))
        .collect()
}

/// The number of open descriptors of a process (entries in `/proc/PID/fd`).
pub fn fd_count(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(proc_path(pid, "fd")).ok()?.count())
}

/// A `/proc/PID/status` line with a single number, such as `VmRSS:` (kB) or `Threads:`.
pub fn status_number(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(proc_path(pid, "status")).ok()?;
    let prefix = format!("{field}:");
    let line = status.lines().find(|l| l.starts_with(&prefix))?;
    line[prefix.len()..].split_whitespace().next()?.parse().ok()
}

/// A `/proc/PID/status` mask in hexadecimal, such as `SigBlk:` or `CapEff:`.
pub fn status_mask(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(proc_path(pid, "status")).ok()?;
    let prefix = format!("{field}:");
    let line = status.lines().find(|l| l.starts_with(&prefix))?;
    u64::from_str_radix(line[prefix.len()..].trim(), 16).ok()
}

/// Resident memory of a process in KiB (`VmRSS`).
pub fn rss_kib(pid: u32) -> Option<u64> {
    status_number(pid, "VmRSS")
}

/// Children of `parent` that have exited and were never reaped (state `Z`).
pub fn zombie_children(parent: u32) -> Vec<u32> {
    all_pids()
        .into_iter()
        .filter(|&p| ppid(p) == Some(parent) && state(p) == Some('Z'))
        .collect()
}

/// Whether two processes share their memory (kcmp KCMP_VM; needs root).
pub fn same_memory(a: u32, b: u32) -> bool {
    const KCMP_VM: libc::c_long = 1;
    // SAFETY: kcmp compares kernel objects of two pids; no memory of ours is passed.
    let r = unsafe {
        libc::syscall(
            libc::SYS_kcmp,
            a as libc::pid_t,
            b as libc::pid_t,
            KCMP_VM,
            0,
            0,
        )
    };
    assert!(r >= 0, "kcmp: {}", std::io::Error::last_os_error());
    r == 0
}
