//! Passwords and session tokens.
//!
//! Passwords are hashed with argon2id (default parameters, random salt) on a blocking thread,
//! never stored or logged in clear. Sessions are HS256 JWTs signed with `PARLEY_JWT_SECRET`;
//! the acting user of every request comes from a verified token, never from an argument.
//! Tokens name this deployment as issuer and audience, and both are checked.
//!
//! Hashing is bounded: at most one argon2 computation per core runs at once (each takes
//! ~19 MiB), and when too many wait the request is refused (`RATE_LIMITED`) instead of
//! queueing without end.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{self, PasswordHash, SaltString};
use argon2::Argon2;
use chrono::Utc;
use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use parley_domain::{Password, UserId};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

/// How long a session token is valid.
pub const TOKEN_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// Why authentication failed. Deliberately vague towards clients.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("invalid or expired token")]
    InvalidToken,
    #[error("cannot hash password: {0}")]
    Hashing(String),
    #[error("too many password checks waiting; retry shortly")]
    Busy,
}

/// The default issuer and audience of tokens.
pub const DEFAULT_AUDIENCE: &str = "parley";

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    iss: String,
    aud: String,
    iat: i64,
    exp: i64,
}

/// Signs and verifies session tokens.
#[derive(Clone)]
pub struct Tokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    ttl: Duration,
    audience: String,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("ttl", &self.ttl)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

impl Tokens {
    pub fn new(secret: &SecretString) -> Self {
        Self::with_ttl(secret, TOKEN_TTL)
    }

    pub fn with_ttl(secret: &SecretString, ttl: Duration) -> Self {
        let bytes = secret.expose_secret().as_bytes();
        Self {
            encoding: EncodingKey::from_secret(bytes),
            decoding: DecodingKey::from_secret(bytes),
            ttl,
            audience: DEFAULT_AUDIENCE.to_owned(),
        }
    }

    /// Tokens issued for, and only accepted by, `audience` (a deployment's name): a token
    /// of another deployment that shares the secret is refused.
    pub fn for_audience(mut self, audience: impl Into<String>) -> Self {
        self.audience = audience.into();
        self
    }

    /// A token for `user`, valid for the configured time.
    pub fn issue(&self, user: UserId) -> Result<String, AuthError> {
        let now = Utc::now().timestamp();
        let claims = Claims {
            sub: user.to_string(),
            iss: self.audience.clone(),
            aud: self.audience.clone(),
            iat: now,
            exp: now + self.ttl.as_secs() as i64,
        };
        encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|_| AuthError::InvalidToken)
    }

    /// The user a token was issued to, if its signature, expiry, issuer and audience check
    /// out. (Whether that user exists here is the caller's check.)
    pub fn verify(&self, token: &str) -> Result<UserId, AuthError> {
        self.verify_session(token).map(|(user, _expires)| user)
    }

    /// Like [`Tokens::verify`], with the moment the token expires.
    pub fn verify_session(&self, token: &str) -> Result<(UserId, SystemTime), AuthError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::InvalidToken);
        }
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.set_issuer(&[&self.audience]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let data = decode::<Claims>(token, &self.decoding, &validation)
            .map_err(|_| AuthError::InvalidToken)?;
        let user = UserId::parse(&data.claims.sub).map_err(|_| AuthError::InvalidToken)?;
        let expires = u64::try_from(data.claims.exp).map_err(|_| AuthError::InvalidToken)?;
        Ok((user, UNIX_EPOCH + Duration::from_secs(expires)))
    }
}

/// Longer tokens are refused unread (ours are ~250 bytes).
const MAX_TOKEN_BYTES: usize = 4096;

/// How many argon2 computations may wait for a core before more are refused.
const MAX_WAITING_PER_CORE: usize = 32;

type Job = Box<dyn FnOnce() + Send>;

/// A fixed set of hashing threads (one per core) fed by a queue, and the admission count.
/// Fixed threads also keep the allocator's per-thread arenas (each holds an argon2 block
/// array after the first hash) to one per core.
struct Hashing {
    queue: std::sync::Mutex<std::sync::mpsc::Sender<Job>>,
    admitted: tokio::sync::Semaphore,
}

fn hashing() -> &'static Hashing {
    static HASHING: OnceLock<Hashing> = OnceLock::new();
    HASHING.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let (queue, jobs) = std::sync::mpsc::channel::<Job>();
        let jobs = std::sync::Arc::new(std::sync::Mutex::new(jobs));
        for i in 0..cores {
            let jobs = jobs.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("parley-argon2-{i}"))
                .spawn(move || loop {
                    let job = match jobs.lock() {
                        Ok(jobs) => jobs.recv(),
                        Err(_) => return,
                    };
                    match job {
                        Ok(job) => job(),
                        Err(_) => return,
                    }
                });
            if let Err(error) = spawned {
                tracing::error!(%error, "cannot start a hashing thread");
            }
        }
        Hashing {
            queue: std::sync::Mutex::new(queue),
            admitted: tokio::sync::Semaphore::new(cores * (1 + MAX_WAITING_PER_CORE)),
        }
    })
}

