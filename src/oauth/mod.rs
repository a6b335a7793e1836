//! OAuth flows: oxide-auth's primitives backed by the database, the authorization and token
//! endpoints' logic, and the minting of tokens. No actix here beyond oxide-auth-actix's
//! request and response types.

pub mod authorize;
mod authorizer;
pub mod client;
pub mod client_sync;
pub mod context;
mod endpoint;
mod issuer;
pub mod pkce;
pub mod refresh_token;
mod registrar;
pub mod request;
pub mod revocation;
pub mod scope;
pub mod sealed_code;
pub mod token;
pub mod tokens;
