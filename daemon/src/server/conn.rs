//! One connection's transport: receiving packets (one buffer per worker thread), sending
//! answers within `send_timeout`, the peer's credentials, and what a connection has in flight
//! (its slots, the idle timer, the shutdown of a connection that stopped reading).

use super::{Reply, err};
use crate::auth::{Peer, Role};
use crate::config::ConnectionLimits;
use spawnd_protocol::{DecodeError, ErrorKind, MAX_PACKET, Response, encode_response};
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_seqpacket::UnixSeqpacket;

/// Requests with answers that may fill a whole packet (a page of servers, a log tail) that one
/// connection may have in flight, answered or not yet sent. Beyond it the connection's next
/// such request waits (its reading pauses) instead of being answered `Busy`. With
/// `max_requests_in_flight` for all of them, this bounds what one connection can make the
/// daemon hold to 4 answers of 64 KiB and a few dozen small ones.
pub(super) const MAX_LARGE_IN_FLIGHT: u32 = 4;

/// One received packet.
pub(super) enum Packet {
    Bytes(Vec<u8>),
    /// Larger than the protocol's maximum (the kernel truncated it).
    TooLarge,
    /// End of the connection (or an empty packet, which SOCK_SEQPACKET cannot tell apart).
    End,
}

thread_local! {
    /// One receive buffer of the protocol's maximum size per worker thread, instead of one per
    /// connection: a thousand idle connections would otherwise keep 64 MiB resident.
    static RECV_BUF: std::cell::RefCell<Vec<u8>> =
        std::cell::RefCell::new(vec![0u8; MAX_PACKET]);
}

/// Receives one packet, copying out only the bytes it holds. The thread's buffer is borrowed
/// only inside one poll, never across an await.
pub(super) async fn recv_packet(socket: &UnixSeqpacket) -> std::io::Result<Packet> {
    std::future::poll_fn(|cx| {
        RECV_BUF.with(|buf| {
            let mut buf = buf.borrow_mut();
            socket.poll_recv(cx, &mut buf).map_ok(|info| {
                if info.truncated() {
                    Packet::TooLarge
                } else if info.bytes_read() == 0 {
                    Packet::End
                } else {
                    Packet::Bytes(buf[..info.bytes_read()].to_vec())
                }
            })
        })
    })
    .await
}

/// Reads the peer's credentials as the kernel recorded them at connect time.
pub fn peer_of(socket: &UnixSeqpacket) -> std::io::Result<Peer> {
    let cred = socket.peer_cred()?;
    let groups = crate::sys::peer_groups(socket.as_fd())?;
    Ok(Peer {
        uid: cred.uid(),
        gid: cred.gid(),
        pid: cred.pid().unwrap_or(0),
        groups,
    })
}

/// The peer left an answer unread for the whole send timeout.
#[derive(Debug)]
pub(super) struct Unread;

/// Sends one answer, waiting at most `timeout` for the peer to make room for it. Errors other
/// than the timeout (the peer is gone) are only logged: there is nobody to tell.
pub(super) async fn send(
    socket: &UnixSeqpacket,
    id: u32,
    response: &Response,
    timeout: Duration,
) -> Result<(), Unread> {
    let bytes = match encode_response(id, response) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!("could not encode a response: {e}");
            match encode_response(
                id,
                &Response::Error(err(ErrorKind::Internal, format!("response too large: {e}"))),
            ) {
                Ok(b) => b,
                Err(_) => return Ok(()),
            }
        }
    };
    match tokio::time::timeout(timeout, socket.send(&bytes)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => {
            tracing::debug!("could not send a response: {e}");
            Ok(())
        }
        Err(_) => Err(Unread),
    }
}

/// One admitted connection: its socket, who is at the other end, the limits it was admitted
/// under, and what it has in flight.
#[derive(Debug)]
pub(super) struct Conn {
    pub(super) socket: UnixSeqpacket,
    pub(super) peer: Peer,
    pub(super) role: Role,
    pub(super) limits: ConnectionLimits,
    pub(super) flight: Mutex<Flight>,
    /// Woken whenever a request's answer has left, and when the connection is shut.
    pub(super) changed: Notify,
}

