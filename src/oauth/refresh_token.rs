//! Refresh tokens that name their family and generation. A family's row holds the digest of
//! its one live refresh token, so a rotation is one UPDATE of that row (found by its key)
//! where it used to lock the family, mark the old token's row and insert a row for its
//! successor: on PostgreSQL that was five WAL records and a 3-table join per rotation.
//!
//! A token is base64url of: the family's id (16 bytes), the generation (8, big-endian),
//! 32 random bytes, and a 16-byte HMAC-SHA256 tag over the rest. The random part makes it a
//! bearer secret (only its digest is stored); the tag proves that gatehouse issued it, so
//! a token of an older generation than the family's is a rotated token presented again
//! (RFC 9700 4.14.2: the family is revoked), not a guess at a family id, which appears in
//! every access token's `jti` and so must not be enough to revoke a family.
//!
//! The tag key is random, made once per deployment and stored sealed under
//! `secrets.system`, as the authorization-code key is (`keys::KeyRing::open`).
//!
//! Tokens issued before this format are 32 random bytes (43 characters) whose digest has a
//! row in `refresh_tokens`; they keep working until rotated once (`Presented::Legacy`).

use aws_lc_rs::constant_time::verify_slices_are_equal;
use aws_lc_rs::hmac;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

use crate::crypto::mac::digest_secret;
use crate::crypto::random;
use crate::storage::tokens::{self as token_store, PresentedRefresh, RefreshLookup};
use crate::storage::{DbConnection, StorageResult};

/// The stored key's purpose (`sealing_keys.purpose`), and the context it is sealed under.
pub const PURPOSE: &str = "refresh-token";

/// Bytes of key material.
pub const KEY_LEN: usize = 32;

const FAMILY_LEN: usize = 16;
const GENERATION_LEN: usize = 8;
const RANDOM_LEN: usize = 32;
const TAG_LEN: usize = 16;
const SIGNED_LEN: usize = FAMILY_LEN + GENERATION_LEN + RANDOM_LEN;
const TOKEN_LEN: usize = SIGNED_LEN + TAG_LEN;
/// Characters of a token: base64 without padding.
const TOKEN_CHARS: usize = (TOKEN_LEN * 4).div_ceil(3);
/// A token of the earlier format: random bytes only.
const LEGACY_LEN: usize = 32;

/// What a presented refresh token is, before any database lookup.
#[derive(Debug, PartialEq, Eq)]
enum Presented {
    /// Issued by this deployment for `generation` of `family_id` (the tag verified).
    InFamily { family_id: String, generation: i64 },
    /// The earlier format, looked up by its digest alone.
    Legacy,
    /// Not a token this deployment issued: refused without a lookup.
    Invalid,
}

pub struct RefreshTokens {
    key: hmac::Key,
}

impl std::fmt::Debug for RefreshTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RefreshTokens(<key>)")
    }
}

impl RefreshTokens {
    /// `None` unless `key` is `KEY_LEN` bytes.
    pub fn new(key: &[u8]) -> Option<RefreshTokens> {
        (key.len() == KEY_LEN).then(|| RefreshTokens {
            key: hmac::Key::new(hmac::HMAC_SHA256, key),
        })
    }

    /// A new token for `generation` of `family_id`. `None` when the family id is not a UUID
    /// (every family's is) or the generation is negative.
    pub fn issue(&self, family_id: &str, generation: i64) -> Option<String> {
        let family = uuid::Uuid::parse_str(family_id).ok()?;
        let generation = u64::try_from(generation).ok()?;
        let mut token = Vec::with_capacity(TOKEN_LEN);
        token.extend_from_slice(family.as_bytes());
        token.extend_from_slice(&generation.to_be_bytes());
        token.extend_from_slice(&random::bytes::<RANDOM_LEN>());
        let tag = self.tag(&token);
        token.extend_from_slice(&tag.as_ref()[..TAG_LEN]);
        Some(URL_SAFE_NO_PAD.encode(token))
    }

    fn open(&self, token: &str) -> Presented {
        // Decoding a long string costs memory: anything longer than a token is refused first.
        if token.len() > TOKEN_CHARS {
            return Presented::Invalid;
        }
        let Ok(bytes) = URL_SAFE_NO_PAD.decode(token) else {
            return Presented::Invalid;
        };
        match bytes.len() {
            LEGACY_LEN => Presented::Legacy,
            TOKEN_LEN => {
                let (signed, tag) = bytes.split_at(SIGNED_LEN);
                if verify_slices_are_equal(&self.tag(signed).as_ref()[..TAG_LEN], tag).is_err() {
                    return Presented::Invalid;
                }
                let (family, rest) = signed.split_at(FAMILY_LEN);
                let (generation, _random) = rest.split_at(GENERATION_LEN);
                let family = uuid::Uuid::from_slice(family).map(|id| id.to_string());
                let generation = generation
                    .try_into()
                    .ok()
                    .and_then(|g| i64::try_from(u64::from_be_bytes(g)).ok());
                match (family, generation) {
                    (Ok(family_id), Some(generation)) => Presented::InFamily {
                        family_id,
                        generation,
                    },
                    _ => Presented::Invalid,
                }
            }
            _ => Presented::Invalid,
        }
    }

