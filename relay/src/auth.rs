//! JWT authentication: verification with the configured key, claims and grants, and
//! minting of development tokens.
//!
//! The algorithm is pinned to the configured key: an HMAC secret accepts only HS256, an
//! EC P-256 public key only ES256, an Ed25519 public key only EdDSA. A token whose header
//! names any other algorithm (including `none`) is refused with `TOKEN_ALGORITHM`.

use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use switchboard_protocol::{limits::MAX_TOKEN_LEN, subject::validate_id, ErrorCode};

/// The secret used when none is configured. Only for the embedded development default:
/// the node logs a warning when it is in use.
pub const DEV_SECRET: &str = "switchboard-insecure-development-secret";

/// Claims of a Switchboard token.
///
/// ```json
/// {"sub":"alice","name":"Alice","exp":1767225600,"rooms":["demo","team-*"],
///  "publish":true,"media":true,"signal":true}
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user id (`[A-Za-z0-9_=-]`, at most 128 bytes).
    pub sub: String,
    /// Display name shown to other participants.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Expiry, Unix seconds. Required.
    pub exp: u64,
    /// Not before, Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Issued at, Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// Rooms the holder may join: exact ids, `prefix*` patterns, or `*` for any room.
    /// Absent means no room.
    #[serde(default)]
    pub rooms: Vec<String>,
    /// May publish room messages (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish: Option<bool>,
    /// May send media frames (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media: Option<bool>,
    /// May send signaling (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<bool>,
    /// May place and answer calls (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call: Option<bool>,
    /// Participant limit for the rooms this token joins (overrides the server's
    /// `--max-participants`); the join that would exceed it fails with `ROOM_FULL`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_participants: Option<u32>,
}

impl Claims {
    /// Claims for `sub` granting `rooms` (all permissions), valid for `ttl_secs` from now.
    pub fn new(sub: impl Into<String>, rooms: &[&str], ttl_secs: u64) -> Self {
        let now = now_secs();
        Self {
            sub: sub.into(),
            name: None,
            exp: now + ttl_secs,
            nbf: None,
            iat: Some(now),
            rooms: rooms.iter().map(|r| (*r).to_owned()).collect(),
            publish: None,
            media: None,
            signal: None,
            call: None,
            max_participants: None,
        }
    }

    /// Whether the token grants joining `room`.
    pub fn may_join(&self, room: &str) -> bool {
        self.rooms.iter().any(|g| match g.strip_suffix('*') {
            Some(prefix) => room.starts_with(prefix),
            None => g == room,
        })
    }
    /// Whether the token grants publishing room messages.
    pub fn may_publish(&self) -> bool {
        self.publish.unwrap_or(true)
    }
    /// Whether the token grants sending media.
    pub fn may_send_media(&self) -> bool {
        self.media.unwrap_or(true)
    }
    /// Whether the token grants signaling.
    pub fn may_signal(&self) -> bool {
        self.signal.unwrap_or(true)
    }
    /// Whether the token grants placing and answering calls.
    pub fn may_call(&self) -> bool {
        self.call.unwrap_or(true)
    }
    /// The display name, falling back to the user id.
    pub fn display_name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.sub)
    }
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Malformed, bad signature, or bad claims.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// `exp` is in the past.
    #[error("token expired")]
    Expired,
    /// `nbf` is in the future.
    #[error("token not yet valid")]
    NotYetValid,
    /// The header's `alg` is not the configured algorithm.
    #[error("token algorithm {found:?} not accepted (expected {expected:?})")]
    Algorithm {
        /// The algorithm in the token header.
        found: String,
        /// The configured algorithm.
        expected: Algorithm,
    },
}

impl AuthError {
    /// The protocol error code for this failure.
    pub fn code(&self) -> ErrorCode {
        match self {
            AuthError::Invalid(_) => ErrorCode::TokenInvalid,
            AuthError::Expired => ErrorCode::TokenExpired,
            AuthError::NotYetValid => ErrorCode::TokenNotYetValid,
            AuthError::Algorithm { .. } => ErrorCode::TokenAlgorithm,
        }
    }
}

/// Errors loading key material.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The PEM could not be parsed as a key of the expected kind.
    #[error("cannot load {kind} key: {source}")]
    Parse {
        /// Which kind of key was expected.
        kind: &'static str,
        /// The parser's error.
        source: jsonwebtoken::errors::Error,
    },
    /// An HMAC secret shorter than 32 bytes.
    #[error("the JWT secret must be at least 32 bytes long")]
    WeakSecret,
}

