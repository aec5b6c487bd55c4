//! The one round loop of every method and both transports, without libtorch: the budget rule
//! ([`budget`]: the noise that fits the planned rounds, and the stop before a round that would
//! take ε past the target) and the driver ([`driver`]: plan → budget rule → cohort → collect →
//! commit → noise → use → checkpoint → metrics row). Methods (crate `server`) implement
//! [`RoundMethod`]; the ledger and the round log are traits, so the ordering is tested here
//! with fakes.

pub mod budget;
pub mod driver;
pub mod progress;

pub use budget::{plan_noise, BudgetGuard, NoisePlan};
pub use driver::{simulate_rounds, Driver, JsonLedger, LedgerStore, Round, RoundLog, RoundMethod};
pub use progress::{Progress, Silent};
