"""SpawndSpawner: JupyterHub's Spawner over the spawnd daemon.

The hub runs as an ordinary service account. Every start, poll and stop is one request to
spawnd over its Unix socket; spawnd checks the hub's kernel credentials, starts the server as
the user with the operator's profile, and supervises it. Nothing here needs root or sudo.
"""

import asyncio
import grp
import html
import os
import pwd
import stat
import time

from jupyterhub.spawner import Spawner
from jupyterhub.utils import random_port
from tornado import web
from traitlets import Bool, Dict, Float, Integer, Unicode, default

from ._native import Client, DaemonUnreachable, SpawndError

__all__ = ["SpawndSpawner"]

try:
    from jupyterhub.spawner import SpawnException  # JupyterHub >= 6.0
except ImportError:

    class SpawnException(web.HTTPError):
        """JupyterHub 6's SpawnException, for JupyterHub 3.1 to 5.x.

        Those hubs show a failed spawn's message from the exception's `jupyterhub_message`
        (spawn page, progress events; `jupyterhub_html_message` when set; `_spawn_error` sets
        them), and answer the REST API with an HTTPError's `log_message % args`: that is the
        message here, whatever `%` it contains, with the status code given. The hub logs
        `str()`, which is the log message, as in 6.0.
        """

        def __init__(self, message, *, reason, log_message="", message_html="", status_code=400):
            super().__init__(status_code, "%s", message, reason=reason)
            self.message = message
            self.message_html = message_html
            self.spawnd_log_message = log_message or message

        def __str__(self):
            return (
                f"{self.status_code} SpawnException(reason={self.reason}): "
                f"{self.spawnd_log_message}"
            )


# One client (one connection) per socket path, shared by every spawner of the hub.
_CLIENTS = {}

# start() tries a starting server's port every PORT_INTERVAL seconds, so that it returns within
# about that of the server listening. Each try costs the hub about 0.5 ms of CPU (mostly the
# event loop's wakeup; a refused connection itself is 15 µs), so with many servers starting at
# once the tries are spread out: the hub tries at most PORT_TRIES_PER_SECOND ports a second in
# all. From 10 servers starting at once each is tried less often, and from 100 on every 0.5 s.
PORT_INTERVAL = 0.05
PORT_TRIES_PER_SECOND = 200
# How many start()s of this hub are waiting for their server's port.
_waiting_for_port = 0


def _port_interval():
    return max(PORT_INTERVAL, _waiting_for_port / PORT_TRIES_PER_SECOND)


def _spawn_error(message, *, reason, log_message=None):
    """The failure the user sees on the spawn page and in the REST answer; the hub logs
    `log_message`. Every JupyterHub line shows a failed spawn's `jupyterhub_message` on the
    spawn page (6.x would show `str()`, the log message, without it)."""
    e = SpawnException(message, reason=reason, log_message=log_message or message)
    e.jupyterhub_message = message
    return e


# --- what an unreachable daemon means for the operator ---------------------------------------

_START_SPAWND = "Start it (systemctl start spawnd.socket spawnd.service) and check its log."


def _unreachable_message(socket, kind, detail, connect_timeout):
    """Why the hub cannot reach spawnd, and what to fix, in sentences for the operator who
    reads the spawn page or the hub's log. `kind` is DaemonUnreachable's first argument (from
    the native client: PermissionDenied, NoSocket, NotListening, Busy, Unreachable)."""
    if kind == "PermissionDenied":
        return _permission_problem(socket)
    if kind == "NoSocket":
        return (
            f"There is no socket at {socket}: spawnd is not running, or its `socket` (in "
            f"spawnd.toml) is not c.SpawndSpawner.socket. {_START_SPAWND}"
        )
    if kind == "NotListening":
        return (
            f"Nothing listens on {socket}: spawnd is not running (the socket file is left "
            f"from an earlier run). {_START_SPAWND}"
        )
    if kind == "Busy":
        return (
            f"spawnd did not accept the connection within {connect_timeout:g} s (its backlog "
            "stayed full): it is overloaded or stuck. Check its log and `spawnctl status`."
        )
    return f"{detail[:1].upper()}{detail[1:]}. Check that spawnd runs, and its log."


def _hub_account():
    """The hub's user name and the names of the groups this process has."""
    try:
        user = pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        user = f"uid {os.geteuid()}"
    names = []
    for gid in sorted({os.getegid(), *os.getgroups()}):
        try:
            names.append(grp.getgrgid(gid).gr_name)
        except KeyError:
            names.append(str(gid))
    return user, names


