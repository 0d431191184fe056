//! argon2id hashing in bounded memory.
//!
//! Each argon2id run works in `m_cost` = 19 MiB of memory blocks. Left to the crate, every
//! run allocates them and frees them afterwards, on whichever blocking thread it ran on, and
//! glibc keeps that memory: after the first free of such a large (mmapped) chunk it raises
//! its mmap threshold above it, so the next ones come from the per-thread malloc arenas,
//! which keep their freed top (the trim threshold rises too). An accounts node sat at
//! 250-300 MB RSS after a few dozen logins, over 600 MB after 40 logins eight at a time
//! (`tests/tests/accounts_memory.rs`). Here a fixed number of runs go at once, each in a
//! buffer of blocks taken from a pool and put back afterwards (never freed): argon2's memory
//! is `slots × 19 MiB` at most, allocated on first use.

use argon2::password_hash::phc::{Output, PasswordHash, Salt};
use argon2::password_hash::Error as HashError;
use argon2::{Algorithm, Argon2, Block, Params, Version};
use std::sync::{Arc, Mutex};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Memory blocks (1 KiB each) of one run with the default parameters, the ones
/// [`Hasher::hash`] uses. Stored hashes asking for more are refused.
const BLOCKS: usize = Params::DEFAULT_M_COST as usize;

/// Why a hashing job did not run.
#[derive(Debug, thiserror::Error)]
pub enum HashingError {
    /// argon2 refused the input or the stored hash.
    #[error("{0}")]
    Argon2(#[from] HashError),
    /// The blocking thread failed (a panic) or the pool is shut.
    #[error("hashing thread: {0}")]
    Thread(String),
}

/// Runs argon2id, `slots` runs at a time, each in a reused block buffer.
pub struct Hasher {
    slots: Arc<Semaphore>,
    buffers: Arc<Mutex<Vec<Box<[Block]>>>>,
}

/// A buffer on loan from the pool; back to it when dropped (also when the request that
/// asked for the run went away before the run finished).
struct Loan {
    blocks: Option<Box<[Block]>>,
    pool: Arc<Mutex<Vec<Box<[Block]>>>>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Loan {
    fn drop(&mut self) {
        if let Some(blocks) = self.blocks.take() {
            self.pool.lock().unwrap_or_else(|e| e.into_inner()).push(blocks);
        }
    }
}

impl Hasher {
    /// A hasher running at most `slots` (at least 1) hashes at once.
    pub fn new(slots: usize) -> Self {
        Self { slots: Arc::new(Semaphore::new(slots.max(1))), buffers: Arc::default() }
    }

    /// A buffer from the pool, or a new one (the pool never holds more than the slots).
    async fn loan(&self) -> Result<Loan, HashingError> {
        let permit = self.slots.clone().acquire_owned().await.map_err(|e| HashingError::Thread(e.to_string()))?;
        let reused = self.buffers.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let blocks = reused.unwrap_or_else(|| vec![Block::new(); BLOCKS].into_boxed_slice());
        Ok(Loan { blocks: Some(blocks), pool: self.buffers.clone(), _permit: permit })
    }

    /// Run `work` on a blocking thread with a loaned buffer.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut [Block]) -> Result<T, HashError> + Send + 'static,
    ) -> Result<T, HashingError> {
        let mut loan = self.loan().await?;
        let result = actix_web::web::block(move || {
            let blocks = loan.blocks.as_deref_mut().unwrap_or_default();
            work(blocks)
        })
        .await
        .map_err(|e| HashingError::Thread(e.to_string()))?;
        Ok(result?)
    }

    /// The argon2id PHC string of `password` (default parameters, a fresh random salt).
    pub async fn hash(&self, password: String) -> Result<String, HashingError> {
        self.run(move |blocks| hash_with(password.as_bytes(), blocks)).await
    }

    /// Whether `password` matches the PHC string `hash`.
    pub async fn verify(&self, password: String, hash: String) -> Result<bool, HashingError> {
        self.run(move |blocks| verify_with(password.as_bytes(), &hash, blocks)).await
    }

