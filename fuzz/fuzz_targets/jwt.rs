//! Token verification. Two properties: arbitrary text is never accepted (nobody forges an
//! HS256 signature by chance, so an `Ok` would be a bypass), and a genuine token with
//! fuzzer-chosen bytes changed is either refused or still means exactly what was signed
//! (base64's spare bits may change without changing the bytes they decode to).
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use switchboard_relay::auth::{Claims, Minter, Verifier, VerifyKey};

const SECRET: &[u8] = b"switchboard-fuzz-secret-0123456789abcdef";

#[derive(Debug, Arbitrary)]
enum Input {
    Raw(String),
    Mutated { sub: String, rooms: Vec<String>, edits: Vec<(u16, u8)>, cut: Option<u16> },
}

fuzz_target!(|input: Input| {
    let verifier = Verifier::new(&VerifyKey::Hmac(SECRET.to_vec()), 0).expect("verifier");
    match input {
        Input::Raw(token) => assert!(verifier.verify(&token).is_err(), "accepted an unsigned token: {token:?}"),
        Input::Mutated { sub, rooms, edits, cut } => {
            let rooms: Vec<&str> = rooms.iter().map(String::as_str).collect();
            let claims = Claims::new(&sub, &rooms, 3600);
            let Ok(token) = Minter::hmac(SECRET).mint(&claims) else { return };
            let mut bytes = token.clone().into_bytes();
            for (at, byte) in edits {
                let n = bytes.len();
                bytes[usize::from(at) % n] = byte;
            }
            if let Some(cut) = cut {
                bytes.truncate(usize::from(cut) % (bytes.len() + 1));
            }
            let Ok(mutated) = String::from_utf8(bytes) else { return };
            if let Ok(got) = verifier.verify(&mutated) {
                assert_eq!(got.sub, claims.sub, "a changed token verified with another subject");
                assert_eq!(got.rooms, claims.rooms, "a changed token verified with other rooms");
                assert_eq!(got.exp, claims.exp);
            }
        }
    }
});
