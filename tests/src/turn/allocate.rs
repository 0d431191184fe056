//! A minimal TURN client (RFC 8656 over UDP): one `Allocate` with long-term credentials, to
//! check what a TURN server makes of a username and credential. No refresh, permissions or
//! data: the allocation is what proves the credentials are accepted.
//!
//! ```text
//! Allocate (REQUESTED-TRANSPORT udp)                    -> 401 (REALM, NONCE)
//! Allocate + USERNAME REALM NONCE MESSAGE-INTEGRITY     -> success (XOR-RELAYED-ADDRESS)
//!                                                        | error (401 for bad credentials)
//! ```
//! MESSAGE-INTEGRITY is HMAC-SHA1 keyed with MD5(username ":" realm ":" password), where
//! the password is the credential as a browser uses it.

use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;
use tokio::net::UdpSocket;

const MAGIC: u32 = 0x2112_A442;
const ALLOCATE: u16 = 0x0003;
const ALLOCATE_OK: u16 = 0x0103;
const ALLOCATE_ERROR: u16 = 0x0113;
const USERNAME: u16 = 0x0006;
const MESSAGE_INTEGRITY: u16 = 0x0008;
const ERROR_CODE: u16 = 0x0009;
const REALM: u16 = 0x0014;
const NONCE: u16 = 0x0015;
const XOR_RELAYED_ADDRESS: u16 = 0x0016;
const REQUESTED_TRANSPORT: u16 = 0x0019;
/// Attempts per request (UDP), each waiting this long for the answer.
const ATTEMPTS: usize = 5;
const ATTEMPT_WAIT: Duration = Duration::from_millis(500);

/// How an allocation attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Allocation {
    /// Allocated: the relayed transport address.
    Relayed(SocketAddr),
    /// Refused with a STUN error code and reason (401 for credentials not accepted).
    Refused(u16, String),
}

/// What went wrong talking to the server (not a refusal).
#[derive(Debug, thiserror::Error)]
pub enum TurnError {
    /// Socket trouble.
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    /// No answer after every attempt.
    #[error("no answer from the TURN server at {0}")]
    NoAnswer(SocketAddr),
    /// An answer this client does not understand.
    #[error("unexpected answer: {0}")]
    Unexpected(String),
}

/// Try to allocate a UDP relay on the TURN server at `server` as `username` / `credential`.
pub async fn allocate(server: SocketAddr, username: &str, credential: &str) -> Result<Allocation, TurnError> {
    let socket = UdpSocket::bind(SocketAddr::new(server.ip(), 0)).await?;
    socket.connect(server).await?;
    // Unauthenticated first: the server answers 401 with its realm and a nonce.
    let first = exchange(&socket, server, &request(&[], None)).await?;
    let (kind, attrs) = first;
    let (realm, nonce) = match (kind, attr(&attrs, REALM), attr(&attrs, NONCE)) {
        (ALLOCATE_ERROR, Some(realm), Some(nonce)) => (realm.to_vec(), nonce.to_vec()),
        (ALLOCATE_OK, ..) => return Err(TurnError::Unexpected("allocated without credentials".into())),
        other => return Err(TurnError::Unexpected(format!("first answer {:#06x} without realm/nonce", other.0))),
    };
    let key = Md5::digest([username.as_bytes(), b":", &realm, b":", credential.as_bytes()].concat());
    let auth = [(USERNAME, username.as_bytes().to_vec()), (REALM, realm), (NONCE, nonce)];
    let (kind, attrs) = exchange(&socket, server, &request(&auth, Some(&key))).await?;
    match kind {
        ALLOCATE_OK => {
            let relayed = attr(&attrs, XOR_RELAYED_ADDRESS)
                .and_then(xor_address)
                .ok_or_else(|| TurnError::Unexpected("success without XOR-RELAYED-ADDRESS".into()))?;
            Ok(Allocation::Relayed(relayed))
        }
        ALLOCATE_ERROR => {
            let e = attr(&attrs, ERROR_CODE)
                .filter(|e| e.len() >= 4)
                .ok_or_else(|| TurnError::Unexpected("error answer without ERROR-CODE".into()))?;
            let code = u16::from(e[2] & 0x7) * 100 + u16::from(e[3]);
            Ok(Allocation::Refused(code, String::from_utf8_lossy(&e[4..]).into_owned()))
        }
        other => Err(TurnError::Unexpected(format!("answer type {other:#06x}"))),
    }
}

