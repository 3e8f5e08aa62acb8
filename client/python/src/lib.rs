//! `spawnd._native`: the spawnd client for Python's asyncio.
//!
//! Every call returns an awaitable that runs on a tokio runtime owned by this module, so the
//! hub's event loop is never blocked. One connection is shared by all calls of a [`Client`]; it
//! is opened on first use and again after the daemon closed it (it closes idle connections, and
//! all of them when it restarts), and a request the daemon had not received before closing is
//! sent again on the new one (see `spawnd_client::ReconnectingClient`). Daemon errors become
//! `SpawndError(kind, message)`; a daemon that cannot be reached becomes `DaemonUnreachable`
//! (a subclass), which says nothing about the servers: they outlive the daemon. Its kind says
//! why: `PermissionDenied` (the socket or a directory above it refuses this user), `NoSocket`,
//! `NotListening` (a stale socket: the daemon is not running), `Busy` (its backlog stayed full
//! for the connect timeout) or `Unreachable` (anything else, a connection closed under a call).

use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use spawnd_client::{ClientError, ReconnectingClient};
use spawnd_protocol::{
    ExitStatus, Polled as WirePolled, ServerId, ServerInfo as WireInfo, ServerState, StartRequest,
};
use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Calls made through this module (the package's exit hook only waits when there were some).
static CALLS: AtomicU64 = AtomicU64::new(0);

/// How many client calls this process made.
#[pyfunction]
fn _calls_made() -> u64 {
    CALLS.load(Ordering::Relaxed)
}

create_exception!(
    _native,
    SpawndError,
    PyException,
    "An error from spawnd: args are (kind, message)."
);
create_exception!(
    _native,
    DaemonUnreachable,
    SpawndError,
    "spawnd could not be reached (not running, socket missing, or connection lost)."
);

/// Why the daemon could not be reached, as the `kind` of `DaemonUnreachable`: the hub tells the
/// operator what to fix, and "permission denied" needs another fix than "not running".
fn unreachable_kind(e: &ClientError) -> &'static str {
    use std::io::ErrorKind as K;
    match e {
        ClientError::Connect { source, .. } => match source.kind() {
            K::PermissionDenied => "PermissionDenied",
            K::NotFound | K::NotADirectory => "NoSocket",
            K::ConnectionRefused => "NotListening",
            _ => "Unreachable",
        },
        ClientError::Busy { .. } => "Busy",
        _ => "Unreachable",
    }
}

fn to_py(e: ClientError) -> PyErr {
    let kind = match e.kind() {
        Some(k) => k.as_str().to_string(),
        None if e.is_daemon_unreachable() => unreachable_kind(&e).to_string(),
        None => "Client".to_string(),
    };
    let message = match e.daemon_error() {
        Some(reply) => reply.message.clone(),
        None => e.to_string(),
    };
    if e.is_daemon_unreachable() {
        DaemonUnreachable::new_err((kind, message))
    } else {
        SpawndError::new_err((kind, message))
    }
}

fn state_name(state: &ServerState) -> &'static str {
    match state {
        ServerState::Running => "running",
        ServerState::Stopping => "stopping",
        ServerState::Exited(_) => "exited",
        ServerState::Starting => "starting",
    }
}

fn exit_of(state: &ServerState) -> Option<ExitStatus> {
    match state {
        ServerState::Exited(e) => Some(*e),
        _ => None,
    }
}

/// The answer to `start`.
#[pyclass(frozen, get_all, module = "spawnd._native")]
#[derive(Debug, Clone)]
pub struct Started {
    pub instance: u64,
    pub pid: u32,
    /// Environment names the daemon dropped (not on the profile's allow-list).
    pub dropped_env: Vec<String>,
    pub log_path: String,
}

/// The answer to `poll`.
#[pyclass(frozen, get_all, module = "spawnd._native")]
#[derive(Debug, Clone)]
pub struct Polled {
    pub instance: u64,
    pub pid: u32,
    /// "starting", "running", "stopping" or "exited".
    pub state: String,
    /// When exited: the exit code, `-signal` if killed, 0 if unknown (JupyterHub's convention).
    pub exit_code: Option<i32>,
    /// When exited: how, in words ("exit code 3", "killed by signal 9", "exit status unknown").
    pub exit_description: Option<String>,
}

