//! Access control: client address ranges, rate limits and authentication, checked by
//! the proxy before it picks a server.

use crate::config::*;
use crate::v1alpha1::{Access, BasicAuth, Cors, ExternalAuth, RateLimit, SourceRanges};

use super::names::http_token;

use super::FarmErrors;

/// The farm's access phase (`spec.access` and `spec.cors`). Every value that does not
/// parse is an error naming its field and index.
pub(crate) fn access(
    access: Option<&Access>,
    cors: Option<&Cors>,
    errs: &mut FarmErrors<'_>,
) -> AccessConfig {
    let cors = cors.map(|c| cors_config(c, errs));
    let Some(access) = access else {
        return AccessConfig {
            cors,
            ..AccessConfig::default()
        };
    };
    AccessConfig {
        cors,
        source_ranges: access
            .source_ranges
            .as_ref()
            .map(|r| source_ranges(r, errs)),
        rate_limit: access.rate_limit.as_ref().map(|r| rate_limit(r, errs)),
        basic_auth: access.basic_auth.as_ref().map(|b| basic_auth(b, errs)),
        external_auth: access
            .external_auth
            .as_ref()
            .map(|e| external_auth(e, errs)),
    }
}

/// Whether `origin` is a CORS origin pattern: `*`, `scheme://host[:port]` or
/// `scheme://*.suffix[:port]`.
fn is_origin_pattern(origin: &str) -> bool {
    if origin == "*" {
        return true;
    }
    let Some((scheme, rest)) = origin.split_once("://") else {
        return false;
    };
    let host = rest.strip_prefix("*.").unwrap_or(rest);
    let (host, port) = match host.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (host, None),
    };
    !scheme.is_empty()
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
        && !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.'))
        && port.is_none_or(|p| p.parse::<u16>().is_ok())
}

fn cors_config(cors: &Cors, errs: &mut FarmErrors<'_>) -> CorsConfig {
    let mut tokens = |list: Option<&Vec<String>>, default: &[&str], field: &str| {
        let list: Vec<String> = match list {
            Some(l) => l.clone(),
            None => default.iter().map(|s| (*s).to_owned()).collect(),
        };
        for (i, t) in list.iter().enumerate() {
            if http_token(t).is_err() {
                errs.push(
                    format!("spec.cors.{field}[{i}]"),
                    format!("{t:?} is not an HTTP token"),
                );
            }
        }
        list
    };
    let allow_methods = tokens(
        cors.allow_methods.as_ref(),
        &DEFAULT_CORS_METHODS,
        "allowMethods",
    );
    let allow_headers = tokens(
        cors.allow_headers.as_ref(),
        &DEFAULT_CORS_HEADERS,
        "allowHeaders",
    );
    let expose_headers = tokens(Some(&cors.expose_headers), &[], "exposeHeaders");
    let allow_origins: Vec<String> = cors
        .allow_origins
        .clone()
        .unwrap_or_else(|| vec!["*".to_owned()])
        .into_iter()
        .map(|o| o.trim().trim_end_matches('/').to_ascii_lowercase())
        .collect();
    for (i, o) in allow_origins.iter().enumerate() {
        if !is_origin_pattern(o) {
            errs.push(
                format!("spec.cors.allowOrigins[{i}]"),
                format!("{o:?} is not *, an origin (https://app.example.com) or a wildcard origin (https://*.example.com)"),
            );
        }
    }
    CorsConfig {
        allow_origins,
        allow_methods,
        allow_headers,
        expose_headers,
        allow_credentials: cors.allow_credentials.unwrap_or(true),
        max_age: cors.max_age.unwrap_or(DEFAULT_CORS_MAX_AGE),
    }
}

/// Whether `url` is `http://` or `https://` with a host, and nothing a request line
/// cannot carry (spaces, control characters, a fragment).
fn is_http_url(url: &str) -> bool {
    let Some(rest) = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
    else {
        return false;
    };
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    !authority.is_empty()
        && !authority.contains('@')
        && url.bytes().all(|b| b.is_ascii_graphic())
        && !url.contains('#')
}

fn external_auth(auth: &ExternalAuth, errs: &mut FarmErrors<'_>) -> ExternalAuthConfig {
    let field = "spec.access.externalAuth";
    if !is_http_url(&auth.url) {
        errs.push(
            format!("{field}.url"),
            format!(
                "{:?} is not an http:// or https:// URL with a host (and no credentials, spaces or fragment)",
                auth.url
            ),
        );
    }
    let method = auth
        .method
        .clone()
        .unwrap_or_else(|| DEFAULT_EXTERNAL_AUTH_METHOD.to_owned());
    if http_token(&method).is_err() || method.bytes().any(|b| b.is_ascii_lowercase()) {
        errs.push(
            format!("{field}.method"),
            format!("{method:?} is not an HTTP method in upper case"),
        );
    }
    if let Some(signin) = auth.signin.as_deref().filter(|s| !is_http_url(s)) {
        errs.push(
            format!("{field}.signin"),
            format!("{signin:?} is not an http:// or https:// URL with a host"),
        );
    }
    let mut response_headers = Vec::new();
    for (i, h) in auth.response_headers.iter().enumerate() {
        if http_token(h).is_err() {
            errs.push(
                format!("{field}.responseHeaders[{i}]"),
                format!("{h:?} is not a header name"),
            );
        } else {
            response_headers.push(h.to_ascii_lowercase());
        }
    }
    ExternalAuthConfig {
        url: auth.url.clone(),
        method,
        signin: auth.signin.clone(),
        response_headers,
    }
}

