//! Verifying our own access tokens (introspection, revocation) exactly as a resource server
//! should: only published keys, the algorithm pinned to RS256, the issuer checked.

use std::collections::HashMap;

use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::storage::keys::PublicKeyRow;

/// The claims gatehouse puts in every access token (RFC 9068).
#[derive(Debug, Clone, Deserialize)]
pub struct VerifiedClaims {
    pub iss: String,
    pub sub: String,
    pub aud: serde_json::Value,
    pub exp: i64,
    pub iat: i64,
    pub jti: String,
    pub client_id: String,
    pub scope: String,
}

/// Decoding keys for every published key, built once per change of the key set.
pub struct TokenVerifier {
    keys: HashMap<String, DecodingKey>,
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenVerifier")
            .field("kids", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl TokenVerifier {
    pub fn new(published: &[PublicKeyRow]) -> TokenVerifier {
        let keys = published
            .iter()
            .filter_map(|k| {
                DecodingKey::from_rsa_components(&k.public_n, &k.public_e)
                    .ok()
                    .map(|key| (k.kid.clone(), key))
            })
            .collect();
        TokenVerifier { keys }
    }

    /// The claims of a valid, unexpired token signed by one of our keys for `issuer`; `None`
    /// for anything else (malformed, unknown kid, `alg` other than RS256, bad signature).
    pub fn verify(&self, token: &str, issuer: &str) -> Option<VerifiedClaims> {
        let header = decode_header(token).ok()?;
        // RFC 9068 4: only access tokens (typ at+jwt), and only RS256.
        if header.alg != Algorithm::RS256 || header.typ.as_deref() != Some("at+jwt") {
            return None;
        }
        let key = self.keys.get(header.kid.as_deref()?)?;
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_issuer(&[issuer]);
        validation.validate_aud = false;
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        decode::<VerifiedClaims>(token, key, &validation)
            .ok()
            .map(|data| data.claims)
    }
}
