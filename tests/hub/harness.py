"""Harness for the JupyterHub end-to-end tests: real users, the real spawnd as root, a real
JupyterHub (as an unprivileged hub user) with configurable-http-proxy, and real
jupyterhub-singleuser servers.

Everything comes from /opt/spawnd-dev (made by scripts/hub-env; SPAWND_DEV_PREFIX names another
place): JupyterHub 6.1.1 from its venv, or the JupyterHub of another venv when the tests run
with that venv's python (`scripts/hub-env --jupyterhub 3`, then
`/opt/spawnd-dev/venv-jh3/bin/python -m pytest tests/hub`). Names made here start with
`spwh` (users and groups, GECOS "spawnd hub test user") and `/tmp/spawnd-hubtest-` (directories,
cgroups), so these tests never touch what the Rust harness (`spwt`, `/tmp/spawnd-test-`) makes,
and vice versa. A lock file keeps two runs of this suite from cleaning up each other.
"""

import json
import os
import pwd
import grp
import re
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "pylib"))
import spawnd_host  # noqa: E402
from spawnd_host import (  # noqa: E402,F401 - the shared root-harness helpers (test_hub uses some)
    account_tool,
    free_port,
    kill_uid,
    pids_of_uid,
    proc_status,
    remove_cgroup_tree,
    remove_group,
    remove_user,
    run,
    wait_for,
)

PREFIX = Path(os.environ.get("SPAWND_DEV_PREFIX") or "/opt/spawnd-dev")
SPAWND = PREFIX / "bin" / "spawnd"
SPAWNCTL = PREFIX / "bin" / "spawnctl"
# The venv whose python runs the tests: the hub, its servers and the in-process spawners all use
# the same JupyterHub.
VENV = Path(sys.prefix)
JUPYTERHUB = VENV / "bin" / "jupyterhub"
SINGLEUSER = VENV / "bin" / "jupyterhub-singleuser"
CHP = PREFIX / "node" / "node_modules" / ".bin" / "configurable-http-proxy"

NAME_BASE = "spwh"
GECOS = "spawnd hub test user"
NAME_RE = re.compile(r"^spwh[0-9]+[a-z]+$")
DIR_BASE = "spawnd-hubtest-"
LOCK_PATH = "/run/spawnd-hub-tests.lock"
CGROUP_V2_ROOT = Path("/sys/fs/cgroup/unified")

# The line the `failing` profile prints before it exits 3.
FAILING_LINE = "spawnd-hubtest: failing profile says bye"
FAILING_EXIT = 3


def log(msg):
    print(f"hub-tests: {msg}", flush=True)


spawnd_host.set_log(log)


# --- processes ---------------------------------------------------------------------------------


def proc_alive(pid):
    """True while PID exists and is not a zombie."""
    st = proc_status(pid)
    return st is not None and not st.get("State", "").startswith("Z")


def describe_pids(pids):
    lines = []
    for pid in pids:
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            cmd = "?"
        lines.append(f"  {pid}: {cmd.strip()}")
    return "\n".join(lines)


