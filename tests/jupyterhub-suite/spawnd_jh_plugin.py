"""pytest plugin: run JupyterHub's own `jupyterhub/tests/test_spawner.py` against SpawndSpawner.

Loaded by `tests/jupyterhub-suite/run` with `-p spawnd_jh_plugin`, in a pytest process that runs
as the (unprivileged) hub user of a test spawnd daemon that runs as root. It changes nothing in
the tests themselves; it substitutes the spawner classes they construct:

- `new_spawner()` in test_spawner.py builds `SimpleLocalProcessSpawner` (JupyterHub >= 5;
  `LocalProcessSpawner` before), a module global read at call time: it becomes
  `SpawndTestSpawner`.
- The `app` fixture's MockHub builds `jupyterhub.tests.mocking.MockSpawner` (its default
  `spawner_class`, also read at call time): with `SPAWND_JH_SCOPE=all` (the default) it becomes
  `SpawndMockSpawner`, which keeps MockSpawner's API-token test hooks; with
  `SPAWND_JH_SCOPE=spawner` it is left alone.

Both talk to the test daemon over its socket (`SPAWND_JH_SOCKET`), as the hub user.

Test-harness adapter (not part of SpawndSpawner, not how a hub is configured): spawnd never lets
the hub choose the executable; the operator's profile does. The tests, though, say what to run
through `Spawner.cmd` (`sys.executable -c SCRIPT`, `sys.executable -m jupyterhub.tests.mocksu`,
`jupyterhub-singleuser`). So the test daemon has two profiles, and the adapter maps:

- `cmd == [PYTHON, *rest]` (PYTHON = this venv's python, `SPAWND_JH_PYTHON`) -> profile `python`
  (command = that same python, allow_args) with `rest` sent as the leading arguments;
- `cmd == ["jupyterhub-singleuser"]` -> profile `singleuser` (command = the venv's
  jupyterhub-singleuser), no extra arguments;
- anything else is refused with a SpawnException naming the command: the test asks for an
  executable of the hub's choosing, which spawnd deliberately does not offer.

Before 5.0 the `db` fixture names the tests' first user after the account running pytest
(`getpass.getuser()`, here the hub user, which spawnd rightly gives no server); the plugin makes
it `user`, the name 5.0 and later use, for which the run creates a real user.

`SPAWND_JH_MODE=stock` loads the plugin without substituting anything (the baseline run of the
stock SimpleLocalProcessSpawner as root).
"""

import os
import sys

import pytest

MODE = os.environ.get("SPAWND_JH_MODE", "spawnd")
# all: every server the module starts goes through spawnd (new_spawner()'s class and MockHub's);
# spawner: only new_spawner()'s class, MockHub keeps JupyterHub's MockSpawner (a local process of
# the pytest user), which is how a substitution of SimpleLocalProcessSpawner alone counts.
SCOPE = os.environ.get("SPAWND_JH_SCOPE", "all")

PYTHON_PROFILE = "python"
SINGLEUSER_PROFILE = "singleuser"

# Spawners started during the current test, stopped after it (spawnd keeps one server per
# user and name, where LocalProcessSpawner would happily start a second process).
_started = []


def _same_path(a, b):
    return os.path.normpath(os.path.abspath(a)) == os.path.normpath(os.path.abspath(b))