/// Runs an argon2 computation on one of the hashing threads (one per core); `Busy` when
/// too many are already waiting. A request dropped meanwhile (a timeout, a closed
/// connection) does not free its place before its hash has run.
async fn bounded<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, AuthError> {
    let hashing = hashing();
    let admitted = hashing
        .admitted
        .try_acquire()
        .map_err(|_| AuthError::Busy)?;
    let (done, result) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        let _admitted = admitted;
        let _ = done.send(work());
    });
    hashing
        .queue
        .lock()
        .map_err(|e| AuthError::Hashing(e.to_string()))?
        .send(job)
        .map_err(|e| AuthError::Hashing(e.to_string()))?;
    result.await.map_err(|e| AuthError::Hashing(e.to_string()))
}

/// Hashes a password (argon2id, random salt) off the async runtime.
pub async fn hash_password(password: Password) -> Result<String, AuthError> {
    bounded(move || {
        let salt = SaltString::generate(&mut OsRng);
        argon2id_phc(password.expose().as_bytes(), &salt)
            .map_err(|e| AuthError::Hashing(e.to_string()))
    })
    .await?
}

/// Checks a password against a stored hash, off the async runtime. With no stored hash
/// (unknown user) a dummy hash is checked so both cases take the same time. `Busy` when too
/// many checks are waiting already.
pub async fn verify_password(password: String, stored: Option<String>) -> Result<bool, AuthError> {
    bounded(move || {
        let stored = stored.unwrap_or_else(|| DUMMY_HASH.to_owned());
        let matches = PasswordHash::new(&stored)
            .is_ok_and(|parsed| matches_phc(password.as_bytes(), &parsed).unwrap_or(false));
        matches && stored != DUMMY_HASH
    })
    .await
}

