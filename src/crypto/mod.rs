//! Cryptographic building blocks with no I/O of their own beyond the development secret
//! file: randomness, password hashing, and the AEAD that keeps private keys sealed at rest.

pub mod dev_secret;
pub mod hash_memory;
pub mod mac;
pub mod password;
pub mod random;
pub mod secret_box;
pub mod secret_cache;
pub mod tls;
