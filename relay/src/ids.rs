//! Random identifiers.

use rand::Rng;

const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";

/// A random id of `len` alphanumeric characters (62 symbols: ~5.95 bits each).
pub fn random_id(len: usize) -> String {
    let mut rng = rand::rng();
    (0..len).map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char).collect()
}

/// A session id: 22 alphanumeric characters (about 131 bits).
pub fn session_id() -> String {
    random_id(22)
}
