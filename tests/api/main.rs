//! The one integration-test binary: every file here drives the real `gatehouse` binary.

mod support;

mod audit;
mod authorization_code;
mod browser;
mod cli;
mod client_credentials;
mod config;
mod cors;
mod health;
mod hostile_input;
mod injection;
mod keys;
mod many_instances;
mod metrics;
mod password;
mod rate_limits;
mod refresh;
mod revocation;
mod secrets_in_logs;
mod storage;
mod transport;
mod users;
mod well_known;
