//! Argon2id for user passwords and client secrets, with parameters no weaker than OWASP's
//! recommendation (m = 19 MiB, t = 2, p = 1).

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

pub const MEMORY_KIB: u32 = 19_456;
pub const ITERATIONS: u32 = 2;
pub const PARALLELISM: u32 = 1;

fn hasher() -> Argon2<'static> {
    #[allow(clippy::expect_used)]
    let params = Params::new(MEMORY_KIB, ITERATIONS, PARALLELISM, None)
        .expect("constant argon2 parameters are valid");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// A PHC string such as `$argon2id$v=19$m=19456,t=2,p=1$...`.
pub fn hash(secret: &str) -> String {
    let salt = SaltString::encode_b64(&super::random::bytes::<16>())
        .unwrap_or_else(|_| unreachable!("16 bytes always encode as a salt"));
    match hasher().hash_password(secret.as_bytes(), &salt) {
        Ok(hash) => hash.to_string(),
        Err(e) => unreachable!("argon2 with valid parameters cannot fail: {e}"),
    }
}

/// Constant-time verification (the comparison inside argon2 is constant time). Parameters
/// are read from the PHC string, so hashes made with older parameters still verify.
pub fn verify(secret: &str, phc: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(parsed) => hasher().verify_password(secret.as_bytes(), &parsed).is_ok(),
        Err(_) => false,
    }
}

pub fn is_argon2id_phc(phc: &str) -> bool {
    PasswordHash::new(phc)
        .map(|h| h.algorithm.as_str() == "argon2id" && h.hash.is_some())
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_verifies_only_the_same_secret() {
        let phc = hash("correct horse");
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(is_argon2id_phc(&phc));
        assert!(verify("correct horse", &phc));
        assert!(!verify("correct horsf", &phc));
        assert!(!verify("correct horse", "not a phc string"));
    }

    #[test]
    fn other_algorithms_are_not_argon2id() {
        assert!(!is_argon2id_phc(
            "$argon2i$v=19$m=16,t=2,p=1$c29tZXNhbHQ$aGFzaGhhc2g"
        ));
        assert!(!is_argon2id_phc("plaintext"));
    }
}
