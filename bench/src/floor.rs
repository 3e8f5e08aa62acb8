//! The physical floors the daemon is measured against, in the same run:
//!
//! - [`echo`]: a bare `SOCK_SEQPACKET` round trip between two processes, with the bytes of a
//!   real poll request and response, blocking `send`/`recv`, nothing else;
//! - [`bare_spawn`]: fork + setgroups/setresgid/setresuid + exec of a program, until the exec
//!   has happened (a close-on-exec pipe reports end of file), as the daemon's start does;
//!   optionally also entering a fresh cgroup v2 first (what the daemon's cgroup mode adds),
//!   either by writing to `cgroup.procs` in the child or with `clone3(CLONE_INTO_CGROUP)`.
//!
//! Both fork: call them while the process is still single-threaded (before any runtime starts).

use crate::stats::{pin_to, summary_json};
use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use spawnd_protocol::{
    Polled, Request, Response, ServerId, ServerState, encode_request, encode_response,
};
use std::ffi::{CString, c_char};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where the two ends of the echo run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Placement {
    /// Both processes pinned to CPU 0.
    Same,
    /// Client on CPU 0, echo server on CPU 1.
    Cross,
    /// No pinning: the scheduler decides.
    Free,
}

impl Placement {
    fn cpus(self) -> (Option<usize>, Option<usize>) {
        match self {
            Placement::Same => (Some(0), Some(0)),
            Placement::Cross => (Some(0), Some(1)),
            Placement::Free => (None, None),
        }
    }
}

/// The bytes of a real poll request and of its answer.
pub fn poll_packets() -> Result<(Vec<u8>, Vec<u8>)> {
    let request = encode_request(
        7,
        &Request::Poll {
            server: ServerId::new("spwb12345u00", "rtt"),
            instance: Some(1_764_000_000_000_000),
        },
    )?;
    let response = encode_response(
        7,
        &Response::Polled(Polled {
            instance: 1_764_000_000_000_000,
            pid: 123_456,
            state: ServerState::Running,
        }),
    )?;
    Ok((request, response))
}

/// The echo server's loop (in the forked child): answer every packet with `response` until the
/// other end closes; with `match_ids`, with the request's id in the envelope (the spawnd client
/// pairs answers with requests by id). Never returns.
fn echo_child(sock: RawFd, response: &[u8], cpu: Option<usize>, match_ids: bool) -> ! {
    // Pinning after fork: the child is single-threaded and sched_setaffinity is a system call.
    // (The parent was single-threaded when it forked, so allocating here is safe too.)
    let _ = pin_to(cpu);
    let mut buf = [0u8; 512];
    let answer = |id: u32| -> Option<Vec<u8>> {
        let polled = spawnd_protocol::decode_response(response).ok()?.body;
        encode_response(id, &polled).ok()
    };
    loop {
        // SAFETY: receiving into a local buffer of the given size.
        let n = unsafe { libc::recv(sock, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n <= 0 {
            break;
        }
        let owned;
        let reply = if match_ids {
            let id = spawnd_protocol::peek_header(&buf[..n as usize]).map_or(0, |h| h.id);
            owned = answer(id).unwrap_or_default();
            &owned[..]
        } else {
            response
        };
        // SAFETY: sending from a slice that outlives the call.
        let sent = unsafe { libc::send(sock, reply.as_ptr().cast(), reply.len(), 0) };
        if sent < 0 {
            break;
        }
    }
    // SAFETY: _exit ends the child without running the parent's destructors or atexit hooks.
    unsafe { libc::_exit(0) }
}

/// Round trips of a poll-sized packet between two processes over a `SOCK_SEQPACKET` socketpair.
/// With `client`, the asking side is the spawnd client library ([`spawnd_client::Client`] on a
/// current-thread runtime, as the daemon is asked) instead of bare send/recv: the difference is
/// the client's own cost.
pub fn echo(iters: usize, warmup: usize, placement: Placement, client: bool) -> Result<Value> {
    let (request, response) = poll_packets()?;
    let mut fds = [0 as RawFd; 2];
    // SAFETY: socketpair writes two descriptors into the array on success.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error()).context("socketpair");
    }
    // SAFETY: both descriptors were just created and belong to nobody else.
    let (ours, theirs) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let (client_cpu, server_cpu) = placement.cpus();
    // SAFETY: the process is single-threaded here (see the module docs); the child only makes
    // system calls and ends in _exit.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(std::io::Error::last_os_error()).context("fork");
    }
    if pid == 0 {
        drop(ours);
        echo_child(theirs.as_raw_fd(), &response, server_cpu, client);
    }
    drop(theirs);
    pin_to(client_cpu).context("sched_setaffinity")?;
    if client {
        let samples = echo_with_client(ours, iters, warmup);
        reap(pid);
        pin_to_all()?;
        let mut samples = samples?;
        return Ok(json!({
            "placement": format!("{placement:?}").to_lowercase(),
            "client": "spawnd_client::Client",
            "rtt": summary_json(&mut samples),
        }));
    }
    let sock = ours.as_raw_fd();
    let mut buf = [0u8; 512];
    let mut round_trip = || -> Result<Duration> {
        let t0 = Instant::now();
        // SAFETY: sending from a live slice.
        let sent = unsafe { libc::send(sock, request.as_ptr().cast(), request.len(), 0) };
        if sent < 0 {
            return Err(std::io::Error::last_os_error()).context("send");
        }
        // SAFETY: receiving into a local buffer of the given size.
        let n = unsafe { libc::recv(sock, buf.as_mut_ptr().cast(), buf.len(), 0) };
        let elapsed = t0.elapsed();
        if n as usize != response.len() {
            bail!("the echo answered {n} bytes, not {}", response.len());
        }
        Ok(elapsed)
    };
    for _ in 0..warmup {
        round_trip()?;
    }
    let mut samples = Vec::with_capacity(iters);
    for _ in 0..iters {
        samples.push(round_trip()?);
    }
    drop(ours);
    reap(pid);
    pin_to_all()?;
    Ok(json!({
        "placement": format!("{placement:?}").to_lowercase(),
        "request_bytes": request.len(),
        "response_bytes": response.len(),
        "rtt": summary_json(&mut samples),
    }))
}

