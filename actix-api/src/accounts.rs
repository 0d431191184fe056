//! Built-in accounts (`--accounts`, off by default), for deployments without an identity
//! provider of their own: `POST /api/auth/register` and `POST /api/auth/login` take a
//! username and password and answer with the same kind of JWT the edges verify.
//!
//! Users live in the bus's `users` key-value bucket (JetStream KV `<prefix>_users` with
//! NATS, an in-process map on the embedded node), one JSON record per username, with an
//! argon2id hash of the password. Registration creates the key with a create-only write, so
//! of two concurrent registrations of one name exactly one wins. Login and registration
//! attempts are rate limited per node (per username and per client address); hashing runs
//! on blocking threads, a few at a time, in reused buffers (`accounts/hashing.rs`). Errors
//! follow the admin API's JSON shape: `{"error": {"code": "...", "message": "..."}}`.

mod credentials;
mod hashing;

use crate::http::AppState;
use actix_web::http::{header, Method, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use anyhow::{bail, Context};
use credentials::{normalize_name, validate_password, validate_username, InputError, UserRecord, PASSWORD_LEN};
use serde::Deserialize;
use serde_json::json;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use switchboard_node::NodeArgs;
use switchboard_relay::auth::{Claims, Minter, DEV_SECRET};
use switchboard_relay::bus::Bucket;
use switchboard_relay::limiter::RateLimiter;
use switchboard_relay::{AllowedOrigins, BusError, Verifier};

/// Largest request body the account endpoints read.
const MAX_BODY_BYTES: usize = 16 * 1024;
/// Keys each rate limiter remembers at most (about 100 bytes each).
const MAX_LIMITER_KEYS: usize = 100_000;
/// The rate limits' period: the flags count attempts per minute.
const LIMIT_PERIOD: Duration = Duration::from_secs(60);

/// Flags of the built-in accounts.
#[derive(Debug, Clone, clap::Args)]
pub struct AccountArgs {
    /// Serve `POST /api/auth/register` and `POST /api/auth/login` (built-in username and
    /// password accounts, stored in the cluster's key-value store).
    #[arg(long, env = "SWITCHBOARD_ACCOUNTS", action = clap::ArgAction::SetTrue,
          value_parser = clap::builder::BoolishValueParser::new())]
    pub accounts: bool,
    /// Room grants of the tokens accounts receive, comma separated: ids, `prefix*`, or `*`.
    #[arg(long, env = "SWITCHBOARD_ACCOUNTS_ROOMS", value_delimiter = ',', default_value = "*")]
    pub accounts_rooms: Vec<String>,
    /// Lifetime of the tokens accounts receive, in seconds.
    #[arg(long, env = "SWITCHBOARD_ACCOUNTS_TOKEN_TTL", default_value_t = 3600)]
    pub accounts_token_ttl: u64,
    /// Login attempts per minute per username, on each node (0: unlimited).
    #[arg(long, env = "SWITCHBOARD_ACCOUNTS_LOGIN_PER_USER", default_value_t = 5)]
    pub accounts_login_per_user: u32,
    /// Login attempts per minute per client address, on each node (0: unlimited).
    #[arg(long, env = "SWITCHBOARD_ACCOUNTS_LOGIN_PER_IP", default_value_t = 20)]
    pub accounts_login_per_ip: u32,
    /// Registrations per minute per client address, on each node (0: unlimited).
    #[arg(long, env = "SWITCHBOARD_ACCOUNTS_REGISTER_PER_IP", default_value_t = 10)]
    pub accounts_register_per_ip: u32,
    /// Rate-limit by the last `X-Forwarded-For` address instead of the peer address. Only
    /// behind a proxy that appends it: otherwise clients choose their own address.
    #[arg(long, env = "SWITCHBOARD_ACCOUNTS_TRUST_FORWARDED", action = clap::ArgAction::SetTrue,
          value_parser = clap::builder::BoolishValueParser::new())]
    pub accounts_trust_forwarded: bool,
    /// PKCS#8 private key (PEM) that signs account tokens when the node verifies with
    /// `--jwt-public-key` (same `--jwt-algorithm`). With an HMAC secret the secret signs.
    #[arg(long, env = "SWITCHBOARD_JWT_PRIVATE_KEY")]
    pub jwt_private_key: Option<PathBuf>,
}

