"""Per-action cost of JupyterHub spawners, called as JupyterHub calls them.

Run by bench/run.py with the bench virtualenv's Python (JupyterHub 6.1.1, sudospawner 1.0.0 and
the spawnd package), as the unprivileged hub user for SpawndSpawner and SudoSpawner and as root
for LocalProcessSpawner. Builds one spawner for the default server of USER the way JupyterHub's
own tests do (an in-memory database, `User._new_spawner`), then repeats: start(), POLLS x
poll(), stop(), clear_state(). Every spawner launches the same tiny test server
(spawnd-bench-server), which listens on the port it is given and exits on its first signal.

Measured per action: wall time; CPU of this process (the hub: RUSAGE_SELF), of its waited-for
children (sudo and the Python mediator: RUSAGE_CHILDREN) and of spawnd (its cgroup's
cpu.stat); the children's peak RSS; the time from start() until the server accepts TCP
connections (checked every 0.2 ms from here, the same way for every spawner); and the memory
that stays resident for each running server besides the server itself.

`--mode pollall` instead polls every scale server at once over one connection with the spawnd
Python client (what a restarted hub's init_spawners does) and reports the time and the errors.

Prints one JSON object on stdout.
"""

import argparse
import asyncio
import json
import logging
import os
import resource
import socket
import sys
import time
from pathlib import Path

# Its own process (the bench venv's Python, as the hub user or as root): puts tests/pylib on its
# path itself, and writes no __pycache__ there (only for that import; the rest is unchanged).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "pylib"))
_dont_write, sys.dont_write_bytecode = sys.dont_write_bytecode, True
from spawnd_host import kib, summary  # noqa: E402 - shared with bench/run.py

sys.dont_write_bytecode = _dont_write


def cpu_self():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def cpu_children():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def cgroup_cpu(path):
    """CPU seconds of a cgroup v2 directory (cpu.stat usage_usec), or 0.0."""
    if not path:
        return 0.0
    try:
        with open(os.path.join(path, "cpu.stat")) as f:
            for line in f:
                if line.startswith("usage_usec "):
                    return int(line.split()[1]) / 1e6
    except OSError:
        pass
    return 0.0


