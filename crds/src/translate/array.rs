//! The array's own fields: listeners, session keys and client limits, checked, with the
//! defaults every farm inherits.

use std::collections::BTreeSet;

use kube::ResourceExt;

use crate::Duration;
use crate::config::*;
use crate::v1alpha1::{self, GatewayArray, GatewayArraySpec};

use super::TranslateError;
use super::names::{
    SECRET_NAME_RULE, SERVICE_NAME_RULE, is_dns_label, is_dns_subdomain, is_port_name,
};

/// What the array gives every farm and the config.
pub(crate) struct ArrayDefaults {
    pub(crate) session: SessionConfig,
    pub(crate) limits: LimitsConfig,
    pub(crate) drain_timeout: Duration,
    /// The port an HTTPS redirect names: the one HTTPS listener's, when it is alone
    /// and not on 443.
    pub(crate) https_redirect_port: Option<u16>,
}

fn array_error(
    array: &GatewayArray,
    field: impl Into<String>,
    message: impl Into<String>,
) -> TranslateError {
    TranslateError {
        kind: "GatewayArray",
        namespace: array.namespace().unwrap_or_default(),
        name: array.name_any(),
        field: field.into(),
        message: message.into(),
    }
}

/// Checks the array; its defaults when it is valid, else every problem, in field order.
pub(crate) fn validate_array(array: &GatewayArray) -> Result<ArrayDefaults, Vec<TranslateError>> {
    let spec = &array.spec;
    let mut errors = Vec::new();
    let mut err = |field: String, message: String| errors.push(array_error(array, field, message));
    if spec.listeners.is_empty() {
        err(
            "spec.listeners".into(),
            "an array needs at least one listener".into(),
        );
    }
    if let Some(name) = spec
        .session_keys
        .as_ref()
        .and_then(|k| k.secret_name.as_deref())
        .filter(|n| !is_dns_subdomain(n))
    {
        err(
            "spec.sessionKeys.secretName".into(),
            format!("{name:?} {SECRET_NAME_RULE}"),
        );
    }
    let name = array.name_any();
    if !is_dns_label(&name) {
        err(
            "metadata.name".into(),
            format!("{name:?} {SERVICE_NAME_RULE}; the array's Service takes its name"),
        );
    }
    listener_errors(&spec.listeners, &mut err);
    if spec.replicas < 0 {
        err(
            "spec.replicas".into(),
            "replicas must not be negative".into(),
        );
    }
    let session = session(spec, &name, &mut err);
    let limits = limits(spec, &mut err);
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(ArrayDefaults {
        session,
        limits,
        drain_timeout: spec.drain_timeout.unwrap_or(DEFAULT_DRAIN_TIMEOUT),
        https_redirect_port: https_redirect_port(&spec.listeners),
    })
}

/// The port an HTTPS redirect names: only when the array has exactly one HTTPS
/// listener and it is not on 443 (with several, none is the obvious one).
fn https_redirect_port(listeners: &[v1alpha1::Listener]) -> Option<u16> {
    let mut https = listeners
        .iter()
        .filter(|l| l.protocol == ListenerProtocol::Https);
    match (https.next(), https.next()) {
        (Some(l), None) if l.port != 443 => Some(l.port),
        _ => None,
    }
}