    /// `token` opened and digested, once for every lookup a request makes of it; `None` for
    /// a token this deployment did not issue, which needs no lookup.
    pub fn read(&self, token: &str) -> Option<ReadToken> {
        let family = match self.open(token) {
            Presented::InFamily {
                family_id,
                generation,
            } => Some((family_id, generation)),
            Presented::Legacy => None,
            Presented::Invalid => return None,
        };
        Some(ReadToken {
            family,
            token_hash: digest_secret(token),
        })
    }

    fn tag(&self, signed: &[u8]) -> hmac::Tag {
        hmac::sign(&self.key, signed)
    }
}

/// A presented token this deployment may have issued (`RefreshTokens::read`).
pub struct ReadToken {
    /// The family and generation it names; `None` for a token of the earlier format.
    family: Option<(String, i64)>,
    token_hash: String,
}

impl ReadToken {
    pub fn in_family(&self) -> Option<(&str, i64)> {
        self.family
            .as_ref()
            .map(|(family_id, generation)| (family_id.as_str(), *generation))
    }

    pub fn token_hash(&self) -> &str {
        &self.token_hash
    }

    /// The token as the database knows it: `None` when it no longer knows it.
    pub fn find(&self, conn: &mut DbConnection) -> StorageResult<Option<PresentedRefresh>> {
        let lookup = match self.in_family() {
            Some((family_id, generation)) => RefreshLookup::InFamily {
                family_id,
                generation,
                token_hash: &self.token_hash,
            },
            None => RefreshLookup::Legacy {
                token_hash: &self.token_hash,
            },
        };
        token_store::find_refresh(conn, lookup)
    }
}

/// The refresh token `token`, as the database knows it: `None` for a token this deployment
/// did not issue, or that it no longer knows.
pub fn find(
    conn: &mut DbConnection,
    tokens: &RefreshTokens,
    token: &str,
) -> StorageResult<Option<PresentedRefresh>> {
    match tokens.read(token) {
        Some(read) => read.find(conn),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAMILY: &str = "6f9619ff-8b86-4011-b42d-00c04fc964ff";

    fn tokens(key_byte: u8) -> RefreshTokens {
        RefreshTokens::new(&[key_byte; KEY_LEN]).unwrap()
    }

    #[test]
    fn a_token_names_its_family_and_generation_and_is_random() {
        let tokens = tokens(1);
        let first = tokens.issue(FAMILY, 7).unwrap();
        assert_eq!(
            tokens.open(&first),
            Presented::InFamily {
                family_id: FAMILY.into(),
                generation: 7
            }
        );
        assert_ne!(first, tokens.issue(FAMILY, 7).unwrap());
        assert!(!first.contains('.'), "a JWT is told apart by its dots");
        assert_eq!(first.len(), 96);
    }

    #[test]
    fn a_token_of_another_key_or_altered_is_invalid() {
        let token = tokens(1).issue(FAMILY, 3).unwrap();
        assert_eq!(tokens(2).open(&token), Presented::Invalid);
        let mut bytes = URL_SAFE_NO_PAD.decode(&token).unwrap();
        // Another generation, or another family, with the original tag.
        for position in [FAMILY_LEN + GENERATION_LEN - 1, 0, SIGNED_LEN + 1] {
            let mut altered = bytes.clone();
            altered[position] ^= 1;
            assert_eq!(
                tokens(1).open(&URL_SAFE_NO_PAD.encode(altered)),
                Presented::Invalid
            );
        }
        bytes.truncate(TOKEN_LEN - 1);
        assert_eq!(
            tokens(1).open(&URL_SAFE_NO_PAD.encode(bytes)),
            Presented::Invalid
        );
    }

    #[test]
    fn earlier_tokens_and_garbage_are_told_apart() {
        let tokens = tokens(1);
        assert_eq!(tokens.open(&random::token::<32>()), Presented::Legacy);
        for garbage in ["", "not base64!", "abc", &"A".repeat(5000)] {
            assert_eq!(tokens.open(garbage), Presented::Invalid, "{garbage:.20}");
        }
        assert!(tokens.issue("not-a-uuid", 1).is_none());
        assert!(tokens.issue(FAMILY, -1).is_none());
    }
}
