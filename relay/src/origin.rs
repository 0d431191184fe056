//! The browser origin policy (`--allowed-origins`), one for every browser-facing path: the
//! WebSocket upgrade, CORS on the HTTP API and the WebTransport CONNECT request.
//!
//! - No `Origin` header: allowed. Native clients send none; the check guards browsers,
//!   which always send one on cross-origin requests, WebSocket and WebTransport.
//! - More than one `Origin` header: refused, whatever the list (a request has at most one;
//!   two would let a check that reads the first disagree with a proxy that reads the last).
//! - One `Origin`: allowed when the list is empty or holds `*`, else when it matches an
//!   entry of the list, ignoring a trailing `/` and ASCII case (scheme and host are
//!   case-insensitive; browsers send them in lowercase). An entry matches exactly:
//!   `https://app.example.com` does not allow `https://app.example.com.evil.net`,
//!   `http://app.example.com` nor `https://app.example.com:8443`. An entry
//!   `https://*.example.com` allows every subdomain of `example.com` (any depth) with that
//!   scheme and port, not `example.com` itself.

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

/// `text` without `prefix`, compared ignoring ASCII case.
fn strip_prefix_ci<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix).then(|| &text[prefix.len()..])
}

/// `text` without `suffix`, compared ignoring ASCII case.
fn strip_suffix_ci<'a>(text: &'a str, suffix: &str) -> Option<&'a str> {
    let cut = text.len().checked_sub(suffix.len())?;
    let tail = text.get(cut..)?;
    tail.eq_ignore_ascii_case(suffix).then(|| &text[..cut])
}

/// Whether `origin` matches one list entry: exactly, or as a subdomain of a
/// `scheme://*.domain[:port]` entry (one or more DNS labels in place of the `*`).
fn matches(entry: &str, origin: &str) -> bool {
    let Some((scheme, domain)) = entry.split_once("://*.") else {
        return entry.eq_ignore_ascii_case(origin);
    };
    let Some(host) = strip_prefix_ci(origin, scheme).and_then(|rest| rest.strip_prefix("://")) else {
        return false;
    };
    let Some(labels) = strip_suffix_ci(host, domain).and_then(|rest| rest.strip_suffix('.')) else {
        return false;
    };
    !labels.is_empty()
        && labels.split('.').all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
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

    /// Whether any origin is allowed (no list configured, or `*` in it).
    pub fn allows_any(&self) -> bool {
        self.0.is_empty() || self.0.iter().any(|o| o == "*")
    }

    /// Whether one `Origin` value is allowed.
    pub fn allows(&self, origin: &str) -> bool {
        let origin = normalise(origin);
        self.allows_any() || self.0.iter().any(|entry| matches(entry, origin))
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
    fn wildcard_subdomains() {
        let list = AllowedOrigins::new(["https://*.example.com", "http://*.dev.test:3000"]);
        assert!(!list.allows_any());
        for ok in
            ["https://app.example.com", "https://a.b.example.com", "HTTPS://App.Example.COM/", "http://x.dev.test:3000"]
        {
            assert_eq!(check(&list, &[ok]), Ok(()), "{ok}");
        }
        for bad in [
            "https://example.com",
            "https://.example.com",
            "https://a..example.com",
            "https://evilexample.com",
            "https://app.example.com.evil.net",
            "https://app.example.com:8443",
            "http://app.example.com",
            "https://a_b.example.com",
            "https://user@app.example.com",
            "http://x.dev.test",
            "http://x.dev.test:30001",
            "null",
        ] {
            assert!(check(&list, &[bad]).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_star_allows_any_single_origin() {
        let any = AllowedOrigins::new(["https://app.example.com", "*"]);
        assert!(any.allows_any());
        assert_eq!(check(&any, &["https://evil.example.net"]), Ok(()));
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
