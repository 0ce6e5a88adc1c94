//! The Portcullis dataplane: a reverse proxy that pools upstream connections by
//! endpoint identity.

pub mod session;
