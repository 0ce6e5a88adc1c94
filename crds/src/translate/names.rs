//! Names and tokens: what a Kubernetes object name, a host name, a path prefix or a header
//! token may be, and the names a farm gives other objects.

use crate::v1alpha1::ServerFarm;

use super::{TranslateError, farm_error};

/// A Kubernetes object name (a Secret, a ConfigMap): a DNS-1123 subdomain, at most 253
/// characters.
pub fn is_dns_subdomain(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// A Service name: a DNS-1035 label (at most 63 lower-case letters, digits and '-',
/// starting with a letter, not ending with '-'). The array's name is one too, since it
/// names the array's Service.
pub fn is_dns_label(name: &str) -> bool {
    name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// A namespace name: a DNS-1123 label (at most 63 lower-case letters, digits and '-',
/// not starting or ending with '-').
pub fn is_namespace(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && !name.starts_with('-')
        && !name.ends_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// A container port name (an IANA service name): 1-15 lower-case letters, digits and
/// '-', at least one letter, no leading, trailing or double '-'.
pub fn is_port_name(name: &str) -> bool {
    (1..=15).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && name.bytes().any(|b| b.is_ascii_lowercase())
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--")
}

pub(crate) const SECRET_NAME_RULE: &str =
    "is not a Secret name (a DNS subdomain: lower-case letters, digits, '-' and '.', at most 253)";
pub(crate) const SERVICE_NAME_RULE: &str = "is not a Service name (a DNS-1035 label: at most 63 lower-case letters, digits and '-', starting with a letter)";

/// The names a farm gives other objects (its array, Services, Secrets) that cannot be
/// object names. The controller checks these before it reads anything by those names, so
/// such a farm is refused on its own instead of failing its whole array's reconcile.
pub fn farm_reference_errors(farm: &ServerFarm) -> Vec<TranslateError> {
    let spec = &farm.spec;
    let mut errors = Vec::new();
    if !is_dns_label(&spec.array_ref.name) {
        errors.push(farm_error(
            farm,
            "spec.arrayRef.name".into(),
            format!(
                "{:?} is not a GatewayArray name (a DNS-1035 label: at most 63 lower-case letters, digits and '-', starting with a letter)",
                spec.array_ref.name
            ),
        ));
    }
    if let Some(ns) = spec
        .array_ref
        .namespace
        .as_ref()
        .filter(|n| !is_namespace(n))
    {
        errors.push(farm_error(
            farm,
            "spec.arrayRef.namespace".into(),
            format!(
                "{ns:?} is not a namespace name (a DNS-1123 label: at most 63 lower-case letters, digits and '-')"
            ),
        ));
    }
    let secrets = [
        (
            "spec.publish.tls.secretName",
            spec.publish.tls.as_ref().map(|t| &t.secret_name),
        ),
        (
            "spec.upstream.tls.caSecretName",
            spec.upstream
                .as_ref()
                .and_then(|u| u.tls.as_ref())
                .and_then(|t| t.ca_secret_name.as_ref()),
        ),
        (
            "spec.access.basicAuth.secretName",
            spec.access
                .as_ref()
                .and_then(|a| a.basic_auth.as_ref())
                .map(|b| &b.secret_name),
        ),
    ];
    for (field, name) in secrets {
        if let Some(name) = name.filter(|n| !is_dns_subdomain(n)) {
            errors.push(farm_error(
                farm,
                field.into(),
                format!("{name:?} {SECRET_NAME_RULE}"),
            ));
        }
    }
    for (i, server) in spec.servers.iter().enumerate() {
        if let Some(svc) = server.service.as_ref().filter(|s| !is_dns_label(&s.name)) {
            errors.push(farm_error(
                farm,
                format!("spec.servers[{i}].service.name"),
                format!("{:?} {SERVICE_NAME_RULE}", svc.name),
            ));
        }
    }
    errors
}

/// Checks a published host name and returns it normalized (lower case, no final dot).
pub fn normalize_host(host: &str) -> Result<String, String> {
    let h = host.trim_end_matches('.').to_ascii_lowercase();
    let (wild, rest) = match h.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, h.as_str()),
    };
    if rest.is_empty() || rest.len() > 253 {
        return Err(format!("{host:?} is not a host name"));
    }
    for label in rest.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(format!(
                "{host:?} is not a host name (labels of letters, digits and '-', or a leading '*.' wildcard)"
            ));
        }
    }
    if wild && !rest.contains('.') {
        return Err(format!(
            "{host:?}: a wildcard must cover a domain with at least two labels"
        ));
    }
    Ok(h)
}

/// Checks a published path prefix and returns it normalized (no trailing `/` but on the
/// root). Prefixes that two parsers could read differently are refused.
pub fn normalize_path(path: &str) -> Result<String, String> {
    if !path.starts_with('/') {
        return Err(format!("{path:?} must start with /"));
    }
    if path.bytes().any(|b| {
        b.is_ascii_control() || b == b' ' || b == b'%' || b == b'?' || b == b'#' || b == b'\\'
    }) {
        return Err(format!(
            "{path:?} may not contain spaces, control characters, %, ?, # or \\"
        ));
    }
    if path.contains("//") || path.split('/').any(|seg| seg == "." || seg == "..") {
        return Err(format!("{path:?} may not contain empty, . or .. segments"));
    }
    let trimmed = path.trim_end_matches('/');
    Ok(if trimmed.is_empty() {
        "/".to_owned()
    } else {
        trimmed.to_owned()
    })
}

/// Checks an RFC 9110 token (header names, cookie names).
pub(crate) fn http_token(s: &str) -> Result<(), ()> {
    let ok = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if ok { Ok(()) } else { Err(()) }
}