def tail(path, lines=200, skip=()):
    """The last `lines` lines of a file, leaving out lines that contain any of `skip`."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError as e:
        return f"({path}: {e})"
    kept = [line for line in text.splitlines() if not any(s in line for s in skip)]
    return "\n".join(kept[-lines:])


# The tests' own `spawnctl list`/`status` calls, which would fill the end of the daemon's log.
DAEMON_LOG_NOISE = (
    'role=admin action="list"',
    'role=admin action="status"',
    "spawnd::server: connection peer_uid=0 ",
)


# --- users -------------------------------------------------------------------------------------


class User:
    def __init__(self, name):
        pw = pwd.getpwnam(name)
        self.name = name
        self.uid = pw.pw_uid
        self.gid = pw.pw_gid
        self.home = pw.pw_dir
        self.groups = sorted(os.getgrouplist(name, pw.pw_gid))

    def __repr__(self):
        return f"User({self.name}, uid={self.uid})"


class TestUsers:
    """hub (H, own group = the socket group, no home, not in G), a and b (members of G, with
    homes), outsider (not in G, with a home), and the group G."""

    def __init__(self):
        self.prefix = f"{NAME_BASE}{os.getpid() % 100000}"
        self.created_users = []
        self.created_groups = []

    def create(self):
        p = self.prefix
        self.group = self._add_group(f"{p}g")
        self.hub = self._add_user(f"{p}h", "-M", "-U")
        self.a = self._add_user(f"{p}a", "-m", "-G", self.group)
        self.b = self._add_user(f"{p}b", "-m", "-G", self.group)
        self.outsider = self._add_user(f"{p}o", "-m")
        self.group_gid = grp.getgrnam(self.group).gr_gid
        self.hub_group = grp.getgrgid(self.hub.gid).gr_name
        assert self.group_gid in self.a.groups and self.group_gid in self.b.groups
        assert self.group_gid not in self.outsider.groups
        assert self.group_gid not in self.hub.groups
        for u in (self.hub, self.a, self.b, self.outsider):
            assert u.uid >= 1000, u
        return self

    def _add_group(self, name):
        r = account_tool("groupadd", name)
        assert r.returncode == 0, f"groupadd {name}: {r.stderr}"
        self.created_groups.append(name)
        return name

    def _add_user(self, name, *extra):
        r = account_tool("useradd", "-c", GECOS, "-s", "/bin/sh", *extra, name)
        assert r.returncode == 0, f"useradd {name}: {r.stderr}"
        self.created_users.append(name)
        return User(name)

    def all(self):
        return [self.hub, self.a, self.b, self.outsider]

    def remove(self):
        for name in reversed(self.created_users):
            remove_user(name)
        for name in reversed(self.created_groups):
            remove_group(name)
        self.created_users.clear()
        self.created_groups.clear()


def take_lock():
    """Held (flock) for the life of this process: two runs never clean up each other."""
    return spawnd_host.take_lock(LOCK_PATH)


def remove_leftovers():
    """What crashed runs of this suite left: their users (name spwh<digits><letters> and our
    GECOS) with their processes, groups of that name pattern, daemons and hubs running from
    /tmp/spawnd-hubtest-* directories, those directories, and their cgroups."""
    spawnd_host.remove_leftovers(DIR_BASE, NAME_RE, GECOS, CGROUP_V2_ROOT, "test")


# --- the daemon --------------------------------------------------------------------------------


class Daemon:
    """The real /opt/spawnd-dev/bin/spawnd as root, on a socket in a fresh root-owned dir."""

    def __init__(self, root, users):
        self.root = Path(root)
        self.users = users
        self.socket = self.root / "run" / "spawnd.sock"
        self.config = self.root / "spawnd.toml"
        self.log_path = self.root / "logs" / "spawnd.log"
        self.log_dir = self.root / "serverlogs"
        if CGROUP_V2_ROOT.joinpath("cgroup.procs").exists():
            self.cgroup_base = CGROUP_V2_ROOT / self.root.name
        else:
            self.cgroup_base = None
        self.proc = None

    def write_config(self):
        u = self.users
        failing = f"echo '{FAILING_LINE}'; exit {FAILING_EXIT}"
        path = f"{VENV}/bin:/usr/local/bin:/usr/bin:/bin"
        q = json.dumps  # a JSON string is a TOML basic string
        text = f"""\
socket = {q(str(self.socket))}
socket_group = {q(u.hub_group)}
hub_user = {q(u.hub.name)}
group = {q(u.group)}
state_dir = {q(str(self.root / "state"))}
log_dir = {q(str(self.log_dir))}
cgroup = {q(str(self.cgroup_base) if self.cgroup_base else "off")}
default_profile = "default"

[profiles.default]
command = [{q(str(SINGLEUSER))}]
path = {q(path)}
interrupt_timeout = 3
term_timeout = 3
kill_timeout = 3