def parent_of(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def reap_children():
    """Waits for every child of this process (SudoSpawner's sudo processes, which tornado does
    not reap by itself), so that RUSAGE_CHILDREN holds their CPU before the next snapshot."""
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return


def wait_listening(port, t0, timeout=20.0):
    """Seconds from t0 until 127.0.0.1:port accepts a connection (checked every 0.2 ms)."""
    deadline = time.perf_counter() + timeout
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return time.perf_counter() - t0
        if time.perf_counter() > deadline:
            raise RuntimeError(f"nothing listens on port {port} after {timeout} s")
        time.sleep(0.0002)


def build_spawner(args):
    from jupyterhub import orm
    from jupyterhub.objects import Hub
    from jupyterhub.user import User

    db = orm.new_session_factory("sqlite:///:memory:")()
    orm_user = orm.User(name=args.user)
    db.add(orm_user)
    db.commit()
    user = User(orm_user, {})
    common = dict(
        hub=Hub(),
        oauth_client_id="spawnd-bench",
        interrupt_timeout=10,
        term_timeout=10,
        kill_timeout=10,
    )
    if args.spawner in ("spawnd", "spawnd-wait"):
        from spawnd.spawner import SpawndSpawner as cls

        extra = dict(
            socket=args.socket,
            profile=args.profile,
            wait_for_port=args.spawner == "spawnd-wait",
        )
    elif args.spawner == "sudo":
        from sudospawner import SudoSpawner as cls

        extra = dict(sudospawner_path=args.sudospawner)
    else:
        from jupyterhub.spawner import LocalProcessSpawner as cls

        extra = dict(cmd=[args.server_cmd])
    return user._new_spawner("", spawner_class=cls, **common, **extra)


async def actions(args):
    sp = build_spawner(args)
    rows = {k: [] for k in ("start", "listening", "poll", "stop")}
    cpu = {k: {"self": 0.0, "children": 0.0, "daemon": 0.0} for k in ("start", "poll", "stop")}
    resident = []
    counted = {"start": 0, "poll": 0, "stop": 0}

    def snap():
        return (cpu_self(), cpu_children(), cgroup_cpu(args.daemon_cgroup))

    def add_cpu(kind, a, b):
        cpu[kind]["self"] += b[0] - a[0]
        cpu[kind]["children"] += b[1] - a[1]
        cpu[kind]["daemon"] += b[2] - a[2]

    for i in range(args.warmup + args.reps):
        keep = i >= args.warmup
        sp.port = 0
        c0 = snap()
        t0 = time.perf_counter()
        _ip, port = await sp.start()
        t_start = time.perf_counter() - t0
        if args.spawner == "sudo":
            reap_children()
        c1 = snap()
        t_listen = max(t_start, wait_listening(port, t0))
        pid = sp.pid
        # What else stays resident while this server runs: SudoSpawner's mediator forks a
        # child that waits for the server for its whole life.
        parent = parent_of(pid)
        extra_kib = 0
        if args.spawner == "sudo" and parent and parent > 1:
            extra_kib = kib(parent, "VmRSS") or 0
        if keep:
            rows["start"].append(t_start)
            rows["listening"].append(t_listen)
            add_cpu("start", c0, c1)
            counted["start"] += 1
            resident.append(extra_kib)
        for _ in range(args.polls):
            c0 = snap()
            tp = time.perf_counter()
            status = await sp.poll()
            dt = time.perf_counter() - tp
            c1 = snap()
            if status is not None:
                raise RuntimeError(f"poll() says the server exited ({status})")
            if keep:
                rows["poll"].append(dt)
                add_cpu("poll", c0, c1)
                counted["poll"] += 1
        c0 = snap()
        t0 = time.perf_counter()
        await sp.stop()
        t_stop = time.perf_counter() - t0
        if args.spawner == "sudo":
            reap_children()
        c1 = snap()
        if keep:
            rows["stop"].append(t_stop)
            add_cpu("stop", c0, c1)
            counted["stop"] += 1
        status = await sp.poll()
        if status is None:
            raise RuntimeError("poll() says the server still runs after stop()")
        sp.clear_state()

    out = {
        "spawner": args.spawner,
        "reps": args.reps,
        "polls_per_rep": args.polls,
        "wall": {k: summary(v) for k, v in rows.items()},
        "cpu_ms_per_action": {
            k: {c: v / max(1, counted[k]) * 1e3 for c, v in cpu[k].items()} for k in cpu
        },
        "children_peak_rss_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
        "self_rss_kib": kib(os.getpid(), "VmRSS"),
        "resident_per_server_kib": max(resident) if resident else 0,
    }
    if args.daemon_pid:
        out["daemon_rss_kib"] = kib(args.daemon_pid, "VmRSS")
        out["daemon_hwm_kib"] = kib(args.daemon_pid, "VmHWM")
    return out


async def pollall(args):
    from spawnd import Client, SpawndError

    client = Client(args.socket)
    await client.status()
    ids = [
        (u, f"s{i:04}") for u in args.users.split(",") for i in range(args.per_user)
    ]
    t0 = time.perf_counter()
    results = await asyncio.gather(
        *(client.poll(u, s) for u, s in ids), return_exceptions=True
    )
    wall = time.perf_counter() - t0
    errors = {}
    ok = 0
    for r in results:
        if isinstance(r, BaseException):
            kind = r.args[0] if isinstance(r, SpawndError) and r.args else type(r).__name__
            slot = errors.setdefault(str(kind), {"count": 0, "first": str(r)})
            slot["count"] += 1
        else:
            ok += 1
    return {"servers": len(ids), "ok": ok, "wall_s": wall, "errors": errors}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mode", choices=["actions", "pollall"], default="actions")
    p.add_argument("--spawner", choices=["spawnd", "spawnd-wait", "sudo", "local"])
    p.add_argument("--user", help="the notebook user whose server is started")
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--polls", type=int, default=20, help="poll() calls per started server")
    p.add_argument("--socket", help="spawnd's socket (SpawndSpawner)")
    p.add_argument("--profile", default="tiny", help="spawnd profile (SpawndSpawner)")
    p.add_argument("--sudospawner", help="path of the sudospawner mediator (SudoSpawner)")
    p.add_argument("--server-cmd", help="the test server (LocalProcessSpawner's cmd)")
    p.add_argument("--daemon-cgroup", help="spawnd's cgroup v2 directory (its CPU time)")
    p.add_argument("--daemon-pid", type=int, help="spawnd's pid (its RSS)")
    p.add_argument("--users", help="pollall: comma-separated users")
    p.add_argument("--per-user", type=int, default=0, help="pollall: servers per user")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    if args.mode == "pollall":
        out = asyncio.run(pollall(args))
    else:
        out = asyncio.run(actions(args))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
