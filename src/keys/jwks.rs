use aws_lc_rs::digest;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::Serialize;

use crate::storage::keys::PublicKeyRow;

/// The JWK Set serialized once per change of the key set; requests only copy a pointer.
#[derive(Debug, Clone)]
pub struct PreparedJwks {
    pub body: actix_web::web::Bytes,
    /// A strong ETag: the quoted hash of the body.
    pub etag: String,
    pub kids: Vec<String>,
}

#[derive(Serialize)]
struct Jwk<'a> {
    kty: &'static str,
    kid: &'a str,
    #[serde(rename = "use")]
    use_: &'static str,
    alg: &'a str,
    n: &'a str,
    e: &'a str,
}

#[derive(Serialize)]
struct JwkSet<'a> {
    keys: Vec<Jwk<'a>>,
}

impl PreparedJwks {
    pub fn build(published: &[PublicKeyRow]) -> PreparedJwks {
        let set = JwkSet {
            keys: published
                .iter()
                .map(|k| Jwk {
                    kty: "RSA",
                    kid: &k.kid,
                    use_: "sig",
                    alg: &k.algorithm,
                    n: &k.public_n,
                    e: &k.public_e,
                })
                .collect(),
        };
        let body = serde_json::to_vec(&set).unwrap_or_else(|_| b"{\"keys\":[]}".to_vec());
        let hash = digest::digest(&digest::SHA256, &body);
        let etag = format!("\"{}\"", URL_SAFE_NO_PAD.encode(&hash.as_ref()[..16]));
        PreparedJwks {
            body: body.into(),
            etag,
            kids: published.iter().map(|k| k.kid.clone()).collect(),
        }
    }
}