def _permission_problem(socket):
    """Permission denied connecting to `socket`: which directory, group or mode to fix."""
    user, groups = _hub_account()
    who = f"the hub runs as {user} (groups: {', '.join(groups) or 'none'})"
    try:
        st = os.stat(socket)
    except PermissionError:
        # A directory on the way cannot be searched by the hub: name the first one.
        blocked, d = None, os.path.dirname(os.path.abspath(socket))
        while True:
            if not os.access(d, os.X_OK):
                blocked = d
            parent = os.path.dirname(d)
            if parent == d:
                break
            d = parent
        return (
            f"Permission denied on the way to {socket}: {who} and may not enter the directory "
            f"{blocked or os.path.dirname(socket)}. Every directory above the socket must be "
            "searchable (x) by the hub: spawnd creates the socket's directory 0755, as does "
            "spawnd.socket (DirectoryMode=0755)."
        )
    except OSError as e:
        return f"Permission denied on {socket} ({e})."
    mode = stat.S_IMODE(st.st_mode)
    try:
        owner = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        owner = str(st.st_uid)
    try:
        group_entry = grp.getgrgid(st.st_gid)
        group, members = group_entry.gr_name, group_entry.gr_mem
    except KeyError:
        group, members = str(st.st_gid), []
    where = f"Permission denied on {socket} ({owner}:{group}, mode {mode:04o}); {who}."
    in_group = st.st_gid == os.getegid() or st.st_gid in os.getgroups()
    if not in_group:
        if user in members:
            fix = (
                f"{user} is a member of {group} in the group database, but this hub process "
                "started before it was added: restart the hub."
            )
        else:
            fix = (
                f"Add {user} to the group {group} (usermod -aG {group} {user}) and restart "
                "the hub, or give the socket the hub's group: `socket_group` in spawnd.toml "
                "(SocketGroup= in spawnd.socket under systemd)."
            )
    elif mode & 0o060 != 0o060:
        fix = (
            f"The socket's group {group} needs read and write permission: mode 0660, as "
            "spawnd and spawnd.socket (SocketMode=0660) create it."
        )
    else:
        fix = "Check the socket's ACLs and the hub's security policy (SELinux, AppArmor)."
    return f"{where} {fix}"


# --- JupyterHub's cleanup_servers ------------------------------------------------------------

_cleanup_servers_checked = False


def _warn_if_hub_stops_servers():
    """Once per hub process: warn in the hub's log when c.JupyterHub.cleanup_servers is on
    (JupyterHub's default). The hub then stops every server when it shuts down, so that a hub
    restart or upgrade ends all users' sessions, although spawnd keeps servers running on
    their own and the restarted hub finds them again.

    Called when the hub logs which spawner it uses at start-up (it reads
    `spawnd.__version__`), and when it makes a SpawndSpawner."""
    global _cleanup_servers_checked
    if _cleanup_servers_checked:
        return
    try:
        from jupyterhub.app import JupyterHub
    except ImportError:
        return
    if not JupyterHub.initialized():
        return  # not in a hub (yet)
    _cleanup_servers_checked = True
    app = JupyterHub.instance()
    if getattr(app, "cleanup_servers", False):
        app.log.warning(
            "c.JupyterHub.cleanup_servers is True (JupyterHub's default): this hub stops "
            "every user's server when it shuts down, so a hub restart or upgrade ends all "
            "sessions. SpawndSpawner's servers outlive the hub and a restarted hub finds them "
            "again: set c.JupyterHub.cleanup_servers = False."
        )


