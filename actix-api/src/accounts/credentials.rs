//! What a built-in account is made of: the username, password and display-name rules, the
//! stored record (hashing is in `hashing.rs`).

use serde::{Deserialize, Serialize};

/// Username length bounds, in characters (all ASCII).
pub const USERNAME_LEN: std::ops::RangeInclusive<usize> = 3..=32;
/// Password length bounds, in bytes of UTF-8.
pub const PASSWORD_LEN: std::ops::RangeInclusive<usize> = 8..=256;
/// Longest display name, in characters.
pub const NAME_MAX_CHARS: usize = 64;

/// Input refused by the account rules, with a message for the user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    /// The username breaks the rules.
    #[error("{0}")]
    Username(String),
    /// The password is too short, too long, or the username.
    #[error("{0}")]
    Password(String),
    /// The display name is too long or has control characters.
    #[error("{0}")]
    Name(String),
}

/// Check a username: 3-32 characters of `a-z`, `0-9`, `_`, `-`. Upper case is refused
/// rather than folded, so that the id a user types is exactly the id others see.
pub fn validate_username(username: &str) -> Result<(), InputError> {
    let len = username.chars().count();
    if !USERNAME_LEN.contains(&len) {
        return Err(InputError::Username(format!(
            "username must be {} to {} characters long (got {len})",
            USERNAME_LEN.start(),
            USERNAME_LEN.end()
        )));
    }
    if username.chars().any(|c| c.is_ascii_uppercase()) {
        return Err(InputError::Username(format!(
            "username must be lower case (try {:?})",
            username.to_ascii_lowercase()
        )));
    }
    if let Some(c) = username.chars().find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '_' | '-')) {
        return Err(InputError::Username(format!("username may contain only a-z, 0-9, '_' and '-' (found {c:?})")));
    }
    // Ids the server speaks as (server messages come from `server`) or that users would
    // read as the operator's: one list for every token issuer of the node.
    if switchboard_relay::admin::is_reserved_user_id(username) {
        return Err(InputError::Username(format!("username {username:?} is reserved")));
    }
    Ok(())
}

/// Check a new password: 8-256 bytes and not the username (in any case).
pub fn validate_password(password: &str, username: &str) -> Result<(), InputError> {
    if password.len() < *PASSWORD_LEN.start() {
        return Err(InputError::Password(format!("password must be at least {} bytes long", PASSWORD_LEN.start())));
    }
    if password.len() > *PASSWORD_LEN.end() {
        return Err(InputError::Password(format!("password must be at most {} bytes long", PASSWORD_LEN.end())));
    }
    if password.eq_ignore_ascii_case(username) {
        return Err(InputError::Password("password must not be the username".into()));
    }
    Ok(())
}

/// Check an optional display name: trimmed, empty means none, at most 64 characters, no
/// control characters.
pub fn normalize_name(name: Option<String>) -> Result<Option<String>, InputError> {
    let Some(name) = name.map(|n| n.trim().to_owned()).filter(|n| !n.is_empty()) else {
        return Ok(None);
    };
    if name.chars().count() > NAME_MAX_CHARS {
        return Err(InputError::Name(format!("name must be at most {NAME_MAX_CHARS} characters long")));
    }
    if name.chars().any(char::is_control) {
        return Err(InputError::Name("name must not contain control characters".into()));
    }
    Ok(Some(name))
}

/// A user as stored in the `users` bucket (JSON, key = username).
#[derive(Serialize, Deserialize)]
pub struct UserRecord {
    /// The username, also the token's `sub`.
    pub user: String,
    /// Display name, the token's `name`.
    #[serde(default)]
    pub name: Option<String>,
    /// argon2id PHC string (`$argon2id$v=19$m=...,t=...,p=...$salt$hash`).
    pub password_hash: String,
    /// Registration time, Unix milliseconds.
    pub created_at_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn username_rules() {
        for ok in ["abc", "alice_01", "a-b-c", &"x".repeat(32)] {
            assert_eq!(validate_username(ok), Ok(()), "{ok}");
        }
        for bad in ["ab", "", &"x".repeat(33), "alice.b", "al ice", "élise", "a*b", "server", "admin"] {
            assert!(matches!(validate_username(bad), Err(InputError::Username(_))), "{bad}");
        }
        let Err(InputError::Username(msg)) = validate_username("Alice") else { panic!("upper case accepted") };
        assert!(msg.contains("lower case") && msg.contains("\"alice\""), "{msg}");
        // Every valid username is a valid subject token and user id.
        assert!(switchboard_protocol::subject::validate_id("a_b-c9").is_ok());
    }

    #[test]
    fn password_rules() {
        assert_eq!(validate_password("correct horse", "alice"), Ok(()));
        assert!(validate_password("short", "alice").is_err());
        assert!(validate_password(&"x".repeat(257), "alice").is_err());
        assert_eq!(validate_password(&"x".repeat(256), "alice"), Ok(()));
        assert!(validate_password("alice_01", "alice_01").is_err());
        assert!(validate_password("ALICE_01", "alice_01").is_err());
    }

    #[test]
    fn name_rules() {
        assert_eq!(normalize_name(None), Ok(None));
        assert_eq!(normalize_name(Some("  ".into())), Ok(None));
        assert_eq!(normalize_name(Some(" Alice A. ".into())), Ok(Some("Alice A.".into())));
        assert_eq!(normalize_name(Some("é".repeat(64))), Ok(Some("é".repeat(64))));
        assert!(normalize_name(Some("é".repeat(65))).is_err());
        assert!(normalize_name(Some("a\nb".into())).is_err());
    }
}
