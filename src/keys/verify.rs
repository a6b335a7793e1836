//! Verifying our own access tokens (introspection, revocation) exactly as a resource server
//! should: only published keys, the algorithm pinned to RS256, the issuer checked.

use std::collections::HashMap;

use aws_lc_rs::rsa::PublicKeyComponents;
use aws_lc_rs::signature::{ParsedPublicKey, RSA_PKCS1_2048_8192_SHA256};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{decode_header, Algorithm};
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

/// Every published key, parsed once per change of the key set: the key and its Montgomery
/// context then serve every verification. (jsonwebtoken's `decode` rebuilt the key from
/// its components for each token, some 40-50k instructions of an introspection's 508k.)
pub struct TokenVerifier {
    keys: HashMap<String, ParsedPublicKey>,
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
            .filter_map(|k| Some((k.kid.clone(), parse_public_key(&k.public_n, &k.public_e)?)))
            .collect();
        TokenVerifier { keys }
    }

    /// The claims of a valid, unexpired token signed by one of our keys for `issuer`; `None`
    /// for anything else (malformed, unknown kid, `alg` other than RS256, bad signature).
    ///
    /// The checks are jsonwebtoken's `decode` with RS256 pinned, the issuer set, no
    /// audience, no leeway and `exp`, `iss` and `sub` required, in the same order; only the
    /// signature is checked with the key parsed once instead.
    pub fn verify(&self, token: &str, issuer: &str) -> Option<VerifiedClaims> {
        let header = decode_header(token).ok()?;
        // RFC 9068 4: only access tokens (typ at+jwt), and only RS256.
        if header.alg != Algorithm::RS256 || header.typ.as_deref() != Some("at+jwt") {
            return None;
        }
        let key = self.keys.get(header.kid.as_deref()?)?;
        // A compact JWS is header.payload.signature, signed over header.payload.
        let (signed, signature) = token.rsplit_once('.')?;
        let signature = URL_SAFE_NO_PAD.decode(signature).ok()?;
        key.verify_sig(signed.as_bytes(), &signature).ok()?;
        let (_, payload) = signed.rsplit_once('.')?;
        let payload = URL_SAFE_NO_PAD.decode(payload).ok()?;
        // `exp`, `iss` and `sub` are required: a token without one does not deserialize.
        let claims: VerifiedClaims = serde_json::from_slice(&payload).ok()?;
        let now = jsonwebtoken::get_current_timestamp();
        let expired = u64::try_from(claims.exp).map_or(true, |exp| exp < now);
        (claims.iss == issuer && !expired).then_some(claims)
    }
}

/// An RSA public key from its JWK components (unpadded base64url `n` and `e`), for RS256
/// with 2048 to 8192 bits.
fn parse_public_key(n: &str, e: &str) -> Option<ParsedPublicKey> {
    let n = URL_SAFE_NO_PAD.decode(n).ok()?;
    let e = URL_SAFE_NO_PAD.decode(e).ok()?;
    PublicKeyComponents { n, e }
        .to_parsed_public_key(&RSA_PKCS1_2048_8192_SHA256)
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::secret_box::SecretBox;
    use crate::keys::signing::SigningKey;
    use serde_json::{json, Value};

    const ISSUER: &str = "https://auth.example.com";

    fn new_key() -> (SigningKey, PublicKeyRow) {
        let seal = SecretBox::new("a system secret of enough length for the test", "test");
        let (key, row) = SigningKey::generate(2048, &seal, 0).unwrap();
        let public = PublicKeyRow {
            kid: row.kid,
            algorithm: row.algorithm,
            key_bits: row.key_bits,
            public_n: row.public_n,
            public_e: row.public_e,
            created_at: row.created_at,
            retired_at: None,
            publish_until: None,
        };
        (key, public)
    }

    fn claims(exp: i64) -> Value {
        json!({
            "iss": ISSUER, "sub": "user-1", "aud": "api", "exp": exp, "iat": 0,
            "jti": "j1", "client_id": "demo", "scope": "openid",
        })
    }

    fn now() -> i64 {
        jsonwebtoken::get_current_timestamp() as i64
    }

    #[test]
    fn a_token_of_ours_verifies_until_it_expires_and_only_for_its_issuer() {
        let (key, public) = new_key();
        let verifier = TokenVerifier::new(&[public]);
        let live = key.sign_access_token(&claims(now() + 60)).unwrap();
        let verified = verifier
            .verify(&live, ISSUER)
            .expect("a live token verifies");
        assert_eq!(
            (verified.sub.as_str(), verified.jti.as_str()),
            ("user-1", "j1")
        );
        assert!(verifier
            .verify(&live, "https://other.example.com")
            .is_none());
        let expired = key.sign_access_token(&claims(now() - 1)).unwrap();
        assert!(verifier.verify(&expired, ISSUER).is_none());
        let negative = key.sign_access_token(&claims(-1)).unwrap();
        assert!(verifier.verify(&negative, ISSUER).is_none());
    }

    #[test]
    fn altered_unsigned_or_foreign_tokens_do_not_verify() {
        let (key, public) = new_key();
        let verifier = TokenVerifier::new(&[public]);
        let token = key.sign_access_token(&claims(now() + 60)).unwrap();
        let parts: Vec<&str> = token.split('.').collect();

        let mut other = claims(now() + 60);
        other["sub"] = json!("admin");
        let forged = URL_SAFE_NO_PAD.encode(other.to_string());
        let mut no_sub = claims(now() + 60);
        no_sub.as_object_mut().unwrap().remove("sub");
        let without_sub = key.sign_access_token(&no_sub).unwrap();
        let mut flipped = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        flipped[10] ^= 1;
        let (stranger, _) = new_key();
        let foreign = stranger.sign_access_token(&claims(now() + 60)).unwrap();

        for (what, candidate) in [
            (
                "claims swapped",
                format!("{}.{forged}.{}", parts[0], parts[2]),
            ),
            (
                "signature altered",
                format!(
                    "{}.{}.{}",
                    parts[0],
                    parts[1],
                    URL_SAFE_NO_PAD.encode(&flipped)
                ),
            ),
            ("signature missing", format!("{}.{}.", parts[0], parts[1])),
            (
                "a part too many",
                format!("{}.{}.{}.{}", parts[0], parts[1], parts[1], parts[2]),
            ),
            ("no sub", without_sub),
            ("another key's", foreign),
            ("not a JWT", "abc".to_owned()),
        ] {
            assert!(
                verifier.verify(&candidate, ISSUER).is_none(),
                "{what} verified"
            );
        }
    }
}
