#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]
//! gatehouse: a standalone OAuth 2.0 authorization server.
//!
//! Dependencies point one way: `http` -> `oauth` -> `keys`/`storage` -> `config`/`crypto`.

pub mod accounts;
pub mod audit;
pub mod cli;
pub mod config;
pub mod crypto;
pub mod http;
pub mod keys;
pub mod metrics;
pub mod oauth;
pub mod ratelimit;
pub mod startup;
pub mod storage;
pub mod telemetry;
