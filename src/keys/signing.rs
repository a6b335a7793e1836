use aws_lc_rs::digest;
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{KeyPair, RsaKeyPair, RSA_PKCS1_SHA256};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::Serialize;

use crate::crypto::secret_box::SecretBox;
use crate::storage::keys::SigningKeyRow;

use super::KeyError;

/// An RSA key pair parsed once at load, with its JWS header prepared, so that signing a
/// token costs one RSA operation and two base64 encodings.
pub struct SigningKey {
    kid: String,
    key_pair: RsaKeyPair,
    at_jwt_header: String,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Generates a key and returns it with its database row, the private key sealed.
    pub fn generate(
        bits: u32,
        seal: &SecretBox,
        now: i64,
    ) -> Result<(SigningKey, SigningKeyRow), KeyError> {
        let size = match bits {
            2048 => KeySize::Rsa2048,
            3072 => KeySize::Rsa3072,
            4096 => KeySize::Rsa4096,
            other => return Err(KeyError::UnsupportedSize(other)),
        };
        let key_pair = RsaKeyPair::generate(size).map_err(|_| KeyError::Generate)?;
        let pkcs8 = key_pair.as_der().map_err(|_| KeyError::Generate)?;
        let (n, e) = public_components(&key_pair);
        let kid = thumbprint(&n, &e);
        let row = SigningKeyRow {
            encrypted_private_key: seal.seal(pkcs8.as_ref(), kid.as_bytes()),
            kid: kid.clone(),
            algorithm: "RS256".to_owned(),
            key_bits: bits as i32,
            public_n: n,
            public_e: e,
            created_at: now,
            retired_at: None,
            publish_until: None,
        };
        Ok((SigningKey::new(kid, key_pair), row))
    }

    /// Opens a stored key; fails when secrets.system is not the one that sealed it.
    pub fn from_row(row: &SigningKeyRow, seal: &SecretBox) -> Result<SigningKey, KeyError> {
        let pkcs8 = seal
            .open(&row.encrypted_private_key, row.kid.as_bytes())
            .map_err(|_| KeyError::Unseal(row.kid.clone()))?;
        let key_pair =
            RsaKeyPair::from_pkcs8(&pkcs8).map_err(|_| KeyError::Corrupt(row.kid.clone()))?;
        let (n, e) = public_components(&key_pair);
        if n != row.public_n || e != row.public_e {
            return Err(KeyError::Corrupt(row.kid.clone()));
        }
        Ok(SigningKey::new(row.kid.clone(), key_pair))
    }

    fn new(kid: String, key_pair: RsaKeyPair) -> SigningKey {
        let header = serde_json::json!({"alg": "RS256", "typ": "at+jwt", "kid": kid});
        let at_jwt_header = URL_SAFE_NO_PAD.encode(header.to_string());
        SigningKey {
            kid,
            key_pair,
            at_jwt_header,
        }
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// A compact JWS with header `{"alg":"RS256","typ":"at+jwt","kid":...}` (RFC 9068).
    pub fn sign_access_token(&self, claims: &impl Serialize) -> Result<String, KeyError> {
        let payload = serde_json::to_vec(claims).map_err(|_| KeyError::Sign)?;
        let mut token =
            String::with_capacity(self.at_jwt_header.len() + payload.len() * 4 / 3 + 350);
        token.push_str(&self.at_jwt_header);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(&payload, &mut token);
        let mut signature = vec![0u8; self.key_pair.public_modulus_len()];
        self.key_pair
            .sign(
                &RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                token.as_bytes(),
                &mut signature,
            )
            .map_err(|_| KeyError::Sign)?;
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(&signature, &mut token);
        Ok(token)
    }
}

/// The modulus and exponent as unpadded base64url big-endian integers (RFC 7518 6.3.1).
fn public_components(key_pair: &RsaKeyPair) -> (String, String) {
    let public = key_pair.public_key();
    (
        URL_SAFE_NO_PAD.encode(public.modulus().big_endian_without_leading_zero()),
        URL_SAFE_NO_PAD.encode(public.exponent().big_endian_without_leading_zero()),
    )
}

/// RFC 7638 JWK thumbprint: the kid is derived from the key, never chosen.
fn thumbprint(n: &str, e: &str) -> String {
    let canonical = format!(r#"{{"e":"{e}","kty":"RSA","n":"{n}"}}"#);
    URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, canonical.as_bytes()))
}
