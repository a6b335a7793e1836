//! Authorization codes that carry their grant. A code is the grant (client, user, bound
//! redirect_uri, scope, PKCE challenge and times) sealed with AES-256-GCM under a key
//! derived from `secrets.system`, so /authorize writes nothing. The database sees a code
//! only when it is presented: the row recorded then, in the commit that issues its tokens,
//! is what makes it single use (`codes::spend`, `tokens::create_family`).
//!
//! Every instance with the same system secret opens every instance's codes. A code that was
//! altered, forged, or sealed under another secret does not open: changing the secret voids
//! the codes outstanding at that moment (they live `tokens.code_ttl`, a minute by default).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

use crate::crypto::mac::digest_secret;
use crate::crypto::secret_box::SecretBox;
use crate::storage::codes::CodeRow;

/// Separates the key that seals codes from anything else derived from `secrets.system`.
pub const PURPOSE: &str = "authorization-code";

/// Authenticated with every code: bumped if the layout of `Grant` changes, so a code of
/// another layout fails to open instead of being misread.
const CONTEXT: &[u8] = b"gatehouse authorization code v1";

/// Far above any code this server issues; longer input is refused before it is decoded.
const MAX_CODE_LEN: usize = 4096;

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
pub fn seal(codes: &SecretBox, grant: &CodeRow) -> String {
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
    URL_SAFE_NO_PAD.encode(codes.seal(&plaintext, CONTEXT))
}

/// The grant a code carries, as the row its redemption will record (keyed by the code's
/// digest, not yet redeemed); `None` for anything this server did not seal, expired or not.
pub fn open(codes: &SecretBox, code: &str) -> Option<CodeRow> {
    if code.len() > MAX_CODE_LEN {
        return None;
    }
    let sealed = URL_SAFE_NO_PAD.decode(code).ok()?;
    let plaintext = codes.open(&sealed, CONTEXT).ok()?;
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

    const SECRET: &str = "a system secret of enough length!";

    #[test]
    fn a_code_opens_to_its_grant_keyed_by_its_digest() {
        let codes = SecretBox::new(SECRET, PURPOSE);
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
    }

    #[test]
    fn altered_foreign_and_oversized_codes_do_not_open() {
        let codes = SecretBox::new(SECRET, PURPOSE);
        let code = seal(&codes, &grant());
        for at in [0, 3, code.len() / 2, code.len() - 1] {
            let mut altered = code.clone().into_bytes();
            altered[at] = if altered[at] == b'A' { b'B' } else { b'A' };
            let altered = String::from_utf8(altered).unwrap();
            assert!(open(&codes, &altered).is_none(), "altered at {at}");
        }
        let other_secret = SecretBox::new("another system secret of length!!", PURPOSE);
        assert!(open(&other_secret, &code).is_none());
        let other_purpose = SecretBox::new(SECRET, crate::keys::SEAL_PURPOSE);
        assert!(open(&other_purpose, &code).is_none());
        assert!(open(&codes, &code[..code.len() - 2]).is_none());
        assert!(open(&codes, "").is_none());
        assert!(open(&codes, "not a code!").is_none());
        assert!(open(&codes, &"A".repeat(MAX_CODE_LEN + 1)).is_none());
        // A value sealed for another use under the same key is not a code.
        let foreign = URL_SAFE_NO_PAD.encode(codes.seal(b"[\"x\"]", b"other context"));
        assert!(open(&codes, &foreign).is_none());
    }
}