thread_local! {
    /// This hashing thread's argon2 working memory (19 MiB with the default parameters),
    /// allocated once and reused. A fresh allocation per hash fragmented glibc's heaps: 40
    /// registrations in a row left the server at 385 MB of RSS (16 MB with this).
    static ARGON2_MEMORY: std::cell::RefCell<Vec<argon2::Block>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// The argon2 output (`len` bytes) of `password` with `salt`, computed with `argon2`'s
/// parameters in this thread's reused working memory.
fn argon2_output(
    argon2: &Argon2<'_>,
    password: &[u8],
    salt: password_hash::Salt<'_>,
    len: usize,
) -> password_hash::Result<password_hash::Output> {
    let mut salt_bytes = [0u8; 64];
    let salt_bytes = salt.decode_b64(&mut salt_bytes)?;
    let blocks = argon2.params().block_count();
    password_hash::Output::init_with(len, |out| {
        ARGON2_MEMORY.with(|memory| {
            let mut memory = memory.borrow_mut();
            if memory.len() < blocks {
                memory.resize(blocks, argon2::Block::default());
            }
            Ok(argon2.hash_password_into_with_memory(
                password,
                salt_bytes,
                out,
                &mut memory[..blocks],
            )?)
        })
    })
}

/// The PHC string of an argon2id hash (default parameters) of `password` with `salt`: the
/// same text `Argon2::default().hash_password` gives, computed in reused memory.
fn argon2id_phc(password: &[u8], salt: &SaltString) -> password_hash::Result<String> {
    let params = argon2::Params::default();
    let argon2 = Argon2::new(
        argon2::Algorithm::Argon2id,
        argon2::Version::V0x13,
        params.clone(),
    );
    let salt = salt.as_salt();
    let output_len = params
        .output_len()
        .unwrap_or(argon2::Params::DEFAULT_OUTPUT_LEN);
    let hash = argon2_output(&argon2, password, salt, output_len)?;
    let phc = PasswordHash {
        algorithm: argon2::Algorithm::Argon2id.ident(),
        version: Some(argon2::Version::V0x13.into()),
        params: argon2::password_hash::ParamsString::try_from(&params)?,
        salt: Some(salt),
        hash: Some(hash),
    };
    Ok(phc.to_string())
}

/// Whether `password` hashes to `stored` (an argon2 PHC string, with its own parameters),
/// compared in constant time.
fn matches_phc(password: &[u8], stored: &PasswordHash<'_>) -> password_hash::Result<bool> {
    let algorithm = argon2::Algorithm::try_from(stored.algorithm)?;
    let version = stored
        .version
        .map(argon2::Version::try_from)
        .transpose()?
        .unwrap_or_default();
    let params = argon2::Params::try_from(stored)?;
    let (Some(salt), Some(expected)) = (stored.salt, stored.hash) else {
        return Ok(false);
    };
    let argon2 = Argon2::new(algorithm, version, params);
    let computed = argon2_output(&argon2, password, salt, expected.len())?;
    // `Output`'s equality is constant-time.
    Ok(computed == expected)
}

/// argon2id hash of a random string nobody knows; verified against for unknown users.
const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$3mUvQdSgTJh9Fxa6NVVuUWcQc+ZLpe0xmX7mA1hJ3qE";

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> Tokens {
        Tokens::new(&SecretString::from("a".repeat(32)))
    }

    #[test]
    fn a_token_names_the_user_it_was_issued_to() {
        let user = UserId::new();
        let token = tokens().issue(user).unwrap();
        assert_eq!(tokens().verify(&token).unwrap(), user);
    }

    #[test]
    fn a_token_signed_with_another_secret_is_refused() {
        let other = Tokens::new(&SecretString::from("b".repeat(32)));
        let token = other.issue(UserId::new()).unwrap();
        assert!(matches!(
            tokens().verify(&token),
            Err(AuthError::InvalidToken)
        ));
    }

    #[test]
    fn an_expired_token_is_refused() {
        let secret = SecretString::from("a".repeat(32));
        let expired = Tokens::with_ttl(&secret, Duration::ZERO);
        let token = expired.issue(UserId::new()).unwrap();
        std::thread::sleep(Duration::from_millis(1100));
        assert!(matches!(
            tokens().verify(&token),
            Err(AuthError::InvalidToken)
        ));
    }

    #[test]
    fn garbage_is_refused() {
        assert!(tokens().verify("not.a.token").is_err());
        assert!(tokens().verify("").is_err());
    }

    #[test]
    fn hashes_are_the_argon2_crates_own_both_ways() {
        use argon2::password_hash::{PasswordHasher, PasswordVerifier};
        let salt = SaltString::generate(&mut OsRng);
        // Ours is byte for byte what the crate writes for the same salt...
        let ours = argon2id_phc(b"correct horse", &salt).unwrap();
        let theirs = Argon2::default()
            .hash_password(b"correct horse", &salt)
            .unwrap()
            .to_string();
        assert_eq!(ours, theirs);
        // ...and hashes stored before (the crate's) verify with ours, and the other way.
        assert!(matches_phc(b"correct horse", &PasswordHash::new(&theirs).unwrap()).unwrap());
        assert!(!matches_phc(b"wrong horse", &PasswordHash::new(&theirs).unwrap()).unwrap());
        assert!(Argon2::default()
            .verify_password(b"correct horse", &PasswordHash::new(&ours).unwrap())
            .is_ok());
        // Other parameters in the stored hash are honoured.
        let light = Argon2::new(
            argon2::Algorithm::Argon2id,
            argon2::Version::V0x13,
            argon2::Params::new(1024, 1, 1, None).unwrap(),
        )
        .hash_password(b"pw", &salt)
        .unwrap()
        .to_string();
        assert!(matches_phc(b"pw", &PasswordHash::new(&light).unwrap()).unwrap());
    }

    #[tokio::test]
    async fn a_password_verifies_against_its_hash_and_nothing_else() {
        let hash = hash_password(Password::parse("correct horse").unwrap())
            .await
            .unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify_password("correct horse".into(), Some(hash.clone()))
            .await
            .unwrap());
        assert!(!verify_password("wrong horse".into(), Some(hash))
            .await
            .unwrap());
        assert!(!verify_password("anything".into(), None).await.unwrap());
    }

    #[test]
    fn a_token_of_another_deployment_is_refused() {
        let secret = SecretString::from("a".repeat(32));
        let theirs = Tokens::new(&secret).for_audience("staging");
        let ours = Tokens::new(&secret).for_audience("production");
        let token = theirs.issue(UserId::new()).unwrap();
        assert!(matches!(ours.verify(&token), Err(AuthError::InvalidToken)));
        assert!(theirs.verify(&token).is_ok());
    }

    #[test]
    fn a_token_without_issuer_and_audience_is_refused() {
        #[derive(Serialize)]
        struct Bare {
            sub: String,
            exp: i64,
        }
        let bare = Bare {
            sub: UserId::new().to_string(),
            exp: Utc::now().timestamp() + 600,
        };
        let token = encode(
            &Header::new(Algorithm::HS256),
            &bare,
            &EncodingKey::from_secret("a".repeat(32).as_bytes()),
        )
        .unwrap();
        assert!(matches!(
            tokens().verify(&token),
            Err(AuthError::InvalidToken)
        ));
    }
}
