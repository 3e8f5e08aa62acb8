"""SpawndSpawner with a real JupyterHub (6.1.1, or the JupyterHub of the venv running the tests):
start, reach, stop, named servers, refusals, fast failure of a server that exits at once, hub
restarts, an unreachable daemon and why, the spawn form, and the cleanup_servers warning."""

import asyncio
import os
import socket
import time
import types

import pytest

import harness

SERVER_PROCESS = str(harness.SINGLEUSER)


@pytest.fixture
def started(env):
    """Records (user, server) pairs a test starts; stops whatever is still there afterwards."""
    servers = []
    yield servers
    hub, daemon = env.hub, env.daemon
    for user, server in servers:
        try:
            if hub.server_model(user, server) is not None:
                body = {"remove": True} if server else None
                hub.api("DELETE", hub.server_path(user, server), json=body)
        except Exception as e:  # noqa: BLE001 - best-effort cleanup
            harness.log(f"cleanup of {user}/{server} through the hub failed: {e}")
        if daemon.find(user, server):
            target = user + (f"/{server}" if server else "")
            daemon.spawnctl("stop", target, "--now")


def assert_runs_as(pid, user, group_gid):
    """The process exists and runs with the user's uids, gids and supplementary groups."""
    st = harness.proc_status(pid)
    assert st is not None, f"server process {pid} does not exist"
    uids = [int(x) for x in st["Uid"].split()]
    gids = [int(x) for x in st["Gid"].split()]
    groups = sorted(int(x) for x in st["Groups"].split())
    assert uids == [user.uid] * 4, f"pid {pid} uids {uids}, expected {user.uid}"
    assert gids == [user.gid] * 4, f"pid {pid} gids {gids}, expected {user.gid}"
    assert group_gid in groups, f"pid {pid} groups {groups} lack the notebook group {group_gid}"
    cmdline = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
    assert any(SERVER_PROCESS.encode() in a for a in cmdline), (
        f"pid {pid} is not jupyterhub-singleuser: {cmdline}"
    )
    cwd = os.readlink(f"/proc/{pid}/cwd")
    assert cwd == user.home, f"pid {pid} runs in {cwd}, not the user's home {user.home}"


def assert_nothing_left(env, user, pid, server=""):
    """No process of the user remains, the server's pid is gone and spawnd forgot it."""
    left = harness.wait_for(lambda: not harness.pids_of_uid(user.uid), 10)
    assert left, f"processes of {user.name} remain:\n" + harness.describe_pids(
        harness.pids_of_uid(user.uid)
    )
    assert not harness.proc_alive(pid), f"server pid {pid} still exists"
    assert env.daemon.find(user.name, server) == [], (
        f"spawnd still lists {user.name}/{server}: {env.daemon.find(user.name, server)}"
    )


def server_pid(env, user, server=""):
    """The pid from the hub's saved spawner state, checked against spawnd's own list."""
    model = env.hub.server_model(user.name, server)
    assert model is not None, f"the hub has no server {user.name}/{server}"
    state = model.get("state") or {}
    assert state.get("pid"), f"no pid in the hub's spawner state: {model}"
    assert state.get("instance"), f"no instance in the hub's spawner state: {model}"
    listed = env.daemon.find(user.name, server)
    assert len(listed) == 1, f"spawnctl list for {user.name}/{server}: {listed}"
    assert listed[0]["state"] == "running", listed[0]
    assert listed[0]["pid"] == state["pid"], (listed[0], state)
    assert listed[0]["instance"] == state["instance"], (listed[0], state)
    assert listed[0]["uid"] == user.uid, listed[0]
    return state["pid"]


def test_start_reach_stop_default_server(env, started):
    a = env.users.a
    started.append((a.name, ""))
    t0 = time.monotonic()
    env.hub.start_server(a.name)
    harness.log(f"{a.name}'s server ready in {time.monotonic() - t0:.1f} s")

    r = env.hub.get_through_proxy(f"/user/{a.name}/api/status")
    assert r.status_code == 200, f"/user/{a.name}/api/status: {r.status_code} {r.text[:500]}"
    assert "started" in r.json(), r.text

    pid = server_pid(env, a)
    assert_runs_as(pid, a, env.users.group_gid)

    t0 = time.monotonic()
    env.hub.stop_server(a.name)
    harness.log(f"{a.name}'s server stopped in {time.monotonic() - t0:.1f} s")
    assert_nothing_left(env, a, pid)
    r = env.hub.get_through_proxy(f"/user/{a.name}/api/status")
    assert r.status_code != 200, "the stopped server still answers through the proxy"


