//! What both clients share: the typed calls (the request each builds and the response it
//! expects), the paging of `list`, and how a received packet is read.

use crate::ClientError;
use spawnd_protocol::{
    DaemonStatus, DecodeError, ExitStatus, LogTail, MAX_LIST_PAGE, MAX_PACKET, Polled, Request,
    Response, ServerId, ServerInfo, ServerPage, StartRequest, Started, decode_response,
    peek_header,
};

/// One typed call: the request, and how to take the expected answer out of the response.
pub(crate) struct Call<T> {
    request: Request,
    name: &'static str,
    take: fn(Response) -> Result<T, Response>,
}

impl<T> Call<T> {
    /// The request to send, and the function that reads its answer (a [`Response::Error`] has
    /// become [`ClientError::Daemon`] before; any other unexpected response is an error).
    pub fn split(self) -> (Request, impl FnOnce(Response) -> Result<T, ClientError>) {
        let (name, take) = (self.name, self.take);
        (self.request, move |r| {
            take(r).map_err(|other| unexpected(name, &other))
        })
    }
}

pub(crate) fn start(request: StartRequest) -> Call<Started> {
    Call {
        request: Request::Start(request),
        name: "start",
        take: |r| match r {
            Response::Started(started) => Ok(started),
            other => Err(other),
        },
    }
}

pub(crate) fn poll(server: &ServerId, instance: Option<u64>) -> Call<Polled> {
    Call {
        request: Request::Poll {
            server: server.clone(),
            instance,
        },
        name: "poll",
        take: |r| match r {
            Response::Polled(polled) => Ok(polled),
            other => Err(other),
        },
    }
}

pub(crate) fn stop(server: &ServerId, instance: Option<u64>, now: bool) -> Call<(u64, ExitStatus)> {
    Call {
        request: Request::Stop {
            server: server.clone(),
            instance,
            now,
        },
        name: "stop",
        take: |r| match r {
            Response::Stopped { instance, exit } => Ok((instance, exit)),
            other => Err(other),
        },
    }
}

pub(crate) fn signal(server: &ServerId, instance: Option<u64>, signal: i32) -> Call<()> {
    Call {
        request: Request::Signal {
            server: server.clone(),
            instance,
            signal,
        },
        name: "signal",
        take: |r| match r {
            Response::Signalled => Ok(()),
            other => Err(other),
        },
    }
}

pub(crate) fn list_page(after: Option<ServerId>, limit: u32) -> Call<ServerPage> {
    Call {
        request: Request::List { after, limit },
        name: "list",
        take: |r| match r {
            Response::Servers(page) => Ok(page),
            other => Err(other),
        },
    }
}

pub(crate) fn logs(server: &ServerId, lines: u32) -> Call<LogTail> {
    Call {
        request: Request::Logs {
            server: server.clone(),
            lines,
        },
        name: "logs",
        take: |r| match r {
            Response::Logs(tail) => Ok(tail),
            other => Err(other),
        },
    }
}

pub(crate) fn status() -> Call<DaemonStatus> {
    Call {
        request: Request::Status,
        name: "status",
        take: |r| match r {
            Response::Status(status) => Ok(status),
            other => Err(other),
        },
    }
}

pub(crate) fn health() -> Call<Vec<String>> {
    Call {
        request: Request::Health,
        name: "health",
        take: |r| match r {
            Response::Health(problems) => Ok(problems),
            other => Err(other),
        },
    }
}

/// Follows `list` pages to the end: ask for [`Lister::next_page`] until it says `None`.
#[derive(Default)]
pub(crate) struct Lister {
    servers: Vec<ServerInfo>,
    after: Option<ServerId>,
    done: bool,
}

impl Lister {
    /// The next page to ask for, or `None` when the list is complete.
    pub fn next_page(&self) -> Option<Call<ServerPage>> {
        (!self.done).then(|| list_page(self.after.clone(), MAX_LIST_PAGE))
    }

    /// Takes one page's servers; fails if the pages do not advance.
    pub fn add(&mut self, page: ServerPage) -> Result<(), ClientError> {
        self.servers.extend(page.servers);
        match page.next {
            None => self.done = true,
            Some(next) => {
                if self.after.as_ref().is_some_and(|prev| next <= *prev) {
                    return Err(ClientError::Protocol(format!(
                        "the list of servers did not advance (next page after {next} again)"
                    )));
                }
                self.after = Some(next);
            }
        }
        Ok(())
    }

    pub fn into_servers(self) -> Vec<ServerInfo> {
        self.servers
    }
}

fn response_name(response: &Response) -> &'static str {
    match response {
        Response::Error(_) => "Error",
        Response::Started(_) => "Started",
        Response::Polled(_) => "Polled",
        Response::Stopped { .. } => "Stopped",
        Response::Signalled => "Signalled",
        Response::Servers(_) => "Servers",
        Response::Logs(_) => "Logs",
        Response::Status(_) => "Status",
        Response::Health(_) => "Health",
    }
}

fn unexpected(request: &'static str, response: &Response) -> ClientError {
    ClientError::Unexpected {
        request,
        response: response_name(response),
    }
}

/// What one received packet means.
#[derive(Debug)]
pub(crate) enum Incoming {
    /// The answer (or the error) for the call with this id.
    Reply(u32, Result<Response, ClientError>),
    /// The connection can no longer be trusted to answer every call: close it with this reason.
    Fatal(String),
}

/// Reads one packet from the daemon (`truncated`: the kernel cut it at [`MAX_PACKET`]).
pub(crate) fn interpret(packet: &[u8], truncated: bool) -> Incoming {
    if truncated {
        // The kernel keeps packet boundaries, so only this response is lost: fail its call
        // when the header says whose it is, else the connection.
        let reason = format!(
            "spawnd sent a response larger than the protocol's limit of {MAX_PACKET} bytes; it \
             was refused"
        );
        return match peek_header(packet) {
            Ok(header) if header.id != 0 => {
                Incoming::Reply(header.id, Err(ClientError::Protocol(reason)))
            }
            _ => Incoming::Fatal(reason),
        };
    }
    match decode_response(packet) {
        Ok(envelope) if envelope.id == 0 => {
            // A response to no request: the daemon could not read one of our requests'
            // headers, so some call would never be answered.
            let said = match &envelope.body {
                Response::Error(reply) => format!(": {reply}"),
                other => format!(" with a {} response", response_name(other)),
            };
            Incoming::Fatal(format!(
                "spawnd answered a request it could not attribute (id 0){said}"
            ))
        }
        Ok(envelope) => Incoming::Reply(envelope.id, Ok(envelope.body)),
        Err(e @ (DecodeError::TooLarge | DecodeError::NoHeader)) => {
            Incoming::Fatal(format!("spawnd sent an unreadable packet: {e}"))
        }
        Err(e) => match e.id() {
            0 => Incoming::Fatal(format!("spawnd sent an unreadable packet: {e}")),
            id => Incoming::Reply(
                id,
                Err(ClientError::Protocol(format!(
                    "spawnd's response is unreadable: {e}"
                ))),
            ),
        },
    }
}
