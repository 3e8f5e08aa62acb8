"""Fixtures for the JupyterHub end-to-end tests (see harness.py for what runs where).

One environment per test session: the test users, one spawnd (root) and one JupyterHub (as the
hub user, with its proxy). Every test stops the servers it started; the session's teardown stops
whatever is left, the hub, the daemon, kills what the test users still run, and removes the
users, groups, cgroups and the temporary directory. When a test fails, the end of the hub's and
the daemon's logs and `spawnctl list` are attached to its report.
"""

import os
import shutil
import sys
from pathlib import Path

import pytest

# No __pycache__ in the checkout for what is imported from here on: harness.py, tests/pylib
# and test_hub.py (pytest's assertion rewriting honours the flag too).
sys.dont_write_bytecode = True

import harness  # noqa: E402

if os.geteuid() != 0:
    pytest.skip(
        "skipped: needs root (creates users, runs spawnd as root and the hub as a hub user)",
        allow_module_level=True,
    )

_NEEDED = (harness.SPAWND, harness.SPAWNCTL, harness.JUPYTERHUB, harness.SINGLEUSER, harness.CHP)
for _path in _NEEDED:
    if not Path(_path).exists():
        pytest.exit(f"{_path} is missing: run scripts/hub-env first", returncode=2)

_ENV = {}


class Env:
    def __init__(self, root, users, daemon, hub):
        self.root = root
        self.users = users
        self.daemon = daemon
        self.hub = hub


@pytest.fixture(scope="session")
def env():
    lock = harness.take_lock()
    harness.remove_leftovers()
    root = Path("/tmp") / f"{harness.DIR_BASE}{os.getpid()}"
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(mode=0o755)
    root.chmod(0o755)
    (root / "logs").mkdir(mode=0o755)
    users = harness.TestUsers()
    daemon = hub = None
    try:
        users.create()
        daemon = harness.Daemon(root, users)
        daemon.start()
        hub = harness.Hub(root, users, daemon)
        hub.setup()
        hub.start()
        for u in (users.a, users.b, users.outsider):
            hub.create_user(u.name)
        e = Env(root, users, daemon, hub)
        _ENV["env"] = e
        yield e
    finally:
        _ENV.pop("env", None)
        if hub is not None:
            hub.stop()
        if daemon is not None:
            daemon.stop_all_servers()
            daemon.stop()
        for u in users.created_users:
            try:
                harness.kill_uid(harness.User(u).uid)
            except KeyError:
                pass
        users.remove()
        if os.environ.get("SPAWND_HUB_TEST_KEEP"):
            harness.log(f"keeping {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
        os.close(lock)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    e = _ENV.get("env")
    if e is None or not report.failed:
        return
    report.sections.append(("hub log (last 150 lines)", harness.tail(e.hub.log_path, 150)))
    report.sections.append(
        (
            "spawnd log (last 80 lines, without the tests' own list/status requests)",
            harness.tail(e.daemon.log_path, 80, skip=harness.DAEMON_LOG_NOISE),
        )
    )
    try:
        r = e.daemon.spawnctl("list")
        report.sections.append(("spawnctl list", r.stdout + r.stderr))
    except Exception as exc:  # noqa: BLE001 - diagnostics only
        report.sections.append(("spawnctl list", f"failed: {exc}"))
