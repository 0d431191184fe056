//! `switchboard token`: mint a development token.

use anyhow::Context;
use switchboard_relay::auth::{Claims, Minter, DEV_SECRET};

/// Arguments of `switchboard token`.
#[derive(Debug, clap::Args)]
pub struct TokenArgs {
    /// The user id (`sub`).
    #[arg(long)]
    pub sub: String,
    /// Display name.
    #[arg(long)]
    pub name: Option<String>,
    /// A room the token grants (repeat for several; `prefix*` and `*` allowed).
    #[arg(long = "room", required = true)]
    pub rooms: Vec<String>,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    pub ttl: u64,
    /// Deny publishing room messages.
    #[arg(long)]
    pub no_publish: bool,
    /// Deny sending media.
    #[arg(long)]
    pub no_media: bool,
    /// Deny signaling.
    #[arg(long)]
    pub no_signal: bool,
    /// HS256 secret (at least 32 bytes); defaults to the development secret.
    #[arg(long, env = "SWITCHBOARD_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// Sign with this PKCS#8 private key (PEM) instead of the secret.
    #[arg(long, env = "SWITCHBOARD_JWT_PRIVATE_KEY")]
    pub jwt_private_key: Option<std::path::PathBuf>,
    /// Algorithm of `--jwt-private-key`: `es256` or `eddsa`.
    #[arg(long, env = "SWITCHBOARD_JWT_ALGORITHM", default_value = "es256")]
    pub jwt_algorithm: String,
}

/// Print a signed token on stdout.
pub fn run(args: TokenArgs) -> anyhow::Result<()> {
    let minter = match &args.jwt_private_key {
        Some(path) => {
            let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            match args.jwt_algorithm.to_ascii_lowercase().as_str() {
                "es256" => Minter::es256(&pem)?,
                "eddsa" => Minter::eddsa(&pem)?,
                other => anyhow::bail!("unknown --jwt-algorithm {other:?} (es256 or eddsa)"),
            }
        }
        None => Minter::hmac(args.jwt_secret.as_deref().unwrap_or(DEV_SECRET).as_bytes()),
    };
    let rooms: Vec<&str> = args.rooms.iter().map(String::as_str).collect();
    let claims = Claims {
        name: args.name,
        publish: args.no_publish.then_some(false),
        media: args.no_media.then_some(false),
        signal: args.no_signal.then_some(false),
        ..Claims::new(args.sub, &rooms, args.ttl)
    };
    switchboard_protocol::subject::validate_id(&claims.sub).context("--sub")?;
    // Refused rather than warned about: a token for `server` lets its holder pose as the
    // sender of the operator's server messages, and nothing legitimate needs one.
    if switchboard_relay::admin::is_reserved_user_id(&claims.sub) {
        anyhow::bail!(
            "--sub {:?} is reserved (reserved user ids: {}): choose another",
            claims.sub,
            switchboard_relay::admin::RESERVED_USER_IDS.join(", ")
        );
    }
    println!("{}", minter.mint(&claims)?);
    Ok(())
}