/// The built-in accounts service of a node (present only with `--accounts`).
pub struct Accounts {
    minter: Minter,
    rooms: Vec<String>,
    ttl_secs: u64,
    login_per_user: RateLimiter,
    login_per_ip: RateLimiter,
    register_per_ip: RateLimiter,
    trust_forwarded: bool,
    /// Runs argon2, a few at a time (each takes a core for tens of ms), in a fixed set of
    /// reused 19 MiB buffers (see `hashing.rs` for why).
    hasher: hashing::Hasher,
    /// Verified against for unknown usernames, so that they cost what a wrong password
    /// costs and timing does not tell which usernames exist.
    dummy_hash: String,
}

impl Accounts {
    /// The accounts service described by `args`, or `None` without `--accounts`. Fails
    /// when no key can sign tokens that `verifier` (the node's) accepts.
    pub fn from_args(args: &AccountArgs, node: &NodeArgs, verifier: &Verifier) -> anyhow::Result<Option<Self>> {
        if !args.accounts {
            return Ok(None);
        }
        let minter = minter(args, node)?;
        // Catch a private key that does not match the public key now, not at every login.
        let probe = minter.mint(&Claims::new("accounts-probe", &[], 60)).context("signing a probe token")?;
        if let Err(e) = verifier.verify(&probe) {
            bail!(
                "--accounts: the node refuses the tokens it would sign ({e}); \
                 does --jwt-private-key match --jwt-public-key?"
            );
        }
        let rooms = room_grants(&args.accounts_rooms)?;
        if args.accounts_token_ttl == 0 {
            bail!("--accounts-token-ttl must be at least 1 second");
        }
        let parallel = std::thread::available_parallelism().map_or(2, |n| n.get());
        let hasher = hashing::Hasher::new(parallel);
        let dummy_hash = hasher
            .hash_now(b"no such user: this hash only costs time")
            .map_err(|e| anyhow::anyhow!("argon2 self-test failed: {e}"))?;
        tracing::info!(rooms = ?rooms, ttl_secs = args.accounts_token_ttl, "built-in accounts enabled");
        Ok(Some(Self {
            minter,
            rooms,
            ttl_secs: args.accounts_token_ttl,
            login_per_user: RateLimiter::new(args.accounts_login_per_user, LIMIT_PERIOD, MAX_LIMITER_KEYS),
            login_per_ip: RateLimiter::new(args.accounts_login_per_ip, LIMIT_PERIOD, MAX_LIMITER_KEYS),
            register_per_ip: RateLimiter::new(args.accounts_register_per_ip, LIMIT_PERIOD, MAX_LIMITER_KEYS),
            trust_forwarded: args.accounts_trust_forwarded,
            hasher,
            dummy_hash,
        }))
    }

    /// A token for `record`, as the endpoints return it.
    fn issue(&self, record: &UserRecord) -> Result<serde_json::Value, AccountError> {
        let rooms: Vec<&str> = self.rooms.iter().map(String::as_str).collect();
        let claims = Claims { name: record.name.clone(), ..Claims::new(record.user.clone(), &rooms, self.ttl_secs) };
        let token = self.minter.mint(&claims).map_err(|e| AccountError::Internal(format!("signing: {e}")))?;
        Ok(json!({"token": token, "user": record.user, "name": record.name, "expires_at": claims.exp}))
    }
}

