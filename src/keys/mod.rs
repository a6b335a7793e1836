//! Signing keys: generation, sealing at rest, the in-memory key ring every request reads,
//! and the prepared JWK Set.

mod jwks;
mod keyring;
mod signing;
mod verify;

pub use jwks::PreparedJwks;
pub use keyring::{rotate, KeyError, KeyRing, KeyState};
pub use signing::SigningKey;
pub use verify::{TokenVerifier, VerifiedClaims};

/// Separates the AEAD key for signing keys from anything else derived from secrets.system.
pub const SEAL_PURPOSE: &str = "signing-key";

/// Separates the AEAD key for the stored sealing keys (`sealing_keys`) likewise.
pub const SEALING_KEY_PURPOSE: &str = "sealing-key";