class SpawndSpawner(Spawner):
    """Start, poll and stop single-user servers through the spawnd daemon.

    The executable is chosen by the daemon's profile, never by the hub: `cmd` is ignored and
    only `args` (from `Spawner.args` and `get_args()`) are sent, when the profile allows them.
    """

    socket = Unicode(
        "/run/spawnd/spawnd.sock",
        config=True,
        help="Path of spawnd's socket. The hub's user must be in the socket's group.",
    )

    profile = Unicode(
        "",
        config=True,
        help="""Name of the spawnd profile to start servers with ('' = the daemon's default).
        Overridden by the user's choice when `profiles` offers several.""",
    )

    profiles = Dict(
        {},
        config=True,
        help="""Profiles users may choose from, as {name: description}. With two or more,
        the spawn page offers a choice (options_form) and the choice is checked against this
        list before it reaches the daemon.""",
    )

    connect_timeout = Float(
        5.0,
        config=True,
        help="Seconds to wait for a connection to spawnd (its listen backlog may be full).",
    )

    wait_for_port = Bool(
        True,
        config=True,
        help="""Make start() return only once the server accepts connections on its port,
        while watching it through spawnd: a server that exits during start-up then fails the
        spawn at once with its exit status and the end of its log, instead of after
        http_timeout.""",
    )

    unreachable_retry = Float(
        30.0,
        config=True,
        help="""Seconds stop() keeps retrying while spawnd cannot be reached (for example
        during a daemon restart). poll() never waits: an unreachable daemon is not a dead
        server, so poll() reports it as still running and logs a warning.""",
    )

    log_tail_lines = Integer(
        20, config=True, help="Log lines shown when a server fails during start-up."
    )

    # State kept across hub restarts.
    pid = Integer(0, help="pid of the server process (for JupyterHub's state and API)")
    instance = Integer(None, allow_none=True, help="spawnd's instance id of the server")

    _progress_log = None
    _progress_changed = None
    _progress_done = False
    # Exit status of the known instance once spawnd reported its exit (its record is then
    # dropped from spawnd's table: see _forget_exited).
    _exit_code = None

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        _warn_if_hub_stops_servers()

    @default("options_form")
    def _default_options_form(self):
        if len(self.profiles) < 2:
            return ""
        options = "\n".join(
            '<option value="{}"{}>{}</option>'.format(
                html.escape(name, quote=True),
                " selected" if name == self.profile else "",
                html.escape(str(desc) or name),
            )
            for name, desc in self.profiles.items()
        )
        return (
            '<label for="spawnd-profile">Server profile</label>\n'
            '<select class="form-control" name="profile" id="spawnd-profile">\n'
            f"{options}\n</select>"
        )

    # `options_from_form` is a configurable trait of Spawner (a callable, and from JupyterHub
    # 5.0 also "passthrough" / "simple"): only its default is changed here, so that an
    # operator's setting still wins. Without a choice of profiles it stays the hub's own
    # default, which passes the form on as it is: `_passthrough_options_from_form` from 5.0,
    # `_default_options_from_form` before. (This method's name must be neither.)
    @default("options_from_form")
    def _spawnd_options_from_form(self):
        if len(self.profiles) >= 2:
            return self._profile_options_from_form
        stock = getattr(self, "_passthrough_options_from_form", None)
        if stock is None:
            stock = self._default_options_from_form
        return stock

    def _profile_options_from_form(self, formdata):
        chosen = formdata.get("profile", [self.profile])
        if isinstance(chosen, list):
            chosen = chosen[0] if chosen else self.profile
        return {"profile": chosen}

    def _chosen_profile(self):
        chosen = (self.user_options or {}).get("profile")
        if isinstance(chosen, list):
            # what the stock "passthrough" options_from_form makes of a form field
            chosen = chosen[0] if len(chosen) == 1 else chosen
        if chosen and not isinstance(chosen, str):
            raise _spawn_error(
                f"The profile must be given as a name, not {chosen!r}", reason="profile"
            )
        if not chosen:
            return self.profile
        if self.profiles and chosen not in self.profiles:
            raise _spawn_error(
                f"Profile {chosen!r} is not offered here; choose one of: "
                + ", ".join(sorted(self.profiles)),
                reason="profile",
            )
        if not self.profiles and chosen != self.profile:
            raise _spawn_error(
                f"Profile {chosen!r} is not offered here", reason="profile"
            )
        return chosen

    def _unreachable(self, kind, detail):
        return _unreachable_message(self.socket, kind, detail, self.connect_timeout)

    @property
    def client(self):
        key = (self.socket, self.connect_timeout)
        if key not in _CLIENTS:
            _CLIENTS[key] = Client(self.socket, self.connect_timeout)
        return _CLIENTS[key]

    # --- state -----------------------------------------------------------------------------

    def load_state(self, state):
        super().load_state(state)
        self.pid = state.get("pid", 0)
        self.instance = state.get("instance")
        self._exit_code = None

    def get_state(self):
        state = super().get_state()
        if self.pid:
            state["pid"] = self.pid
        if self.instance is not None:
            state["instance"] = self.instance
        return state

    def clear_state(self):
        super().clear_state()
        self.pid = 0
        self.instance = None
        self._exit_code = None

    # --- progress --------------------------------------------------------------------------

    def _progress(self, progress, message):
        self.log.debug("%s: %s", self._log_name, message)
        if self._progress_log is not None:
            self._progress_log.append({"progress": progress, "message": message})
            self._progress_changed.set()

    async def progress(self):
        """The real steps of start(): request sent, process started, port open."""
        sent = 0
        while self._progress_log is not None:
            while sent < len(self._progress_log):
                yield self._progress_log[sent]
                sent += 1
            if self._progress_done:
                return
            self._progress_changed.clear()
            await self._progress_changed.wait()

    async def start(self):
        self._progress_log = []
        self._progress_changed = asyncio.Event()
        self._progress_done = False
        try:
            return await self._start()
        finally:
            self._progress_done = True
            self._progress_changed.set()

    async def _start(self):
        self._exit_code = None
        profile = self._chosen_profile()
        if self.port == 0:
            self.port = random_port()
        env = self.get_env()
        args = [str(a) for a in self.get_args()]
        user, name = self.user.name, self.name
        self._progress(10, f"Asking spawnd to start the server (profile {profile or 'default'})")
        try:
            started = await self.client.start(user, name, profile, args, env, self.port)
        except DaemonUnreachable as e:
            kind, detail = e.args
            raise _spawn_error(
                "The server could not be started: the hub cannot reach spawnd. For the hub's "
                "administrator: " + self._unreachable(kind, detail),
                reason="spawnd_unreachable",
                log_message=f"cannot reach spawnd to start {self._log_name}: {kind}: {detail}",
            ) from None
        except SpawndError as e:
            kind, message = e.args
            raise _spawn_error(
                f"The server could not be started: {message}",
                reason=kind,
                log_message=f"spawnd refused to start {self._log_name}: {kind}: {message}",
            ) from None
        self.pid = started.pid
        self.instance = started.instance
        if started.dropped_env:
            self.log.info(
                "spawnd dropped environment variables of %s not allowed by its profile: %s",
                self._log_name,
                ", ".join(started.dropped_env),
            )
        self._progress(
            40, f"Server process started as {user} (pid {started.pid}); waiting for it"
        )
        ip = self.ip or "127.0.0.1"
        if self.wait_for_port:
            await self._wait_until_listening(ip, self.port)
            self._progress(90, f"Server is listening on port {self.port}")
        return (ip, self.port)

    async def _failed_during_startup(self, polled):
        tail = ""
        try:
            logs = await self.client.logs(
                self.user.name, self.name, self.log_tail_lines
            )
            if logs.lines:
                tail = "\nLast lines of its log ({}):\n{}".format(
                    logs.path, "\n".join(logs.lines)
                )
        except SpawndError as e:
            tail = f"\n(its log could not be read: {e.args[1]})"
        return _spawn_error(
            f"The server exited during start-up ({polled.exit_description}).{tail}",
            reason="exited",
        )

    async def _wait_until_listening(self, ip, port):
        """Until the port accepts a connection or the server exits (bounded by the hub's
        start_timeout, which cancels start()).

        The port is tried every _port_interval() (50 ms unless many servers start at once),
        so that start() returns right after the server listens: the hub's own HTTP check then
        answers at once. Whether the server exited is asked of spawnd less often, at once and
        then at doubling intervals up to 0.5 s: that only decides how soon a failed start is
        reported.
        """
        global _waiting_for_port
        connect_ip = "127.0.0.1" if ip in ("", "0.0.0.0") else ip
        loop = asyncio.get_running_loop()
        next_poll = loop.time()
        delay = 0.05
        _waiting_for_port += 1
        try:
            while True:
                if loop.time() >= next_poll:
                    await self._fail_if_exited()
                    next_poll = loop.time() + delay
                    delay = min(delay * 2, 0.5)
                if await _port_open(connect_ip, port):
                    return
                await asyncio.sleep(_port_interval())
        finally:
            _waiting_for_port -= 1

    async def _fail_if_exited(self):
        """Raise the spawn's failure if spawnd reports the starting server as exited."""
        try:
            polled = await self.client.poll(self.user.name, self.name, self.instance)
        except DaemonUnreachable as e:
            self.log.warning("spawnd unreachable while %s starts: %s", self._log_name, e)
            return
        except SpawndError as e:
            kind, message = e.args
            raise _spawn_error(
                f"The server disappeared during start-up: {message}", reason=kind
            ) from None
        if polled.state == "exited":
            error = await self._failed_during_startup(polled)
            self._exit_code = polled.exit_code
            await self._forget_exited(polled.instance)
            raise error

    # --- poll ------------------------------------------------------------------------------

    async def poll(self):
        if self.instance is None and not self.pid:
            # Never started, or cleared: not running (None while a start is pending).
            return None if self._spawn_pending else 0
        if self._exit_code is not None:
            # Exited, and its record already dropped from spawnd's table.
            return self._exit_code
        try:
            polled = await self.client.poll(self.user.name, self.name, self.instance)
        except DaemonUnreachable as e:
            self.log.warning(
                "spawnd unreachable while polling %s; assuming it still runs: %s",
                self._log_name,
                self._unreachable(*e.args),
            )
            return None
        except SpawndError as e:
            kind, message = e.args
            if kind == "NotFound":
                self.log.info("spawnd does not know %s: %s", self._log_name, message)
                self.clear_state()
                return 0
            self.log.error("spawnd refused to poll %s: %s: %s", self._log_name, kind, message)
            return None
        if polled.state == "exited":
            self.log.info("%s exited: %s", self._log_name, polled.exit_description)
            self._exit_code = polled.exit_code
            await self._forget_exited(polled.instance)
            return polled.exit_code
        return None

    async def _forget_exited(self, instance):
        """Drop the record of our exited instance from spawnd's table.

        spawnd keeps an exited server (with its exit status) until someone stops it, but
        JupyterHub never calls stop() for a server that poll() reported as exited (User.stop
        polls first), so without this every crashed server and every failed start would stay
        in spawnd's table. A stop of an exited instance returns at once; the instance id (the
        one spawnd reported as exited) makes sure a newer server of the same name is never
        touched. The exit status is kept in `_exit_code`, so later polls still return it.
        """
        try:
            await self.client.stop(self.user.name, self.name, instance, True)
        except SpawndError as e:  # DaemonUnreachable included: the record stays, harmless
            self.log.debug("could not drop spawnd's record of %s: %s", self._log_name, e)

    # --- stop ------------------------------------------------------------------------------

    async def stop(self, now=False):
        if self.instance is None and not self.pid:
            return
        deadline = time.monotonic() + self.unreachable_retry
        delay = 0.1
        while True:
            try:
                stopped = await self.client.stop(
                    self.user.name, self.name, self.instance, now
                )
            except DaemonUnreachable as e:
                if time.monotonic() >= deadline:
                    raise RuntimeError(
                        f"cannot stop {self._log_name}: spawnd unreachable for "
                        f"{self.unreachable_retry:g} s: {self._unreachable(*e.args)}"
                    ) from None
                self.log.warning("spawnd unreachable, retrying stop of %s", self._log_name)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            except SpawndError as e:
                kind, message = e.args
                if kind == "NotFound":
                    self.log.info("%s was already gone: %s", self._log_name, message)
                    return
                raise RuntimeError(f"spawnd could not stop {self._log_name}: {message}") from None
            self.log.info("%s stopped: %s", self._log_name, stopped.exit_description)
            # spawnd drops a server's record once it has stopped it: keep its exit status for
            # poll() (JupyterHub's tests expect -SIGTERM after a stop that needed SIGTERM).
            self._exit_code = stopped.exit_code
            return


async def _port_open(ip, port):
    """Whether something accepts TCP connections on ip:port (within a second).

    asyncio.wait, not wait_for: before Python 3.12, wait_for drops a cancellation that arrives
    just as the connection is refused, and start(), which the hub cancels at its start_timeout
    most likely while it tries the port, would then go on waiting for a server that never
    listens.
    """
    connecting = asyncio.ensure_future(asyncio.open_connection(ip, port))
    try:
        await asyncio.wait([connecting], timeout=1.0)
    except asyncio.CancelledError:
        connecting.cancel()
        connecting.add_done_callback(_close_connection)
        raise
    if not connecting.done():
        connecting.cancel()
        return False
    try:
        _, writer = connecting.result()
    except OSError:
        return False
    writer.close()
    try:
        await writer.wait_closed()
    except OSError:
        pass
    return True


def _close_connection(connecting):
    """Close the connection of a try that was cancelled once it is made anyway."""
    if not connecting.cancelled() and connecting.exception() is None:
        connecting.result()[1].close()