/// An Allocate request with `attrs`, signed with `key` when given.
fn request(attrs: &[(u16, Vec<u8>)], key: Option<&[u8]>) -> Vec<u8> {
    let mut msg = Vec::with_capacity(128);
    msg.extend_from_slice(&ALLOCATE.to_be_bytes());
    msg.extend_from_slice(&0u16.to_be_bytes());
    msg.extend_from_slice(&MAGIC.to_be_bytes());
    msg.extend_from_slice(&fastrand::u128(..).to_be_bytes()[..12]);
    put(&mut msg, REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    for (t, v) in attrs {
        put(&mut msg, *t, v);
    }
    if let Some(key) = key {
        // The length covers MESSAGE-INTEGRITY itself (4 + 20 bytes) while it is computed.
        let len = msg.len() - 20 + 24;
        set_len(&mut msg, len);
        let mut mac = Hmac::<sha1::Sha1>::new_from_slice(key).expect("any key length");
        mac.update(&msg);
        let tag = mac.finalize().into_bytes();
        put(&mut msg, MESSAGE_INTEGRITY, &tag);
    }
    let len = msg.len() - 20;
    set_len(&mut msg, len);
    msg
}

fn put(msg: &mut Vec<u8>, kind: u16, value: &[u8]) {
    msg.extend_from_slice(&kind.to_be_bytes());
    msg.extend_from_slice(&(value.len() as u16).to_be_bytes());
    msg.extend_from_slice(value);
    msg.resize(msg.len().next_multiple_of(4), 0);
}

fn set_len(msg: &mut [u8], len: usize) {
    msg[2..4].copy_from_slice(&(len as u16).to_be_bytes());
}

type Attrs = Vec<(u16, Vec<u8>)>;

/// Send `msg` and wait for the answer with its transaction id (retransmitting, bounded).
async fn exchange(socket: &UdpSocket, server: SocketAddr, msg: &[u8]) -> Result<(u16, Attrs), TurnError> {
    let tid = &msg[8..20];
    let mut buf = vec![0u8; 2048];
    for _ in 0..ATTEMPTS {
        socket.send(msg).await?;
        let deadline = tokio::time::Instant::now() + ATTEMPT_WAIT;
        while let Ok(got) = tokio::time::timeout_at(deadline, socket.recv(&mut buf)).await {
            let n = got?;
            if let Some(parsed) = parse(&buf[..n]).filter(|(_, t, _)| t == tid) {
                return Ok((parsed.0, parsed.2));
            }
        }
    }
    Err(TurnError::NoAnswer(server))
}

fn parse(b: &[u8]) -> Option<(u16, Vec<u8>, Attrs)> {
    if b.len() < 20 || u32::from_be_bytes(b[4..8].try_into().ok()?) != MAGIC {
        return None;
    }
    let kind = u16::from_be_bytes([b[0], b[1]]);
    let len = usize::from(u16::from_be_bytes([b[2], b[3]]));
    let body = b.get(20..20 + len)?;
    let mut attrs = Vec::new();
    let mut at = 0;
    while at + 4 <= body.len() {
        let t = u16::from_be_bytes([body[at], body[at + 1]]);
        let l = usize::from(u16::from_be_bytes([body[at + 2], body[at + 3]]));
        attrs.push((t, body.get(at + 4..at + 4 + l)?.to_vec()));
        at += 4 + l.next_multiple_of(4);
    }
    Some((kind, b[8..20].to_vec(), attrs))
}

fn attr(attrs: &Attrs, kind: u16) -> Option<&[u8]> {
    attrs.iter().find(|(t, _)| *t == kind).map(|(_, v)| v.as_slice())
}

/// An IPv4 XOR-mapped address (IPv6 is not requested).
fn xor_address(v: &[u8]) -> Option<SocketAddr> {
    if v.len() < 8 || v[1] != 0x01 {
        return None;
    }
    let port = u16::from_be_bytes([v[2], v[3]]) ^ (MAGIC >> 16) as u16;
    let ip = u32::from_be_bytes(v[4..8].try_into().ok()?) ^ MAGIC;
    Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port))
}
