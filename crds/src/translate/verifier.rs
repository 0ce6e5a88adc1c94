//! Health: the active connectivity verifier (a probe request to every endpoint) and
//! passive ejection (of endpoints that fail real requests).

use crate::Duration;
use crate::config::*;
use crate::v1alpha1::{ConnectivityVerifier, ServerFarmSpec};

use super::FarmErrors;
use super::names::{normalize_host, normalize_path};

/// The farm's verifier, when it has one. Its Host header is `connectivityVerifier.host`,
/// else `backendHost`, else the first exact published host (`hosts` are normalized).
pub(crate) fn verifier(
    spec: &ServerFarmSpec,
    hosts: &[String],
    errs: &mut FarmErrors<'_>,
) -> Option<VerifierConfig> {
    let v = spec.connectivity_verifier.as_ref()?;
    let host = v
        .host
        .as_ref()
        .or(spec.backend_host.as_ref())
        .map(|h| h.trim_end_matches('.').to_ascii_lowercase())
        .or_else(|| hosts.iter().find(|h| !h.starts_with("*.")).cloned());
    let statuses = expected_statuses(v, errs);
    check_probe(v, errs);
    let (interval, timeout) = timing(v, errs);
    let Some(host) = host else {
        errs.push(
            "spec.connectivityVerifier.host",
            "is required when every published host is a wildcard and backendHost is unset",
        );
        return None;
    };
    Some(VerifierConfig {
        path: v.path.clone(),
        host,
        expected_statuses: statuses,
        interval,
        timeout,
        healthy_threshold: v.healthy_threshold,
        unhealthy_threshold: v.unhealthy_threshold,
    })
}

/// The statuses (or ranges) a healthy endpoint answers; at least one, each parsed.
fn expected_statuses(v: &ConnectivityVerifier, errs: &mut FarmErrors<'_>) -> Vec<StatusRange> {
    let mut statuses = Vec::new();
    for (i, s) in v.expected_statuses.iter().enumerate() {
        match s.parse::<StatusRange>() {
            Ok(r) => statuses.push(r),
            Err(m) => errs.push(
                format!("spec.connectivityVerifier.expectedStatuses[{i}]"),
                m,
            ),
        }
    }
    if v.expected_statuses.is_empty() {
        errs.push(
            "spec.connectivityVerifier.expectedStatuses",
            "needs at least one status or range",
        );
    }
    statuses
}

/// The probe's path obeys the route rules (it may carry a query, `/health?deep=1`); its
/// host is an exact host name.
fn check_probe(v: &ConnectivityVerifier, errs: &mut FarmErrors<'_>) {
    let probe_path = v.path.split_once('?').map_or(v.path.as_str(), |(p, _)| p);
    if let Err(m) = normalize_path(probe_path) {
        errs.push("spec.connectivityVerifier.path", m);
    }
    if let Some(h) = &v.host {
        match normalize_host(h) {
            Ok(n) if n.starts_with("*.") => errs.push(
                "spec.connectivityVerifier.host",
                format!("{h:?} is a wildcard, not a Host header"),
            ),
            Ok(_) => {}
            Err(m) => errs.push("spec.connectivityVerifier.host", m),
        }
    }
}

/// The probe interval and timeout, with their defaults: the timeout within the
/// interval, the interval at least 100ms, thresholds at least 1.
fn timing(v: &ConnectivityVerifier, errs: &mut FarmErrors<'_>) -> (Duration, Duration) {
    let interval = v.interval.unwrap_or(DEFAULT_VERIFIER_INTERVAL);
    let timeout = v.timeout.unwrap_or(DEFAULT_VERIFIER_TIMEOUT);
    if timeout > interval {
        errs.push(
            "spec.connectivityVerifier.timeout",
            format!("{timeout} exceeds interval {interval}"),
        );
    }
    if interval < Duration::from_millis(100) || timeout.is_zero() {
        errs.push(
            "spec.connectivityVerifier.interval",
            "interval must be at least 100ms and timeout longer than 0s",
        );
    }
    for (field, n) in [
        ("healthyThreshold", v.healthy_threshold),
        ("unhealthyThreshold", v.unhealthy_threshold),
    ] {
        if n == 0 {
            errs.push(
                format!("spec.connectivityVerifier.{field}"),
                "must be at least 1",
            );
        }
    }
    (interval, timeout)
}

/// Passive ejection, with its defaults (also without a verifier).
pub(crate) fn passive(verifier: Option<&ConnectivityVerifier>) -> PassiveConfig {
    let passive = verifier.and_then(|v| v.passive.as_ref());
    PassiveConfig {
        consecutive_failures: passive.map_or(5, |p| p.consecutive_failures),
        count_5xx: passive.is_none_or(|p| p.count_5xx),
        base_ejection_time: Duration::from_secs(30),
        max_ejected_percent: passive.map_or(DEFAULT_MAX_EJECTED_PERCENT, |p| p.max_ejected_percent),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::testing::{farm, fields};

    #[test]
    fn the_host_header_falls_back_to_an_exact_published_host() {
        let f = farm(
            "a",
            "connectivityVerifier:\n  path: /health?deep=1\n  expectedStatuses: ['200-299']\n",
        );
        let mut errs = FarmErrors::new(&f);
        let hosts = ["*.example.com".to_owned(), "shop.example.com".to_owned()];
        let v = verifier(&f.spec, &hosts, &mut errs).unwrap();
        assert!(errs.errors.is_empty(), "{:?}", errs.errors);
        assert_eq!(v.host, "shop.example.com");
        assert_eq!(v.path, "/health?deep=1");
        assert_eq!(v.interval, Duration::from_secs(10));
        assert_eq!(v.timeout, Duration::from_secs(2));
        assert_eq!(v.expected_statuses.len(), 1);
    }

    #[test]
    fn no_verifier_is_none() {
        let f = farm("a", "");
        let mut errs = FarmErrors::new(&f);
        assert_eq!(verifier(&f.spec, &[], &mut errs), None);
        assert!(errs.errors.is_empty());
    }

    #[test]
    fn only_wildcards_and_bad_timing_are_errors() {
        let f = farm(
            "a",
            "connectivityVerifier:\n  path: health\n  expectedStatuses: [nope]\n  interval: 50ms\n  timeout: 1s\n  healthyThreshold: 0\n",
        );
        let mut errs = FarmErrors::new(&f);
        let v = verifier(&f.spec, &["*.example.com".to_owned()], &mut errs);
        assert_eq!(v, None);
        assert_eq!(
            fields(&errs.errors),
            [
                "spec.connectivityVerifier.expectedStatuses[0]",
                "spec.connectivityVerifier.path",
                "spec.connectivityVerifier.timeout",
                "spec.connectivityVerifier.interval",
                "spec.connectivityVerifier.healthyThreshold",
                "spec.connectivityVerifier.host",
            ]
        );
    }

    #[test]
    fn passive_ejection_defaults_without_a_verifier() {
        let p = passive(None);
        assert_eq!(p.consecutive_failures, 5);
        assert!(p.count_5xx);
        assert_eq!(p.max_ejected_percent, DEFAULT_MAX_EJECTED_PERCENT);
        let f = farm(
            "a",
            "connectivityVerifier:\n  path: /\n  expectedStatuses: ['200']\n  passive:\n    consecutiveFailures: 2\n    count5xx: false\n",
        );
        let p = passive(f.spec.connectivity_verifier.as_ref());
        assert_eq!(p.consecutive_failures, 2);
        assert!(!p.count_5xx);
    }
}
