//! spawnd: a root daemon that starts, supervises and stops JupyterHub single-user servers as
//! their users, for an unprivileged hub, without sudo.
//!
//! The binary (`main.rs`) is thin; the pieces live here:
//! - [`config`]: the TOML configuration and its validation (`spawnd check-config`);
//! - [`auth`]: roles from the kernel's peer credentials;
//! - [`policy`]: who may have a server started, and with what environment;
//! - [`launch`]: creating a server: the launcher process (executed by the daemon, sharing
//!   nothing with it), its async-signal-safe child that becomes the user, the daemon's side;
//! - [`logs`]: per-server log files, opened safely as root, and their tails;
//! - [`tree`]: finding and killing a server's whole process tree (cgroup v2 or process group);
//! - [`host`]: what the supervisor asks of the system (pidfds, `/proc`, cgroups, users), as a
//!   trait with a fake for the unit tests;
//! - [`supervisor`]: the table of servers, exit events from pidfds, stop escalation, recovery;
//! - [`errors`]: the typed errors turned into the wire's `ErrorReply`, in one place;
//! - [`server`]: the socket, connections and request dispatch, with auditing.

pub mod auth;
pub mod config;
pub mod errors;
pub mod host;
pub mod launch;
pub mod log_limit;
pub mod logging;
pub mod logs;
pub mod policy;
pub mod privileges;
pub mod server;
pub mod start;
pub mod state;
pub mod supervisor;
pub mod sys;
pub mod tree;
