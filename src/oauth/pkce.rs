//! PKCE (RFC 7636) as RFC 9700 wants it: S256 only, required for public clients, enforced
//! whenever a challenge was sent, and a verifier for a code issued without a challenge is
//! rejected (RFC 9700 2.1.1). Also checks, at the token endpoint, that a repeated
//! redirect_uri is the exact string the code is bound to.

use aws_lc_rs::digest;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use oxide_auth::code_grant::accesstoken::Request as TokenRequest;
use oxide_auth::code_grant::authorization::Request as AuthRequest;
use oxide_auth::endpoint::{AccessTokenExtension, AuthorizationExtension, Extension};
use oxide_auth::primitives::grant::{Extensions, Value};

use super::context::FlowContext;

pub const EXTENSION: &str = "pkce";

pub fn challenge_of(extensions: &Extensions) -> Option<String> {
    extensions
        .private()
        .find(|(name, _)| *name == EXTENSION)
        .and_then(|(_, value)| value.map(str::to_owned))
}

/// RFC 7636 4.1: 43 to 128 characters of [A-Z a-z 0-9 - . _ ~].
fn is_valid_verifier(verifier: &str) -> bool {
    (43..=128).contains(&verifier.len())
        && verifier
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

/// An S256 challenge is the unpadded base64url of a SHA-256 digest: 43 characters.
fn is_valid_s256_challenge(challenge: &str) -> bool {
    challenge.len() == 43
        && challenge
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
}

pub fn s256(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, verifier.as_bytes()))
}

pub struct PkcePolicy<'a> {
    pub ctx: &'a FlowContext<'a>,
}

impl PkcePolicy<'_> {
    fn reject(&self, description: &'static str) -> Result<Extensions, ()> {
        self.ctx.notes.borrow_mut().error_description = Some(description);
        Err(())
    }

    fn reject_grant(&self, description: &'static str) -> Result<Extensions, ()> {
        self.ctx.notes.borrow_mut().invalid_grant = Some(description);
        Err(())
    }
}

impl AuthorizationExtension for PkcePolicy<'_> {
    fn extend(&mut self, request: &dyn AuthRequest) -> Result<Extensions, ()> {
        let challenge = request.extension("code_challenge");
        let method = request.extension("code_challenge_method");
        let public = request
            .client_id()
            .and_then(|id| self.ctx.client(&id).ok().flatten())
            .is_some_and(|c| c.is_public());
        let mut extensions = Extensions::new();
        match (challenge, method.as_deref()) {
            (None, Some(_)) => self.reject("code_challenge_method without code_challenge"),
            (None, None) if public => self.reject(
                "public clients must use PKCE: send code_challenge with code_challenge_method=S256",
            ),
            (None, None) => Ok(extensions),
            (Some(_), Some("plain")) => {
                self.reject("code_challenge_method=plain is not allowed; use S256")
            }
            (Some(_), None) => self.reject("code_challenge_method=S256 is required"),
            (Some(_), Some(m)) if m != "S256" => self.reject("code_challenge_method must be S256"),
            (Some(challenge), Some(_)) if !is_valid_s256_challenge(&challenge) => {
                self.reject("code_challenge must be 43 base64url characters")
            }
            (Some(challenge), Some(_)) => {
                extensions.set_raw(
                    EXTENSION.to_owned(),
                    Value::private(Some(challenge.into_owned())),
                );
                Ok(extensions)
            }
        }
    }
}

impl AccessTokenExtension for PkcePolicy<'_> {
    fn extend(&mut self, request: &dyn TokenRequest, data: Extensions) -> Result<Extensions, ()> {
        let bound_redirect = self
            .ctx
            .notes
            .borrow()
            .redeemed_code
            .as_ref()
            .map(|c| c.redirect_uri.clone());
        if let (Some(sent), Some(bound)) = (request.redirect_uri(), bound_redirect) {
            if sent != bound {
                return self.reject_grant("redirect_uri does not match the authorization request");
            }
        }
        let verifier = request.extension("code_verifier");
        match (challenge_of(&data), verifier) {
            (None, None) => Ok(Extensions::new()),
            (None, Some(_)) => {
                self.reject_grant("code_verifier sent for a code issued without code_challenge")
            }
            (Some(_), None) => self.reject_grant("code_verifier is required"),
            (Some(_), Some(verifier)) if !is_valid_verifier(&verifier) => {
                self.reject_grant("code_verifier must be 43 to 128 unreserved characters")
            }
            (Some(challenge), Some(verifier)) => {
                let computed = s256(&verifier);
                if aws_lc_rs::constant_time::verify_slices_are_equal(
                    computed.as_bytes(),
                    challenge.as_bytes(),
                )
                .is_ok()
                {
                    Ok(Extensions::new())
                } else {
                    self.reject_grant("code_verifier does not match code_challenge")
                }
            }
        }
    }
}

impl Extension for PkcePolicy<'_> {
    fn authorization(&mut self) -> Option<&mut dyn AuthorizationExtension> {
        Some(self)
    }

    fn access_token(&mut self) -> Option<&mut dyn AccessTokenExtension> {
        Some(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc7636_appendix_b_example() {
        assert_eq!(
            s256("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        assert!(is_valid_verifier(
            "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
        ));
        assert!(!is_valid_verifier("short"));
        assert!(is_valid_s256_challenge(
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        ));
        assert!(!is_valid_s256_challenge(
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-c="
        ));
    }
}
