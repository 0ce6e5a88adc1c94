//! Upstream policy: connection pool limits, timeouts, retries, and the protocol upgrades
//! tunnelled to the servers.

use crate::config::*;
use crate::v1alpha1::{self, ServerFarmSpec, Upstream};

use super::FarmErrors;
use super::names::{http_token, normalize_host};

/// The Host header sent to servers (`backendHost`: an exact host name) and the header
/// consistent hashing reads (`hashHeader`: a header name, only with ConsistentHash).
pub(crate) fn check_backend(spec: &ServerFarmSpec, errs: &mut FarmErrors<'_>) {
    if let Some(bh) = &spec.backend_host
        && let Err(m) = normalize_host(bh).and_then(|h| {
            if h.starts_with("*.") {
                Err(format!("{bh:?} is a wildcard"))
            } else {
                Ok(h)
            }
        })
    {
        errs.push("spec.backendHost", m);
    }
    if spec.hash_header.is_some() && spec.load_balancing != v1alpha1::LoadBalancing::ConsistentHash
    {
        errs.push(
            "spec.hashHeader",
            "is only used with loadBalancing: ConsistentHash",
        );
    }
    if let Some(h) = &spec.hash_header
        && http_token(h).is_err()
    {
        errs.push("spec.hashHeader", format!("{h:?} is not a header name"));
    }
}

/// The farm's upstream policy with its defaults; more than 3 retries, a connection
/// limit of 0 and zero timeouts are errors.
pub(crate) fn upstream_config(
    up: &Upstream,
    tls: Option<UpstreamTlsConfig>,
    errs: &mut FarmErrors<'_>,
) -> UpstreamConfig {
    let keep_alive = up.keep_alive.as_ref();
    let upstream = UpstreamConfig {
        tls,
        protocol: up.protocol,
        max_idle_per_endpoint: keep_alive
            .and_then(|k| k.max_idle)
            .unwrap_or(DEFAULT_KEEPALIVE_MAX_IDLE),
        max_connections_per_endpoint: keep_alive.and_then(|k| k.max_connections),
        pool_idle_timeout: keep_alive
            .and_then(|k| k.idle_timeout)
            .unwrap_or(DEFAULT_KEEPALIVE_IDLE_TIMEOUT),
        connect_timeout: up.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT),
        first_byte_timeout: up.first_byte_timeout.unwrap_or(DEFAULT_FIRST_BYTE_TIMEOUT),
        idle_timeout: up.idle_timeout.unwrap_or(DEFAULT_UPSTREAM_IDLE_TIMEOUT),
        retries: up.retries.as_ref().map_or(1, |r| r.attempts),
    };
    if upstream.retries > 3 {
        errs.push("spec.upstream.retries.attempts", "at most 3");
    }
    if upstream.max_connections_per_endpoint == Some(0) {
        errs.push(
            "spec.upstream.keepAlive.maxConnections",
            "must be at least 1 (leave unset for no limit)",
        );
    }
    for (field, d) in [
        ("connectTimeout", upstream.connect_timeout),
        ("firstByteTimeout", upstream.first_byte_timeout),
        ("idleTimeout", upstream.idle_timeout),
    ] {
        if d.is_zero() {
            errs.push(format!("spec.upstream.{field}"), "must be longer than 0s");
        }
    }
    upstream
}

/// The farm's `allowedUpgrades`, lower case (WebSocket when unset); `h2c` and anything
/// that is not an `Upgrade` token are errors.
pub(crate) fn allowed_upgrades(list: Option<&[String]>, errs: &mut FarmErrors<'_>) -> Vec<String> {
    let allowed: Vec<String> = match list {
        None => vec!["websocket".to_owned()],
        Some(list) => list.iter().map(|u| u.trim().to_ascii_lowercase()).collect(),
    };
    for (i, u) in allowed.iter().enumerate() {
        if u == "h2c" {
            errs.push(
                format!("spec.allowedUpgrades[{i}]"),
                "h2c is never tunnelled: the client would speak HTTP/2 past the proxy's checks",
            );
        } else if u.is_empty() || !u.bytes().all(|b| b.is_ascii_graphic() && b != b',') {
            errs.push(
                format!("spec.allowedUpgrades[{i}]"),
                format!("{u:?} is not an Upgrade token"),
            );
        }
    }
    allowed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Duration;
    use crate::translate::testing::{farm, fields, problems};

    #[test]
    fn backend_host_and_hash_header_are_checked() {
        let f = farm("a", "backendHost: '*.example.com'\nhashHeader: 'x user'\n");
        let mut errs = FarmErrors::new(&f);
        check_backend(&f.spec, &mut errs);
        assert_eq!(
            problems(&errs.errors),
            [
                ("spec.backendHost", "\"*.example.com\" is a wildcard"),
                (
                    "spec.hashHeader",
                    "is only used with loadBalancing: ConsistentHash"
                ),
                ("spec.hashHeader", "\"x user\" is not a header name"),
            ]
        );
        let f = farm(
            "a",
            "backendHost: api.example.com.\nloadBalancing: ConsistentHash\nhashHeader: X-User\n",
        );
        let mut errs = FarmErrors::new(&f);
        check_backend(&f.spec, &mut errs);
        assert!(errs.errors.is_empty(), "{:?}", errs.errors);
    }

    #[test]
    fn unset_upstream_gets_the_defaults() {
        let f = farm("a", "");
        let mut errs = FarmErrors::new(&f);
        let up = upstream_config(&Upstream::default(), None, &mut errs);
        assert!(errs.errors.is_empty());
        assert_eq!(up.max_idle_per_endpoint, 32);
        assert_eq!(up.max_connections_per_endpoint, None);
        assert_eq!(up.connect_timeout, Duration::from_secs(3));
        assert_eq!(up.first_byte_timeout, Duration::from_secs(60));
        assert_eq!(up.retries, 1);
    }

    #[test]
    fn out_of_range_limits_are_errors() {
        let f = farm(
            "a",
            "upstream:\n  retries:\n    attempts: 4\n  keepAlive:\n    maxConnections: 0\n    maxIdle: 2\n  connectTimeout: 0s\n",
        );
        let mut errs = FarmErrors::new(&f);
        let up = upstream_config(f.spec.upstream.as_ref().unwrap(), None, &mut errs);
        assert_eq!(up.max_idle_per_endpoint, 2);
        assert_eq!(
            fields(&errs.errors),
            [
                "spec.upstream.retries.attempts",
                "spec.upstream.keepAlive.maxConnections",
                "spec.upstream.connectTimeout",
            ]
        );
    }

    #[test]
    fn upgrades_default_to_websocket_and_refuse_h2c() {
        let f = farm("a", "");
        let mut errs = FarmErrors::new(&f);
        assert_eq!(allowed_upgrades(None, &mut errs), ["websocket"]);
        let list = [" WebSocket".to_owned(), "h2c".to_owned(), "a,b".to_owned()];
        let allowed = allowed_upgrades(Some(&list), &mut errs);
        assert_eq!(allowed, ["websocket", "h2c", "a,b"]);
        assert_eq!(
            fields(&errs.errors),
            ["spec.allowedUpgrades[1]", "spec.allowedUpgrades[2]"]
        );
        assert_eq!(errs.errors[1].message, "\"a,b\" is not an Upgrade token");
    }
}