impl From<WirePolled> for Polled {
    fn from(p: WirePolled) -> Self {
        let exit = exit_of(&p.state);
        Polled {
            instance: p.instance,
            pid: p.pid,
            state: state_name(&p.state).to_string(),
            exit_code: exit.map(|e| e.as_poll_code()),
            exit_description: exit.map(|e| e.to_string()),
        }
    }
}

/// The answer to `stop`.
#[pyclass(frozen, get_all, module = "spawnd._native")]
#[derive(Debug, Clone)]
pub struct Stopped {
    pub instance: u64,
    pub exit_code: i32,
    pub exit_description: String,
}

/// One server of `list`.
#[pyclass(frozen, get_all, module = "spawnd._native")]
#[derive(Debug, Clone)]
pub struct ServerInfo {
    pub user: String,
    pub server: String,
    pub instance: u64,
    pub uid: u32,
    pub pid: u32,
    pub state: String,
    pub exit_code: Option<i32>,
    pub profile: String,
    pub port: Option<u16>,
    pub started_at: u64,
}

impl From<WireInfo> for ServerInfo {
    fn from(i: WireInfo) -> Self {
        ServerInfo {
            user: i.server.user,
            server: i.server.server,
            instance: i.instance,
            uid: i.uid,
            pid: i.pid,
            state: state_name(&i.state).to_string(),
            exit_code: exit_of(&i.state).map(|e| e.as_poll_code()),
            profile: i.profile,
            port: i.port,
            started_at: i.started_at,
        }
    }
}

/// The answer to `logs`.
#[pyclass(frozen, get_all, module = "spawnd._native")]
#[derive(Debug, Clone)]
pub struct LogTail {
    pub path: String,
    pub lines: Vec<String>,
    pub truncated: bool,
}

/// The answer to `status`.
#[pyclass(frozen, get_all, module = "spawnd._native")]
#[derive(Debug, Clone)]
pub struct Status {
    pub version: String,
    pub protocol: u16,
    pub pid: u32,
    pub uptime_secs: u64,
    pub running: u32,
    pub exited: u32,
    pub tree_kill: String,
    pub capabilities: Vec<String>,
    pub your_role: String,
}

#[derive(Debug)]
struct Shared {
    spawnd: ReconnectingClient,
}

impl Shared {
    /// Runs `call` on the open connection (or a new one), once more on a new one if the daemon
    /// had closed the first before receiving the request.
    async fn call<T, F, Fut>(&self, call: F) -> PyResult<T>
    where
        F: Fn(spawnd_client::Client) -> Fut,
        Fut: Future<Output = Result<T, ClientError>>,
    {
        CALLS.fetch_add(1, Ordering::Relaxed);
        self.spawnd.call(call).await.map_err(to_py)
    }
}

/// A connection to spawnd, shared by any number of concurrent calls.
#[pyclass(module = "spawnd._native")]
#[derive(Debug)]
pub struct Client {
    shared: Arc<Shared>,
}

#[pymethods]
impl Client {
    #[new]
    #[pyo3(signature = (socket, connect_timeout = 5.0))]
    fn new(socket: PathBuf, connect_timeout: f64) -> PyResult<Self> {
        if !connect_timeout.is_finite() || connect_timeout <= 0.0 {
            return Err(pyo3::exceptions::PyValueError::new_err(
                "connect_timeout must be a positive number of seconds",
            ));
        }
        Ok(Client {
            shared: Arc::new(Shared {
                spawnd: ReconnectingClient::new(socket, Duration::from_secs_f64(connect_timeout)),
            }),
        })
    }

    /// The socket path this client talks to.
    #[getter]
    fn socket(&self) -> String {
        self.shared.spawnd.socket().to_string_lossy().into_owned()
    }

