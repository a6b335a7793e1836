//! Two kinds of limit: budgets of failed password attempts, counted in the database across
//! instances (`failures`), and the request rate each client may use at the token endpoints,
//! counted in memory by each instance (`client_rate`).

pub mod client_rate;
mod failures;

pub use client_rate::ClientRateLimiter;
pub use failures::*;