/// Verification key configuration.
#[derive(Clone)]
pub enum VerifyKey {
    /// HS256 with a shared secret.
    Hmac(Vec<u8>),
    /// ES256 with a P-256 public key (PEM).
    Es256Pem(Vec<u8>),
    /// EdDSA with an Ed25519 public key (PEM).
    EdDsaPem(Vec<u8>),
}

impl std::fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.write_str(match self {
            VerifyKey::Hmac(_) => "Hmac(<redacted>)",
            VerifyKey::Es256Pem(_) => "Es256Pem(..)",
            VerifyKey::EdDsaPem(_) => "EdDsaPem(..)",
        })
    }
}

/// Verifies tokens with one configured key and algorithm.
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
    algorithm: Algorithm,
}

impl Verifier {
    /// A verifier for `key`, allowing `leeway_secs` of clock skew on `exp`/`nbf`.
    pub fn new(key: &VerifyKey, leeway_secs: u64) -> Result<Self, KeyError> {
        let (key, algorithm) = match key {
            VerifyKey::Hmac(secret) => {
                if secret.len() < 32 {
                    return Err(KeyError::WeakSecret);
                }
                (DecodingKey::from_secret(secret), Algorithm::HS256)
            }
            VerifyKey::Es256Pem(pem) => (
                DecodingKey::from_ec_pem(pem).map_err(|source| KeyError::Parse { kind: "ES256 public", source })?,
                Algorithm::ES256,
            ),
            VerifyKey::EdDsaPem(pem) => (
                DecodingKey::from_ed_pem(pem).map_err(|source| KeyError::Parse { kind: "Ed25519 public", source })?,
                Algorithm::EdDSA,
            ),
        };
        let mut validation = Validation::new(algorithm);
        validation.leeway = leeway_secs;
        validation.validate_nbf = true;
        validation.validate_exp = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Ok(Self { key, validation, algorithm })
    }

    /// The pinned algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// Verify `token` and return its claims.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(AuthError::Invalid("token too long".into()));
        }
        // Check the header's alg ourselves first, so that `none` and algorithm swaps get
        // their own code instead of a generic parse error.
        let alg = header_alg(token)?;
        if alg != format!("{:?}", self.algorithm) {
            return Err(AuthError::Algorithm { found: alg, expected: self.algorithm });
        }
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            match e.kind() {
                K::ExpiredSignature => AuthError::Expired,
                K::ImmatureSignature => AuthError::NotYetValid,
                K::InvalidAlgorithm => AuthError::Algorithm { found: alg.clone(), expected: self.algorithm },
                K::InvalidSignature => AuthError::Invalid("bad signature".into()),
                other => AuthError::Invalid(format!("{other:?}")),
            }
        })?;
        let claims = data.claims;
        validate_id(&claims.sub).map_err(|e| AuthError::Invalid(format!("sub: {e}")))?;
        if claims.name.as_ref().is_some_and(|n| n.len() > 256) {
            return Err(AuthError::Invalid("name longer than 256 bytes".into()));
        }
        Ok(claims)
    }
}

fn header_alg(token: &str) -> Result<String, AuthError> {
    let header = token.split('.').next().unwrap_or_default();
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header.trim_end_matches('='))
        .map_err(|_| AuthError::Invalid("header is not base64url".into()))?;
    let json: serde_json::Value =
        serde_json::from_slice(&raw).map_err(|_| AuthError::Invalid("header is not JSON".into()))?;
    json.get("alg")
        .and_then(|a| a.as_str())
        .map(str::to_owned)
        .ok_or_else(|| AuthError::Invalid("header has no alg".into()))
}

/// Signs tokens (for `switchboard token` and tests).
pub struct Minter {
    key: EncodingKey,
    algorithm: Algorithm,
}

impl Minter {
    /// HS256 with a shared secret.
    pub fn hmac(secret: &[u8]) -> Self {
        Self { key: EncodingKey::from_secret(secret), algorithm: Algorithm::HS256 }
    }
    /// ES256 with a PKCS#8 P-256 private key (PEM).
    pub fn es256(pem: &[u8]) -> Result<Self, KeyError> {
        let key = EncodingKey::from_ec_pem(pem).map_err(|source| KeyError::Parse { kind: "ES256 private", source })?;
        Ok(Self { key, algorithm: Algorithm::ES256 })
    }
    /// EdDSA with a PKCS#8 Ed25519 private key (PEM).
    pub fn eddsa(pem: &[u8]) -> Result<Self, KeyError> {
        let key =
            EncodingKey::from_ed_pem(pem).map_err(|source| KeyError::Parse { kind: "Ed25519 private", source })?;
        Ok(Self { key, algorithm: Algorithm::EdDSA })
    }
    /// Sign `claims`.
    pub fn mint(&self, claims: &Claims) -> Result<String, jsonwebtoken::errors::Error> {
        jsonwebtoken::encode(&Header::new(self.algorithm), claims, &self.key)
    }
}

