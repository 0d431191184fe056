//! ICE servers for the clients' WebRTC peer connections: STUN URLs, and TURN URLs with
//! short-lived credentials derived the TURN REST API way, which coturn checks with
//! `use-auth-secret` / `static-auth-secret`:
//!
//! ```text
//! username   = "<expiry, Unix seconds>:<user id>"
//! credential = base64(HMAC-SHA1(shared secret, username))
//! ```
//!
//! The TURN server needs no call to the node: it recomputes the credential from the
//! username with the same secret and refuses it once the expiry is past. A session gets its
//! servers in `Welcome` and again on `IceServersRequest`; `GET /api/ice-servers` hands them
//! to apps over HTTP. Without a secret no TURN URL may be configured (the node refuses to
//! start rather than hand out TURN URLs no client could use).

use base64::Engine;
use hmac::{Hmac, Mac};
use std::time::Duration;
use switchboard_protocol::pb::{IceServer, IceServers};

/// Lifetime of TURN credentials by default.
pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);
/// Shortest allowed credential lifetime: a client must have time to use and renew them.
pub const MIN_TTL: Duration = Duration::from_secs(300);
/// Longest allowed credential lifetime: a leaked credential is useful for at most this long.
pub const MAX_TTL: Duration = Duration::from_secs(86_400);
/// STUN or TURN URLs of each kind, at most.
pub const MAX_URLS: usize = 16;
/// Longest URL accepted.
const MAX_URL_BYTES: usize = 512;

/// The ICE servers a node hands out.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct IceConfig {
    /// `stun:` / `stuns:` URLs, handed out without credentials.
    pub stun_urls: Vec<String>,
    /// `turn:` / `turns:` URLs, handed out with credentials derived from `turn_secret`.
    pub turn_urls: Vec<String>,
    /// The secret shared with the TURN server (coturn's `static-auth-secret`).
    pub turn_secret: Option<String>,
    /// Lifetime of TURN credentials, within [`MIN_TTL`]..=[`MAX_TTL`].
    pub ttl: Duration,
}

impl std::fmt::Debug for IceConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IceConfig")
            .field("stun_urls", &self.stun_urls)
            .field("turn_urls", &self.turn_urls)
            .field("turn_secret", &self.turn_secret.as_ref().map(|_| "<redacted>"))
            .field("ttl", &self.ttl)
            .finish()
    }
}

