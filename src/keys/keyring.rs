use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::crypto::secret_box::SecretBox;
use crate::oauth::refresh_token::{self, RefreshTokens};
use crate::oauth::sealed_code::{self, CodeSealer};
use crate::storage::keys::{self as key_store, PublicKeyRow};
use crate::storage::{now_unix, DbConnection, StorageError};

use super::{PreparedJwks, SigningKey, TokenVerifier};

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("RSA key size {0} is not supported (2048, 3072 or 4096)")]
    UnsupportedSize(u32),
    #[error("RSA key generation failed")]
    Generate,
    #[error(
        "cannot decrypt signing key {0}: secrets.system is not the secret it was encrypted with"
    )]
    Unseal(String),
    #[error("signing key {0} is corrupt in the database")]
    Corrupt(String),
    #[error(
        "cannot decrypt the {0} key stored in the database: secrets.system is not the secret it was encrypted with, or the row is corrupt"
    )]
    UnsealStored(&'static str),
    #[error("signing failed")]
    Sign,
    #[error("the database holds no active signing key")]
    NoActiveKey,
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// What every request reads: the key that signs, the JWK Set to publish, and the key that
/// seals authorization codes.
#[derive(Debug)]
pub struct KeyState {
    pub signing: Arc<SigningKey>,
    pub jwks: PreparedJwks,
    pub verifier: TokenVerifier,
    /// Read once at start; the same in every state.
    pub codes: Arc<CodeSealer>,
    /// Likewise.
    pub refresh_tokens: Arc<RefreshTokens>,
}

/// The keys this instance holds. Other instances (and `gatehouse keys rotate`) change the
/// database; `refresh` brings this instance up to date and is called on a timer.
pub struct KeyRing {
    state: RwLock<Arc<KeyState>>,
    seal: SecretBox,
    codes: Arc<CodeSealer>,
    refresh_tokens: Arc<RefreshTokens>,
}

impl KeyRing {
    /// Loads the active key, generating and storing the first one when there is none, and
    /// the key that seals `issuer`'s authorization codes and the one that tags refresh
    /// tokens, likewise.
    pub fn open(
        conn: &mut DbConnection,
        system_secret: &str,
        rsa_bits: u32,
        issuer: &str,
    ) -> Result<KeyRing, KeyError> {
        let seal = SecretBox::new(system_secret, super::SEAL_PURPOSE);
        if key_store::active(conn)?.is_none() {
            let (_, row) = SigningKey::generate(rsa_bits, &seal, now_unix())?;
            let active = key_store::insert_if_none_active(conn, &row)?;
            if active.kid == row.kid {
                tracing::info!(kid = %row.kid, bits = rsa_bits, "generated the first signing key");
                crate::audit::AuditEvent::new(crate::audit::Event::KeyGenerated, "success")
                    .detail(format!("kid={}; the first signing key", row.kid))
                    .record_now(conn)?;
            }
        }
        let codes = Arc::new(open_code_sealer(conn, system_secret, issuer)?);
        let refresh_key = open_stored_key::<{ refresh_token::KEY_LEN }>(
            conn,
            system_secret,
            refresh_token::PURPOSE,
        )?;
        let refresh_tokens = Arc::new(
            RefreshTokens::new(&refresh_key)
                .ok_or(KeyError::UnsealStored(refresh_token::PURPOSE))?,
        );
        let state = load_state(conn, &seal, &codes, &refresh_tokens, None)?;
        Ok(KeyRing {
            state: RwLock::new(Arc::new(state)),
            seal,
            codes,
            refresh_tokens,
        })
    }

    pub fn current(&self) -> Arc<KeyState> {
        match self.state.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Re-reads the key list (public parts only) and swaps in a new state when the active key
    /// or the published set changed, including retired keys whose window has passed.
    /// Returns whether anything changed.
    pub fn refresh(&self, conn: &mut DbConnection) -> Result<bool, KeyError> {
        let current = self.current();
        let next = load_state(
            conn,
            &self.seal,
            &self.codes,
            &self.refresh_tokens,
            Some(&current),
        )?;
        if next.signing.kid() == current.signing.kid() && next.jwks.kids == current.jwks.kids {
            return Ok(false);
        }
        tracing::info!(active_kid = %next.signing.kid(), published = ?next.jwks.kids, "signing keys changed");
        match self.state.write() {
            Ok(mut guard) => *guard = Arc::new(next),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(next),
        }
        Ok(true)
    }
}

/// The deployment's code-sealing key: random, made by the first instance to start and stored
/// sealed under `secrets.system`, so that neither the secret nor the database alone can make
/// a code.
fn open_code_sealer(
    conn: &mut DbConnection,
    system_secret: &str,
    issuer: &str,
) -> Result<CodeSealer, KeyError> {
    let key =
        open_stored_key::<{ sealed_code::KEY_LEN }>(conn, system_secret, sealed_code::PURPOSE)?;
    CodeSealer::new(&key, issuer).ok_or(KeyError::UnsealStored(sealed_code::PURPOSE))
}

/// A deployment's random key for `purpose`, made by the first instance to start and stored
/// sealed under `secrets.system` (the code-sealing key, the refresh-token tag key).
fn open_stored_key<const N: usize>(
    conn: &mut DbConnection,
    system_secret: &str,
    purpose: &'static str,
) -> Result<Vec<u8>, KeyError> {
    let vault = SecretBox::new(system_secret, super::SEALING_KEY_PURPOSE);
    let context = purpose.as_bytes();
    let generated = vault.seal(&crate::crypto::random::bytes::<N>(), context);
    let stored = key_store::sealing_key_or_insert(conn, purpose, &generated, now_unix())?;
    vault
        .open(&stored, context)
        .map_err(|_| KeyError::UnsealStored(purpose))
}

/// Generates a new active key and retires the others. A retired key stays published for
/// `retire_window` (the longest life of a token it signed, plus the time other instances may
/// take to notice the rotation).
pub fn rotate(
    conn: &mut DbConnection,
    system_secret: &str,
    rsa_bits: u32,
    retire_window: Duration,
) -> Result<String, KeyError> {
    let seal = SecretBox::new(system_secret, super::SEAL_PURPOSE);
    // Refuse to rotate with the wrong secret: the new key would be unreadable by the servers.
    if let Some(active) = key_store::active(conn)? {
        SigningKey::from_row(&active, &seal)?;
    }
    let now = now_unix();
    let (_, row) = SigningKey::generate(rsa_bits, &seal, now)?;
    let publish_until = now.saturating_add(retire_window.as_secs() as i64);
    key_store::rotate(conn, &row, publish_until)?;
    tracing::info!(kid = %row.kid, "rotated the signing key");
    Ok(row.kid)
}

fn load_state(
    conn: &mut DbConnection,
    seal: &SecretBox,
    codes: &Arc<CodeSealer>,
    refresh_tokens: &Arc<RefreshTokens>,
    previous: Option<&KeyState>,
) -> Result<KeyState, KeyError> {
    let now = now_unix();
    let all = key_store::list_public(conn)?;
    let published: Vec<PublicKeyRow> = all.into_iter().filter(|k| k.is_published(now)).collect();
    let active_kid = published
        .iter()
        .find(|k| k.retired_at.is_none())
        .map(|k| k.kid.clone())
        .ok_or(KeyError::NoActiveKey)?;
    let signing = match previous {
        Some(prev) if prev.signing.kid() == active_kid => Arc::clone(&prev.signing),
        _ => {
            let row = key_store::find(conn, &active_kid)?.ok_or(KeyError::NoActiveKey)?;
            Arc::new(SigningKey::from_row(&row, seal)?)
        }
    };
    Ok(KeyState {
        signing,
        jwks: PreparedJwks::build(&published),
        verifier: TokenVerifier::new(&published),
        codes: Arc::clone(codes),
        refresh_tokens: Arc::clone(refresh_tokens),
    })
}