def test_named_server(env, started):
    b = env.users.b
    started.append((b.name, "nb1"))
    model = env.hub.start_server(b.name, "nb1")
    assert model["name"] == "nb1", model

    r = env.hub.get_through_proxy(f"/user/{b.name}/nb1/api/status")
    assert r.status_code == 200, f"/user/{b.name}/nb1/api/status: {r.status_code} {r.text[:500]}"

    pid = server_pid(env, b, "nb1")
    assert_runs_as(pid, b, env.users.group_gid)
    # The default server of the same user is a different server, not started.
    assert env.daemon.find(b.name, "") == []

    env.hub.stop_server(b.name, "nb1")
    assert_nothing_left(env, b, pid, "nb1")


def test_outsider_is_refused_with_the_reason(env, started):
    o = env.users.outsider
    started.append((o.name, ""))
    r = env.hub.api("POST", f"/users/{o.name}/server")
    # A spawn that fails within the hub's slow_spawn_timeout is answered with its error.
    assert r.status_code >= 400, f"the outsider's spawn was accepted: {r.status_code} {r.text}"
    message = r.json().get("message", "")
    assert "not a member of group" in message, message
    assert env.users.group in message, message

    status, text, events = env.hub.progress_events(o.name)
    assert status == 200, f"progress: {status} {text}"
    assert events and events[-1].get("failed"), events
    assert "not a member of group" in events[-1]["message"], events

    assert env.hub.server_model(o.name) is None or not env.hub.server_model(o.name)["ready"]
    assert env.daemon.find(o.name) == []
    assert harness.pids_of_uid(o.uid) == []


def test_server_that_exits_at_once_fails_fast(env, started):
    b = env.users.b
    started.append((b.name, ""))
    t0 = time.monotonic()
    r = env.hub.api("POST", f"/users/{b.name}/server", json={"profile": "failing"})
    if r.status_code == 202:
        # Still pending when the hub answered: wait for the outcome.
        status, text, events = env.hub.progress_events(b.name, timeout=60)
        failed = events[-1] if events else {}
        message = failed.get("message", "")
    else:
        failed = None
        message = r.json().get("message", "")
    elapsed = time.monotonic() - t0
    harness.log(f"the failing profile's spawn failed after {elapsed:.2f} s")

    assert r.status_code >= 400 or (failed and failed.get("failed")), (r.status_code, r.text)
    # The issue asks for "within a second or two of its exit"; it takes about 0.1 s here.
    # (Without the spawner's port watch, JupyterHub itself notices after about 11 s.)
    assert elapsed < 5, (
        f"the spawn took {elapsed:.1f} s to fail (http_timeout is {env.hub.HTTP_TIMEOUT} s)"
    )
    assert f"exit code {harness.FAILING_EXIT}" in message, message
    assert harness.FAILING_LINE in message, message

    status, text, events = env.hub.progress_events(b.name)
    assert status == 200 and events and events[-1].get("failed"), (status, text, events)
    assert harness.FAILING_LINE in events[-1]["message"], events

    # The hub cleaned up after the failure: spawnd forgot the server, nothing of b runs.
    assert harness.wait_for(lambda: env.daemon.find(b.name) == [], 10), env.daemon.find(b.name)
    assert harness.wait_for(lambda: not harness.pids_of_uid(b.uid), 10), (
        harness.describe_pids(harness.pids_of_uid(b.uid))
    )

    # The default profile still works for the same server afterwards.
    env.hub.start_server(b.name, options={"profile": "default"})
    pid = server_pid(env, b)
    env.hub.stop_server(b.name)
    assert_nothing_left(env, b, pid)


def test_hub_restart_keeps_the_server(env, started):
    a = env.users.a
    started.append((a.name, "keep"))
    env.hub.start_server(a.name, "keep")
    pid = server_pid(env, a, "keep")
    old_hub_pid = env.hub.proc.pid

    env.hub.stop()
    assert not harness.proc_alive(old_hub_pid)
    # While the hub is down the server runs on, supervised by spawnd.
    assert harness.proc_alive(pid), "the server died with the hub"
    assert env.daemon.find(a.name, "keep")[0]["state"] == "running"

    env.hub.start()
    assert env.hub.proc.pid != old_hub_pid
    model = env.hub.server_model(a.name, "keep")
    assert model is not None and model["ready"], f"the new hub does not see the server: {model}"
    assert model["state"]["pid"] == pid, model
    assert server_pid(env, a, "keep") == pid

    # The new hub re-added the route to its (new) proxy.
    def reachable():
        r = env.hub.get_through_proxy(f"/user/{a.name}/keep/api/status")
        return r if r.status_code == 200 else None

    r = harness.wait_for(reachable, 20, 0.25)
    assert r is not None, "the server is not reachable through the proxy after the restart"

    env.hub.stop_server(a.name, "keep")
    assert_nothing_left(env, a, pid, "keep")