/// Polls through the spawnd client over `sock` (the echo child answers).
fn echo_with_client(sock: OwnedFd, iters: usize, warmup: usize) -> Result<Vec<Duration>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    rt.block_on(async {
        let client = spawnd_client::Client::from_fd(sock)?;
        let id = ServerId::new("spwb12345u00", "rtt");
        let mut samples = Vec::with_capacity(iters);
        for i in 0..warmup + iters {
            let t0 = Instant::now();
            client.poll(&id, Some(1_764_000_000_000_000)).await?;
            if i >= warmup {
                samples.push(t0.elapsed());
            }
        }
        Ok(samples)
    })
}

/// Lets the calling thread run on every CPU again.
fn pin_to_all() -> Result<()> {
    // SAFETY: cpu_set_t is plain data; the macros only write into the local set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::CPU_ZERO(&mut set) };
    for cpu in 0..num_cpus() {
        // SAFETY: as above; cpu is below CPU_SETSIZE on any machine this runs on.
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    // SAFETY: pid 0 is the calling thread; the set is valid for its size.
    let r = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if r < 0 {
        return Err(std::io::Error::last_os_error()).context("sched_setaffinity");
    }
    Ok(())
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn reap(pid: libc::pid_t) {
    let mut status = 0;
    loop {
        // SAFETY: waiting for our own child; status is a local.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r >= 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return;
        }
    }
}

/// How the bare spawn puts its child into a cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CgroupEntry {
    /// No cgroup: fork + identity change + exec only.
    None,
    /// mkdir a fresh cgroup, the child writes "0" to its `cgroup.procs` before setsid (what the
    /// daemon does), rmdir after.
    Write,
    /// mkdir a fresh cgroup, `clone3(CLONE_INTO_CGROUP)` starts the child in it (no migration).
    Clone3,
}

/// Everything the child needs, computed before the timed loop.
struct Prepared {
    program: CString,
    _argv: Vec<CString>,
    argv_ptrs: Vec<*const c_char>,
    envp_ptrs: Vec<*const c_char>,
    groups: Vec<libc::gid_t>,
    uid: libc::uid_t,
    gid: libc::gid_t,
}