/// The problems of the listeners: names and ports that are not allowed, used twice, and
/// TLS that does not match the protocol.
fn listener_errors(listeners: &[v1alpha1::Listener], err: &mut impl FnMut(String, String)) {
    let mut names = BTreeSet::new();
    let mut ports = BTreeSet::new();
    for (i, l) in listeners.iter().enumerate() {
        let field = |f: &str| format!("spec.listeners[{i}].{f}");
        if !is_port_name(&l.name) {
            err(
                field("name"),
                format!(
                    "{:?} is not a port name (1-15 lower-case letters, digits and '-', with at least one letter and no '--')",
                    l.name
                ),
            );
        } else if l.name == v1alpha1::MEMBER_ADMIN_PORT_NAME {
            err(
                field("name"),
                format!(
                    "{:?} names the members' admin port; choose another listener name",
                    l.name
                ),
            );
        }
        if l.port == v1alpha1::MEMBER_ADMIN_PORT {
            err(
                field("port"),
                format!(
                    "port {} is the members' admin port; choose another listener port",
                    l.port
                ),
            );
        }
        if let Some(tls) = l.tls.as_ref().filter(|t| !is_dns_subdomain(&t.secret_name)) {
            err(
                field("tls.secretName"),
                format!("{:?} {SECRET_NAME_RULE}", tls.secret_name),
            );
        }
        if !names.insert(&l.name) {
            err(
                field("name"),
                format!("listener name {:?} is used twice", l.name),
            );
        }
        if !ports.insert(l.port) {
            err(
                field("port"),
                format!("port {} is used by two listeners", l.port),
            );
        }
        if l.port == 0 {
            err(field("port"), "port must be 1-65535".into());
        }
        if let Some(m) = listener_tls_error(l) {
            err(field("tls"), m.into());
        }
    }
}

/// Why the listener's TLS does not fit its protocol, if it does not.
fn listener_tls_error(l: &v1alpha1::Listener) -> Option<&'static str> {
    match (l.protocol, &l.tls) {
        (v1alpha1::ListenerProtocol::Https, None) => {
            Some("an HTTPS listener needs tls.secretName (the default certificate)")
        }
        (v1alpha1::ListenerProtocol::Http, Some(_)) => Some("an HTTP listener takes no tls"),
        _ => None,
    }
}

/// The session settings: the longest session, how long retired keys are accepted and
/// how often keys rotate.
fn session(
    spec: &GatewayArraySpec,
    array_name: &str,
    err: &mut impl FnMut(String, String),
) -> SessionConfig {
    let max_session_time = spec.max_session_time.unwrap_or(DEFAULT_MAX_SESSION_TIME);
    if max_session_time.is_zero() {
        err(
            "spec.maxSessionTime".into(),
            "must be longer than 0s".into(),
        );
    }
    let keys = spec.session_keys.clone().unwrap_or_default();
    let accept_retired_for = keys.accept_retired_for.unwrap_or(max_session_time);
    if accept_retired_for < max_session_time {
        err(
            "spec.sessionKeys.acceptRetiredFor".into(),
            format!(
                "{accept_retired_for} is shorter than maxSessionTime {max_session_time}: sessions would outlive their key"
            ),
        );
    }
    let rotation_interval = keys.rotation_interval.unwrap_or(DEFAULT_ROTATION_INTERVAL);
    if rotation_interval < Duration::from_secs(60) {
        err(
            "spec.sessionKeys.rotationInterval".into(),
            "must be at least 1m".into(),
        );
    }
    SessionConfig {
        keyring_secret: keys
            .secret_name
            .unwrap_or_else(|| format!("{array_name}-keys")),
        max_session_time,
        accept_retired_for,
        rotation_interval,
    }
}

