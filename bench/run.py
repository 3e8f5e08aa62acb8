#!/usr/bin/python3
"""The engine of scripts/bench: sets up users, sudo, spawnd and hubs, runs every measurement
with its peers and floors in one run, and writes the tables (BENCHMARKS.md).

Needs root, /opt/spawnd-dev (scripts/hub-env), /opt/spawnd-dev/bench (the spawnd-bench
binaries) and /opt/spawnd-dev/bench-venv (JupyterHub 6.1.1 + sudospawner 1.0.0); scripts/bench
installs them. Standard library only: it runs with Debian's /usr/bin/python3.

Everything it creates is named so that it can be found again and removed, also after a crashed
run: users and groups `spwb<digits><letter>[<digits>]` with GECOS "spawnd bench user", the
directory /tmp/spawnd-bench-<pid>, the cgroup /sys/fs/cgroup/unified/spawnd-bench-<pid> and
/etc/sudoers.d/spawnd-bench. Only processes it started (and those of its own users) are ended.
"""

import argparse
import datetime
import grp
import json
import os
import platform
import pwd
import re
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
import urllib.error
import urllib.request
from pathlib import Path

sys.dont_write_bytecode = True  # no __pycache__ in the checkout (here and in tests/pylib)
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "pylib"))
import spawnd_host  # noqa: E402
from spawnd_host import (  # noqa: E402 - the shared root-harness helpers
    account_tool,
    free_port,
    kib,
    kill_uid,
    remove_cgroup_tree,
    remove_group,
    remove_user,
    run,
    summary,
    take_lock,
    wait_for,
)

PREFIX = Path("/opt/spawnd-dev")
# SPAWND_BENCH_DAEMON_DIR=DIR measures the spawnd and spawnctl in DIR instead (an A/B
# comparison of two builds in the same conditions: run the parts alternately for each).
DAEMON_DIR = Path(os.environ.get("SPAWND_BENCH_DAEMON_DIR", PREFIX / "bin"))
SPAWND = DAEMON_DIR / "spawnd"
SPAWNCTL = DAEMON_DIR / "spawnctl"
BENCH_BIN = PREFIX / "bench" / "bin"
BENCH = BENCH_BIN / "spawnd-bench"
SERVER = BENCH_BIN / "spawnd-bench-server"
VENV = PREFIX / "bench-venv"
PY = VENV / "bin" / "python"
JUPYTERHUB = VENV / "bin" / "jupyterhub"
SINGLEUSER = VENV / "bin" / "jupyterhub-singleuser"
SUDOSPAWNER_REAL = VENV / "bin" / "sudospawner"  # runs jupyterhub-singleuser beside it
SUDOSPAWNER_TINY = VENV / "tiny" / "sudospawner"  # runs the tiny server (sudospawner-singleuser)
CHP = PREFIX / "node" / "node_modules" / ".bin" / "configurable-http-proxy"
HERE = Path(__file__).resolve().parent
SPAWNERS_PY = HERE / "spawners.py"

NAME_BASE = "spwb"
GECOS = "spawnd bench user"
NAME_RE = re.compile(r"^spwb[0-9]+[a-z][0-9]*$")
DIR_BASE = "spawnd-bench-"
CGROUP_ROOT = Path("/sys/fs/cgroup/unified")
SUDOERS = Path("/etc/sudoers.d/spawnd-bench")
LOCK_PATH = "/run/spawnd-bench.lock"
# Pause between isolated starts (a hub's starts are seconds apart). Matters for cgroup mode: a
# migration into a cgroup waits for an RCU grace period unless another happened just before.
GAP_MS = 30
# Requests in flight per connection in the scale runs. The daemon allows 64 but releases a
# request's slot only after sending its answer, so a client that keeps exactly 64 in flight
# races it and gets Busy answers (measured below as "window 64").
WINDOW = 32

# (full, quick) sizes of every measurement.
SIZES = {
    "echo_iters": (20000, 2000),
    "rtt_iters": (20000, 1000),
    "spawn_iters": (200, 10),
    "bare_iters": (200, 10),
    "spawn_nocg_iters": (150, 5),
    "reps_nocg": (50, 2),
    "setpriv_iters": (100, 5),
    "reps_spawnd": (100, 3),
    "reps_local": (60, 3),
    "reps_sudo": (12, 1),
    "polls": (20, 5),
    "hub_reps": (24, 1),
    "scale_users": (20, 2),
    "scale_per_user": (500, 25),
    "list_iters": (5, 2),
    "tp_seconds": (4.0, 0.5),
    "nofile_probe": (1100, 0),
}


