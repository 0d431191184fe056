//! The browser origin policy (`--allowed-origins`), one for every browser-facing path: the
//! WebSocket upgrade, CORS on the HTTP API and the WebTransport CONNECT request.
//!
//! - No `Origin` header: allowed. Native clients send none; the check guards browsers,
//!   which always send one on cross-origin requests, WebSocket and WebTransport.
//! - More than one `Origin` header: refused, whatever the list (a request has at most one;
//!   two would let a check that reads the first disagree with a proxy that reads the last).
//! - One `Origin`: allowed when the list is empty, else when it equals an entry of the list,
//!   ignoring a trailing `/` and ASCII case (scheme and host are case-insensitive; browsers
//!   send them in lowercase). `https://app.example.com` does not allow
//!   `https://app.example.com.evil.net` nor `http://app.example.com`.

use std::sync::Arc;

/// The origins allowed to use the node from a browser; empty allows any.
#[derive(Debug, Clone, Default)]
pub struct AllowedOrigins(Arc<[String]>);

/// Why a request's `Origin` is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OriginRefused {
    /// The request carries more than one `Origin` header.
    #[error("more than one Origin header")]
    Duplicate,
    /// The origin is not in the list.
    #[error("origin {0:?} is not allowed")]
    NotAllowed(String),
}

fn normalise(origin: &str) -> &str {
    origin.trim().trim_end_matches('/')
}

impl AllowedOrigins {
    /// The list as configured (entries trimmed, a trailing `/` dropped, empty ones skipped).
    pub fn new<I, S>(origins: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Self(origins.into_iter().map(|o| normalise(o.as_ref()).to_owned()).filter(|o| !o.is_empty()).collect())
    }

    /// Whether any origin is allowed (no list configured).
    pub fn allows_any(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether one `Origin` value is allowed.
    pub fn allows(&self, origin: &str) -> bool {
        let origin = normalise(origin);
        self.allows_any() || self.0.iter().any(|o| o.eq_ignore_ascii_case(origin))
    }

    /// Check a request by the values of all its `Origin` headers (as received, in order).
    pub fn check<'a, I>(&self, values: I) -> Result<(), OriginRefused>
    where
        I: IntoIterator<Item = &'a [u8]>,
    {
        let mut values = values.into_iter();
        let Some(first) = values.next() else { return Ok(()) };
        if values.next().is_some() {
            return Err(OriginRefused::Duplicate);
        }
        match std::str::from_utf8(first) {
            Ok(origin) if self.allows(origin) => Ok(()),
            Ok(origin) => Err(OriginRefused::NotAllowed(origin.to_owned())),
            Err(_) if self.allows_any() => Ok(()),
            Err(_) => Err(OriginRefused::NotAllowed(String::from_utf8_lossy(first).into_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(list: &AllowedOrigins, values: &[&str]) -> Result<(), OriginRefused> {
        list.check(values.iter().map(|v| v.as_bytes()))
    }

    #[test]
    fn exact_origins_only() {
        let list = AllowedOrigins::new(["https://app.example.com/", " http://127.0.0.1:3000", ""]);
        assert!(!list.allows_any());
        assert_eq!(check(&list, &["https://app.example.com"]), Ok(()));
        assert_eq!(check(&list, &["HTTPS://App.Example.com/"]), Ok(()));
        assert_eq!(check(&list, &["http://127.0.0.1:3000"]), Ok(()));
        for bad in ["https://app.example.com.evil.net", "http://app.example.com", "https://app.example.com:444", "null"]
        {
            assert_eq!(check(&list, &[bad]), Err(OriginRefused::NotAllowed(bad.into())), "{bad}");
        }
        assert!(matches!(list.check([&b"\xff"[..]]), Err(OriginRefused::NotAllowed(_))));
    }

    #[test]
    fn no_origin_is_allowed_and_two_are_refused() {
        let list = AllowedOrigins::new(["https://app.example.com"]);
        assert_eq!(check(&list, &[]), Ok(()));
        assert_eq!(
            check(&list, &["https://app.example.com", "https://evil.example.net"]),
            Err(OriginRefused::Duplicate)
        );
        assert_eq!(
            check(&list, &["https://app.example.com", "https://app.example.com"]),
            Err(OriginRefused::Duplicate)
        );
        let any = AllowedOrigins::default();
        assert_eq!(check(&any, &["https://a.example", "https://b.example"]), Err(OriginRefused::Duplicate));
    }

    #[test]
    fn an_empty_list_allows_any_single_origin() {
        let any = AllowedOrigins::new(Vec::<String>::new());
        assert!(any.allows_any());
        assert_eq!(check(&any, &["https://evil.example.net"]), Ok(()));
        assert_eq!(check(&any, &["null"]), Ok(()));
        assert_eq!(any.check([&b"\xff"[..]]), Ok(()));
    }
}