def test_daemon_restart_keeps_the_server(env, started):
    """spawnd is killed (-9) and restarted while a user's server runs: the hub keeps reaching
    the server, and stops it afterwards through the new daemon."""
    a = env.users.a
    started.append((a.name, "durable"))
    env.hub.start_server(a.name, "durable")
    pid = server_pid(env, a, "durable")
    path = f"/user/{a.name}/durable/api/status"

    env.daemon.kill_hard()
    assert harness.proc_alive(pid), "the server died with the daemon"
    r = env.hub.get_through_proxy(path)
    assert r.status_code == 200, f"server unreachable while spawnd is down: {r.status_code}"
    # The hub polls in the meantime; an unreachable daemon must not count as a dead server.
    r = env.hub.api("GET", f"/users/{a.name}")
    assert r.status_code == 200
    assert r.json()["servers"]["durable"]["ready"], r.json()

    env.daemon.start()
    row = env.daemon.find(a.name, "durable")
    assert row and row[0]["state"] == "running" and row[0]["pid"] == pid, row
    r = env.hub.get_through_proxy(path)
    assert r.status_code == 200, f"server unreachable after the daemon restart: {r.status_code}"

    env.hub.stop_server(a.name, "durable")
    assert_nothing_left(env, a, pid, "durable")


def _spawner(socket_path, state=None):
    from spawnd.spawner import SpawndSpawner

    sp = SpawndSpawner(
        socket=str(socket_path),
        user=types.SimpleNamespace(name="spwh-nobody"),
        unreachable_retry=0.5,
    )
    if state is not None:
        sp.load_state(state)
    return sp


def test_a_start_that_fails_or_is_cancelled_leaves_the_port_budget(env):
    """start() spreads its port tries over all the servers of the hub that are starting (a
    count kept by the module). A start that fails or is cancelled while it waits must leave
    that count, or every later start of the hub would try its port less often."""
    import spawnd.spawner as spawner_module
    from spawnd.spawner import SpawnException  # JupyterHub's from 6.0, spawnd's stand-in before

    class Spawner(spawner_module.SpawndSpawner):
        # No hub around it: no API token or hub URL to pass on.
        def get_env(self):
            return {}

        def get_args(self):
            return []

    b = env.users.b
    assert spawner_module._waiting_for_port == 0

    # The server exits during start-up: the spawn fails with its exit status.
    sp = Spawner(socket=str(env.daemon.socket), user=types.SimpleNamespace(name=b.name),
                 profile="failing")
    with pytest.raises(SpawnException, match=f"exit code {harness.FAILING_EXIT}"):
        asyncio.run(sp.start())
    assert spawner_module._waiting_for_port == 0

    # The hub's start_timeout cancels start() while it waits for the port.
    sp = Spawner(socket=str(env.daemon.socket), user=types.SimpleNamespace(name=b.name),
                 profile="default")

    async def cancelled_while_waiting():
        task = asyncio.ensure_future(sp.start())
        while spawner_module._waiting_for_port == 0 and not task.done():
            await asyncio.sleep(0.001)
        waiting = spawner_module._waiting_for_port
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return waiting

    try:
        assert asyncio.run(cancelled_while_waiting()) == 1
        assert spawner_module._waiting_for_port == 0
    finally:
        asyncio.run(sp.stop(now=True))
    assert env.daemon.find(b.name) == []


