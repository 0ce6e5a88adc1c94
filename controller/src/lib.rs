//! The Portcullis controller: reconciles GatewayArrays and ServerFarms into a dataplane
//! config, a keyring and the member workload, and reports status.
//!
//! Each reconcile is a pipeline: fetch → validate → build (pure, [`builders`]) → apply
//! (server-side apply) → status. Only the two ends touch the API.

mod admin;
pub mod builders;
pub mod keyring;
pub mod leader;
pub mod mapping;
pub mod members;
pub mod metrics;
pub mod reconcile;
pub mod resolve;
mod run;
pub mod status;

pub use run::{RunConfig, RunError, run};
