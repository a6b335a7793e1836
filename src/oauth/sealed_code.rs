//! Authorization codes that carry their grant. A code is the grant (client, user, bound
//! redirect_uri, scope, PKCE challenge and times) sealed with AES-256-GCM-SIV, so /authorize
//! writes nothing. The database sees a code only when it is presented: the row recorded
//! then, in the commit that issues its tokens, is what makes it single use (`codes::spend`,
//! `tokens::create_family`).
//!
//! The key is random, made once per deployment and stored in the database sealed under
//! `secrets.system` (`keys::KeyRing::open`): making a code takes both, as signing a token
//! does. GCM-SIV because codes are sealed under one key for the deployment's life with
//! random nonces: a repeated nonce would reveal only that two codes hold the same grant,
//! where under GCM it would reveal the authentication key and let codes be forged. The
//! issuer is authenticated with every code, so a staging deployment that shares the secret
//! and a copy of the database still cannot issue codes that production accepts.

use aws_lc_rs::aead::AES_256_GCM_SIV;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

use crate::crypto::mac::digest_secret;
use crate::crypto::secret_box::SecretBox;
use crate::storage::codes::CodeRow;

/// The stored key's purpose (`sealing_keys.purpose`), and the context it is sealed under.
pub const PURPOSE: &str = "authorization-code";

/// Bytes of key material: AES-256.
pub const KEY_LEN: usize = 32;

/// Bumped if the layout of `Grant` changes, so a code of another layout fails to open
/// instead of being misread.
const FORMAT_VERSION: u8 = 1;

/// Above any code this server issues (the config caps redirect URIs at 2000 characters, and
/// a test seals the longest); longer input is refused before it is decoded.
pub const MAX_CODE_LEN: usize = 4096;

/// Seals and opens codes for one issuer: the crate's `SecretBox` framing (version, random
/// nonce, ciphertext and tag) under AES-256-GCM-SIV and the deployment's code key.
pub struct CodeSealer {
    sealed: SecretBox,
    /// What every code authenticates besides its grant: the format and the issuer.
    context: Vec<u8>,
}

impl std::fmt::Debug for CodeSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CodeSealer(<key>)")
    }
}

impl CodeSealer {
    /// `None` unless `key` is `KEY_LEN` bytes (`SecretBox::with_key` checks it).
    pub fn new(key: &[u8], issuer: &str) -> Option<CodeSealer> {
        let sealed = SecretBox::with_key(&AES_256_GCM_SIV, key)?;
        let mut context = b"gatehouse authorization code\0".to_vec();
        context.push(FORMAT_VERSION);
        context.extend_from_slice(issuer.as_bytes());
        Some(CodeSealer { sealed, context })
    }

    fn seal(&self, plaintext: &[u8]) -> Vec<u8> {
        self.sealed.seal(plaintext, &self.context)
    }

    fn open(&self, sealed: &[u8]) -> Option<Vec<u8>> {
        self.sealed.open(sealed, &self.context).ok()
    }
}

/// client_id, user_id, redirect_uri, redirect_uri_sent, scope, code_challenge, auth_time,
/// created_at, expires_at: a JSON array, so the code carries no field names.
type Grant = (
    String,
    String,
    String,
    bool,
    String,
    Option<String>,
    i64,
    i64,
    i64,
);

/// The code for `grant`. Only the grant's fields are sealed, not its digest or redemption.
pub fn seal(codes: &CodeSealer, grant: &CodeRow) -> String {
    let fields: Grant = (
        grant.client_id.clone(),
        grant.user_id.clone(),
        grant.redirect_uri.clone(),
        grant.redirect_uri_sent,
        grant.scope.clone(),
        grant.code_challenge.clone(),
        grant.auth_time,
        grant.created_at,
        grant.expires_at,
    );
    // Serialising strings, integers and booleans cannot fail.
    let plaintext = serde_json::to_vec(&fields).unwrap_or_default();
    URL_SAFE_NO_PAD.encode(codes.seal(&plaintext))
}