[profiles.failing]
command = ["/bin/sh", "-c", {q(failing)}, "failing"]
path = {q(path)}
interrupt_timeout = 1
term_timeout = 1
kill_timeout = 1
"""
        self.config.write_text(text)
        self.config.chmod(0o644)
        r = run([SPAWND, "check-config", self.config], timeout=60)
        assert r.returncode == 0, f"spawnd check-config:\n{r.stdout}{r.stderr}\n{text}"

    def start(self):
        for d, mode in (("run", 0o755), ("state", 0o700), ("serverlogs", 0o755)):
            p = self.root / d
            p.mkdir(exist_ok=True)
            p.chmod(mode)
        self.write_config()
        logf = open(self.log_path, "ab")
        env = {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "SPAWND_LOG": "debug",
            "LANG": "C.UTF-8",
        }
        self.proc = subprocess.Popen(
            [str(SPAWND), "--config", str(self.config)],
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=subprocess.STDOUT,
            env=env,
        )
        logf.close()

        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"spawnd exited ({self.proc.returncode}) during start-up:\n"
                    + tail(self.log_path)
                )
            return self.spawnctl("status").returncode == 0

        assert wait_for(ready, 15, 0.05), "spawnd did not answer within 15 s:\n" + tail(
            self.log_path
        )
        st = os.stat(self.socket)
        assert st.st_gid == self.users.hub.gid, "socket group is not the hub's group"

    def spawnctl(self, *args, timeout=60):
        return run([SPAWNCTL, "--socket", self.socket, *args], timeout=timeout)

    def list(self):
        """spawnctl list --json (as root: every server)."""
        r = self.spawnctl("list", "--json")
        assert r.returncode == 0, f"spawnctl list --json failed: {r.stdout}{r.stderr}"
        return json.loads(r.stdout)

    def find(self, user, server=""):
        return [s for s in self.list() if s["user"] == user and s["server"] == server]

    def stop_all_servers(self):
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            servers = self.list()
        except Exception as e:  # noqa: BLE001 - best effort at teardown
            log(f"cannot list servers at teardown: {e}")
            return
        for s in servers:
            target = s["user"] + (f"/{s['server']}" if s["server"] else "")
            r = self.spawnctl("stop", target, "--now")
            if r.returncode != 0:
                log(f"spawnctl stop {target}: {r.stdout}{r.stderr}")

    def kill_hard(self):
        """kill -9 of the daemon alone: its servers, cgroups and state stay as they are."""
        self.proc.kill()
        self.proc.wait()

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                log("spawnd ignored SIGTERM for 10 s; killing it")
                self.proc.kill()
                self.proc.wait()
        if self.cgroup_base is not None:
            remove_cgroup_tree(self.cgroup_base)


# --- the hub -----------------------------------------------------------------------------------


HUB_CONFIG = """\
# Written by tests/hub/harness.py.
c = get_config()  # noqa: F821

c.JupyterHub.spawner_class = "spawnd"  # the entry point, as an operator would write it
c.SpawndSpawner.socket = {socket!r}
c.SpawndSpawner.profile = "default"
{profiles}

c.JupyterHub.authenticator_class = "dummy"
c.DummyAuthenticator.password = {password!r}
c.Authenticator.allow_all = True

c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = {public_port}
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = {hub_port}
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{proxy_api_port}"
c.ConfigurableHTTPProxy.command = [{chp!r}]
c.ConfigurableHTTPProxy.auth_token = {proxy_token!r}

c.JupyterHub.db_url = "sqlite:///{dir}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = "{dir}/jupyterhub_cookie_secret"
c.JupyterHub.pid_file = "{dir}/jupyterhub.pid"
c.ConfigurableHTTPProxy.pid_file = "{dir}/jupyterhub-proxy.pid"

c.JupyterHub.allow_named_servers = True
{cleanup_servers}

c.JupyterHub.services = [{{"name": "spawnd-tests", "api_token": {token!r}}}]
c.JupyterHub.load_roles = [{{"name": "admin", "services": ["spawnd-tests"]}}]