/// The client limits, with their defaults, and the trusted proxy ranges.
fn limits(spec: &GatewayArraySpec, err: &mut impl FnMut(String, String)) -> LimitsConfig {
    let limits = spec.limits.clone().unwrap_or_default();
    let mut limits = LimitsConfig {
        max_connections: limits.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS),
        max_header_bytes: limits.max_header_bytes.unwrap_or(DEFAULT_MAX_HEADER_BYTES),
        max_headers: limits.max_headers.unwrap_or(DEFAULT_MAX_HEADERS),
        header_read_timeout: limits
            .header_read_timeout
            .unwrap_or(DEFAULT_HEADER_READ_TIMEOUT),
        client_idle_timeout: limits
            .client_idle_timeout
            .unwrap_or(DEFAULT_CLIENT_IDLE_TIMEOUT),
        max_connections_per_client: limits
            .max_connections_per_client
            .unwrap_or(DEFAULT_MAX_CONNECTIONS_PER_CLIENT),
        trusted_proxies: Vec::new(),
    };
    for (i, range) in spec.trusted_proxies.iter().enumerate() {
        match range.parse::<IpRange>() {
            Ok(r) => limits.trusted_proxies.push(r),
            Err(m) => err(format!("spec.trustedProxies[{i}]"), m),
        }
    }
    if limits.header_read_timeout.is_zero() {
        err(
            "spec.limits.headerReadTimeout".into(),
            "must be longer than 0s".into(),
        );
    }
    limits
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::testing::{array, fields};

    const HTTP: &str = "listeners:\n- name: http\n  port: 8080\n  protocol: HTTP\n";

    #[test]
    fn a_valid_array_gets_the_defaults() {
        let d = validate_array(&array("edge", HTTP)).unwrap();
        assert_eq!(d.session.keyring_secret, "edge-keys");
        assert_eq!(d.session.max_session_time, Duration::from_secs(24 * 3600));
        assert_eq!(d.session.accept_retired_for, Duration::from_secs(24 * 3600));
        assert_eq!(d.limits.max_connections, 20_000);
        assert_eq!(d.drain_timeout, Duration::from_secs(30));
    }

    #[test]
    fn an_https_redirect_names_the_port_of_a_lone_https_listener_off_443() {
        let port = |spec: &str| https_redirect_port(&array("edge", spec).spec.listeners);
        let https = |name: &str, port: u16| {
            format!(
                "- name: {name}\n  port: {port}\n  protocol: HTTPS\n  tls:\n    secretName: c\n"
            )
        };
        assert_eq!(port(HTTP), None);
        assert_eq!(port(&format!("{HTTP}{}", https("s", 443))), None);
        assert_eq!(port(&format!("{HTTP}{}", https("s", 8443))), Some(8443));
        let two = format!("{HTTP}{}{}", https("s", 8443), https("t", 9443));
        assert_eq!(port(&two), None);
    }

    #[test]
    fn listener_errors_name_each_field() {
        let spec = "listeners:\n- name: web\n  port: 80\n  protocol: HTTPS\n- name: web\n  port: 80\n  protocol: HTTP\n  tls:\n    secretName: Bad_Name\n";
        let mut errors = Vec::new();
        listener_errors(&array("edge", spec).spec.listeners, &mut |f, m| {
            errors.push((f, m))
        });
        let named: Vec<&str> = errors.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            named,
            [
                "spec.listeners[0].tls",
                "spec.listeners[1].tls.secretName",
                "spec.listeners[1].name",
                "spec.listeners[1].port",
                "spec.listeners[1].tls",
            ]
        );
        assert_eq!(errors[2].1, "listener name \"web\" is used twice");
    }

    #[test]
    fn session_keys_must_outlive_sessions() {
        let spec = format!(
            "{HTTP}maxSessionTime: 2h\nsessionKeys:\n  acceptRetiredFor: 1h\n  rotationInterval: 30s\n  secretName: ring\n"
        );
        let a = array("edge", &spec);
        let mut errors = Vec::new();
        let s = session(&a.spec, "edge", &mut |f, m| errors.push((f, m)));
        assert_eq!(s.keyring_secret, "ring");
        assert_eq!(s.accept_retired_for, Duration::from_secs(3600));
        assert_eq!(
            errors,
            [
                (
                    "spec.sessionKeys.acceptRetiredFor".to_owned(),
                    "1h is shorter than maxSessionTime 2h: sessions would outlive their key"
                        .to_owned()
                ),
                (
                    "spec.sessionKeys.rotationInterval".to_owned(),
                    "must be at least 1m".to_owned()
                ),
            ]
        );
    }

    #[test]
    fn limits_parse_trusted_proxies() {
        let spec = format!("{HTTP}trustedProxies: [10.0.0.0/8, nonsense]\n");
        let a = array("edge", &spec);
        let mut errors = Vec::new();
        let l = limits(&a.spec, &mut |f, m| errors.push((f, m)));
        assert_eq!(l.trusted_proxies.len(), 1);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].0, "spec.trustedProxies[1]");
    }

    #[test]
    fn an_invalid_array_reports_every_problem() {
        let errors = validate_array(&array("Edge", "listeners: []\nreplicas: -1\n"))
            .err()
            .unwrap();
        assert_eq!(
            fields(&errors),
            ["spec.listeners", "metadata.name", "spec.replicas"]
        );
        assert_eq!(errors[0].kind, "GatewayArray");
    }
}
