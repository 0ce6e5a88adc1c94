//! The `portcullis.io/v1alpha1` API: `ServerFarm` and `GatewayArray`.
//!
//! Field doc comments are the user manual: they become `kubectl explain` output.

mod access;
mod filters;
mod gateway_array;
mod server_farm;

pub use access::*;
pub use filters::*;
pub use gateway_array::*;
pub use server_farm::*;

/// The API group.
pub const GROUP: &str = "portcullis.io";
/// The API version.
pub const VERSION: &str = "v1alpha1";