c.Spawner.start_timeout = 60
c.Spawner.http_timeout = {http_timeout}
c.JupyterHub.log_level = "DEBUG"
"""


PROFILES = """\
c.SpawndSpawner.profiles = {"default": "JupyterLab", "failing": "exits at once (tests)"}"""

CLEANUP_SERVERS_OFF = """\
# Servers outlive the hub: a restarted hub finds them through the spawner's state.
c.JupyterHub.cleanup_servers = False"""


class Hub:
    """JupyterHub (of the venv running the tests) running as the hub user (setpriv), starting
    configurable-http-proxy.

    The session's hub offers the profiles `default` and `failing` (a choice on the spawn page)
    and keeps servers across its restarts (`cleanup_servers = False`); `plain=True` makes a hub
    with neither: no profile choice (the hub's own form handling) and JupyterHub's default
    `cleanup_servers`."""

    HTTP_TIMEOUT = 30

    def __init__(self, root, users, daemon, name="hub", plain=False):
        self.root = Path(root)
        self.users = users
        self.daemon = daemon
        self.plain = plain
        self.dir = self.root / name
        self.config = self.dir / "jupyterhub_config.py"
        self.log_path = self.root / "logs" / f"{name}.log"
        self.token = secrets.token_hex(32)
        self.password = secrets.token_urlsafe(12)
        self.proxy_token = secrets.token_hex(32)
        self.public_port = free_port()
        self.hub_port = free_port()
        self.proxy_api_port = free_port()
        self.url = f"http://127.0.0.1:{self.public_port}"
        self.proc = None
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"token {self.token}"

    def setup(self):
        self.dir.mkdir(mode=0o700)
        os.chown(self.dir, self.users.hub.uid, self.users.hub.gid)
        self.config.write_text(
            HUB_CONFIG.format(
                socket=str(self.daemon.socket),
                password=self.password,
                public_port=self.public_port,
                hub_port=self.hub_port,
                proxy_api_port=self.proxy_api_port,
                chp=str(CHP),
                proxy_token=self.proxy_token,
                dir=self.dir,
                token=self.token,
                http_timeout=self.HTTP_TIMEOUT,
                profiles="" if self.plain else PROFILES,
                cleanup_servers="" if self.plain else CLEANUP_SERVERS_OFF,
            )
        )
        self.config.chmod(0o644)

    def start(self):
        assert self.proc is None or self.proc.poll() is not None
        h = self.users.hub
        logf = open(self.log_path, "ab")
        logf.write(f"\n===== hub start at {time.strftime('%H:%M:%S')} =====\n".encode())
        logf.flush()
        env = {
            "PATH": f"{VENV}/bin:/usr/local/bin:/usr/bin:/bin",
            "HOME": str(self.dir),
            "USER": h.name,
            "LOGNAME": h.name,
            "LANG": "C.UTF-8",
            "PYTHONUNBUFFERED": "1",
        }
        self.proc = subprocess.Popen(
            [
                "setpriv",
                f"--reuid={h.uid}",
                f"--regid={h.gid}",
                "--init-groups",
                "--",
                str(JUPYTERHUB),
                "-f",
                str(self.config),
            ],
            cwd=self.dir,
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        logf.close()

        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"jupyterhub exited ({self.proc.returncode}) during start-up:\n"
                    + tail(self.log_path)
                )
            try:
                r = self.session.get(f"{self.url}/hub/api/", timeout=2)
            except requests.RequestException:
                return False
            return r.status_code == 200

        assert wait_for(ready, 60, 0.2), "jupyterhub not ready within 60 s:\n" + tail(
            self.log_path
        )
        # The hub is not root: setpriv exec'd it in place, so the pid is the hub's.
        st = proc_status(self.proc.pid)
        assert st is not None
        uids = [int(x) for x in st["Uid"].split()]
        assert uids == [h.uid] * 4, f"hub runs with uids {uids}, not {h.uid}"

    def proxy_pid(self):
        try:
            return int((self.dir / "jupyterhub-proxy.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def stop(self):
        """SIGTERM the hub (it stops the proxy it started, and leaves the servers)."""
        if self.proc is None:
            return
        proxy = self.proxy_pid()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                log("jupyterhub ignored SIGTERM for 20 s; killing it")
                self.proc.kill()
                self.proc.wait()
        # The proxy runs as the hub user in the hub's session; make sure it is gone.
        if proxy and proc_alive(proxy):
            st = proc_status(proxy)
            if st and int(st["Uid"].split()[0]) == self.users.hub.uid:
                if not wait_for(lambda: not proc_alive(proxy), 5):
                    log(f"proxy {proxy} still runs after the hub stopped; killing it")
                    os.kill(proxy, signal.SIGKILL)
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def restart(self):
        self.stop()
        self.start()

    # --- REST API -------------------------------------------------------------------------------

    def api(self, method, path, **kw):
        kw.setdefault("timeout", 60)
        return self.session.request(method, f"{self.url}/hub/api{path}", **kw)

    def create_user(self, name):
        r = self.api("POST", f"/users/{name}")
        assert r.status_code in (201, 409), f"create user {name}: {r.status_code} {r.text}"

    def user_model(self, name):
        r = self.api("GET", f"/users/{name}")
        assert r.status_code == 200, f"GET user {name}: {r.status_code} {r.text}"
        return r.json()

    def server_model(self, name, server=""):
        return self.user_model(name).get("servers", {}).get(server)

    def server_path(self, name, server=""):
        return f"/users/{name}/servers/{server}" if server else f"/users/{name}/server"

    def start_server(self, name, server="", options=None, timeout=90):
        """POST the start, then wait until the hub says the server is ready. Returns the
        server model."""
        r = self.api("POST", self.server_path(name, server), json=options)
        assert r.status_code in (201, 202), (
            f"start {name}/{server}: {r.status_code} {r.text}"
        )

        def ready():
            m = self.server_model(name, server)
            if m is None:
                raise AssertionError(f"{name}/{server}: the server vanished while starting")
            return m if m.get("ready") else None

        model = wait_for(ready, timeout, 0.2)
        assert model, f"{name}/{server} not ready within {timeout} s"
        return model

    def stop_server(self, name, server="", timeout=60):
        body = {"remove": True} if server else None
        r = self.api("DELETE", self.server_path(name, server), json=body)
        assert r.status_code in (202, 204), f"stop {name}/{server}: {r.status_code} {r.text}"

        def gone():
            return self.server_model(name, server) is None

        assert wait_for(gone, timeout, 0.2), f"{name}/{server} still listed after {timeout} s"

    def progress_events(self, name, server="", timeout=30):
        """The progress event stream of a server (until the stream ends)."""
        path = (
            f"/users/{name}/servers/{server}/progress"
            if server
            else f"/users/{name}/server/progress"
        )
        r = self.api("GET", path, stream=True, timeout=timeout)
        events = []
        if r.status_code != 200:
            return r.status_code, r.text, events
        for line in r.iter_lines(decode_unicode=True):
            if line and line.startswith("data:"):
                events.append(json.loads(line[5:]))
        return r.status_code, "", events

    def login(self, name):
        """A browser session of user `name` (DummyAuthenticator), with its _xsrf token."""
        s = requests.Session()
        r = s.get(f"{self.url}/hub/login", timeout=30)
        assert r.status_code == 200, f"GET /hub/login: {r.status_code}"
        m = re.search(r'name="_xsrf"\s+value="([^"]+)"', r.text)
        xsrf = m.group(1) if m else s.cookies.get("_xsrf", "")
        r = s.post(
            f"{self.url}/hub/login",
            data={"username": name, "password": self.password, "_xsrf": xsrf},
            timeout=30,
            allow_redirects=False,
        )
        assert r.status_code in (302, 303), f"login of {name}: {r.status_code} {r.text[:500]}"
        return s

    def xsrf(self, session):
        """The _xsrf token a form of this session's pages posts (JupyterHub >= 4.1 checks it;
        3.x pages have none)."""
        r = session.get(f"{self.url}/hub/home", timeout=30)
        assert r.status_code == 200, f"GET /hub/home: {r.status_code}"
        m = re.search(r'xsrf_token: "([^"]*)"', r.text)
        return m.group(1) if m else ""

    def wait_ready(self, name, server="", timeout=90):
        def ready():
            m = self.server_model(name, server)
            return m if m and m.get("ready") else None

        model = wait_for(ready, timeout, 0.2)
        last = self.server_model(name, server)
        assert model, f"{name}/{server} not ready within {timeout} s: {last}"
        return model

    def log_text(self):
        return Path(self.log_path).read_text(errors="replace")

    def get_through_proxy(self, path):
        return self.session.get(f"{self.url}{path}", timeout=30, allow_redirects=False)