/// Current Unix time in seconds.
pub fn now_secs() -> u64 {
    switchboard_protocol::now_ms() / 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn claims(exp_offset: i64) -> Claims {
        Claims {
            sub: "alice".into(),
            name: Some("Alice".into()),
            exp: (now_secs() as i64 + exp_offset) as u64,
            nbf: None,
            iat: None,
            rooms: vec!["demo".into(), "team-*".into()],
            publish: None,
            media: Some(false),
            signal: None,
            call: None,
            max_participants: None,
        }
    }

    fn verifier() -> Verifier {
        Verifier::new(&VerifyKey::Hmac(SECRET.to_vec()), 5).unwrap()
    }

    #[test]
    fn valid_token_and_grants() {
        let token = Minter::hmac(SECRET).mint(&claims(60)).unwrap();
        let c = verifier().verify(&token).unwrap();
        assert!(c.may_join("demo") && c.may_join("team-red") && !c.may_join("other"));
        assert!(c.may_publish() && c.may_signal() && !c.may_send_media());
    }

    #[test]
    fn refusals_have_their_codes() {
        let v = verifier();
        let expired = Minter::hmac(SECRET).mint(&claims(-120)).unwrap();
        assert_eq!(v.verify(&expired).unwrap_err().code(), ErrorCode::TokenExpired);
        let mut c = claims(600);
        c.nbf = Some(now_secs() + 300);
        let early = Minter::hmac(SECRET).mint(&c).unwrap();
        assert_eq!(v.verify(&early).unwrap_err().code(), ErrorCode::TokenNotYetValid);
        let forged = Minter::hmac(b"another-secret-another-secret-xx").mint(&claims(60)).unwrap();
        assert_eq!(v.verify(&forged).unwrap_err().code(), ErrorCode::TokenInvalid);
        // alg: none with an empty signature.
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let none = format!(
            "{}.{}.",
            b64.encode(br#"{"alg":"none","typ":"JWT"}"#),
            b64.encode(serde_json::to_vec(&claims(60)).unwrap())
        );
        assert_eq!(v.verify(&none).unwrap_err().code(), ErrorCode::TokenAlgorithm);
        assert_eq!(v.verify("garbage").unwrap_err().code(), ErrorCode::TokenInvalid);
        let mut bad_sub = claims(60);
        bad_sub.sub = "a.b".into();
        let t = Minter::hmac(SECRET).mint(&bad_sub).unwrap();
        assert_eq!(v.verify(&t).unwrap_err().code(), ErrorCode::TokenInvalid);
    }

    #[test]
    fn weak_secret_refused() {
        assert!(matches!(Verifier::new(&VerifyKey::Hmac(b"short".to_vec()), 0), Err(KeyError::WeakSecret)));
    }
}

#[cfg(test)]
mod asymmetric_tests {
    use super::*;

    fn claims() -> Claims {
        Claims::new("dave", &["*"], 60)
    }

    #[test]
    fn es256_and_eddsa_verify_and_pin_their_algorithm() {
        for (alg, minter_for, key_for) in [
            (
                &rcgen::PKCS_ECDSA_P256_SHA256,
                Minter::es256 as fn(&[u8]) -> Result<Minter, KeyError>,
                VerifyKey::Es256Pem as fn(Vec<u8>) -> VerifyKey,
            ),
            (&rcgen::PKCS_ED25519, Minter::eddsa, VerifyKey::EdDsaPem),
        ] {
            let pair = rcgen::KeyPair::generate_for(alg).unwrap();
            let minter = minter_for(pair.serialize_pem().as_bytes()).unwrap();
            let verifier = Verifier::new(&key_for(pair.public_key_pem().into_bytes()), 0).unwrap();
            let token = minter.mint(&claims()).unwrap();
            assert_eq!(verifier.verify(&token).unwrap().sub, "dave");
            // An HS256 token signed with the public key as the secret (the classic
            // algorithm-confusion attack) is refused by algorithm, not by signature.
            let confused = Minter::hmac(pair.public_key_pem().as_bytes()).mint(&claims()).unwrap();
            assert_eq!(verifier.verify(&confused).unwrap_err().code(), ErrorCode::TokenAlgorithm);
        }
    }
}