    /// [`Hasher::hash`] on the calling thread (for start-up, before serving).
    pub fn hash_now(&self, password: &[u8]) -> Result<String, HashError> {
        let mut blocks = self
            .buffers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
            .unwrap_or_else(|| vec![Block::new(); BLOCKS].into_boxed_slice());
        let result = hash_with(password, &mut blocks);
        self.buffers.lock().unwrap_or_else(|e| e.into_inner()).push(blocks);
        result
    }
}

/// Hash with argon2id, default parameters, a fresh random salt, in `blocks`.
fn hash_with(password: &[u8], blocks: &mut [Block]) -> Result<String, HashError> {
    // 16 random bytes, the PHC recommendation. `rand`'s thread RNG is a CSPRNG seeded by
    // the OS.
    let salt: [u8; 16] = rand::random();
    let params = Params::default();
    let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
    Argon2::new(Algorithm::Argon2id, Version::default(), params.clone())
        .hash_password_into_with_memory(password, &salt, &mut out, blocks)?;
    let phc = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::default().into()),
        params: (&params).try_into()?,
        salt: Some(Salt::new(&salt)?),
        hash: Some(Output::new(&out)?),
    };
    Ok(phc.to_string())
}

/// Check `password` against the PHC string `hash` (its own parameters, if they fit in
/// `blocks`), comparing in constant time.
fn verify_with(password: &[u8], hash: &str, blocks: &mut [Block]) -> Result<bool, HashError> {
    let phc = PasswordHash::new(hash)?;
    let (Some(salt), Some(expected)) = (&phc.salt, &phc.hash) else {
        return Ok(false);
    };
    let algorithm = Algorithm::try_from(phc.algorithm.as_str())?;
    let version = phc.version.map(Version::try_from).transpose()?.unwrap_or_default();
    let params = Params::try_from(&phc)?;
    if params.m_cost() as usize > blocks.len() {
        // Not a hash this node made; verifying it would need memory beyond the bound.
        return Err(HashError::ParamsInvalid);
    }
    let mut out = vec![0u8; expected.len()];
    Argon2::new(algorithm, version, params).hash_password_into_with_memory(password, salt, &mut out, blocks)?;
    // `Output`'s equality is constant-time.
    Ok(Output::new(&out)? == *expected)
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::password_hash::{PasswordHasher, PasswordVerifier};

    #[actix_web::test]
    async fn hashes_are_argon2id_salted_and_verify() {
        let hasher = Hasher::new(1);
        let a = hasher.hash("correct horse".into()).await.unwrap();
        let b = hasher.hash("correct horse".into()).await.unwrap();
        assert!(a.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{a}");
        assert_ne!(a, b, "each hash has its own salt");
        assert!(hasher.verify("correct horse".into(), a.clone()).await.unwrap());
        assert!(!hasher.verify("wrong horse".into(), a.clone()).await.unwrap());
        assert!(hasher.verify("x".into(), "not a phc string".into()).await.is_err());
        // The crate's own verifier agrees (hashes stored before this module still verify,
        // and these verify elsewhere).
        assert!(Argon2::default().verify_password(b"correct horse", a.as_str()).is_ok());
        let stored: PasswordHash = Argon2::default().hash_password_with_salt(b"old", b"0123456789abcdef").unwrap();
        let stored = stored.to_string();
        assert!(hasher.verify("old".into(), stored).await.unwrap());
        // One buffer served all of it.
        assert_eq!(hasher.buffers.lock().unwrap().len(), 1);
    }

    #[actix_web::test]
    async fn hashes_needing_more_memory_than_the_bound_are_refused() {
        let params = Params::new(2 * Params::DEFAULT_M_COST, 1, 1, None).unwrap();
        let big = Argon2::new(Algorithm::Argon2id, Version::default(), params);
        let stored: PasswordHash = big.hash_password_with_salt(b"pw", b"0123456789abcdef").unwrap();
        let stored = stored.to_string();
        assert!(Hasher::new(1).verify("pw".into(), stored).await.is_err());
    }
}
