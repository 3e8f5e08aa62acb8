//! Encoding and decoding of packets. See the crate's README for the byte-level format.

use crate::{
    Envelope, MAX_ARGS, MAX_ENV, MAX_LIST_PAGE, MAX_LOG_LINES, MAX_PACKET, MAX_STRING, NameError,
    Request, Response, VERSION,
};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// The first two fields of every envelope, readable whatever the version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub version: u16,
    pub id: u32,
}

/// Why a packet could not be encoded.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("message is {len} bytes encoded; the protocol's limit is {MAX_PACKET} bytes")]
    TooLarge { len: usize },
    #[error("message could not be encoded: {0}")]
    Postcard(#[from] postcard::Error),
}

/// Why a packet was refused. `id()` gives the request id to answer with, when it was readable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("packet is larger than the protocol's limit of {MAX_PACKET} bytes")]
    TooLarge,
    #[error("packet is empty or too short to hold a version and a request id")]
    NoHeader,
    #[error("protocol version {got} is not supported; this side speaks version {VERSION}")]
    UnsupportedVersion { got: u16, id: u32 },
    #[error("packet body is malformed: {reason}")]
    Malformed { id: u32, reason: String },
    #[error("packet has {extra} trailing bytes after the message")]
    TrailingBytes { id: u32, extra: usize },
    #[error("request breaks a limit: {reason}")]
    Invalid { id: u32, reason: String },
}

impl DecodeError {
    /// The request id the packet carried, or 0 when it could not be read.
    pub fn id(&self) -> u32 {
        match *self {
            DecodeError::TooLarge | DecodeError::NoHeader => 0,
            DecodeError::UnsupportedVersion { id, .. }
            | DecodeError::Malformed { id, .. }
            | DecodeError::TrailingBytes { id, .. }
            | DecodeError::Invalid { id, .. } => id,
        }
    }
}

fn encode<T: Serialize>(id: u32, body: &T) -> Result<Vec<u8>, EncodeError> {
    let bytes = postcard::to_stdvec(&Envelope {
        version: VERSION,
        id,
        body,
    })?;
    if bytes.len() > MAX_PACKET {
        return Err(EncodeError::TooLarge { len: bytes.len() });
    }
    Ok(bytes)
}

/// Encodes a request as one packet.
pub fn encode_request(id: u32, request: &Request) -> Result<Vec<u8>, EncodeError> {
    encode(id, request)
}

/// Encodes a response as one packet.
pub fn encode_response(id: u32, response: &Response) -> Result<Vec<u8>, EncodeError> {
    encode(id, response)
}

/// Reads the version and request id of a packet without decoding its body.
pub fn peek_header(packet: &[u8]) -> Result<Header, DecodeError> {
    if packet.len() > MAX_PACKET {
        return Err(DecodeError::TooLarge);
    }
    postcard::take_from_bytes::<Header>(packet)
        .map(|(h, _)| h)
        .map_err(|_| DecodeError::NoHeader)
}

fn decode<T: DeserializeOwned>(packet: &[u8]) -> Result<Envelope<T>, DecodeError> {
    let header = peek_header(packet)?;
    if header.version != VERSION {
        return Err(DecodeError::UnsupportedVersion {
            got: header.version,
            id: header.id,
        });
    }
    let id = header.id;
    let (envelope, rest) =
        postcard::take_from_bytes::<Envelope<T>>(packet).map_err(|e| DecodeError::Malformed {
            id,
            reason: e.to_string(),
        })?;
    if !rest.is_empty() {
        return Err(DecodeError::TrailingBytes {
            id,
            extra: rest.len(),
        });
    }
    Ok(envelope)
}

/// Decodes and checks a request packet: version, exact length, and every limit of
/// [`check_request`].
pub fn decode_request(packet: &[u8]) -> Result<Envelope<Request>, DecodeError> {
    let envelope = decode::<Request>(packet)?;
    check_request(&envelope.body).map_err(|reason| DecodeError::Invalid {
        id: envelope.id,
        reason,
    })?;
    Ok(envelope)
}

/// Decodes a response packet.
pub fn decode_response(packet: &[u8]) -> Result<Envelope<Response>, DecodeError> {
    decode::<Response>(packet)
}

fn check_string(what: &str, s: &str) -> Result<(), String> {
    if s.len() > MAX_STRING {
        return Err(format!(
            "{what} is {} bytes long; the limit is {MAX_STRING}",
            s.len()
        ));
    }
    if s.contains('\0') {
        return Err(format!("{what} contains a NUL byte"));
    }
    Ok(())
}

fn names(e: NameError) -> String {
    e.to_string()
}

/// The limits every request must keep, whatever the caller's role: valid names, bounded lists
/// and strings, no NUL bytes, environment names that are names.
pub fn check_request(request: &Request) -> Result<(), String> {
    if let Some(server) = request.target() {
        server.validate().map_err(names)?;
    }
    match request {
        Request::Start(start) => {
            crate::validate_profile_name(&start.profile).map_err(names)?;
            if start.args.len() > MAX_ARGS {
                return Err(format!(
                    "{} arguments given; the limit is {MAX_ARGS}",
                    start.args.len()
                ));
            }
            if start.env.len() > MAX_ENV {
                return Err(format!(
                    "{} environment variables given; the limit is {MAX_ENV}",
                    start.env.len()
                ));
            }
            for (i, arg) in start.args.iter().enumerate() {
                check_string(&format!("argument {i}"), arg)?;
            }
            for (name, value) in &start.env {
                if !crate::env_name_is_valid(name) {
                    let shown: String = name.chars().take(64).collect();
                    return Err(format!(
                        "environment name {shown:?} is not a valid name (letters, digits, '_')"
                    ));
                }
                check_string(&format!("environment variable {name}"), value)?;
            }
            Ok(())
        }
        Request::Signal { signal, .. } => {
            if !(1..=64).contains(signal) {
                return Err(format!("signal {signal} is not a signal number (1 to 64)"));
            }
            Ok(())
        }
        Request::List { limit, .. } => {
            if *limit > MAX_LIST_PAGE {
                return Err(format!("list limit {limit} is above {MAX_LIST_PAGE}"));
            }
            Ok(())
        }
        Request::Logs { lines, .. } => {
            if *lines > MAX_LOG_LINES {
                return Err(format!(
                    "{lines} log lines asked for; the limit is {MAX_LOG_LINES}"
                ));
            }
            Ok(())
        }
        Request::Poll { .. } | Request::Stop { .. } | Request::Status | Request::Health => Ok(()),
    }
}