/// A configuration the node cannot run with.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IceConfigError {
    /// A URL of the wrong scheme or shape.
    #[error("invalid {kind} URL {url:?}: {reason}")]
    Url {
        /// `STUN` or `TURN`.
        kind: &'static str,
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// More URLs than [`MAX_URLS`].
    #[error("at most {MAX_URLS} {0} URLs")]
    TooMany(&'static str),
    /// TURN URLs without a shared secret.
    #[error("TURN URLs need the TURN shared secret (--turn-secret) to derive credentials")]
    MissingSecret,
    /// An empty secret.
    #[error("the TURN shared secret is empty")]
    EmptySecret,
    /// A lifetime outside the bounds.
    #[error("the TURN credential lifetime must be {min}..={max} seconds, not {0}", min = MIN_TTL.as_secs(), max = MAX_TTL.as_secs())]
    Ttl(u64),
}

impl IceConfig {
    /// No ICE servers (the default): clients gather host candidates only.
    pub fn none() -> Self {
        Self { ttl: DEFAULT_TTL, ..Self::default() }
    }

    /// Check URLs, secret and lifetime.
    pub fn validate(&self) -> Result<(), IceConfigError> {
        if self.stun_urls.len() > MAX_URLS {
            return Err(IceConfigError::TooMany("STUN"));
        }
        if self.turn_urls.len() > MAX_URLS {
            return Err(IceConfigError::TooMany("TURN"));
        }
        for url in &self.stun_urls {
            check_url(url, "STUN", &["stun:", "stuns:"])?;
        }
        for url in &self.turn_urls {
            check_url(url, "TURN", &["turn:", "turns:"])?;
        }
        match &self.turn_secret {
            Some(s) if s.is_empty() => return Err(IceConfigError::EmptySecret),
            None if !self.turn_urls.is_empty() => return Err(IceConfigError::MissingSecret),
            _ => {}
        }
        if !(MIN_TTL..=MAX_TTL).contains(&self.ttl) {
            return Err(IceConfigError::Ttl(self.ttl.as_secs()));
        }
        Ok(())
    }

    /// Whether there is anything to hand out.
    pub fn is_empty(&self) -> bool {
        self.stun_urls.is_empty() && self.turn_urls.is_empty()
    }

    /// The servers for `user` at `now` (Unix seconds): the STUN URLs as one server, the TURN
    /// URLs as one server with credentials expiring at `now + ttl`.
    pub fn servers(&self, user: &str, now: u64) -> IceServers {
        let mut out = IceServers::default();
        if !self.stun_urls.is_empty() {
            out.servers.push(IceServer { urls: self.stun_urls.clone(), ..Default::default() });
        }
        if let (false, Some(secret)) = (self.turn_urls.is_empty(), &self.turn_secret) {
            let expires_at = now + self.ttl.as_secs();
            let username = turn_username(expires_at, user);
            let credential = turn_credential(secret.as_bytes(), &username);
            out.servers.push(IceServer { urls: self.turn_urls.clone(), username, credential });
            out.expires_at = expires_at;
        }
        out
    }
}

/// The TURN REST API username: `<expires_at>:<user>`.
pub fn turn_username(expires_at: u64, user: &str) -> String {
    format!("{expires_at}:{user}")
}

/// The TURN REST API credential of `username`: base64(HMAC-SHA1(secret, username)).
pub fn turn_credential(secret: &[u8], username: &str) -> String {
    // HMAC takes keys of any length.
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret).expect("HMAC accepts any key length");
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

fn check_url(url: &str, kind: &'static str, schemes: &[&str]) -> Result<(), IceConfigError> {
    let bad = |reason| Err(IceConfigError::Url { kind, url: url.to_owned(), reason });
    if url.len() > MAX_URL_BYTES {
        return bad("longer than 512 bytes");
    }
    let Some(rest) = schemes.iter().find_map(|s| url.strip_prefix(s)) else {
        return bad(if kind == "TURN" { "must start with turn: or turns:" } else { "must start with stun: or stuns:" });
    };
    if !url.is_ascii() || url.chars().any(|c| c.is_ascii_whitespace() || c.is_ascii_control()) {
        return bad("must be ASCII without spaces");
    }
    // RFC 7064 / 7065: host[:port], then (TURN only) ?transport=udp|tcp.
    let (hostport, query) = match rest.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (rest, None),
    };
    if hostport.is_empty() || hostport.starts_with('/') || hostport.contains('/') || hostport.contains('@') {
        return bad("needs a host (scheme:host[:port], no path or user)");
    }
    let port = match hostport.strip_prefix('[') {
        // [IPv6]:port
        Some(v6) => match v6.split_once(']') {
            Some((host, "")) if !host.is_empty() => None,
            Some((host, rest)) if !host.is_empty() => match rest.strip_prefix(':') {
                Some(port) => Some(port),
                None => return bad("junk after the IPv6 address"),
            },
            _ => return bad("unclosed IPv6 address"),
        },
        None => match hostport.split_once(':') {
            Some(("", _)) => return bad("needs a host (scheme:host[:port], no path or user)"),
            Some((_, port)) => Some(port),
            None => None,
        },
    };
    if port.is_some_and(|p| p.parse::<u16>().map_or(true, |p| p == 0)) {
        return bad("port must be 1-65535");
    }
    match query {
        None => Ok(()),
        Some("transport=udp" | "transport=tcp") if kind == "TURN" => Ok(()),
        Some(_) if kind == "TURN" => bad("the only query allowed is ?transport=udp or ?transport=tcp"),
        Some(_) => bad("STUN URLs take no query"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> IceConfig {
        IceConfig {
            stun_urls: vec!["stun:stun.example.com:3478".into()],
            turn_urls: vec!["turn:turn.example.com:3478?transport=udp".into(), "turns:turn.example.com:5349".into()],
            turn_secret: Some("north-secret".into()),
            ttl: DEFAULT_TTL,
        }
    }

    #[test]
    fn credential_matches_an_independent_hmac_sha1() {
        // python3 -c 'import hmac,hashlib,base64;print(base64.b64encode(hmac.new(
        //   b"north-secret", b"1700003600:alice", hashlib.sha1).digest()).decode())'
        assert_eq!(turn_username(1_700_003_600, "alice"), "1700003600:alice");
        assert_eq!(turn_credential(b"north-secret", "1700003600:alice"), "Ji4axghh2/aljHmsPgH9mtDGVLw=");
        // RFC 2202 test case 2 (HMAC-SHA1, key "Jefe"), base64 of its hex digest.
        assert_eq!(turn_credential(b"Jefe", "what do ya want for nothing?"), "7/zfauXrL6LSdBbV8YTfnCWafHk=");
    }

    #[test]
    fn servers_carry_stun_without_and_turn_with_credentials() {
        let got = config().servers("alice", 1_700_000_000);
        assert_eq!(got.expires_at, 1_700_003_600);
        assert_eq!(got.servers.len(), 2);
        assert_eq!(got.servers[0].urls, ["stun:stun.example.com:3478"]);
        assert!(got.servers[0].username.is_empty() && got.servers[0].credential.is_empty());
        assert_eq!(got.servers[1].urls.len(), 2);
        assert_eq!(got.servers[1].username, "1700003600:alice");
        assert_eq!(got.servers[1].credential, "Ji4axghh2/aljHmsPgH9mtDGVLw=");
        // STUN only: nothing expires.
        let stun = IceConfig { turn_urls: vec![], turn_secret: None, ..config() };
        assert_eq!(stun.servers("alice", 5).expires_at, 0);
        assert!(IceConfig::none().servers("alice", 5).servers.is_empty());
    }

    #[test]
    fn validation_refuses_bad_urls_missing_secret_and_ttl_out_of_bounds() {
        assert_eq!(config().validate(), Ok(()));
        assert_eq!(IceConfig::none().validate(), Ok(()));
        for (stun, turn) in [
            (vec!["http://stun.example.com"], vec![]),
            (vec!["stun:"], vec![]),
            (vec!["stun:host?transport=udp"], vec![]),
            (vec![], vec!["stun:turn.example.com"]),
            (vec![], vec!["turn:host:0"]),
            (vec![], vec!["turn:host:99999"]),
            (vec![], vec!["turn:user@host"]),
            (vec![], vec!["turn:host/path"]),
            (vec![], vec!["turn:host?transport=sctp"]),
            (vec![], vec!["turn:ho st"]),
        ] {
            let c = IceConfig {
                stun_urls: stun.iter().map(|s| s.to_string()).collect(),
                turn_urls: turn.iter().map(|s| s.to_string()).collect(),
                ..config()
            };
            assert!(matches!(c.validate(), Err(IceConfigError::Url { .. })), "{stun:?} {turn:?}");
        }
        assert_eq!(IceConfig { turn_secret: None, ..config() }.validate(), Err(IceConfigError::MissingSecret));
        assert_eq!(
            IceConfig { turn_secret: Some(String::new()), ..config() }.validate(),
            Err(IceConfigError::EmptySecret)
        );
        assert_eq!(IceConfig { ttl: Duration::from_secs(60), ..config() }.validate(), Err(IceConfigError::Ttl(60)));
        assert_eq!(
            IceConfig { ttl: MAX_TTL + Duration::from_secs(1), ..config() }.validate(),
            Err(IceConfigError::Ttl(86_401))
        );
        let ok = IceConfig { turn_urls: vec!["turn:[::1]:3478".into(), "turn:10.0.0.1".into()], ..config() };
        assert_eq!(ok.validate(), Ok(()));
        assert!(!format!("{:?}", config()).contains("north-secret"));
    }
}