#[derive(Debug)]
pub(super) struct Flight {
    /// Requests being answered: past `max_requests_in_flight` a request is answered `Busy`.
    requests: u32,
    /// Answers waiting to be sent. With `requests` never more than `max_requests_in_flight`:
    /// while the peer leaves that many unread, its next request waits.
    unsent: u32,
    /// Requests and answers of both kinds whose answers may fill a packet.
    large: u32,
    /// When the connection last received a packet or sent the last answer it owed.
    last: tokio::time::Instant,
    /// Shut down because the peer does not read its answers: nothing more is read or sent.
    shut: bool,
}

/// What a request gets from its connection's limits.
pub(super) enum Take {
    Slot(Slot),
    /// `max_requests_in_flight` requests are being answered.
    Busy,
    /// The connection was shut down meanwhile.
    Shut,
}

/// A request's place in its connection's limits, given back when dropped: after its answer
/// has been sent (or could not be).
pub(super) struct Slot {
    conn: Arc<Conn>,
    large: bool,
    /// Its answer exists: it counts as unsent, no longer as being answered.
    answered: bool,
}

impl Slot {
    /// The answer exists. From now on the request no longer makes others `Busy` (a client that
    /// waits for an answer before sending more never sees `Busy`), but its answer still counts
    /// until sent.
    pub(super) fn answered(&mut self) {
        let mut f = self.conn.flight();
        f.requests -= 1;
        f.unsent += 1;
        self.answered = true;
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        {
            let mut f = self.conn.flight();
            if self.answered {
                f.unsent -= 1;
            } else {
                f.requests -= 1;
            }
            if self.large {
                f.large -= 1;
            }
            f.last = tokio::time::Instant::now();
        }
        self.conn.changed.notify_waiters();
    }
}

impl Conn {
    pub(super) fn new(
        socket: UnixSeqpacket,
        peer: Peer,
        role: Role,
        limits: ConnectionLimits,
    ) -> Conn {
        Conn {
            socket,
            peer,
            role,
            limits,
            flight: Mutex::new(Flight {
                requests: 0,
                unsent: 0,
                large: 0,
                last: tokio::time::Instant::now(),
                shut: false,
            }),
            changed: Notify::new(),
        }
    }

