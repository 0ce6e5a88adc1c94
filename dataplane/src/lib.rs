//! The Portcullis dataplane: a reverse proxy that pools upstream connections by
//! endpoint identity.
//!
//! `main.rs` parses flags into [`Options`] and calls [`run`]; tests call [`start`] to get
//! a [`Handle`] with the bound addresses and stop it with [`Handle::shutdown`].

mod access;
mod admin;
mod balance;
mod bind;
mod body;
mod canary;
pub mod cluster;
mod error;
mod extauth;
mod filters;
mod framing;
#[doc(hidden)]
pub mod fuzz;
mod health;
mod htpasswd;
mod hygiene;
mod listener;
mod metrics;
mod pool;
mod proxy;
mod ratelimit;
mod routes;
mod runtime;
pub mod session;
mod snapshot;
mod source;
mod tls;
pub mod trace;

#[doc(hidden)]
pub use runtime::metrics_sample;
pub use runtime::{Handle, Options, RunError, run, start};
pub use source::SourceError;