fn prepare(user: &str, argv: &[String]) -> Result<Prepared> {
    let pw = nix::unistd::User::from_name(user)
        .context("getpwnam")?
        .with_context(|| format!("no user {user}"))?;
    let cname = CString::new(user)?;
    let groups = nix::unistd::getgrouplist(&cname, pw.gid).context("getgrouplist")?;
    let Some(first) = argv.first() else {
        bail!("no program given");
    };
    let program = CString::new(first.as_str())?;
    let argv_c = argv
        .iter()
        .map(|a| CString::new(a.as_str()))
        .collect::<Result<Vec<_>, _>>()?;
    let mut argv_ptrs: Vec<*const c_char> = argv_c.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    Ok(Prepared {
        program,
        _argv: argv_c,
        argv_ptrs,
        envp_ptrs: vec![std::ptr::null()],
        groups: groups.iter().map(|g| g.as_raw()).collect(),
        uid: pw.uid.as_raw(),
        gid: pw.gid.as_raw(),
    })
}

/// The child between fork and exec: only system calls. Reports a failure (errno) on `report`.
///
/// # Safety
/// Only in a freshly forked (or cloned) child.
unsafe fn bare_child(p: &Prepared, report: RawFd, procs: Option<RawFd>) -> ! {
    // SAFETY: async-signal-safe system calls on data prepared before fork.
    unsafe {
        let fail = |report: RawFd| -> ! {
            let errno = *libc::__errno_location();
            let b = errno.to_ne_bytes();
            libc::write(report, b.as_ptr().cast(), b.len());
            libc::_exit(127)
        };
        if let Some(procs) = procs
            && libc::write(procs, b"0".as_ptr().cast(), 1) < 0
        {
            fail(report);
        }
        if libc::setgroups(p.groups.len(), p.groups.as_ptr()) < 0
            || libc::setresgid(p.gid, p.gid, p.gid) < 0
            || libc::setresuid(p.uid, p.uid, p.uid) < 0
        {
            fail(report);
        }
        libc::execve(
            p.program.as_ptr(),
            p.argv_ptrs.as_ptr(),
            p.envp_ptrs.as_ptr(),
        );
        fail(report)
    }
}

use spawnd::sys::{CLONE_INTO_CGROUP, CloneArgs};

/// Times `iters` spawns of `argv` as `user`, each until its exec happened; the child is then
/// killed and reaped outside the timed part, and the next spawn waits `gap` (spawns as far
/// apart as the daemon's: back-to-back cgroup migrations share one RCU grace period, isolated
/// ones each wait for their own).
pub fn bare_spawn(
    user: &str,
    argv: &[String],
    iters: usize,
    warmup: usize,
    gap: Duration,
    cgroup: CgroupEntry,
    cgroup_base: Option<&Path>,
) -> Result<Value> {
    let p = prepare(user, argv)?;
    let base: Option<PathBuf> = match cgroup {
        CgroupEntry::None => None,
        _ => Some(
            cgroup_base
                .context("--cgroup-base is needed with a cgroup entry")?
                .to_path_buf(),
        ),
    };
    if let Some(b) = &base {
        std::fs::create_dir_all(b).with_context(|| format!("mkdir {}", b.display()))?;
    }
    let mut samples = Vec::with_capacity(iters);
    for i in 0..warmup + iters {
        let t0 = Instant::now();
        let (cg_dir, cg_fd) = match &base {
            Some(b) => {
                let dir = b.join(format!("bare.{i}"));
                std::fs::create_dir(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
                let fd: OwnedFd = match cgroup {
                    CgroupEntry::Write => std::fs::OpenOptions::new()
                        .write(true)
                        .open(dir.join("cgroup.procs"))?
                        .into(),
                    _ => std::fs::File::open(&dir)?.into(),
                };
                (Some(dir), Some(fd))
            }
            None => (None, None),
        };
        let (read_end, write_end) = cloexec_pipe()?;
        let pid = match cgroup {
            CgroupEntry::Clone3 => {
                let args = CloneArgs {
                    flags: CLONE_INTO_CGROUP,
                    exit_signal: libc::SIGCHLD as u64,
                    cgroup: cg_fd.as_ref().map_or(0, |f| f.as_raw_fd() as u64),
                    ..CloneArgs::default()
                };
                // SAFETY: clone3 without CLONE_VM behaves like fork; the child only makes
                // system calls (bare_child) and ends in execve or _exit.
                unsafe {
                    libc::syscall(
                        libc::SYS_clone3,
                        &args as *const CloneArgs,
                        std::mem::size_of::<CloneArgs>(),
                    ) as libc::pid_t
                }
            }
            // SAFETY: single-threaded process; the child only makes system calls.
            _ => unsafe { libc::fork() },
        };
        if pid < 0 {
            return Err(std::io::Error::last_os_error()).context("fork");
        }
        if pid == 0 {
            let procs = match cgroup {
                CgroupEntry::Write => cg_fd.as_ref().map(|f| f.as_raw_fd()),
                _ => None,
            };
            // SAFETY: we are the child.
            unsafe { bare_child(&p, write_end.as_raw_fd(), procs) }
        }
        drop(write_end);
        let mut errno = [0u8; 4];
        // SAFETY: reading into a local buffer.
        let n = unsafe { libc::read(read_end.as_raw_fd(), errno.as_mut_ptr().cast(), 4) };
        let elapsed = t0.elapsed();
        // SAFETY: our own unreaped child.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        reap(pid);
        drop(cg_fd);
        if let Some(dir) = cg_dir {
            remove_cgroup(&dir);
        }
        if n != 0 {
            let e = std::io::Error::from_raw_os_error(i32::from_ne_bytes(errno));
            bail!("the bare spawn failed in the child: {e}");
        }
        if i >= warmup {
            samples.push(elapsed);
        }
        std::thread::sleep(gap);
    }
    Ok(json!({
        "user": user,
        "argv": argv,
        "gap_ms": gap.as_secs_f64() * 1e3,
        "cgroup": format!("{cgroup:?}").to_lowercase(),
        "spawn": summary_json(&mut samples),
    }))
}

fn cloexec_pipe() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 writes two descriptors into the array on success.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(std::io::Error::last_os_error()).context("pipe2");
    }
    // SAFETY: both were just created and belong to nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// rmdir of a cgroup once its (killed) process has left it.
