//! The Portcullis controller: reconciles GatewayArrays and ServerFarms into a dataplane
//! config, a keyring and the member workload, and reports status.
//!
//! Each reconcile is a pipeline: fetch → validate → build (pure, [`builders`]) → apply
//! (server-side apply) → status. Only the two ends touch the API.

pub mod builders;
pub mod keyring;
pub mod mapping;
pub mod metrics;
pub mod resolve;
pub mod status;
