//! spawnd: a root daemon that starts, supervises and stops JupyterHub single-user servers as
//! their users, for an unprivileged hub, without sudo.
//!
//! The binary (`main.rs`) is thin; the pieces live here (`ARCHITECTURE.md` at the top of the
//! repository has the whole picture: a request's flow, the privilege boundary, where each
//! invariant is enforced):
//! - [`cli`]: the command line of `spawnd` (the binary parses it; the man page is made from
//!   it);
//! - [`config`]: the TOML configuration and its validation (`spawnd check-config`), and the
//!   path safety walker;
//! - [`auth`]: roles from the kernel's peer credentials, and the one authorization decision;
//! - [`policy`]: who may have a server started, and with what environment;
//! - [`start`]: starting a server, as one transaction that leaves nothing behind on failure;
//! - [`launch`]: creating a server: the launcher process (executed by the daemon, sharing
//!   nothing with it), its async-signal-safe child that becomes the user, the daemon's side;
//! - [`logs`], [`log_limit`]: per-server log files, opened safely as root, their tails, and
//!   `log_max_size`;
//! - [`tree`]: finding and killing a server's whole process tree (cgroup v2 or process group);
//! - [`host`]: what the supervisor asks of the system (pidfds, `/proc`, cgroups, users), as a
//!   trait with a fake for the unit tests;
//! - [`supervisor`]: the table of servers, exit events from pidfds, stop escalation, recovery;
//! - [`state`]: the durable per-server records;
//! - [`errors`]: the typed errors turned into the wire's `ErrorReply`, in one place;
//! - [`server`]: the socket, connections and request dispatch, with auditing;
//! - [`privileges`], [`sys`], [`logging`]: capabilities, system calls nix lacks, log output.
//!
//! `unsafe` code is denied everywhere but in the two modules that talk to the kernel directly:
//! [`sys`] and [`launch`].

#![deny(unsafe_code)]

pub mod auth;
pub mod cli;
pub mod config;
pub mod errors;
pub mod host;
#[allow(unsafe_code)]
pub mod launch;
pub mod log_limit;
pub mod logging;
pub mod logs;
pub mod policy;
pub mod privileges;
pub mod server;
pub mod socket_access;
pub mod start;
pub mod state;
pub mod supervisor;
#[allow(unsafe_code)]
pub mod sys;
pub mod tree;