/// The Secret name is checked with the farm's other references
/// ([`super::farm_reference_errors`]); the realm must fit in a quoted string.
fn basic_auth(auth: &BasicAuth, errs: &mut FarmErrors<'_>) -> BasicAuthConfig {
    let realm = auth
        .realm
        .clone()
        .unwrap_or_else(|| DEFAULT_BASIC_AUTH_REALM.to_owned());
    if realm.len() > 128
        || realm
            .chars()
            .any(|c| c == '"' || c == '\\' || c.is_control())
    {
        errs.push(
            "spec.access.basicAuth.realm",
            format!(
                "{realm:?} must be at most 128 characters without double quotes, backslashes or control characters"
            ),
        );
    }
    BasicAuthConfig {
        secret: super::secret_id(errs.farm, &auth.secret_name),
        realm,
    }
}

fn rate_limit(limit: &RateLimit, errs: &mut FarmErrors<'_>) -> RateLimitConfig {
    let field = "spec.access.rateLimit";
    let positive = |v: Option<u32>| v.filter(|n| *n > 0);
    let config = RateLimitConfig {
        requests_per_second: positive(limit.requests_per_second),
        requests_per_minute: positive(limit.requests_per_minute),
        burst_multiplier: limit.burst_multiplier.unwrap_or(DEFAULT_BURST_MULTIPLIER),
        connections: positive(limit.connections),
        status_code: limit.status_code.unwrap_or(DEFAULT_RATE_LIMIT_STATUS),
    };
    if config.requests_per_second.is_none()
        && config.requests_per_minute.is_none()
        && config.connections.is_none()
    {
        errs.push(
            field,
            "rateLimit needs at least one of requestsPerSecond, requestsPerMinute or connections above 0",
        );
    }
    if !(1..=100).contains(&config.burst_multiplier) {
        errs.push(
            format!("{field}.burstMultiplier"),
            format!("{} is not 1 to 100", config.burst_multiplier),
        );
    }
    if !(400..=599).contains(&config.status_code) {
        errs.push(
            format!("{field}.statusCode"),
            format!("{} is not an error status (400 to 599)", config.status_code),
        );
    }
    config
}

