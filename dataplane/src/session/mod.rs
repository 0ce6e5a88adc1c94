//! Array sessions: the shared keyring, sealed affinity cookies and cookie protection.
