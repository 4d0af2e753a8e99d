//! Passwords and session tokens.
//!
//! Passwords are hashed with argon2id (default parameters, random salt) on a blocking thread,
//! never stored or logged in clear. Sessions are HS256 JWTs signed with `PARLEY_JWT_SECRET`;
//! the acting user of every request comes from a verified token, never from an argument.

use std::time::Duration;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
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
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    iat: i64,
    exp: i64,
}

/// Signs and verifies session tokens.
#[derive(Clone)]
pub struct Tokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    ttl: Duration,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("ttl", &self.ttl)
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
        }
    }

    /// A token for `user`, valid for the configured time.
    pub fn issue(&self, user: UserId) -> Result<String, AuthError> {
        let now = Utc::now().timestamp();
        let claims = Claims {
            sub: user.to_string(),
            iat: now,
            exp: now + self.ttl.as_secs() as i64,
        };
        encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|_| AuthError::InvalidToken)
    }

    /// The user a token was issued to, if its signature and expiry check out.
    pub fn verify(&self, token: &str) -> Result<UserId, AuthError> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        let data = decode::<Claims>(token, &self.decoding, &validation)
            .map_err(|_| AuthError::InvalidToken)?;
        UserId::parse(&data.claims.sub).map_err(|_| AuthError::InvalidToken)
    }
}

/// Hashes a password (argon2id, random salt) off the async runtime.
pub async fn hash_password(password: Password) -> Result<String, AuthError> {
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(password.expose().as_bytes(), &salt)
            .map(|hash| hash.to_string())
            .map_err(|e| AuthError::Hashing(e.to_string()))
    })
    .await
    .map_err(|e| AuthError::Hashing(e.to_string()))?
}

/// Checks a password against a stored hash, off the async runtime. With no stored hash
/// (unknown user) a dummy hash is checked so both cases take the same time.
pub async fn verify_password(password: String, stored: Option<String>) -> bool {
    tokio::task::spawn_blocking(move || {
        let stored = stored.unwrap_or_else(|| DUMMY_HASH.to_owned());
        let Ok(parsed) = PasswordHash::new(&stored) else {
            return false;
        };
        let matches = Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok();
        matches && stored != DUMMY_HASH
    })
    .await
    .unwrap_or(false)
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

    #[tokio::test]
    async fn a_password_verifies_against_its_hash_and_nothing_else() {
        let hash = hash_password(Password::parse("correct horse").unwrap())
            .await
            .unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify_password("correct horse".into(), Some(hash.clone())).await);
        assert!(!verify_password("wrong horse".into(), Some(hash)).await);
        assert!(!verify_password("anything".into(), None).await);
    }
}