if MODE == "spawnd":
    # SpawnException: JupyterHub's from 6.0, SpawndSpawner's stand-in before
    from spawnd.spawner import SpawndSpawner, SpawnException
    from traitlets import default

    SOCKET = os.environ["SPAWND_JH_SOCKET"]
    PYTHON = os.environ.get("SPAWND_JH_PYTHON", sys.executable)

    class _HarnessAdapter(SpawndSpawner):
        """Maps the tests' `cmd` onto the test daemon's profiles (see the module docstring)."""

        @default("socket")
        def _default_socket(self):
            return SOCKET

        def _harness_profile_and_args(self):
            cmd = [str(c) for c in self.cmd]
            if cmd and _same_path(cmd[0], PYTHON):
                return PYTHON_PROFILE, cmd[1:]
            if cmd == ["jupyterhub-singleuser"]:
                return SINGLEUSER_PROFILE, []
            raise SpawnException(
                f"test harness: the test asks to run {cmd!r}; with spawnd the executable is "
                "chosen by the daemon's profile, never by the hub, and no profile of the test "
                "daemon runs it",
                reason="harness_cmd",
            )

        def get_args(self):
            _, leading = self._harness_profile_and_args()
            return leading + [str(a) for a in super().get_args()]

        async def start(self):
            self.profile, _ = self._harness_profile_and_args()
            _started.append(self)
            return await super().start()

    class SpawndTestSpawner(_HarnessAdapter):
        """What test_spawner.py's `new_spawner()` builds instead of SimpleLocalProcessSpawner.

        The scripts those tests run (`sys.executable -c ...`) never listen on a port, and
        LocalProcessSpawner.start() returns as soon as the process exists: so does this one
        (`wait_for_port = False`, a documented SpawndSpawner option).
        """

        @default("wait_for_port")
        def _default_wait_for_port(self):
            return False

    class SpawndMockSpawner(_HarnessAdapter):
        """What MockHub builds instead of mocking.MockSpawner: the same mock single-user
        server (`python -m jupyterhub.tests.mocksu`) and the same API-token test hooks, started
        through spawnd as the real user."""

        use_this_api_token = None

        @default("cmd")
        def _cmd_default(self):
            return [sys.executable, "-m", "jupyterhub.tests.mocksu"]

        async def start(self):
            if self.use_this_api_token:
                self.api_token = self.use_this_api_token
            elif self.will_resume:
                self.use_this_api_token = self.api_token
            return await super().start()

    @pytest.fixture(scope="session", autouse=True)
    def _spawnd_substitute_spawners():
        """Before any hub or spawner exists: put the spawnd classes where the tests look."""
        import jupyterhub.spawner
        import jupyterhub.tests.mocking
        import jupyterhub.tests.test_spawner as test_spawner

        mp = pytest.MonkeyPatch()
        # new_spawner()'s class: SimpleLocalProcessSpawner from 5.0, LocalProcessSpawner before
        if hasattr(test_spawner, "SimpleLocalProcessSpawner"):
            mp.setattr(test_spawner, "SimpleLocalProcessSpawner", SpawndTestSpawner)
        else:
            mp.setattr(test_spawner, "LocalProcessSpawner", SpawndTestSpawner)
        mp.setattr(jupyterhub.spawner, "SimpleLocalProcessSpawner", SpawndTestSpawner)
        # Before 5.0 the db fixture's first user is getpass.getuser() (the hub user here).
        for module in list(sys.modules.values()):
            path = getattr(module, "__file__", None) or ""
            if path.endswith(os.path.join("jupyterhub", "tests", "conftest.py")):
                if hasattr(module, "getuser"):
                    mp.setattr(module, "getuser", lambda: "user")
        if SCOPE == "all":
            mp.setattr(jupyterhub.tests.mocking, "MockSpawner", SpawndMockSpawner)
        yield
        mp.undo()

    @pytest.fixture(autouse=True)
    async def _spawnd_stop_leftovers():
        """After each test: stop what it started and left running (a failed test, or one that
        never stops its spawner), so that the next test can start `user`'s server again."""
        yield
        while _started:
            spawner = _started.pop()
            try:
                if spawner.instance is not None and await spawner.poll() is None:
                    await spawner.stop(now=True)
            except Exception as e:  # cleanup must not hide the test's own result
                print(f"spawnd-jh: could not stop {spawner._log_name}: {e!r}", file=sys.stderr)


def pytest_report_header(config):
    if MODE == "spawnd":
        return [
            f"spawnd-jh: SpawndSpawner (scope {SCOPE}) via {os.environ.get('SPAWND_JH_SOCKET')} "
            f"as uid {os.getuid()}; python profile = {os.environ.get('SPAWND_JH_PYTHON')}"
        ]
    return [f"spawnd-jh: stock spawners (baseline) as uid {os.getuid()}"]


def _expected_failures(scope):
    """{test name: reason} listed as expected failures for this scope in expected.txt (for
    every JupyterHub version, or `SCOPE@MAJOR` for the installed one's)."""
    import jupyterhub

    versioned = f"{scope}@{jupyterhub.__version__.split('.')[0]}"
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "expected.txt")
    out = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line.startswith("fail["):
                continue
            head, _, rest = line.partition(" ")
            scopes = head[len("fail[") : -1].split(",")
            if scope in scopes or versioned in scopes:
                test, _, reason = rest.strip().partition(" ")
                out[test] = reason.strip()
    return out


def pytest_collection_modifyitems(config, items):
    """Mark the documented expected failures (expected.txt) as strict xfail, so pytest's own
    summary reads "N passed, M xfailed" and a test that starts passing shows as XPASS(strict)."""
    scope = "stock" if MODE == "stock" else SCOPE
    expected = _expected_failures(scope)
    for item in items:
        reason = expected.get(item.name)
        if reason is not None:
            item.add_marker(pytest.mark.xfail(reason=reason, strict=True))