def test_a_port_try_passes_a_cancellation_on():
    """The hub cancels start() at its start_timeout, most likely while start() tries the
    port. The try must let the cancellation through even when the connection is refused at
    that moment (asyncio.wait_for before Python 3.12 returns the refusal instead), or start()
    would go on waiting for a server that never listens. The cancellation is sent after 0,
    1, 2, … turns of the event loop, so that one of them lands as the refusal arrives."""
    from spawnd.spawner import _port_open

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))  # bound, never listening: every connection is refused
        port = s.getsockname()[1]

        async def cancelled_after(turns):
            task = asyncio.ensure_future(_port_open("127.0.0.1", port))
            for _ in range(turns):
                await asyncio.sleep(0)
            if task.done():
                return "done before the cancellation"
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                return "cancelled"
            return "cancellation lost"

        outcomes = [asyncio.run(cancelled_after(turns)) for turns in range(30)]
    assert "cancellation lost" not in outcomes, outcomes
    assert outcomes[0] == "cancelled" and outcomes[-1] == "done before the cancellation", outcomes


def test_poll_with_the_daemon_unreachable_is_not_death(env, tmp_path, caplog):
    state = {"pid": 4242, "instance": 12345}

    # Missing socket: still running (None), and the hub is told why in its log.
    missing = tmp_path / "missing.sock"
    sp = _spawner(missing, state)
    with caplog.at_level("WARNING"):
        assert asyncio.run(sp.poll()) is None
    assert "unreachable" in caplog.text, caplog.text
    assert sp.get_state() == state, "an unreachable daemon must not clear the spawner's state"

    # A stale socket file nobody listens on (a daemon that crashed): the same.
    stale = tmp_path / "stale.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.bind(str(stale))
    s.close()
    assert asyncio.run(_spawner(stale, state).poll()) is None

    # Control: the same state against the real daemon, which does not know that server, is
    # reported as gone (0) — so the None above really came from the unreachable daemon.
    sp = _spawner(env.daemon.socket, state)
    assert asyncio.run(sp.poll()) == 0
    # And a spawner that never started reports 0 even when the daemon is unreachable.
    assert asyncio.run(_spawner(missing).poll()) == 0


def test_interpreter_exits_cleanly_after_concurrent_calls(env):
    """tokio's worker threads hand results to asyncio holding the GIL; an interpreter that
    finalizes while one of them releases it used to abort (PyGILState_Release). The hub would
    crash like that at every shutdown."""
    import subprocess
    import sys

    script = (
        "import asyncio, spawnd\n"
        f"c = spawnd.Client({str(env.daemon.socket)!r})\n"
        "async def main():\n"
        "    r = await asyncio.gather(*[c.status() for _ in range(50)])\n"
        "    assert len(r) == 50\n"
        "    await c.list()\n"
        "asyncio.run(main())\n"
    )
    for attempt in range(15):
        r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, f"attempt {attempt}: exit {r.returncode}\n{r.stderr[-2000:]}"


CLEANUP_WARNING = "c.JupyterHub.cleanup_servers is True"


def last_start(log_text):
    """The part of a hub log written since the hub's last start (harness.Hub.start marks it)."""
    return log_text.rsplit("===== hub start at", 1)[-1]


def test_spawn_says_why_spawnd_cannot_be_reached(env, started):
    """A daemon that is not running and a socket the hub may not open are told apart, on the
    spawn page (progress event) and in the REST answer, with what the operator must fix."""
    a, hub, daemon = env.users.a, env.hub, env.daemon
    started.append((a.name, ""))
    sock = daemon.socket

    def failed_spawn():
        r = hub.api("POST", f"/users/{a.name}/server")
        assert r.status_code >= 400, f"the spawn did not fail: {r.status_code} {r.text}"
        rest = r.json().get("message", "")
        status, text, events = hub.progress_events(a.name)
        assert status == 200 and events and events[-1].get("failed"), (status, text, events)
        return rest, events[-1]["message"]

    try:
        # spawnd killed: its socket file stays behind and nothing listens on it
        daemon.kill_hard()
        for m in failed_spawn():
            assert "spawnd is not running" in m and f"Nothing listens on {sock}" in m, m
            assert "ermission denied" not in m, m

        # spawnd runs, but its socket belongs to a group the hub is not in
        daemon.start()  # closes the hub's connection: the next request connects again
        os.chown(sock, 0, env.users.group_gid)
        for m in failed_spawn():
            assert f"Permission denied on {sock} (root:{env.users.group}, mode 0660)" in m, m
            assert f"usermod -aG {env.users.group} {env.users.hub.name}" in m, m
            assert "not running" not in m, m

        # the hub's group, but a mode that gives the group nothing
        os.chown(sock, 0, env.users.hub.gid)
        os.chmod(sock, 0o600)
        for m in failed_spawn():
            assert f"Permission denied on {sock} (root:{env.users.hub_group}, mode 0600)" in m, m
            assert "needs read and write permission: mode 0660" in m, m
            assert "not running" not in m, m

        # the socket is fine, but the hub may not enter its directory
        os.chmod(sock, 0o660)
        sock.parent.chmod(0o700)
        for m in failed_spawn():
            assert f"Permission denied on the way to {sock}" in m, m
            assert f"may not enter the directory {sock.parent}." in m, m
    finally:
        if daemon.proc.poll() is not None:
            daemon.start()
        sock.parent.chmod(0o755)
        os.chown(sock, 0, env.users.hub.gid)
        os.chmod(sock, 0o660)

    # Repaired: the same hub starts the server without a restart.
    hub.start_server(a.name)
    pid = server_pid(env, a)
    hub.stop_server(a.name)
    assert_nothing_left(env, a, pid)


