//! Thin wrappers over the Linux calls that neither std nor nix offer: pidfds and peer groups.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// Opens a pidfd for `pid`. The caller must make sure `pid` cannot have been recycled (for
/// example: it is our own child and not yet reaped).
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1; no memory is shared.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd to us; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Sends `signal` to the process behind `pidfd`. ESRCH once it has exited: a recycled PID can
/// never be hit.
pub fn pidfd_send_signal(pidfd: BorrowedFd<'_>, signal: i32) -> io::Result<()> {
    // SAFETY: a valid fd, a signal number, a null siginfo (the kernel fills a default one) and
    // no flags.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// How a reaped child ended: `Ok(Some((code, signal)))` with exactly one of them meaningful.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reaped {
    Exited(i32),
    Killed(i32),
}

/// Reaps the child behind `pidfd` without blocking. `Ok(None)` while it still runs.
pub fn waitid_pidfd(pidfd: BorrowedFd<'_>) -> io::Result<Option<Reaped>> {
    waitid(pidfd, libc::WNOHANG)
}

/// Waits for the child behind `pidfd` to exit, and reaps it.
pub fn waitid_pidfd_blocking(pidfd: BorrowedFd<'_>) -> io::Result<Reaped> {
    loop {
        match waitid(pidfd, 0) {
            Ok(Some(r)) => return Ok(r),
            Ok(None) => continue,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Blocks until the process behind `pidfd` has exited (its pidfd is readable), without reaping
/// it; works for processes that are not our children too.
pub fn wait_pidfd_readable(pidfd: BorrowedFd<'_>) -> io::Result<()> {
    loop {
        let mut pollfd = libc::pollfd {
            fd: pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, no timeout.
        let n = unsafe { libc::poll(&mut pollfd, 1, -1) };
        if n > 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if n < 0 && e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Registers a pidfd with tokio's event loop, to learn of the process's exit (the pidfd
/// becomes readable) without a thread. Must be called within a tokio runtime.
pub fn register_pidfd(pidfd: Arc<OwnedFd>) -> io::Result<AsyncFd<Arc<OwnedFd>>> {
    // SAFETY: the AsyncFd owns this clone of the Arc, so the descriptor stays open, and names
    // the same pidfd, for as long as it is registered: an OwnedFd is never replaced, and is
    // closed only when the last Arc goes.
    let registered = unsafe { AsyncFd::register_with_interest(pidfd, Interest::READABLE) };
    Ok(registered?)
}

fn waitid(pidfd: BorrowedFd<'_>, flags: libc::c_int) -> io::Result<Option<Reaped>> {
    // SAFETY: siginfo_t is plain old data; all-zero is a valid value.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid writes into `info`, which lives for the call; P_PIDFD takes the fd as id.
    let r = unsafe {
        libc::waitid(
            libc::P_PIDFD,
            pidfd.as_raw_fd() as libc::id_t,
            &mut info,
            libc::WEXITED | flags,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: after a successful waitid the pid and status fields are initialised (zero pid
    // means nothing was reaped).
    let (pid, status) = unsafe { (info.si_pid(), info.si_status()) };
    if pid == 0 {
        return Ok(None);
    }
    Ok(Some(match info.si_code {
        libc::CLD_EXITED => Reaped::Exited(status),
        _ => Reaped::Killed(status),
    }))
}

/// The supplementary groups of a socket's peer, as the kernel recorded them at connect time
/// (SO_PEERGROUPS). Never looked up through NSS.
pub fn peer_groups(fd: BorrowedFd<'_>) -> io::Result<Vec<u32>> {
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let mut len = (groups.len() * std::mem::size_of::<libc::gid_t>()) as libc::socklen_t;
        // SAFETY: the buffer is valid for `len` bytes and the kernel writes at most that much,
        // updating `len` to the size used (or needed, with ERANGE).
        let r = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let n = len as usize / std::mem::size_of::<libc::gid_t>();
        if r == 0 {
            groups.truncate(n);
            return Ok(groups);
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::ERANGE) && n > groups.len() {
            groups.resize(n, 0);
            continue;
        }
        return Err(err);
    }
}

/// The start time of a process in clock ticks since boot (field 22 of /proc/PID/stat), which
/// together with the pid names one process for good.
pub fn process_start_time(pid: i32) -> io::Result<u64> {
    stat_field(pid, 19)
}

/// The session id of a process (field 6 of /proc/PID/stat).
pub fn process_session(pid: i32) -> io::Result<i32> {
    stat_field(pid, 3)
}

fn stat_field<T: std::str::FromStr>(pid: i32, index_after_comm: usize) -> io::Result<T> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    stat.rfind(')')
        .map(|i| &stat[i + 1..])
        .and_then(|rest| rest.split_whitespace().nth(index_after_comm))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unreadable /proc stat"))
}

/// The real uid of a process (first field of `Uid:` in /proc/PID/status).
pub fn process_uid(pid: i32) -> io::Result<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unreadable /proc status"))
}

/// The names of the capabilities in the daemon's effective set.
pub fn effective_capabilities() -> Vec<String> {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return vec![];
    };
    let Some(mask) = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
    else {
        return vec![];
    };
    (0..64)
        .filter(|bit| mask & (1u64 << bit) != 0)
        .map(|bit| cap_name(bit).map_or_else(|| format!("cap_{bit}"), str::to_string))
        .collect()
}

fn cap_name(bit: u32) -> Option<&'static str> {
    const NAMES: [&str; 41] = [
        "chown",
        "dac_override",
        "dac_read_search",
        "fowner",
        "fsetid",
        "kill",
        "setgid",
        "setuid",
        "setpcap",
        "linux_immutable",
        "net_bind_service",
        "net_broadcast",
        "net_admin",
        "net_raw",
        "ipc_lock",
        "ipc_owner",
        "sys_module",
        "sys_rawio",
        "sys_chroot",
        "sys_ptrace",
        "sys_pacct",
        "sys_admin",
        "sys_boot",
        "sys_nice",
        "sys_resource",
        "sys_time",
        "sys_tty_config",
        "mknod",
        "lease",
        "audit_write",
        "audit_control",
        "setfcap",
        "mac_override",
        "mac_admin",
        "syslog",
        "wake_alarm",
        "block_suspend",
        "audit_read",
        "perfmon",
        "bpf",
        "checkpoint_restore",
    ];
    NAMES.get(bit as usize).copied()
}

/// Opens `/dev/null` on any of descriptors 0, 1 and 2 that is closed, so that no file the
/// process opens later takes one of their numbers (and receives what is meant for standard
/// output). Call first thing in `main`.
pub fn open_standard_descriptors() {
    for fd in 0..3 {
        // SAFETY: fcntl(F_GETFD) on a number only reads its flags; open returns the lowest free
        // number, which is `fd` when it was closed (the lower ones are open by then), and the
        // descriptor it returns is deliberately never closed.
        unsafe {
            if libc::fcntl(fd, libc::F_GETFD) < 0 {
                libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
            }
        }
    }
}

/// The listening socket systemd passed (socket activation: `LISTEN_PID` is this process and
/// `LISTEN_FDS` at least 1), if any, marked close-on-exec. Call once, at start-up.
pub fn systemd_listen_fd() -> Option<OwnedFd> {
    let pid: u32 = std::env::var("LISTEN_PID").ok()?.parse().ok()?;
    let fds: i32 = std::env::var("LISTEN_FDS").ok()?.parse().ok()?;
    if pid != std::process::id() || fds < 1 {
        return None;
    }
    // SAFETY: systemd passes the listening socket as fd 3 (SD_LISTEN_FDS_START) and nothing
    // else in this process owns it; this runs once, before anything else could take it.
    let fd = unsafe { OwnedFd::from_raw_fd(3) };
    // Servers must not inherit it: mark it close-on-exec.
    let _ = nix::fcntl::fcntl(
        &fd,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    );
    Some(fd)
}

/// `struct clone_args` of clone3(2), up to the `cgroup` field (Linux 5.7). Used by the launcher
/// and by the benchmark's bare spawns.
#[repr(C)]
#[derive(Debug, Default)]
pub struct CloneArgs {
    pub flags: u64,
    pub pidfd: u64,
    pub child_tid: u64,
    pub parent_tid: u64,
    pub exit_signal: u64,
    pub stack: u64,
    pub stack_size: u64,
    pub tls: u64,
    pub set_tid: u64,
    pub set_tid_size: u64,
    pub cgroup: u64,
}

/// clone(2) flags not (all) in libc's constants as u64.
pub const CLONE_PARENT: u64 = 0x8000;
pub const CLONE_PIDFD: u64 = 0x1000;
pub const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// Whether the file at `path` (links followed) has the extended attribute `name`. A file
/// system without extended attributes has none.
pub fn has_xattr(path: &std::path::Path, name: &std::ffi::CStr) -> io::Result<bool> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: both strings are NUL-terminated and live across the call; a zero size with a
    // null buffer only asks for the value's size, nothing is written.
    let size = unsafe { libc::getxattr(c_path.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0) };
    if size >= 0 {
        return Ok(true);
    }
    let error = io::Error::last_os_error();
    match error.raw_os_error() {
        Some(libc::ENODATA) | Some(libc::EOPNOTSUPP) => Ok(false),
        _ => Err(error),
    }
}
