"""spawnd's hub side: the Rust client for asyncio and JupyterHub's SpawndSpawner.

`c.JupyterHub.spawner_class = "spawnd"` selects the spawner (entry point
`jupyterhub.spawners: spawnd`). The client is usable on its own::

    from spawnd import Client
    client = Client("/run/spawnd/spawnd.sock")
    status = await client.status()
"""

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
    __version__,
)

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


def __getattr__(name):
    # The spawner imports jupyterhub; load it only when asked for.
    if name == "SpawndSpawner":
        from .spawner import SpawndSpawner

        return SpawndSpawner
    raise AttributeError(name)