def test_spawn_form_chooses_the_profile(env, started):
    """With profiles to choose from, the spawn page offers them and the form's choice starts
    that profile (SpawndSpawner's own options_from_form)."""
    b = env.users.b
    started.append((b.name, ""))
    s = env.hub.login(b.name)
    r = s.get(f"{env.hub.url}/hub/spawn", timeout=30)
    assert r.status_code == 200 and 'id="spawnd-profile"' in r.text, (r.status_code, r.text[:2000])
    r = s.post(
        f"{env.hub.url}/hub/spawn",
        data={"profile": "default", "_xsrf": env.hub.xsrf(s)},
        timeout=60,
        allow_redirects=False,
    )
    assert r.status_code in (302, 303), f"form POST: {r.status_code} {r.text[:2000]}"
    model = env.hub.wait_ready(b.name)
    assert model["user_options"] == {"profile": "default"}, model
    pid = server_pid(env, b)
    env.hub.stop_server(b.name)
    assert_nothing_left(env, b, pid)


def test_hub_with_jupyterhubs_defaults(env, started):
    """A second hub on the same spawnd, with JupyterHub's default cleanup_servers and no choice
    of profiles: SpawndSpawner warns once in the hub's log that the hub will stop every server
    when it shuts down, and the hub's own form handling passes the spawn page's query and form
    on as they are (JupyterHub before 5.0 has no `_passthrough_options_from_form`)."""
    b = env.users.b
    started.append((b.name, ""))
    # The session's hub keeps its servers: no warning there.
    assert CLEANUP_WARNING not in env.hub.log_text()

    plain = harness.Hub(env.root, env.users, env.daemon, name="plainhub", plain=True)
    plain.setup()
    try:
        plain.start()
        # Warned at start-up (no spawner exists yet), once.
        assert last_start(plain.log_text()).count(CLEANUP_WARNING) == 1, harness.tail(
            plain.log_path, 60
        )
        plain.create_user(b.name)
        s = plain.login(b.name)

        # GET /hub/spawn?x=1: the query becomes the user options
        r = s.get(f"{plain.url}/hub/spawn?x=1", timeout=60, allow_redirects=False)
        assert r.status_code in (302, 303), f"GET /hub/spawn?x=1: {r.status_code} {r.text[:2000]}"
        model = plain.wait_ready(b.name)
        assert model["user_options"].get("x") == ["1"], model
        pid = server_pid_of(plain, env, b)
        plain.stop_server(b.name)
        assert_nothing_left(env, b, pid)

        # a form POST: the form's fields become the user options
        r = s.post(
            f"{plain.url}/hub/spawn",
            data={"y": "2", "_xsrf": plain.xsrf(s)},
            timeout=60,
            allow_redirects=False,
        )
        assert r.status_code in (302, 303), f"form POST: {r.status_code} {r.text[:2000]}"
        model = plain.wait_ready(b.name)
        assert model["user_options"].get("y") == ["2"], model
        pid = server_pid_of(plain, env, b)
        plain.stop_server(b.name)
        assert_nothing_left(env, b, pid)

        # Every spawner the hub made since: still the one warning.
        assert last_start(plain.log_text()).count(CLEANUP_WARNING) == 1
    finally:
        plain.stop()


def server_pid_of(hub, env, user, server=""):
    """server_pid() for another hub than the session's."""
    model = hub.server_model(user.name, server)
    pid = (model.get("state") or {}).get("pid")
    listed = env.daemon.find(user.name, server)
    assert pid and len(listed) == 1 and listed[0]["pid"] == pid, (model, listed)
    return pid