def log(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


spawnd_host.set_log(log)


# --- users, leftovers ----------------------------------------------------------------------------


def remove_leftovers():
    """What crashed runs left: processes started from /tmp/spawnd-bench-* (daemons, hubs), our
    users (pattern + GECOS) with their processes, our groups, cgroups, directories, sudoers."""
    spawnd_host.remove_leftovers(DIR_BASE, NAME_RE, GECOS, CGROUP_ROOT, "bench")
    if SUDOERS.exists():
        SUDOERS.unlink()


class Run:
    def __init__(self, quick, parts=None):
        self.quick = quick
        self.parts = parts
        self.pid = os.getpid()
        self.prefix = f"{NAME_BASE}{self.pid % 100000}"
        self.root = Path("/tmp") / f"{DIR_BASE}{self.pid}"
        self.cgroup = CGROUP_ROOT / f"{DIR_BASE}{self.pid}" if CGROUP_ROOT.joinpath("cgroup.procs").exists() else None
        self.users = []
        self.groups = []
        self.procs = []
        self.daemon = None
        self.results = {"errors": {}}
        self.socket = self.root / "run" / "spawnd.sock"
        self.ncpu = os.cpu_count() or 1

    def size(self, key):
        full, quick = SIZES[key]
        return quick if self.quick else full

    # --- set-up -----------------------------------------------------------------------------

    def setup(self):
        self.root.mkdir(mode=0o755)
        self.root.chmod(0o755)
        for d, mode in (("run", 0o755), ("state", 0o700), ("serverlogs", 0o755), ("logs", 0o755)):
            (self.root / d).mkdir(mode=mode)
            (self.root / d).chmod(mode)
        if self.cgroup:
            (self.cgroup / "daemon").mkdir(parents=True)
            (self.cgroup / "floor").mkdir()
        self.group = self._group(f"{self.prefix}g")
        self.hub = self._user(f"{self.prefix}h", "-M", "-U")
        n = self.size("scale_users")
        self.nb = [self._user(f"{self.prefix}u{i:02}", "-m", "-G", self.group) for i in range(n)]
        self.hub_pw = pwd.getpwnam(self.hub)
        self.hub_group = grp.getgrgid(self.hub_pw.pw_gid).gr_name
        self.write_sudoers()

    def _group(self, name):
        r = account_tool("groupadd", name)
        if r.returncode != 0:
            raise RuntimeError(f"groupadd {name}: {r.stderr}")
        self.groups.append(name)
        return name

    def _user(self, name, *extra):
        r = account_tool("useradd", "-c", GECOS, "-s", "/bin/sh", *extra, name)
        if r.returncode != 0:
            raise RuntimeError(f"useradd {name}: {r.stderr}")
        self.users.append(name)
        return name

    def write_sudoers(self):
        # SudoSpawner's documented rule (JupyterHub's "Using sudo to run JupyterHub without
        # root privileges"): the hub user may run the mediator as the members of a group,
        # without a password, and nothing else.
        text = (
            "# spawnd benchmarks (scripts/bench): SudoSpawner's rule for the bench hub user.\n"
            "# Removed when the run ends.\n"
            f"Runas_Alias SPAWND_BENCH_USERS = %{self.group}\n"
            f"Cmnd_Alias SPAWND_BENCH_CMD = {SUDOSPAWNER_REAL}, {SUDOSPAWNER_TINY}\n"
            f"{self.hub} ALL=(SPAWND_BENCH_USERS) NOPASSWD:SPAWND_BENCH_CMD\n"
        )
        tmp = SUDOERS.with_name(".spawnd-bench.tmp")
        tmp.write_text(text)
        tmp.chmod(0o440)
        run(["visudo", "-cf", tmp], check=True)
        tmp.rename(SUDOERS)

    def as_hub(self, cmd):
        pw = self.hub_pw
        return ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--init-groups", "--", *cmd]

    def hub_env(self, home):
        return {
            "PATH": f"{VENV}/bin:/usr/local/bin:/usr/bin:/bin",
            "HOME": str(home),
            "USER": self.hub,
            "LOGNAME": self.hub,
            "LANG": "C.UTF-8",
            "PYTHONUNBUFFERED": "1",
        }

    # --- the daemon -------------------------------------------------------------------------

    def daemon_config(self, cgroups=True):
        q = json.dumps
        path = f"{VENV}/bin:/usr/local/bin:/usr/bin:/bin"
        cg = str(self.cgroup / "servers") if self.cgroup and cgroups else "off"
        return f"""\
# scripts/bench: spawnd for the benchmarks
socket = {q(str(self.socket))}
socket_group = {q(self.hub_group)}
hub_user = {q(self.hub)}
group = {q(self.group)}
state_dir = {q(str(self.root / "state"))}
log_dir = {q(str(self.root / "serverlogs"))}
cgroup = {q(cg)}
default_profile = "tiny"

[profiles.tiny]
command = [{q(str(SERVER))}]
path = {q(path)}
interrupt_timeout = 5
term_timeout = 5
kill_timeout = 5

[profiles.sleep]
command = ["/usr/bin/sleep", "100000"]
path = "/usr/bin:/bin"
allow_args = false
interrupt_timeout = 5
term_timeout = 5
kill_timeout = 5

[profiles.singleuser]
command = [{q(str(SINGLEUSER))}]
path = {q(path)}
interrupt_timeout = 10
term_timeout = 5
kill_timeout = 5
"""

    def start_daemon(self, nofile_soft=None, tag="spawnd", cgroups=True):
        config = self.root / "spawnd.toml"
        config.write_text(self.daemon_config(cgroups))
        config.chmod(0o644)
        run([SPAWND, "check-config", config], check=True)
        logf = open(self.root / "logs" / f"{tag}.log", "ab")
        cg_procs = self.cgroup / "daemon" / "cgroup.procs" if self.cgroup else None

        def preexec():
            # Into its own cgroup, so that cpu.stat counts the daemon alone (servers get
            # their own cgroups under .../servers); the soft fd limit for the probe.
            if cg_procs is not None:
                with open(cg_procs, "w") as f:
                    f.write("0")
            if nofile_soft is not None:
                _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile_soft, hard))

        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "SPAWND_LOG": "warn", "LANG": "C.UTF-8"}
        self.daemon = subprocess.Popen(
            [str(SPAWND), "--config", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=subprocess.STDOUT,
            env=env,
            preexec_fn=preexec,
        )
        logf.close()
        self.procs.append(self.daemon)

        def ready():
            if self.daemon.poll() is not None:
                raise RuntimeError(f"spawnd exited ({self.daemon.returncode}); see {self.root}/logs")
            return run([SPAWNCTL, "--socket", self.socket, "status"], timeout=10).returncode == 0

        if not wait_for(ready, 20):
            raise RuntimeError("spawnd did not answer within 20 s")

    def stop_daemon(self):
        d = self.daemon
        if d is None:
            return
        if d.poll() is None:
            d.send_signal(signal.SIGTERM)
            try:
                d.wait(20)
            except subprocess.TimeoutExpired:
                d.kill()
                d.wait()
        self.daemon = None
        if self.cgroup and (self.cgroup / "servers").exists():
            remove_cgroup_tree(self.cgroup / "servers")

    def daemon_cgroup(self):
        return str(self.cgroup / "daemon") if self.cgroup else None

    def pin_daemon(self, cpus):
        run(["taskset", "-a", "-p", "-c", cpus, str(self.daemon.pid)], check=True)

    def bench(self, args, as_hub=False, timeout=600):
        cmd = [str(BENCH), *map(str, args)]
        if as_hub:
            cmd = self.as_hub(cmd)
        r = run(cmd, timeout=timeout)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stderr[-3000:]}")
        return json.loads(r.stdout)

    # --- 2. per-request cost at the daemon ----------------------------------------------------

    def bench_daemon(self):
        res = self.results.setdefault("daemon", {})
        user = self.nb[0]
        it = self.size("echo_iters")
        warm = max(1, it // 10)
        all_cpus = f"0-{self.ncpu - 1}"
        for placement in ("same", "cross", "free"):
            if placement != "free" and self.ncpu < 2 and placement == "cross":
                continue
            log(f"echo floor ({placement})")
            res[f"echo_{placement}"] = self.bench(
                ["echo", "--placement", placement, "--iters", it, "--warmup", warm]
            )
            res[f"echo_client_{placement}"] = self.bench(
                ["echo", "--client", "--placement", placement, "--iters", it, "--warmup", warm]
            )
        rit = self.size("rtt_iters")
        rwarm = max(1, rit // 10)
        sock = self.socket
        placements = [("free", None, None), ("same", "0", 0)]
        if self.ncpu >= 2:
            placements.append(("cross", "1", 0))
        for name, daemon_cpus, client_cpu in placements:
            log(f"poll/status/list round trips ({name})")
            try:
                if daemon_cpus is not None:
                    self.pin_daemon(daemon_cpus)
                args = ["rtt", "--socket", sock, "--user", user, "--profile", "tiny",
                        "--iters", rit, "--warmup", rwarm]
                if client_cpu is not None:
                    args += ["--cpu", client_cpu]
                res[f"rtt_{name}"] = self.bench(args, as_hub=True)
            finally:
                self.pin_daemon(all_cpus)
        log("start-to-running and stop through the daemon")
        res["spawn"] = self.bench_spawn(self.size("spawn_iters"))
        b = self.size("bare_iters")
        for entry in ("none", "write", "clone3"):
            if entry != "none" and not self.cgroup:
                continue
            log(f"bare fork+setuid+exec floor (cgroup: {entry})")
            args = ["bare-spawn", "--user", user, "--iters", b, "--warmup", max(2, b // 20),
                    "--gap-ms", GAP_MS, "--cgroup", entry]
            if entry != "none":
                args += ["--cgroup-base", self.cgroup / "floor"]
            res[f"bare_{entry}"] = self.bench(args + ["--", SERVER])
        log("durable state write (write, fsync, rename, fsync dir)")
        res["state_write"] = self.bench(["state-write", "--dir", self.root / "fsync-floor",
                                         "--iters", b, "--gap-ms", GAP_MS])
        log("setpriv /bin/true")
        res["setpriv"] = self.bench(
            ["setpriv", "--user", user, "--iters", self.size("setpriv_iters")]
        )

    def bench_spawn(self, n):
        args = ["spawn", "--socket", self.socket, "--user", self.nb[0], "--profile", "tiny",
                "--iters", n, "--warmup", max(2, n // 20), "--gap-ms", GAP_MS]
        if self.cgroup:
            args += ["--daemon-cgroup", self.cgroup / "daemon"]
        return self.bench(args)

    def bench_nocgroup(self):
        """The same starts and stops with `cgroup = "off"` (process groups): how much of a
        start is the per-server cgroup."""
        if not self.cgroup:
            return
        res = self.results.setdefault("nocgroup", {})
        self.stop_daemon()
        self.start_daemon(tag="spawnd-nocgroup", cgroups=False)
        try:
            log("start-to-running and stop with cgroup = off")
            res["spawn"] = self.bench_spawn(self.size("spawn_nocg_iters"))
            log("spawner actions: spawnd with cgroup = off")
            res["spawnd"] = self.spawners("spawnd", self.size("reps_nocg"), self.size("polls"))
        finally:
            self.stop_daemon()
            self.start_daemon()

    # --- 1. per-action cost at the hub's level ------------------------------------------------

    def spawners(self, kind, reps, polls):
        args = [str(PY), str(SPAWNERS_PY), "--spawner", kind, "--user", self.nb[0],
                "--reps", str(reps), "--polls", str(polls)]
        if kind.startswith("spawnd"):
            args += ["--socket", str(self.socket), "--profile", "tiny",
                     "--daemon-pid", str(self.daemon.pid)]
            if self.cgroup:
                args += ["--daemon-cgroup", str(self.cgroup / "daemon")]
        elif kind == "sudo":
            args += ["--sudospawner", str(SUDOSPAWNER_TINY)]
        else:
            args += ["--server-cmd", str(SERVER)]
        home = self.root / "hubhome"
        home.mkdir(exist_ok=True)
        os.chown(home, self.hub_pw.pw_uid, self.hub_pw.pw_gid)
        if kind != "local":
            args = self.as_hub(args)
            env = self.hub_env(home)
        else:
            env = {"PATH": f"{VENV}/bin:/usr/bin:/bin", "HOME": "/root", "LANG": "C.UTF-8"}
        with open(self.root / "logs" / f"spawners-{kind}.log", "ab") as errf:
            r = subprocess.run(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=errf, env=env, cwd=home, timeout=900)
        if r.returncode != 0:
            tail = (self.root / "logs" / f"spawners-{kind}.log").read_text()[-3000:]
            raise RuntimeError(f"spawners.py --spawner {kind} failed ({r.returncode}):\n{tail}")
        return json.loads(r.stdout)

    def bench_sudo_footprint(self):
        """Peak RSS and CPU of one SudoSpawner signal action (sudo + the Python mediator), seen
        from a small parent: a forked child's peak RSS starts at its parent's size, so the
        hub-sized spawners.py process cannot measure it itself."""
        script = (
            "import json, resource, subprocess, sys, time\n"
            "cmd = ['sudo', '-u', sys.argv[1], '-nH', sys.argv[2], '--logging=INFO']\n"
            "walls = []\n"
            "for _ in range(int(sys.argv[3])):\n"
            "    t = time.perf_counter()\n"
            "    p = subprocess.run(cmd, input=b'{\"action\": \"kill\", \"pid\": 1, \"signal\": 0}',\n"
            "                       capture_output=True)\n"
            "    walls.append(time.perf_counter() - t)\n"
            "    if p.returncode != 0:\n"
            "        sys.exit(p.stderr.decode())\n"
            "r = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
            "print(json.dumps({'peak_rss_kib': r.ru_maxrss, 'actions': len(walls),\n"
            "                  'cpu_s_per_action': (r.ru_utime + r.ru_stime) / len(walls),\n"
            "                  'wall_s': sorted(walls)[len(walls) // 2]}))\n"
        )
        n = 5 if not self.quick else 1
        r = run(self.as_hub(["/usr/bin/python3", "-c", script, self.nb[0], SUDOSPAWNER_TINY, n]),
                timeout=120, env=self.hub_env(self.root), cwd=self.root)
        if r.returncode != 0:
            raise RuntimeError(f"sudo footprint: {r.stderr[-2000:]}")
        return json.loads(r.stdout)

    def bench_spawners(self):
        res = self.results.setdefault("spawners", {})
        log("SudoSpawner: footprint of one mediator action")
        try:
            res["sudo_footprint"] = self.bench_sudo_footprint()
        except Exception as e:  # noqa: BLE001
            self.fail("sudo-footprint", e)
        polls = self.size("polls")
        plan = [
            ("spawnd", self.size("reps_spawnd")),
            ("spawnd-wait", self.size("reps_spawnd")),
            ("local", self.size("reps_local")),
            ("sudo", self.size("reps_sudo")),
        ]
        for kind, reps in plan:
            log(f"spawner actions: {kind} ({reps} starts)")
            try:
                res[kind] = self.spawners(kind, reps, polls)
            except Exception as e:  # noqa: BLE001 - recorded and reported
                self.fail(f"spawners-{kind}", e)

    # --- 3. spawn-to-ready through a real hub ---------------------------------------------------

    def hub_config(self, kind, d, ports, token):
        if kind == "spawnd":
            spawner = (
                'c.JupyterHub.spawner_class = "spawnd.spawner.SpawndSpawner"\n'
                f'c.SpawndSpawner.socket = "{self.socket}"\n'
                'c.SpawndSpawner.profile = "singleuser"\n'
            )
        elif kind == "sudo":
            spawner = (
                'c.JupyterHub.spawner_class = "sudospawner.SudoSpawner"\n'
                f'c.SudoSpawner.sudospawner_path = "{SUDOSPAWNER_REAL}"\n'
            )
        else:
            spawner = (
                'c.JupyterHub.spawner_class = "localprocess"\n'
                f'c.Spawner.cmd = ["{SINGLEUSER}"]\n'
            )
        return f"""\
# scripts/bench: hub with {kind}
c = get_config()  # noqa: F821
{spawner}
c.JupyterHub.authenticator_class = "dummy"
c.Authenticator.allow_all = True
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = {ports[0]}
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = {ports[1]}
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{ports[2]}"
c.ConfigurableHTTPProxy.command = ["{CHP}"]
c.ConfigurableHTTPProxy.auth_token = "{token}p"
c.JupyterHub.db_url = "sqlite:///{d}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = "{d}/jupyterhub_cookie_secret"
c.JupyterHub.pid_file = "{d}/jupyterhub.pid"
c.ConfigurableHTTPProxy.pid_file = "{d}/jupyterhub-proxy.pid"
c.JupyterHub.services = [{{"name": "bench", "api_token": "{token}"}}]
c.JupyterHub.load_roles = [{{"name": "admin", "services": ["bench"]}}]
c.Spawner.start_timeout = 60
c.Spawner.http_timeout = 60
# Debug: the log has a timestamped line for each step of a spawn (HUB_STEPS).
c.JupyterHub.log_level = "DEBUG"
"""

    def start_hub(self, kind):
        """A running hub for `kind`, its bench user created; the caller closes it."""
        d = self.root / f"hub-{kind}"
        d.mkdir(mode=0o700)
        as_root = kind == "local"
        if not as_root:
            os.chown(d, self.hub_pw.pw_uid, self.hub_pw.pw_gid)
        ports = (free_port(), free_port(), free_port())
        token = os.urandom(24).hex()
        cfg = d / "jupyterhub_config.py"
        cfg.write_text(self.hub_config(kind, d, ports, token))
        cfg.chmod(0o644)
        cmd = [str(JUPYTERHUB), "-f", str(cfg)]
        env = self.hub_env(d)
        if as_root:
            env.update(HOME=str(d), USER="root", LOGNAME="root")
        else:
            cmd = self.as_hub(cmd)
        log_path = self.root / "logs" / f"hub-{kind}.log"
        logf = open(log_path, "ab")
        proc = subprocess.Popen(cmd, cwd=d, stdin=subprocess.DEVNULL, stdout=logf,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)
        logf.close()
        self.procs.append(proc)
        hub = HubRun(kind, proc, f"http://127.0.0.1:{ports[0]}/hub/api", token, log_path,
                     self.nb[0])
        try:
            def hub_ready():
                if proc.poll() is not None:
                    raise RuntimeError(f"jupyterhub ({kind}) exited ({proc.returncode})")
                try:
                    return hub.api("GET", "/")[0] == 200
                except OSError:
                    return False

            if not wait_for(hub_ready, 90, 0.2):
                raise RuntimeError(f"jupyterhub ({kind}) not ready within 90 s")
            status, body = hub.api("POST", f"/users/{hub.user}")
            if status not in (201, 409):
                raise RuntimeError(f"create user: {status} {body}")
        except BaseException:
            hub.close()
            raise
        return hub

    def bench_hubs(self):
        """The three hubs run side by side and take turns, one spawn-and-stop each per round
        (the order rotating), so that the machine's other load falls on all of them alike."""
        res = self.results.setdefault("hub", {})
        hubs = {}
        try:
            for kind in HUB_KINDS:
                log(f"spawn-to-ready through a real hub: starting the {kind} hub")
                try:
                    hubs[kind] = self.start_hub(kind)
                except Exception as e:  # noqa: BLE001
                    self.fail(f"hub-{kind}", e)
            reps = self.size("hub_reps")
            # The first spawn of a user on each hub (cold caches, a new runtime directory) is
            # a warm-up, except in a quick run, which only checks that spawning works.
            warmup = 0 if self.quick else 1
            uid = pwd.getpwnam(self.nb[0]).pw_uid
            cycles = {kind: [] for kind in hubs}
            log(f"spawn-to-ready through a real hub: {reps} rounds of {', '.join(hubs)}")
            for i in range(warmup + reps):
                order = list(hubs)
                order = order[i % len(order):] + order[:i % len(order)]
                for kind in order:
                    if kind not in hubs:
                        continue
                    try:
                        c = hubs[kind].cycle(uid)
                    except Exception as e:  # noqa: BLE001
                        self.fail(f"hub-{kind}", e)
                        hubs.pop(kind).close()
                        kill_uid(uid)  # what the failed spawn left, before the next hub's
                        continue
                    if i >= warmup:
                        cycles[kind].append(c)
            for kind, cs in cycles.items():
                if kind in hubs and cs:
                    res[kind] = hub_summary(cs)
        finally:
            for hub in hubs.values():
                hub.close()
            # Whatever a failed run of an unsupervised spawner left behind.
            kill_uid(pwd.getpwnam(self.nb[0]).pw_uid)

    # --- 4. scale -----------------------------------------------------------------------------

    def bench_scale(self):
        res = self.results.setdefault("scale", {})
        users = ",".join(self.nb)
        per = self.size("scale_per_user")
        total = len(self.nb) * per
        sock = self.socket
        pid = self.daemon.pid
        res["servers"] = total
        res["users"] = len(self.nb)
        res["rss_idle_kib"] = kib(pid, "VmRSS")
        res["nofile"] = self.nofile(pid)
        log(f"scale: starting {total} servers")
        res["start"] = self.bench(["many", "--socket", sock, "--action", "start", "--users", users,
                                   "--per-user", per, "--profile", "sleep", "--window", WINDOW],
                                  as_hub=True, timeout=900)
        res["rss_kib"] = kib(pid, "VmRSS")
        res["hwm_kib"] = kib(pid, "VmHWM")
        res["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
        res["threads"] = len(os.listdir(f"/proc/{pid}/task"))
        st = run([SPAWNCTL, "--socket", sock, "status"], timeout=30)
        res["status"] = st.stdout
        log("scale: spawnctl list --json")
        samples = []
        for _ in range(self.size("list_iters")):
            t0 = time.perf_counter()
            r = run([SPAWNCTL, "--socket", sock, "list", "--json"], timeout=120)
            samples.append(time.perf_counter() - t0)
            if r.returncode != 0:
                raise RuntimeError(f"spawnctl list --json: {r.stderr}")
        res["listed"] = len(json.loads(r.stdout))
        res["spawnctl_list"] = summary(samples)
        res["list_all"] = self.bench(["list-all", "--socket", sock, "--iters", self.size("list_iters")],
                                     as_hub=True)
        log("scale: poll all")
        for window in (WINDOW, 64):
            res[f"poll_all_window{window}"] = self.bench(
                ["many", "--socket", sock, "--action", "poll", "--users", users, "--per-user", per,
                 "--window", window], as_hub=True)
        res["poll_all_at_once"] = self.bench(["many", "--socket", sock, "--action", "poll",
                                              "--users", users, "--per-user", per, "--window", 0],
                                             as_hub=True)
        args = [str(PY), str(SPAWNERS_PY), "--mode", "pollall", "--socket", str(sock),
                "--users", users, "--per-user", str(per)]
        r = subprocess.run(self.as_hub(args), capture_output=True, text=True, timeout=300,
                           env=self.hub_env(self.root), cwd=self.root)
        if r.returncode != 0:
            raise RuntimeError(f"pollall (python) failed: {r.stderr[-2000:]}")
        res["poll_all_python"] = json.loads(r.stdout)
        for clients, depth in ((1, 1), (8, 1), (64, 1), (8, 8)):
            log(f"scale: throughput, {clients} clients x {depth}")
            args = ["throughput", "--socket", sock, "--users", users, "--per-user", per,
                    "--clients", clients, "--depth", depth, "--seconds", self.size("tp_seconds")]
            if self.cgroup:
                args += ["--daemon-cgroup", self.cgroup / "daemon"]
            res[f"throughput_{clients}x{depth}"] = self.bench(args, as_hub=True)
        log(f"scale: stopping {total} servers")
        res["stop"] = self.bench(["many", "--socket", sock, "--action", "stop", "--users", users,
                                  "--per-user", per, "--window", WINDOW], as_hub=True, timeout=900)
        res["rss_after_kib"] = kib(pid, "VmRSS")

    def nofile(self, pid):
        for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                f = line.split()
                return {"soft": f[3], "hard": f[4]}
        return None

    def bench_nofile_probe(self):
        """A daemon with the soft fd limit systemd gives services by default (1024)."""
        n = self.size("nofile_probe")
        if not n:
            return
        per = -(-n // len(self.nb))
        users = ",".join(self.nb)
        log(f"fd-limit probe: {per * len(self.nb)} servers under a soft RLIMIT_NOFILE of 1024")
        self.start_daemon(nofile_soft=1024, tag="spawnd-nofile")
        res = self.results.setdefault("nofile_probe", {})
        try:
            res["nofile"] = self.nofile(self.daemon.pid)
            res["start"] = self.bench(["many", "--socket", self.socket, "--action", "start",
                                       "--users", users, "--per-user", per, "--profile", "sleep",
                                       "--window", WINDOW], as_hub=True, timeout=600)
            res["fds"] = len(os.listdir(f"/proc/{self.daemon.pid}/fd"))
            t0 = time.perf_counter()
            st = run([SPAWNCTL, "--socket", self.socket, "status"], timeout=20)
            res["status_after"] = {"rc": st.returncode, "s": time.perf_counter() - t0,
                                   "stderr": st.stderr.strip()[-500:]}
            res["stop"] = self.bench(["many", "--socket", self.socket, "--action", "stop",
                                      "--users", users, "--per-user", per, "--window", WINDOW],
                                     as_hub=True, timeout=600)
        except subprocess.TimeoutExpired as e:
            res["timeout"] = str(e)
        finally:
            self.stop_daemon()
            for u in self.nb:
                kill_uid(pwd.getpwnam(u).pw_uid)

    # --- the whole run ------------------------------------------------------------------------

    def fail(self, what, e):
        log(f"FAILED {what}: {e}")
        self.results["errors"][what] = "".join(traceback.format_exception_only(type(e), e)).strip()[-2000:]

    def machine(self):
        cpu = "?"
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem = "?"
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"

        def version(cmd):
            try:
                return run(cmd, timeout=30).stdout.strip().splitlines()[0]
            except (OSError, IndexError, subprocess.TimeoutExpired):
                return "?"

        try:
            debian = Path("/etc/debian_version").read_text().strip()
        except OSError:
            debian = "?"
        return {
            "cores": self.ncpu,
            "cpu": cpu,
            "memory": mem,
            "kernel": platform.release(),
            "os": f"Debian {debian}",
            "spawnd": version([SPAWND, "--version"]),
            "sudo": version(["sudo", "-V"]),
            "python": version([PY, "--version"]),
            "jupyterhub": version([PY, "-c", "import jupyterhub; print(jupyterhub.__version__)"]),
            "sudospawner": version([PY, "-c", "import sudospawner.version as v; print(v.__version__)"]),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "tree_kill": "cgroup v2 (per-server cgroups)" if self.cgroup else "process groups",
        }

    def go(self):
        t0 = time.monotonic()
        self.results["machine"] = self.machine()
        self.results["machine"]["loadavg_before"] = os.getloadavg()[0]
        if os.getloadavg()[0] > 1.0:
            log(f"note: the machine is busy (load average {os.getloadavg()[0]:.2f}): "
                "other work shares the 2 cores and will show in the figures")
        self.results["quick"] = self.quick
        self.setup()
        self.start_daemon()
        for name, step in (("daemon", self.bench_daemon), ("spawners", self.bench_spawners),
                           ("nocgroup", self.bench_nocgroup), ("hub", self.bench_hubs),
                           ("scale", self.bench_scale)):
            if self.parts is not None and name not in self.parts:
                continue
            s0 = time.monotonic()
            p0 = cpu_pressure()
            try:
                step()
            except Exception as e:  # noqa: BLE001 - recorded, reported, and the run fails
                self.fail(name, e)
            wall = time.monotonic() - s0
            self.results.setdefault("durations_s", {})[name] = wall
            self.results.setdefault("load", {})[name] = {
                "loadavg_end": os.getloadavg()[0],
                "cpu_pressure": (cpu_pressure() - p0) / 1e6 / wall if wall else None,
            }
        self.stop_daemon()
        for u in self.nb:
            kill_uid(pwd.getpwnam(u).pw_uid)
        s0 = time.monotonic()
        try:
            if self.parts is None or "nofile" in self.parts:
                self.bench_nofile_probe()
        except Exception as e:  # noqa: BLE001
            self.fail("nofile_probe", e)
        self.results.setdefault("durations_s", {})["nofile_probe"] = time.monotonic() - s0
        self.results["durations_s"]["total"] = time.monotonic() - t0

    def cleanup(self):
        try:
            self.stop_daemon()
        except Exception as e:  # noqa: BLE001 - best effort at teardown
            log(f"stopping spawnd: {e}")
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    pass
        for name in reversed(self.users):
            remove_user(name)
        for name in reversed(self.groups):
            remove_group(name)
        if SUDOERS.exists():
            SUDOERS.unlink()
        if self.cgroup:
            remove_cgroup_tree(self.cgroup)
        if os.environ.get("SPAWND_BENCH_KEEP") != "1":
            shutil.rmtree(self.root, ignore_errors=True)
        else:
            log(f"kept {self.root}")


# --- 3. the hubs, for bench_hubs ------------------------------------------------------------------

HUB_KINDS = ("spawnd", "local", "sudo")
# What the hub logs (at debug level) at each step of a spawn, and the name of the step.
HUB_STEPS = (
    ("start_called", "Calling Spawner.start for "),
    ("start_returned", "s for server at http"),  # wait_for_http_server: "Waiting 60s for ..."
    ("http_ok", " responded in "),               # ... "Server at URL responded in 0.12s"
    ("spawned", " seconds to start"),            # "User U took 1.234 seconds to start"
)
HUB_LOG_TIME = re.compile(r"^\[[A-Z] (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) JupyterHub ")


class HubRun:
    """One running hub (its process, REST API and log) and its bench user."""

    def __init__(self, kind, proc, base, token, log_path, user):
        self.kind, self.proc, self.base, self.token = kind, proc, base, token
        self.log_path, self.user = log_path, user

    def api(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Authorization", f"token {self.token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=90) as r:
                text = r.read()
                return r.status, (json.loads(text) if text else None)
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(errors="replace")

    def model(self):
        st, body = self.api("GET", f"/users/{self.user}")
        if st != 200:
            raise RuntimeError(f"GET user: {st} {body}")
        return body.get("servers", {}).get("")

    def cycle(self, uid):
        """REST start → the model says ready, then REST stop → gone, with the time of each
        step of the spawn in seconds after the POST: from the hub's log, and when a socket of
        the user's (uid) started listening."""
        offset = self.log_path.stat().st_size
        watch = ListenWatch(uid)
        t_wall = time.time()
        t0 = time.perf_counter()
        try:
            st, body = self.api("POST", f"/users/{self.user}/server")
            if st not in (201, 202):
                raise RuntimeError(f"start: {st} {body}")
            m = wait_for(lambda: (self.model() or {}).get("ready"), 120, 0.02)
            t_ready = time.perf_counter() - t0
        finally:
            watch.stop()
        if not m:
            raise RuntimeError("server not ready within 120 s")
        t0 = time.perf_counter()
        st, body = self.api("DELETE", f"/users/{self.user}/server")
        if st not in (202, 204):
            raise RuntimeError(f"stop: {st} {body}")
        if not wait_for(lambda: self.model() is None, 120, 0.02):
            raise RuntimeError("server not gone within 120 s")
        t_stop = time.perf_counter() - t0
        with open(self.log_path, "rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
        steps = hub_steps(text, t_wall)
        steps["listening"] = watch.first - t_wall if watch.first is not None else None
        steps["ready"] = t_ready
        return {"ready": t_ready, "stop": t_stop, "steps": steps}

    def close(self):
        proc = self.proc
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def hub_steps(text, t_wall):
    """Seconds after t_wall (time.time()) of the first line of each HUB_STEPS in a hub's log."""
    steps = {}
    for line in text.splitlines():
        m = HUB_LOG_TIME.match(line)
        if not m:
            continue
        for name, marker in HUB_STEPS:
            if name not in steps and marker in line:
                t = datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S.%f").timestamp()
                steps[name] = t - t_wall
                break
    return steps


class ListenWatch:
    """When a TCP socket of `uid` first listens (from /proc/net/tcp{,6}, every 2 ms), as
    time.time(): the moment the single-user server opened its port, whoever started it."""

    def __init__(self, uid, interval=0.002):
        self.uid, self.interval = str(uid), interval
        self.first = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _listening(self):
        for name in ("/proc/net/tcp", "/proc/net/tcp6"):
            try:
                with open(name) as f:
                    next(f)
                    for line in f:
                        fields = line.split()
                        if fields[3] == "0A" and fields[7] == self.uid:
                            return True
            except OSError:
                pass
        return False

    def _run(self):
        if self._listening():
            return  # something of the user's still listens (a server not yet gone): unknown
        while not self._done.wait(self.interval):
            if self._listening():
                self.first = time.time()
                return

    def stop(self):
        self._done.set()
        self._thread.join()


def hub_summary(cycles):
    """summary() of the ready and stop times and of each step's time after the POST, with the
    samples (for the report's confidence interval)."""
    ready = [c["ready"] for c in cycles]
    stop = [c["stop"] for c in cycles]
    names = [n for n, _ in HUB_STEPS] + ["listening", "ready"]
    steps = {}
    for name in names:
        v = [c["steps"][name] for c in cycles if c["steps"].get(name) is not None]
        steps[name] = summary(v)
    return {"spawn_to_ready": summary(ready), "stop": summary(stop), "reps": len(cycles),
            "steps": steps, "samples": {"ready": ready, "stop": stop},
            "cycles": [c["steps"] for c in cycles]}


def cpu_pressure():
    """Microseconds some task waited for a CPU since boot (/proc/pressure/cpu), or 0."""
    try:
        for line in Path("/proc/pressure/cpu").read_text().splitlines():
            if line.startswith("some "):
                return int(line.rsplit("total=", 1)[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def main():
    p = argparse.ArgumentParser(description="spawnd benchmarks (see BENCHMARKS.md)")
    p.add_argument("--quick", action="store_true",
                   help="small repetitions: checks that the harness works; no speed judgement")
    p.add_argument("--out", help="write the report here (default: BENCHMARKS.md of the checkout "
                   "for a full run, nothing for --quick)")
    p.add_argument("--json", help="also write the raw results as JSON here")
    p.add_argument("--parts", help="comma-separated parts to run (daemon, spawners, nocgroup, hub, "
                   "scale, nofile); for profiling: a partial run writes no BENCHMARKS.md unless --out")
    args = p.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench: must run as root (creates users, runs spawnd as root and sudo)")
    lock = take_lock(LOCK_PATH)
    remove_leftovers()
    parts = args.parts.split(",") if args.parts else None
    unknown = set(parts or ()) - {"daemon", "spawners", "nocgroup", "hub", "scale", "nofile"}
    if unknown:
        sys.exit(f"bench: unknown part(s) {', '.join(sorted(unknown))}; see --help")
    r = Run(args.quick, parts)

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    # Started in the background by a non-interactive shell, this process inherits SIGINT
    # ignored, and so would every server LocalProcessSpawner and the mediator start (Python
    # keeps an ignored SIGINT, exec keeps it): each of their stops would wait for the
    # interrupt_timeout before SIGTERM. A handler of our own is reset by exec in the children.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        r.go()
    except Exception as e:  # noqa: BLE001 - reported below, and the run fails
        r.fail("run", e)
    finally:
        r.cleanup()
    import report

    text = report.render(r.results)
    if args.json:
        Path(args.json).write_text(json.dumps(r.results, indent=1))
    full = not args.quick and not args.parts
    out = args.out or (str(HERE.parent / "BENCHMARKS.md") if full else None)
    if out:
        report.write(Path(out), text)
        log(f"wrote {out}")
    print(report.summary(r.results))
    if r.results["errors"]:
        for k, v in r.results["errors"].items():
            log(f"error in {k}: {v}")
        sys.exit(1)


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    main()