fn remove_cgroup(dir: &Path) {
    for _ in 0..1000 {
        if std::fs::remove_dir(dir).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Times `setpriv --reuid --regid --init-groups PROGRAM` run to completion (fork, exec of
/// setpriv, its user lookup, the identity change, exec of the program, exit, wait): the
/// figure the issue quotes for `/bin/true`.
pub fn setpriv(user: &str, program: &str, iters: usize, warmup: usize) -> Result<Value> {
    let pw = nix::unistd::User::from_name(user)
        .context("getpwnam")?
        .with_context(|| format!("no user {user}"))?;
    let mut samples = Vec::with_capacity(iters);
    for i in 0..warmup + iters {
        let t0 = Instant::now();
        let status = std::process::Command::new("setpriv")
            .arg(format!("--reuid={}", pw.uid))
            .arg(format!("--regid={}", pw.gid))
            .arg("--init-groups")
            .arg(program)
            .env_clear()
            .status()
            .context("running setpriv")?;
        let elapsed = t0.elapsed();
        if !status.success() {
            bail!("setpriv {program} failed: {status}");
        }
        if i >= warmup {
            samples.push(elapsed);
        }
    }
    Ok(json!({ "user": user, "program": program, "run": summary_json(&mut samples) }))
}

/// Times the durable write of a small record as the daemon keeps its state: write a temporary
/// file, fsync it, rename it over the record, fsync the directory. The floor of the state
/// write a start waits for before it answers.
pub fn state_write(dir: &Path, iters: usize, warmup: usize, gap: Duration) -> Result<Value> {
    use std::io::Write;
    std::fs::create_dir_all(dir).with_context(|| format!("mkdir {}", dir.display()))?;
    let record = vec![b'x'; 550];
    let (tmp, dst) = (dir.join("record.json.tmp"), dir.join("record.json"));
    let mut samples = Vec::with_capacity(iters);
    for i in 0..warmup + iters {
        let t0 = Instant::now();
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&record)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, &dst)?;
        std::fs::File::open(dir)?.sync_all()?;
        if i >= warmup {
            samples.push(t0.elapsed());
        }
        std::thread::sleep(gap);
    }
    let _ = std::fs::remove_file(&dst);
    Ok(json!({ "dir": dir, "write": summary_json(&mut samples) }))
}