/// The rate-limit key of the request's client: its IP address (the last `X-Forwarded-For`
/// entry, the one the nearest proxy appended, if trusted), IPv6 by /64 since one host usually
/// holds a whole /64.
fn client_key(req: &HttpRequest, trust_forwarded: bool) -> String {
    let forwarded = trust_forwarded
        .then(|| req.headers().get_all("x-forwarded-for").last())
        .flatten()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').next())
        .and_then(|v| v.trim().parse::<IpAddr>().ok());
    match forwarded.or_else(|| req.peer_addr().map(|a| a.ip())) {
        Some(IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
        Some(IpAddr::V4(v4)) => v4.to_string(),
        None => "unknown".into(),
    }
}

/// The signing key: the HMAC secret the node verifies with, or `--jwt-private-key` when
/// the node verifies with a public key.
fn minter(args: &AccountArgs, node: &NodeArgs) -> anyhow::Result<Minter> {
    match (&node.jwt_public_key, &args.jwt_private_key) {
        (Some(_), Some(path)) => {
            let pem = std::fs::read(path).with_context(|| format!("reading --jwt-private-key {}", path.display()))?;
            Ok(match node.jwt_algorithm.to_ascii_lowercase().as_str() {
                "es256" => Minter::es256(&pem)?,
                "eddsa" | "ed25519" => Minter::eddsa(&pem)?,
                other => bail!("unknown --jwt-algorithm {other:?} (es256 or eddsa)"),
            })
        }
        (Some(_), None) => bail!(
            "--accounts needs --jwt-private-key (SWITCHBOARD_JWT_PRIVATE_KEY): tokens are verified with \
             --jwt-public-key, so the node needs the matching private key to sign the tokens accounts receive"
        ),
        (None, Some(_)) => bail!(
            "--jwt-private-key goes with --jwt-public-key; with an HMAC secret (--jwt-secret) accounts sign with \
             the secret"
        ),
        (None, None) => {
            if node.jwt_secret.is_none() {
                tracing::warn!("built-in accounts sign tokens with the DEVELOPMENT secret: set --jwt-secret");
            }
            Ok(Minter::hmac(node.jwt_secret.as_deref().unwrap_or(DEV_SECRET).as_bytes()))
        }
    }
}

/// Check `--accounts-rooms`: each grant `*`, `prefix*` or a room id.
fn room_grants(grants: &[String]) -> anyhow::Result<Vec<String>> {
    let grants: Vec<String> = grants.iter().map(|g| g.trim().to_owned()).filter(|g| !g.is_empty()).collect();
    for grant in &grants {
        let id = grant.strip_suffix('*').unwrap_or(grant);
        if !id.is_empty() {
            switchboard_protocol::subject::validate_id(id).with_context(|| format!("--accounts-rooms: {grant:?}"))?;
        }
    }
    if grants.is_empty() {
        tracing::warn!("--accounts-rooms is empty: account tokens grant no room");
    }
    Ok(grants)
}

/// Register the account routes (they answer `accounts_disabled` without `--accounts`),
/// callable cross-origin by `origins` (CORS).
pub fn routes(cfg: &mut web::ServiceConfig, origins: &AllowedOrigins) {
    // The handlers parse the body themselves, so that a disabled node answers 404 whatever
    // the body, and bad JSON gets this module's error shape.
    let body_limit = || web::PayloadConfig::new(MAX_BODY_BYTES);
    let cors = || crate::cors::cors(origins, &[Method::POST]);
    cfg.service(
        web::resource("/api/auth/register").app_data(body_limit()).wrap(cors()).route(web::post().to(register)),
    )
    .service(web::resource("/api/auth/login").app_data(body_limit()).wrap(cors()).route(web::post().to(login)));
}

/// Why an account request failed; rendered as the JSON error with its HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    /// `--accounts` is off.
    #[error("built-in accounts are disabled on this node (start it with --accounts)")]
    Disabled,
    /// The body is not the expected JSON.
    #[error("{0}")]
    InvalidJson(String),
    /// A username, password or name rule was broken.
    #[error(transparent)]
    Input(#[from] InputError),
    /// Someone registered the username first.
    #[error("username {0:?} is taken")]
    UsernameTaken(String),
    /// Unknown username or wrong password (deliberately the same).
    #[error("wrong username or password")]
    InvalidCredentials,
    /// Too many attempts; retry after the duration.
    #[error("too many attempts: retry in {} s", retry_after_secs(*.0))]
    RateLimited(Duration),
    /// The user store (bus) failed.
    #[error("the user store is unavailable: {0}")]
    Unavailable(String),
    /// A bug or a corrupt record.
    #[error("internal error: {0}")]
    Internal(String),
}

impl AccountError {
    /// The stable error code.
    pub fn code(&self) -> &'static str {
        match self {
            AccountError::Disabled => "accounts_disabled",
            AccountError::InvalidJson(_) => "invalid_json",
            AccountError::Input(InputError::Username(_)) => "invalid_username",
            AccountError::Input(InputError::Password(_)) => "weak_password",
            AccountError::Input(InputError::Name(_)) => "invalid_name",
            AccountError::UsernameTaken(_) => "username_taken",
            AccountError::InvalidCredentials => "invalid_credentials",
            AccountError::RateLimited(_) => "rate_limited",
            AccountError::Unavailable(_) => "unavailable",
            AccountError::Internal(_) => "internal",
        }
    }
}