    pub(super) fn flight(&self) -> MutexGuard<'_, Flight> {
        self.flight.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until `check` gives a value, checking again whenever something changes.
    pub(super) async fn wait_for<T>(&self, mut check: impl FnMut(&mut Flight) -> Option<T>) -> T {
        if let Some(v) = check(&mut self.flight()) {
            return v;
        }
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Registered before checking: a change between the check and the wait is seen.
            changed.as_mut().enable();
            if let Some(v) = check(&mut self.flight()) {
                return v;
            }
            changed.await;
        }
    }

    /// A packet arrived.
    pub(super) fn touch(&self) {
        self.flight().last = tokio::time::Instant::now();
    }

    pub(super) fn is_shut(&self) -> bool {
        self.flight().shut
    }

    /// A place for one more request: `Busy` when `max_requests_in_flight` are being
    /// answered; else at once, or once answers the peer has not read yet have been sent (as
    /// many as the limit, or [`MAX_LARGE_IN_FLIGHT`] large ones when this one is large).
    pub(super) async fn take(self: &Arc<Self>, large: bool) -> Take {
        let max = self.limits.max_requests_in_flight;
        let taken = self
            .wait_for(|f| {
                if f.shut {
                    Some(Err(Take::Shut))
                } else if f.requests >= max {
                    Some(Err(Take::Busy))
                } else if f.requests + f.unsent >= max || large && f.large >= MAX_LARGE_IN_FLIGHT {
                    None
                } else {
                    f.requests += 1;
                    if large {
                        f.large += 1;
                    }
                    Some(Ok(()))
                }
            })
            .await;
        match taken {
            Ok(()) => Take::Slot(Slot {
                conn: self.clone(),
                large,
                answered: false,
            }),
            Err(t) => t,
        }
    }

    /// `None` when nothing has been in flight and nothing received for `timeout`; else when
    /// to ask again: `timeout` after the last packet or answer, or from now while a request is
    /// in flight (its answer counts as activity when it leaves).
    pub(super) fn idle_until(&self, timeout: Duration) -> Option<tokio::time::Instant> {
        let f = self.flight();
        let now = tokio::time::Instant::now();
        if f.requests > 0 || f.unsent > 0 {
            Some(now + timeout)
        } else {
            (f.last + timeout > now).then_some(f.last + timeout)
        }
    }

    /// Every answer owed has been sent, or could not be.
    pub(super) async fn drained(&self) {
        self.wait_for(|f| (f.requests == 0 && f.unsent == 0).then_some(()))
            .await;
    }

    /// Stops reading an idle connection. Requests that arrived before are still read and
    /// answered, then the connection ends; from now on the peer's sends fail (EPIPE), so a
    /// client knows for certain that a request it could not send was not received, and may
    /// send it again on a new connection. False when the connection cannot be shut down for
    /// reading (it is gone already): then it is simply dropped.
    pub(super) fn close_idle(&self, spoke: bool, timeout: Duration) -> bool {
        let (key, what) = if spoke {
            ("idle_timeout", "an idle connection")
        } else {
            ("first_request_timeout", "a connection that sent nothing")
        };
        tracing::info!(
            target: "audit",
            peer_uid = self.peer.uid,
            peer_pid = self.peer.pid,
            role = %self.role,
            "closed {what}: no request for {timeout:?} ({key})"
        );
        match self.socket.shutdown(std::net::Shutdown::Read) {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(peer_uid = self.peer.uid, "shutting down a connection: {e}");
                false
            }
        }
    }

    /// Sends the answer to a request, whose place is given back once it has left.
    pub(super) async fn reply(&self, mut slot: Slot, id: u32, reply: Reply) {
        slot.answered();
        self.answer(id, &reply.unwrap_or_else(Response::Error))
            .await;
    }

    /// Sends one answer within `send_timeout`; shuts the connection down if the peer does not
    /// make room for it in that time.
    pub(super) async fn answer(&self, id: u32, response: &Response) {
        if self.is_shut() {
            return;
        }
        if send(&self.socket, id, response, self.limits.send_timeout)
            .await
            .is_err()
        {
            self.shut_unread();
        }
    }

    /// The peer does not read its answers: stop reading and sending, so that it cannot make the
    /// daemon hold more of them.
    pub(super) fn shut_unread(&self) {
        {
            let mut f = self.flight();
            if f.shut {
                return;
            }
            f.shut = true;
        }
        tracing::warn!(
            target: "audit",
            peer_uid = self.peer.uid,
            peer_pid = self.peer.pid,
            role = %self.role,
            "closed a connection: the peer does not read its answers (one waited {:?}, \
             send_timeout)",
            self.limits.send_timeout
        );
        if let Err(e) = self.socket.shutdown(std::net::Shutdown::Both) {
            tracing::debug!(peer_uid = self.peer.uid, "shutting down a connection: {e}");
        }
        self.changed.notify_waiters();
    }

    /// Answers a packet that is not a valid request.
    pub(super) async fn refuse_packet(&self, e: &DecodeError) {
        let kind = match e {
            DecodeError::UnsupportedVersion { .. } => ErrorKind::Unsupported,
            _ => ErrorKind::InvalidRequest,
        };
        tracing::warn!(
            target: "audit",
            peer_uid = self.peer.uid,
            peer_pid = self.peer.pid,
            role = %self.role,
            "refused a packet: {e}"
        );
        self.answer(e.id(), &Response::Error(err(kind, e.to_string())))
            .await;
    }
}