/// The grant a code carries, as the row its redemption will record (keyed by the code's
/// digest, not yet redeemed); `None` for anything this server did not seal, expired or not.
pub fn open(codes: &CodeSealer, code: &str) -> Option<CodeRow> {
    if code.len() > MAX_CODE_LEN {
        return None;
    }
    let sealed = URL_SAFE_NO_PAD.decode(code).ok()?;
    let plaintext = codes.open(&sealed)?;
    let fields: Grant = serde_json::from_slice(&plaintext).ok()?;
    let (client_id, user_id, redirect_uri, redirect_uri_sent, scope, code_challenge) =
        (fields.0, fields.1, fields.2, fields.3, fields.4, fields.5);
    Some(CodeRow {
        code_hash: digest_secret(code),
        client_id,
        user_id,
        redirect_uri,
        redirect_uri_sent,
        scope,
        code_challenge,
        nonce: None,
        auth_time: fields.6,
        created_at: fields.7,
        expires_at: fields.8,
        redeemed_at: None,
        replayed_at: None,
        family_id: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant() -> CodeRow {
        CodeRow {
            code_hash: String::new(),
            client_id: "webapp".into(),
            user_id: "0b6f7d9e-1c1a-4c55-9a0e-5d2f0c9b7a11".into(),
            redirect_uri: "https://app.example.com/callback".into(),
            redirect_uri_sent: false,
            scope: "openid read".into(),
            code_challenge: Some("E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM".into()),
            nonce: None,
            auth_time: 1_700_000_000,
            created_at: 1_700_000_100,
            expires_at: 1_700_000_160,
            redeemed_at: None,
            replayed_at: None,
            family_id: None,
        }
    }

    const ISSUER: &str = "https://auth.example.com";

    fn sealer(key_byte: u8, issuer: &str) -> CodeSealer {
        CodeSealer::new(&[key_byte; KEY_LEN], issuer).unwrap()
    }

    #[test]
    fn a_code_opens_to_its_grant_keyed_by_its_digest() {
        let codes = sealer(7, ISSUER);
        let code = seal(&codes, &grant());
        let opened = open(&codes, &code).expect("opens");
        assert_eq!(
            opened,
            CodeRow {
                code_hash: digest_secret(&code),
                ..grant()
            }
        );
        // Fresh nonce per code: two codes for one grant differ, and neither shows the grant.
        assert_ne!(seal(&codes, &grant()), code);
        assert!(!code.contains("webapp") && !code.contains("callback"));
        assert!(code.len() < 400, "{} characters", code.len());
        // Another sealer with the same key and issuer (another instance) opens it.
        assert!(open(&sealer(7, ISSUER), &code).is_some());
    }

    #[test]
    fn altered_foreign_and_oversized_codes_do_not_open() {
        let codes = sealer(7, ISSUER);
        let code = seal(&codes, &grant());
        for at in 0..code.len() {
            let mut altered = code.clone().into_bytes();
            altered[at] = if altered[at] == b'A' { b'B' } else { b'A' };
            let altered = String::from_utf8(altered).unwrap();
            assert!(open(&codes, &altered).is_none(), "altered at {at}");
        }
        assert!(open(&sealer(8, ISSUER), &code).is_none(), "another key");
        assert!(
            open(&sealer(7, "https://staging.example.com"), &code).is_none(),
            "another issuer"
        );
        assert!(open(&codes, &code[..code.len() - 2]).is_none());
        assert!(open(&codes, &format!("{code}=")).is_none());
        assert!(open(&codes, &format!(" {code}")).is_none());
        assert!(open(&codes, "").is_none());
        assert!(open(&codes, "not a code!").is_none());
        assert!(open(&codes, &"A".repeat(MAX_CODE_LEN + 1)).is_none());
        assert!(CodeSealer::new(&[7; KEY_LEN - 1], ISSUER).is_none());
    }

    #[test]
    fn the_longest_redirect_uri_the_config_allows_fits_in_a_code() {
        let codes = sealer(7, ISSUER);
        let long = CodeRow {
            redirect_uri: format!("http://127.0.0.1:65535/{}", "a".repeat(2000)),
            scope: "openid profile email read write admin".into(),
            ..grant()
        };
        let code = seal(&codes, &long);
        assert!(code.len() < MAX_CODE_LEN, "{} characters", code.len());
        assert_eq!(open(&codes, &code).unwrap().redirect_uri, long.redirect_uri);
    }
}
