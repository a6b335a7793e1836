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

/// Every published key, parsed once per change of the key set; the key builds its Montgomery
/// context at its first verification and keeps it for the rest. (jsonwebtoken's `decode`
/// rebuilt both from the key's components for every token: 57.5k of an introspection's
/// 505k instructions.)
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
    /// for anything else (malformed, `typ` other than at+jwt, `alg` other than RS256, unknown
    /// kid, bad signature, a claim missing or of the wrong type).
    ///
    /// It accepts exactly what jsonwebtoken's `decode` accepted with RS256 pinned, the
    /// issuer set, no audience, no leeway and `exp`, `iss` and `sub` required (a test runs
    /// both on the same tokens); only the signature is checked with the key parsed once.
    /// Every field of `VerifiedClaims` is required, so a token missing one does not
    /// deserialize.
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
        let claims: VerifiedClaims = serde_json::from_slice(&payload).ok()?;
        // The clock the tokens' `exp` was set by; a token is live through its `exp` second.
        let expired = claims.exp < crate::storage::now_unix();
        (claims.iss == issuer && !expired).then_some(claims)
    }
}

/// An RSA public key from its JWK components (unpadded base64url `n` and `e`), for RS256.
/// A key outside 2048 to 8192 bits parses, but verifies nothing.
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
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::rsa::KeySize;
    use aws_lc_rs::signature::{KeyPair, RsaKeyPair, RSA_PKCS1_SHA256};
    use serde_json::{json, Value};

    const ISSUER: &str = "https://auth.example.com";

    /// A key that signs whatever header and claims a test asks for, and its published row.
    struct TestKey {
        pair: RsaKeyPair,
        row: PublicKeyRow,
    }

    impl TestKey {
        fn new(kid: &str) -> TestKey {
            let pair = RsaKeyPair::generate(KeySize::Rsa2048).unwrap();
            let public = pair.public_key();
            let b64 = |bytes: &[u8]| URL_SAFE_NO_PAD.encode(bytes);
            let row = PublicKeyRow {
                kid: kid.to_owned(),
                algorithm: "RS256".to_owned(),
                key_bits: 2048,
                public_n: b64(public.modulus().big_endian_without_leading_zero()),
                public_e: b64(public.exponent().big_endian_without_leading_zero()),
                created_at: 0,
                retired_at: None,
                publish_until: None,
            };
            TestKey { pair, row }
        }

        fn sign(&self, header: &Value, claims: &Value) -> String {
            let signed = format!(
                "{}.{}",
                URL_SAFE_NO_PAD.encode(header.to_string()),
                URL_SAFE_NO_PAD.encode(claims.to_string())
            );
            let mut signature = vec![0; self.pair.public_modulus_len()];
            let rng = SystemRandom::new();
            (self.pair)
                .sign(&RSA_PKCS1_SHA256, &rng, signed.as_bytes(), &mut signature)
                .unwrap();
            format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature))
        }

        fn header(&self) -> Value {
            json!({"alg": "RS256", "typ": "at+jwt", "kid": self.row.kid})
        }

        fn token(&self, claims: &Value) -> String {
            self.sign(&self.header(), claims)
        }
    }

    fn claims() -> Value {
        json!({
            "iss": ISSUER, "sub": "user-1", "aud": "api", "exp": now() + 60, "iat": 0,
            "jti": "j1", "client_id": "demo", "scope": "openid",
        })
    }

    fn with(mut claims: Value, name: &str, value: Value) -> Value {
        claims[name] = value;
        claims
    }

    fn now() -> i64 {
        crate::storage::now_unix()
    }

    /// How tokens were verified before keys were parsed once: jsonwebtoken's `decode`.
    fn verified_by_decode(row: &PublicKeyRow, token: &str) -> Option<VerifiedClaims> {
        use jsonwebtoken::{decode, DecodingKey, Validation};
        let header = decode_header(token).ok()?;
        if header.alg != Algorithm::RS256 || header.typ.as_deref() != Some("at+jwt") {
            return None;
        }
        if header.kid.as_deref()? != row.kid {
            return None;
        }
        let key = DecodingKey::from_rsa_components(&row.public_n, &row.public_e).ok()?;
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_issuer(&[ISSUER]);
        validation.validate_aud = false;
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        decode::<VerifiedClaims>(token, &key, &validation)
            .ok()
            .map(|data| data.claims)
    }

    /// Tokens of every kind the verifier must refuse, each with what is wrong with it.
    fn refusable_tokens(key: &TestKey, stranger: &TestKey) -> Vec<(&'static str, String)> {
        let token = key.token(&claims());
        let parts: Vec<&str> = token.split('.').collect();
        let b64 = |value: &Value| URL_SAFE_NO_PAD.encode(value.to_string());
        let mut flipped = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        flipped[10] ^= 1;
        let mut no_sub = claims();
        no_sub.as_object_mut().unwrap().remove("sub");
        let foreign = stranger.token(&claims());
        let foreign_signature = foreign.rsplit_once('.').unwrap().1;
        let header_with = |name: &str, value: Value| with(key.header(), name, value);
        vec![
            (
                "expired",
                key.token(&with(claims(), "exp", json!(now() - 1))),
            ),
            ("negative exp", key.token(&with(claims(), "exp", json!(-1)))),
            (
                "exp a float",
                key.token(&with(claims(), "exp", json!(1e12))),
            ),
            (
                "exp a string",
                key.token(&with(claims(), "exp", json!("9999999999"))),
            ),
            (
                "another issuer",
                key.token(&with(claims(), "iss", json!("https://other.example.com"))),
            ),
            (
                "iss a list",
                key.token(&with(claims(), "iss", json!([ISSUER]))),
            ),
            ("no sub", key.token(&no_sub)),
            (
                "typ JWT",
                key.sign(&header_with("typ", json!("JWT")), &claims()),
            ),
            (
                "no typ",
                key.sign(&json!({"alg": "RS256", "kid": key.row.kid}), &claims()),
            ),
            (
                "alg RS384",
                key.sign(&header_with("alg", json!("RS384")), &claims()),
            ),
            (
                "alg none",
                format!("{}.{}.", b64(&header_with("alg", json!("none"))), parts[1]),
            ),
            (
                "no kid",
                key.sign(&json!({"alg": "RS256", "typ": "at+jwt"}), &claims()),
            ),
            (
                "unknown kid",
                key.sign(&header_with("kid", json!("other")), &claims()),
            ),
            (
                "claims swapped",
                format!(
                    "{}.{}.{}",
                    parts[0],
                    b64(&with(claims(), "sub", json!("admin"))),
                    parts[2]
                ),
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
            ("signature padded", format!("{token}=")),
            (
                "another key's signature under our kid",
                format!("{}.{}.{foreign_signature}", parts[0], parts[1]),
            ),
            (
                "a part too many",
                format!("{}.{}.{}.{}", parts[0], parts[1], parts[1], parts[2]),
            ),
            ("not a JWT", "abc".to_owned()),
        ]
    }

    #[test]
    fn a_token_of_ours_verifies_until_it_expires_and_only_for_its_issuer() {
        let key = TestKey::new("k1");
        let verifier = TokenVerifier::new(std::slice::from_ref(&key.row));
        let live = key.token(&claims());
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
    }

    #[test]
    fn altered_unsigned_or_foreign_tokens_do_not_verify() {
        let (key, stranger) = (TestKey::new("k1"), TestKey::new("k2"));
        let verifier = TokenVerifier::new(std::slice::from_ref(&key.row));
        for (what, token) in refusable_tokens(&key, &stranger) {
            assert!(verifier.verify(&token, ISSUER).is_none(), "{what} verified");
        }
    }

    /// The verifier accepts and refuses the same tokens as jsonwebtoken's `decode` did.
    #[test]
    fn verification_agrees_with_jsonwebtokens_decode() {
        let (key, stranger) = (TestKey::new("k1"), TestKey::new("k2"));
        let verifier = TokenVerifier::new(std::slice::from_ref(&key.row));
        let mut tokens = refusable_tokens(&key, &stranger);
        tokens.push(("live", key.token(&claims())));
        tokens.push((
            "with nbf in the future",
            key.token(&with(claims(), "nbf", json!(now() + 600))),
        ));
        tokens.push((
            "with an extra claim",
            key.token(&with(claims(), "extra", json!({"a": 1}))),
        ));
        for (what, token) in tokens {
            let ours = verifier
                .verify(&token, ISSUER)
                .map(|c| (c.sub, c.jti, c.exp));
            let theirs = verified_by_decode(&key.row, &token).map(|c| (c.sub, c.jti, c.exp));
            assert_eq!(ours, theirs, "{what}");
        }
    }
}