fn source_ranges(ranges: &SourceRanges, errs: &mut FarmErrors<'_>) -> SourceRangesConfig {
    let mut parse = |list: &[String], field: &str| -> Vec<IpRange> {
        list.iter()
            .enumerate()
            .filter_map(|(i, r)| {
                r.trim()
                    .parse::<IpRange>()
                    .map_err(|m| errs.push(format!("spec.access.sourceRanges.{field}[{i}]"), m))
                    .ok()
            })
            .collect()
    };
    SourceRangesConfig {
        allow: parse(&ranges.allow, "allow"),
        deny: parse(&ranges.deny, "deny"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::testing::{farm, problems};

    fn translate(spec: &str) -> (AccessConfig, Vec<(String, String)>) {
        let f = farm("a", spec);
        let mut errs = FarmErrors::new(&f);
        let a = access(f.spec.access.as_ref(), f.spec.cors.as_ref(), &mut errs);
        let p = problems(&errs.errors)
            .into_iter()
            .map(|(f, m)| (f.to_owned(), m.to_owned()))
            .collect();
        (a, p)
    }

    #[test]
    fn no_access_checks_nothing() {
        let (a, p) = translate("");
        assert!(p.is_empty());
        assert!(a.is_empty());
    }

    #[test]
    fn source_ranges_take_cidrs_and_single_addresses_of_both_families() {
        let (a, p) = translate(
            "access:\n  sourceRanges:\n    allow: [10.0.0.0/8, 192.0.2.7, '2001:db8::/32']\n    deny: ['::1']\n",
        );
        assert!(p.is_empty(), "{p:?}");
        let r = a.source_ranges.unwrap();
        let shown: Vec<String> = r.allow.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32"]);
        assert_eq!(r.deny[0].to_string(), "::1/128");
    }

    #[test]
    fn rate_limits_get_ingress_nginx_defaults() {
        let (a, p) = translate("access:\n  rateLimit: {requestsPerSecond: 10}\n");
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(
            a.rate_limit,
            Some(RateLimitConfig {
                requests_per_second: Some(10),
                requests_per_minute: None,
                burst_multiplier: 5,
                connections: None,
                status_code: 429,
            })
        );
        let (a, p) = translate(
            "access:\n  rateLimit: {requestsPerMinute: 60, burstMultiplier: 1, connections: 3, statusCode: 503}\n",
        );
        assert!(p.is_empty(), "{p:?}");
        let r = a.rate_limit.unwrap();
        assert_eq!(
            (
                r.requests_per_minute,
                r.burst_multiplier,
                r.connections,
                r.status_code
            ),
            (Some(60), 1, Some(3), 503)
        );
    }

    #[test]
    fn a_rate_limit_that_limits_nothing_or_answers_success_is_refused() {
        let (_, p) = translate(
            "access:\n  rateLimit: {requestsPerSecond: 0, burstMultiplier: 0, statusCode: 200}\n",
        );
        let fields: Vec<&str> = p.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.access.rateLimit",
                "spec.access.rateLimit.burstMultiplier",
                "spec.access.rateLimit.statusCode",
            ]
        );
        assert_eq!(p[2].1, "200 is not an error status (400 to 599)");
    }

    #[test]
    fn basic_auth_names_its_secret_and_a_realm() {
        let (a, p) = translate("access:\n  basicAuth: {secretName: users}\n");
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(
            a.basic_auth,
            Some(BasicAuthConfig {
                secret: "users".into(),
                realm: "Restricted".into()
            })
        );
        let (a, _) = translate("access:\n  basicAuth: {secretName: users, realm: Staff only}\n");
        assert_eq!(a.basic_auth.unwrap().realm, "Staff only");
    }

    #[test]
    fn a_realm_that_breaks_the_challenge_is_refused() {
        let (_, p) = translate("access:\n  basicAuth: {secretName: users, realm: 'a\"b'}\n");
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].0, "spec.access.basicAuth.realm");
    }

    #[test]
    fn external_auth_gets_ingress_nginx_defaults() {
        let (a, p) = translate(
            "access:\n  externalAuth:\n    url: http://auth.default.svc:8080/check?x=1\n    signin: https://login.example/start\n    responseHeaders: [X-Auth-User]\n",
        );
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(
            a.external_auth,
            Some(ExternalAuthConfig {
                url: "http://auth.default.svc:8080/check?x=1".into(),
                method: "GET".into(),
                signin: Some("https://login.example/start".into()),
                response_headers: vec!["x-auth-user".into()],
            })
        );
    }

    #[test]
    fn external_auth_refuses_what_cannot_be_requested() {
        let (_, p) = translate(
            "access:\n  externalAuth:\n    url: ftp://auth\n    method: get\n    signin: /login\n    responseHeaders: [ok, 'bad header']\n",
        );
        let fields: Vec<&str> = p.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.access.externalAuth.url",
                "spec.access.externalAuth.method",
                "spec.access.externalAuth.signin",
                "spec.access.externalAuth.responseHeaders[1]",
            ]
        );
        for url in [
            "http://",
            "https://u:p@auth/",
            "http://auth/a b",
            "http://auth/#f",
        ] {
            assert!(!is_http_url(url), "{url}");
        }
        assert!(is_http_url("https://auth"));
    }

    #[test]
    fn cors_gets_ingress_nginx_defaults() {
        let (a, p) = translate("cors: {}\n");
        assert!(p.is_empty(), "{p:?}");
        let c = a.cors.unwrap();
        assert_eq!(c.allow_origins, ["*"]);
        assert_eq!(
            c.allow_methods,
            ["GET", "PUT", "POST", "DELETE", "PATCH", "OPTIONS"]
        );
        assert_eq!(c.allow_headers.len(), 9);
        assert!(c.allow_credentials);
        assert_eq!(c.max_age, 1_728_000);
        let (a, p) = translate(
            "cors:\n  allowOrigins: ['https://App.example.com/', 'https://*.example.org:8443']\n  allowCredentials: false\n  exposeHeaders: [X-Total]\n",
        );
        assert!(p.is_empty(), "{p:?}");
        let c = a.cors.unwrap();
        assert_eq!(
            c.allow_origins,
            ["https://app.example.com", "https://*.example.org:8443"]
        );
        assert!(!c.allow_credentials);
        assert_eq!(c.expose_headers, ["X-Total"]);
    }

    #[test]
    fn cors_refuses_what_is_not_an_origin_or_a_token() {
        let (_, p) = translate(
            "cors:\n  allowOrigins: ['*', 'app.example.com', 'https://a.example.com:99999', 'https://a b']\n  allowMethods: ['GET', 'BAD METHOD']\n  exposeHeaders: ['x:y']\n",
        );
        let fields: Vec<&str> = p.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.cors.allowMethods[1]",
                "spec.cors.exposeHeaders[0]",
                "spec.cors.allowOrigins[1]",
                "spec.cors.allowOrigins[2]",
                "spec.cors.allowOrigins[3]",
            ]
        );
    }

    #[test]
    fn an_invalid_range_is_refused_by_its_index() {
        let (_, p) = translate(
            "access:\n  sourceRanges:\n    allow: [10.0.0.0/8, 10.0.0.0/33]\n    deny: [example.com]\n",
        );
        assert_eq!(
            p,
            [
                (
                    "spec.access.sourceRanges.allow[1]".to_owned(),
                    "\"10.0.0.0/33\" has a prefix length that is not 0-32".to_owned()
                ),
                (
                    "spec.access.sourceRanges.deny[0]".to_owned(),
                    "\"example.com\" is not an address or CIDR range".to_owned()
                ),
            ]
        );
    }
}
