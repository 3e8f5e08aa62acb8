//! Client for the spawnd daemon.
//!
//! [`Client`] is the async client (tokio): one `SOCK_SEQPACKET` connection shared by any number
//! of concurrent calls. [`ReconnectingClient`] connects again when the daemon has closed that
//! connection (it closes idle ones), for long-lived callers such as the hub. [`BlockingClient`]
//! offers the same calls synchronously. They speak the protocol of [`spawnd_protocol`]
//! (re-exported as [`protocol`]); its README documents the bytes on the wire.
//!
//! ```no_run
//! # async fn demo() -> Result<(), spawnd_client::ClientError> {
//! use spawnd_client::{Client, DEFAULT_SOCKET};
//! use spawnd_client::protocol::ServerId;
//!
//! let client = Client::connect(DEFAULT_SOCKET).await?;
//! let polled = client.poll(&ServerId::new("alice", ""), None).await?;
//! println!("alice's server is {}", polled.state);
//! # Ok(()) }
//! ```
//!
//! Errors are [`ClientError`]s. [`ClientError::is_daemon_unreachable`] tells a daemon that
//! could not be reached (which says nothing about the servers: they outlive the daemon) from an
//! answer; [`ClientError::kind`] gives the daemon's error kind.

#![forbid(unsafe_code)]

mod blocking;
mod calls;
pub mod cli;
mod client;
mod connect;
mod error;
mod reconnecting;

pub use blocking::BlockingClient;
pub use client::{Client, DEFAULT_CONNECT_TIMEOUT, MAX_IN_FLIGHT};
pub use error::ClientError;
pub use reconnecting::ReconnectingClient;
pub use spawnd_protocol as protocol;

/// Where spawnd listens unless configured otherwise.
pub const DEFAULT_SOCKET: &str = "/run/spawnd/spawnd.sock";
