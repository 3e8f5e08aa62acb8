"""Helpers for the harnesses that run as root and create and remove test users, groups,
processes and cgroups: bench/run.py (and bench/spawners.py) and tests/hub/harness.py.

Standard library only (bench/run.py runs under /usr/bin/python3, tests/hub under pytest in a
venv). Importers put this directory on sys.path themselves, with sys.dont_write_bytecode set.
Messages go to the function given to set_log (stderr until then).
"""

import fcntl
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def _stderr(msg):
    print(msg, file=sys.stderr, flush=True)


_log = _stderr


def set_log(fn):
    """Sends this module's messages to fn(msg) (each harness passes its own `log`)."""
    global _log
    _log = fn


# --- processes -----------------------------------------------------------------------------------


def run(cmd, timeout=120, check=False, **kw):
    """subprocess.run with stdin from /dev/null and text output captured; check=True raises
    RuntimeError with the output when the command fails."""
    r = subprocess.run(
        [str(c) for c in cmd],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        **kw,
    )
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed ({r.returncode}):\n{r.stdout}{r.stderr}")
    return r


def proc_status(pid):
    """/proc/PID/status as a dict of field -> value string, or None if the process is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    out = {}
    for line in text.splitlines():
        k, _, v = line.partition(":")
        out[k] = v.strip()
    return out


def kib(pid, field):
    """A size field of /proc/PID/status (VmRSS, VmHWM, ...) in KiB, or None."""
    st = proc_status(pid)
    try:
        return int(st[field].split()[0]) if st else None
    except (KeyError, ValueError, IndexError):
        return None


def pids_of_uid(uid):
    """Live (non-zombie) processes whose real, effective, saved or fs uid is `uid`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        st = proc_status(entry)
        if not st or st.get("State", "").startswith("Z"):
            continue
        if uid in [int(x) for x in st.get("Uid", "").split()]:
            found.append(int(entry))
    return found


def kill_uid(uid):
    """SIGKILLs every process of `uid` (the harness's own users only) and waits (up to about
    10 s) until they are gone."""
    for _ in range(200):
        pids = pids_of_uid(uid)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)


def wait_for(check, timeout, interval=0.05):
    """Calls check() until it returns something truthy (returned) or `timeout` passes (None)."""
    deadline = time.monotonic() + timeout
    while True:
        v = check()
        if v:
            return v
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def take_lock(path):
    """An exclusive flock on `path`, held as long as the returned fd is open: two runs of the
    same harness never clean up each other."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


# --- users and groups ----------------------------------------------------------------------------


def account_tool(*args):
    """useradd/userdel/groupadd/groupdel, retried while another process holds the lock."""
    for _ in range(40):
        r = run(args, timeout=60)
        if r.returncode == 0 or ("lock" not in r.stderr and r.returncode != 10):
            return r
        time.sleep(0.25)
    return r


def remove_user(name):
    """Kills the user's processes, then `userdel -r -f`; nothing if there is no such user."""
    try:
        uid = pwd.getpwnam(name).pw_uid
    except KeyError:
        return
    kill_uid(uid)
    r = account_tool("userdel", "-r", "-f", name)
    # 6: no such user; 12: no home to remove.
    if r.returncode not in (0, 6, 12):
        _log(f"userdel -r -f {name} failed ({r.returncode}): {r.stderr.strip()}")


def remove_group(name):
    r = account_tool("groupdel", name)
    if r.returncode not in (0, 6):
        _log(f"groupdel {name} failed ({r.returncode}): {r.stderr.strip()}")


# --- cgroups and leftovers -----------------------------------------------------------------------


def remove_cgroup_tree(base):
    """cgroup.kill in every cgroup under `base`, then rmdir them deepest first."""
    base = Path(base)
    if not base.exists():
        return
    dirs = sorted((p for p in base.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
    dirs.append(base)
    for d in dirs:
        try:
            (d / "cgroup.kill").write_text("1")
        except OSError:
            pass
    for d in dirs:
        def empty(d=d):
            try:
                return "populated 0" in (d / "cgroup.events").read_text()
            except OSError:
                return True

        if not wait_for(empty, 10, 0.02):
            _log(f"processes survived cgroup.kill in {d}")
        try:
            d.rmdir()
        except OSError as e:
            _log(f"rmdir {d}: {e}")


def remove_leftovers(dir_base, name_re, gecos, cgroup_root, kind):
    """What crashed runs of a harness left: processes started from /tmp/<dir_base>* directories
    (daemons, hubs), users whose name matches `name_re` and whose GECOS is `gecos` (with their
    processes), groups whose name matches `name_re`, cgroups <cgroup_root>/<dir_base>* and those
    directories; the harness's own (/tmp/<dir_base><this pid>) excepted. `kind` ("bench",
    "test") names the users and groups in the messages."""
    own = f"{dir_base}{os.getpid()}"

    def a_run(p):
        # Only what a run names <dir_base><its pid>: not, e.g., a report file CI writes there.
        return p.name != own and p.name[len(dir_base):].isdigit() and p.is_dir()

    dirs = [d for d in Path("/tmp").glob(f"{dir_base}*") if a_run(d)]
    if dirs:
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            try:
                args = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if any(a.decode(errors="replace").startswith(str(d)) for d in dirs for a in args):
                _log(f"killing leftover process {entry}")
                try:
                    os.kill(int(entry), signal.SIGKILL)
                except ProcessLookupError:
                    pass
    for line in Path("/etc/passwd").read_text().splitlines():
        f = line.split(":")
        if len(f) >= 5 and name_re.match(f[0]) and f[4] == gecos:
            _log(f"removing leftover {kind} user {f[0]}")
            remove_user(f[0])
    for line in Path("/etc/group").read_text().splitlines():
        name = line.split(":")[0]
        if name_re.match(name):
            _log(f"removing leftover {kind} group {name}")
            remove_group(name)
    cgroup_root = Path(cgroup_root)
    if cgroup_root.joinpath("cgroup.procs").exists():
        for cg in cgroup_root.glob(f"{dir_base}*"):
            if a_run(cg):
                _log(f"removing leftover cgroup {cg}")
                remove_cgroup_tree(cg)
    for d in dirs:
        _log(f"removing leftover {d}")
        shutil.rmtree(d, ignore_errors=True)


# --- statistics ----------------------------------------------------------------------------------


def summary(samples):
    """median and p99 (nearest rank), mean, min and max of samples in seconds, in microseconds
    (as the Rust side reports them); None for no samples."""
    if not samples:
        return None
    s = sorted(samples)
    n = len(s)

    def rank(p):
        k = max(1, min(n, -(-p * n // 100)))
        return s[int(k) - 1] * 1e6

    return {
        "n": n,
        "median_us": rank(50),
        "p99_us": rank(99),
        "mean_us": sum(s) / n * 1e6,
        "min_us": s[0] * 1e6,
        "max_us": s[-1] * 1e6,
    }
