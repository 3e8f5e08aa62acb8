"""spawnd's hub side: the Rust client for asyncio and JupyterHub's SpawndSpawner.

`c.JupyterHub.spawner_class = "spawnd"` selects the spawner (entry point
`jupyterhub.spawners: spawnd`). The client is usable on its own::

    from spawnd import Client
    client = Client("/run/spawnd/spawnd.sock")
    status = await client.status()
"""

import atexit as _atexit
import sys as _sys
import time as _time

from ._native import (
    Client,
    DaemonUnreachable,
    LogTail,
    Polled,
    ServerInfo,
    SpawndError,
    Started,
    Status,
    Stopped,
)
from ._native import __version__ as _version

__all__ = [
    "Client",
    "DaemonUnreachable",
    "LogTail",
    "Polled",
    "ServerInfo",
    "SpawndError",
    "Started",
    "Status",
    "Stopped",
    "SpawndSpawner",
    "__version__",
]


@_atexit.register
def _let_runtime_threads_leave_python():
    """The client's results are handed to asyncio from tokio's worker threads, which briefly
    hold the GIL to do so. If the interpreter finalizes while one of them is still releasing
    it, CPython aborts ("PyGILState_Release: thread state must be current"). Giving up the GIL
    for a moment at exit lets them finish first."""
    if _native_used():
        _time.sleep(0.05)


def _native_used():
    from . import _native

    return _native._calls_made() > 0


def __getattr__(name):
    if name == "__version__":
        # JupyterHub reads the spawner's package version when it logs "Using Spawner: ..." at
        # start-up, its configuration loaded: the moment to check that configuration once. (The
        # hub imports the spawner earlier, while the hub itself is being constructed; without
        # this the check waits for the hub's first SpawndSpawner.)
        spawner = _sys.modules.get(__name__ + ".spawner")
        if spawner is not None:
            spawner._warn_if_hub_stops_servers()
        return _version
    # The spawner imports jupyterhub; load it only when asked for.
    if name == "SpawndSpawner":
        from .spawner import SpawndSpawner

        return SpawndSpawner
    raise AttributeError(name)