fn retry_after_secs(d: Duration) -> u64 {
    // Round up: retrying after the floor would be refused again.
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

impl ResponseError for AccountError {
    fn status_code(&self) -> StatusCode {
        match self {
            AccountError::Disabled => StatusCode::NOT_FOUND,
            AccountError::InvalidJson(_) | AccountError::Input(_) => StatusCode::BAD_REQUEST,
            AccountError::UsernameTaken(_) => StatusCode::CONFLICT,
            AccountError::InvalidCredentials => StatusCode::UNAUTHORIZED,
            AccountError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            AccountError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            AccountError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        response.insert_header((header::CACHE_CONTROL, "no-store"));
        if let AccountError::RateLimited(after) = self {
            response.insert_header((header::RETRY_AFTER, retry_after_secs(*after).max(1).to_string()));
        }
        response.json(json!({"error": {"code": self.code(), "message": self.to_string()}}))
    }
}

fn unavailable(e: BusError) -> AccountError {
    AccountError::Unavailable(e.to_string())
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, AccountError> {
    serde_json::from_slice(body).map_err(|e| AccountError::InvalidJson(e.to_string()))
}

/// Body of `POST /api/auth/register` (no `Debug`: it holds a password).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterBody {
    username: String,
    password: String,
    #[serde(default)]
    name: Option<String>,
}

/// Body of `POST /api/auth/login`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginBody {
    username: String,
    password: String,
}

fn log_refusal(action: &str, client: &str, user: Option<&str>, e: &AccountError) {
    match e {
        AccountError::Unavailable(_) | AccountError::Internal(_) => {
            tracing::warn!(action, client, user, code = e.code(), error = %e, "account request failed")
        }
        _ => tracing::info!(action, client, user, code = e.code(), "account request refused"),
    }
}

async fn register(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Bytes,
) -> Result<HttpResponse, AccountError> {
    let accounts = state.accounts.as_ref().ok_or(AccountError::Disabled)?;
    let client = client_key(&req, accounts.trust_forwarded);
    let mut user = None;
    let result = async {
        accounts.register_per_ip.check(&client, Instant::now()).map_err(AccountError::RateLimited)?;
        let body: RegisterBody = parse(&body)?;
        validate_username(&body.username)?;
        user = Some(body.username.clone());
        validate_password(&body.password, &body.username)?;
        let name = normalize_name(body.name)?;
        let bus = state.node.bus();
        // Not authoritative (the create below is), but spares a hash for a name in use.
        if bus.kv_get(Bucket::Users, &body.username).await.map_err(unavailable)?.is_some() {
            return Err(AccountError::UsernameTaken(body.username));
        }
        let password_hash =
            accounts.hasher.hash(body.password).await.map_err(|e| AccountError::Internal(format!("hashing: {e}")))?;
        let record =
            UserRecord { user: body.username, name, password_hash, created_at_ms: switchboard_protocol::now_ms() };
        let value = serde_json::to_vec(&record).map_err(|e| AccountError::Internal(e.to_string()))?;
        match bus.kv_create(Bucket::Users, &record.user, value.into()).await {
            Ok(_) => {}
            Err(BusError::Conflict(_)) => return Err(AccountError::UsernameTaken(record.user)),
            Err(e) => return Err(unavailable(e)),
        }
        accounts.issue(&record)
    }
    .await;
    match result {
        Ok(body) => {
            tracing::info!(client, user, "account registered");
            Ok(HttpResponse::Created().insert_header((header::CACHE_CONTROL, "no-store")).json(body))
        }
        Err(e) => {
            log_refusal("register", &client, user.as_deref(), &e);
            Err(e)
        }
    }
}

async fn login(req: HttpRequest, state: web::Data<AppState>, body: web::Bytes) -> Result<HttpResponse, AccountError> {
    let accounts = state.accounts.as_ref().ok_or(AccountError::Disabled)?;
    let client = client_key(&req, accounts.trust_forwarded);
    let mut user = None;
    let result = async {
        let now = Instant::now();
        accounts.login_per_ip.check(&client, now).map_err(AccountError::RateLimited)?;
        let body: LoginBody = parse(&body)?;
        // Such a username or password cannot be registered, and the rules are public, so
        // refusing them without hashing reveals nothing.
        if validate_username(&body.username).is_err() || body.password.len() > *PASSWORD_LEN.end() {
            return Err(AccountError::InvalidCredentials);
        }
        user = Some(body.username.clone());
        accounts.login_per_user.check(&body.username, now).map_err(AccountError::RateLimited)?;
        let entry = state.node.bus().kv_get(Bucket::Users, &body.username).await.map_err(unavailable)?;
        let record = entry
            .map(|e| serde_json::from_slice::<UserRecord>(&e.value))
            .transpose()
            .map_err(|e| AccountError::Internal(format!("stored user {:?}: {e}", body.username)))?;
        let hash = record.as_ref().map_or_else(|| accounts.dummy_hash.clone(), |r| r.password_hash.clone());
        let matches = accounts
            .hasher
            .verify(body.password, hash)
            .await
            .map_err(|e| AccountError::Internal(format!("stored hash of {:?}: {e}", body.username)))?;
        match record {
            Some(record) if matches => accounts.issue(&record),
            _ => Err(AccountError::InvalidCredentials),
        }
    }
    .await;
    match result {
        Ok(body) => {
            tracing::info!(client, user, "account logged in");
            Ok(HttpResponse::Ok().insert_header((header::CACHE_CONTROL, "no-store")).json(body))
        }
        Err(e) => {
            log_refusal("login", &client, user.as_deref(), &e);
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::body::MessageBody;

    #[test]
    fn errors_render_as_json_with_codes_and_retry_after() {
        let e = AccountError::RateLimited(Duration::from_millis(11_200));
        let response = e.error_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers().get(header::RETRY_AFTER).and_then(|v| v.to_str().ok()), Some("12"));
        let body = response.into_body().try_into_bytes().unwrap_or_default();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["code"], "rate_limited");
        let weak = AccountError::from(InputError::Password("too short".into()));
        assert_eq!((weak.status_code(), weak.code()), (StatusCode::BAD_REQUEST, "weak_password"));
        assert_eq!(AccountError::Disabled.status_code(), StatusCode::NOT_FOUND);
    }

    #[test]
    fn client_keys() {
        use actix_web::test::TestRequest;
        let peer: std::net::SocketAddr = "192.0.2.1:5000".parse().unwrap();
        let req = TestRequest::default()
            .peer_addr(peer)
            .insert_header(("x-forwarded-for", "198.51.100.1, 203.0.113.9"))
            .to_http_request();
        assert_eq!(client_key(&req, false), "192.0.2.1", "not trusted by default");
        assert_eq!(client_key(&req, true), "203.0.113.9", "the entry the proxy appended");
        let garbage = TestRequest::default().peer_addr(peer).insert_header(("x-forwarded-for", "x")).to_http_request();
        assert_eq!(client_key(&garbage, true), "192.0.2.1");
        let v6 = TestRequest::default().peer_addr("[2001:db8:1:2:3:4:5:6]:443".parse().unwrap()).to_http_request();
        assert_eq!(client_key(&v6, false), "2001:db8:1:2::/64");
        let mapped = TestRequest::default().peer_addr("[::ffff:192.0.2.7]:443".parse().unwrap()).to_http_request();
        assert_eq!(client_key(&mapped, false), "192.0.2.7");
    }

    #[test]
    fn room_grants_are_checked() {
        let ok: Vec<String> = ["*", "team-*", "lobby", " "].iter().map(|s| s.to_string()).collect();
        assert_eq!(room_grants(&ok).unwrap(), vec!["*", "team-*", "lobby"]);
        assert!(room_grants(&["a.b".to_string()]).is_err());
    }
}
