//! Session fixtures shared by the dataplane's session tests and its cookie bench.

use std::time::Duration;

use portcullis_crds::config::{
    AffinityConfig, AffinityMode, CookieProtection, FarmConfig, LoadBalancing, PassiveConfig,
    SameSite, UpstreamConfig, UpstreamProtocol,
};
use portcullis_crds::keyring::{KeyState, KeyringDoc};

/// A farm's maximum session time in [`farm`].
pub const MAX_SESSION: Duration = Duration::from_secs(3600);
/// A farm's session idle timeout in [`farm`].
pub const IDLE: Duration = Duration::from_secs(600);

/// A round-robin HTTP/1 farm without members or verifier; its affinity cookie is
/// `portcullis-affinity` (SameSite=Lax, [`MAX_SESSION`], [`IDLE`]).
pub fn farm(id: &str, affinity: AffinityMode, protection: CookieProtection) -> FarmConfig {
    FarmConfig {
        id: id.into(),
        backend_host: None,
        load_balancing: LoadBalancing::RoundRobin,
        hash_header: None,
        members: vec![],
        upstream: UpstreamConfig {
            tls: None,
            protocol: UpstreamProtocol::Http1,
            max_idle_per_endpoint: 8,
            max_connections_per_endpoint: None,
            pool_idle_timeout: Duration::from_secs(60).into(),
            connect_timeout: Duration::from_secs(1).into(),
            first_byte_timeout: Duration::from_secs(10).into(),
            idle_timeout: Duration::from_secs(10).into(),
            retries: 0,
        },
        affinity: AffinityConfig {
            mode: affinity,
            cookie_name: "portcullis-affinity".into(),
            max_session_time: MAX_SESSION.into(),
            idle_timeout: IDLE.into(),
            same_site: SameSite::Lax,
        },
        verifier: None,
        passive: PassiveConfig {
            consecutive_failures: 0,
            count_5xx: false,
            base_ejection_time: Duration::from_secs(10).into(),
            max_ejected_percent: 50,
        },
        cookie_protection: protection,
        allowed_upgrades: vec!["websocket".into()],
        filters: Default::default(),
        access: Default::default(),
    }
}

/// A keyring file's text: each key is (id, the byte its 32-byte secret repeats, state).
pub fn keyring(keys: &[(&str, u8, KeyState)]) -> String {
    KeyringDoc {
        keys: keys
            .iter()
            .map(|(id, b, s)| KeyringDoc::entry(id, &[*b; 32], "2026-11-21T00:00:00Z", *s))
            .collect(),
    }
    .to_yaml()
}
