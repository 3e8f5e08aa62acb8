//! A client that connects when needed: for a long-lived caller such as the hub.

use crate::{Client, ClientError};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::Mutex;

/// A [`Client`] for a long-lived caller: it connects on first use and again after the
/// connection was lost, and sends a request once more on a new connection when the daemon had
/// already closed the old one before receiving it ([`ClientError::Closed`]: the daemon closes
/// connections that stay idle for its `idle_timeout`, and all of them when it restarts).
///
/// Nothing is ever sent twice: a request is only sent again when the daemon certainly did not
/// receive it. A call that was sent and then lost its connection fails with
/// [`ClientError::Disconnected`], since the daemon may have carried it out.
#[derive(Debug)]
pub struct ReconnectingClient {
    socket: PathBuf,
    connect_timeout: Duration,
    conn: Mutex<Option<Client>>,
}

impl ReconnectingClient {
    /// A client of the daemon at `socket`; connects on the first call, waiting up to
    /// `connect_timeout` while the daemon's listen backlog is full.
    pub fn new(socket: impl AsRef<Path>, connect_timeout: Duration) -> ReconnectingClient {
        ReconnectingClient {
            socket: socket.as_ref().to_path_buf(),
            connect_timeout,
            conn: Mutex::new(None),
        }
    }

    /// The socket this client connects to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The open connection, or a new one.
    pub async fn client(&self) -> Result<Client, ClientError> {
        let mut conn = self.conn.lock().await;
        if let Some(c) = conn.as_ref().filter(|c| c.is_open()) {
            return Ok(c.clone());
        }
        let c = Client::connect_timeout(&self.socket, self.connect_timeout).await?;
        *conn = Some(c.clone());
        Ok(c)
    }

    /// Runs `call` on the open connection; if the request could not be sent because the
    /// daemon had closed that connection, runs it once more on a new one.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), spawnd_client::ClientError> {
    /// use spawnd_client::ReconnectingClient;
    /// let spawnd = ReconnectingClient::new("/run/spawnd/spawnd.sock", std::time::Duration::from_secs(5));
    /// let status = spawnd.call(|c| async move { c.status().await }).await?;
    /// # Ok(()) }
    /// ```
    pub async fn call<T, F, Fut>(&self, call: F) -> Result<T, ClientError>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, ClientError>>,
    {
        match call(self.client().await?).await {
            // The failed send marked that connection closed: client() makes a new one.
            Err(ClientError::Closed) => call(self.client().await?).await,
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spawnd_protocol::{
        MAX_PACKET, Polled, Request, Response, ServerId, ServerState, decode_request,
        encode_response,
    };
    use tokio::sync::mpsc;
    use tokio_seqpacket::{UnixSeqpacket, UnixSeqpacketListener};

    /// What the fake daemon does with each connection, in order of acceptance.
    #[derive(Debug, Clone, Copy)]
    enum Then {
        /// Answers one poll, then stops reading (as spawnd closing an idle connection does)
        /// but keeps the connection open.
        AnswerThenStopReading,
        /// Receives one request and closes without answering.
        HangUpUnanswered,
        /// Answers every poll.
        AnswerAll,
    }

    async fn recv(sock: &UnixSeqpacket) -> Option<(u32, Request)> {
        let mut buf = vec![0u8; MAX_PACKET];
        let info = sock.recv(&mut buf).await.ok()?;
        if info.bytes_read() == 0 {
            return None;
        }
        let env = decode_request(&buf[..info.bytes_read()]).unwrap();
        Some((env.id, env.body))
    }

    /// Answers a poll with the connection's number as the instance.
    async fn answer(sock: &UnixSeqpacket, id: u32, conn: u64) {
        let polled = Response::Polled(Polled {
            instance: conn,
            pid: 7,
            state: ServerState::Running,
        });
        sock.send(&encode_response(id, &polled).unwrap())
            .await
            .unwrap();
    }

    /// A fake daemon at `path`: reports each request it receives as (connection, request id).
    fn fake_daemon(path: &Path, plan: Vec<Then>) -> mpsc::UnboundedReceiver<(u64, u32)> {
        let mut listener = UnixSeqpacketListener::bind(path).unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            for (n, then) in plan.into_iter().enumerate() {
                let conn = n as u64 + 1;
                let sock = listener.accept().await.unwrap();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match then {
                        Then::AnswerThenStopReading => {
                            let (id, _) = recv(&sock).await.unwrap();
                            tx.send((conn, id)).unwrap();
                            sock.shutdown(std::net::Shutdown::Read).unwrap();
                            answer(&sock, id, conn).await;
                            // Keep it open: the client must not rely on seeing the end.
                            std::future::pending::<()>().await;
                        }
                        Then::HangUpUnanswered => {
                            let (id, _) = recv(&sock).await.unwrap();
                            tx.send((conn, id)).unwrap();
                        }
                        Then::AnswerAll => {
                            while let Some((id, _)) = recv(&sock).await {
                                tx.send((conn, id)).unwrap();
                                answer(&sock, id, conn).await;
                            }
                        }
                    }
                });
            }
        });
        rx
    }

    fn temp_socket(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("spawnd-reconnecting-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        dir.join("spawnd.sock")
    }

    async fn poll(spawnd: &ReconnectingClient) -> Result<u64, ClientError> {
        let id = ServerId::new("alice", "");
        spawnd
            .call(|c| {
                let id = id.clone();
                async move { c.poll(&id, None).await }
            })
            .await
            .map(|p| p.instance)
    }

    #[tokio::test]
    async fn a_request_the_daemon_did_not_receive_is_sent_again_on_a_new_connection() {
        let path = temp_socket("resend");
        let mut seen = fake_daemon(
            &path,
            vec![
                Then::AnswerThenStopReading,
                Then::HangUpUnanswered,
                Then::AnswerAll,
            ],
        );
        let spawnd = ReconnectingClient::new(&path, Duration::from_secs(5));
        assert_eq!(poll(&spawnd).await.unwrap(), 1);
        assert_eq!(seen.recv().await.unwrap().0, 1);
        // Connection 1 no longer reads (but is still open): the next request cannot be sent
        // there, and goes to connection 2.
        let err = poll(&spawnd).await.unwrap_err();
        assert_eq!(
            seen.recv().await.unwrap().0,
            2,
            "sent once more, on connection 2"
        );
        // Connection 2 received it and hung up without answering: the daemon may have acted
        // on it, so it is not sent again.
        assert!(matches!(err, ClientError::Disconnected), "{err:?}");
        assert!(
            seen.try_recv().is_err(),
            "a received request was sent twice"
        );
        // The next call connects again.
        assert_eq!(poll(&spawnd).await.unwrap(), 3);
        assert_eq!(seen.recv().await.unwrap().0, 3);
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }
}
