//! The Portcullis controller: reconciles GatewayArrays and ServerFarms into a dataplane
//! config, a keyring and the member workload, and reports status.
//!
//! Each reconcile is a pipeline: fetch → validate → build (pure, [`builders`]) → apply
//! (server-side apply) → status, one module each under [`reconcile`]. Fetch, apply and
//! status talk to the API; validate and build are pure.

mod admin;
pub mod audit;
pub mod builders;
pub mod ingress;
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