    /// Starts a server; resolves to `Started` once its program has been executed.
    #[pyo3(signature = (user, server, profile, args, env, port = None))]
    #[allow(clippy::too_many_arguments)]
    fn start<'py>(
        &self,
        py: Python<'py>,
        user: String,
        server: String,
        profile: String,
        args: Vec<String>,
        env: HashMap<String, String>,
        port: Option<u16>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let shared = self.shared.clone();
        let mut env: Vec<(String, String)> = env.into_iter().collect();
        env.sort();
        let request = StartRequest {
            server: ServerId::new(user, server),
            profile,
            args,
            env,
            port,
        };
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            let s = shared
                .call(|c| {
                    let request = request.clone();
                    async move { c.start(request).await }
                })
                .await?;
            Ok(Started {
                instance: s.instance,
                pid: s.pid,
                dropped_env: s.dropped_env,
                log_path: s.log_path,
            })
        })
    }

    /// The server's state from the daemon's table.
    #[pyo3(signature = (user, server, instance = None))]
    fn poll<'py>(
        &self,
        py: Python<'py>,
        user: String,
        server: String,
        instance: Option<u64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let shared = self.shared.clone();
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            let id = ServerId::new(user, server);
            let p = shared
                .call(|c| {
                    let id = id.clone();
                    async move { c.poll(&id, instance).await }
                })
                .await?;
            Ok(Polled::from(p))
        })
    }

    /// Stops the server (SIGINT unless `now`, SIGTERM, SIGKILL of the tree); resolves when it
    /// is gone.
    #[pyo3(signature = (user, server, instance = None, now = false))]
    fn stop<'py>(
        &self,
        py: Python<'py>,
        user: String,
        server: String,
        instance: Option<u64>,
        now: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let shared = self.shared.clone();
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            let id = ServerId::new(user, server);
            let (instance, exit) = shared
                .call(|c| {
                    let id = id.clone();
                    async move { c.stop(&id, instance, now).await }
                })
                .await?;
            Ok(Stopped {
                instance,
                exit_code: exit.as_poll_code(),
                exit_description: exit.to_string(),
            })
        })
    }

    /// Sends one signal to the server's main process.
    #[pyo3(signature = (user, server, signal, instance = None))]
    fn signal<'py>(
        &self,
        py: Python<'py>,
        user: String,
        server: String,
        signal: i32,
        instance: Option<u64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let shared = self.shared.clone();
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            let id = ServerId::new(user, server);
            shared
                .call(|c| {
                    let id = id.clone();
                    async move { c.signal(&id, instance, signal).await }
                })
                .await?;
            Ok(())
        })
    }

    /// Every server the caller may see.
    fn list<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let shared = self.shared.clone();
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            let all = shared.call(|c| async move { c.list().await }).await?;
            Ok(all.into_iter().map(ServerInfo::from).collect::<Vec<_>>())
        })
    }

    /// The last `lines` lines of the server's log.
    #[pyo3(signature = (user, server, lines = 50))]
    fn logs<'py>(
        &self,
        py: Python<'py>,
        user: String,
        server: String,
        lines: u32,
    ) -> PyResult<Bound<'py, PyAny>> {
        let shared = self.shared.clone();
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            let id = ServerId::new(user, server);
            let t = shared
                .call(|c| {
                    let id = id.clone();
                    async move { c.logs(&id, lines).await }
                })
                .await?;
            Ok(LogTail {
                path: t.path,
                lines: t.lines,
                truncated: t.truncated,
            })
        })
    }

    /// The daemon's version, uptime, counts and supervision mode.
    fn status<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let shared = self.shared.clone();
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            let s = shared.call(|c| async move { c.status().await }).await?;
            Ok(Status {
                version: s.version,
                protocol: s.protocol,
                pid: s.pid,
                uptime_secs: s.uptime_secs,
                running: s.running,
                exited: s.exited,
                tree_kill: s.tree_kill,
                capabilities: s.capabilities,
                your_role: s.your_role,
            })
        })
    }

    fn __repr__(&self) -> String {
        format!("spawnd._native.Client({:?})", self.shared.spawnd.socket())
    }
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Client>()?;
    m.add_function(wrap_pyfunction!(_calls_made, m)?)?;
    m.add_class::<Started>()?;
    m.add_class::<Polled>()?;
    m.add_class::<Stopped>()?;
    m.add_class::<ServerInfo>()?;
    m.add_class::<LogTail>()?;
    m.add_class::<Status>()?;
    m.add("SpawndError", m.py().get_type::<SpawndError>())?;
    m.add("DaemonUnreachable", m.py().get_type::<DaemonUnreachable>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
