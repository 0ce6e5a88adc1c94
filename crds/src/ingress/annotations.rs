//! `nginx.ingress.kubernetes.io/*` annotations, read with the meaning ingress-nginx's
//! documentation gives them, into ServerFarm fields. Annotations that carry raw nginx
//! configuration are never executed; they, and every annotation not served, become
//! [`Finding`]s (Warning events on the Ingress, lines of `ingress-audit`).

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use super::{Finding, Severity};

/// The prefix of ingress-nginx's annotations.
pub const PREFIX: &str = "nginx.ingress.kubernetes.io/";

/// Annotations whose value is nginx configuration (or Lua) pasted into nginx.conf.
const RAW_CONFIG: &[&str] = &[
    "server-snippet",
    "configuration-snippet",
    "auth-snippet",
    "stream-snippet",
    "modsecurity-snippet",
    "location-snippet",
    "lua-resty-waf",
    "lua-resty-waf-debug",
    "lua-resty-waf-ignore-rulesets",
    "lua-resty-waf-extra-rules",
    "lua-resty-waf-allow-unknown-content-types",
    "lua-resty-waf-score-threshold",
    "lua-resty-waf-process-multipart-body",
    "mirror-request-body",
    "enable-modsecurity",
    "enable-owasp-core-rules",
    "modsecurity-transaction-id",
];

/// What an Ingress's annotations ask for, ready to be applied to each of its farms.
#[derive(Clone, Debug, Default)]
pub struct Features {
    /// Top-level farm spec fields, merged into each farm (objects merge key by key).
    spec: Map<String, Value>,
    /// Paths are regular expressions (`use-regex`, implied by `rewrite-target`).
    use_regex: bool,
    /// `ssl-redirect` (default on): redirect plain HTTP when the host has TLS.
    ssl_redirect: bool,
    /// `force-ssl-redirect`: redirect plain HTTP even without TLS for the host.
    force_ssl_redirect: bool,
    /// Why the Ingress must not be served at all: it asks for protection (authentication)
    /// that cannot be given as written, and serving it without would expose it.
    pub(super) deny: Vec<String>,
}

impl Features {
    /// How a path of `pathType` is matched: `Exact`, `Prefix` or `Regex`.
    /// `ImplementationSpecific` is `Prefix` here (whole path elements), as ingress-nginx
    /// treats it without `use-regex`; with `use-regex` (or `rewrite-target`) every path of
    /// the Ingress is a regular expression, case-insensitive and anchored at the start,
    /// as ingress-nginx's `location ~*` is.
    pub fn path_kind(&self, path_type: &str) -> &'static str {
        if self.use_regex {
            return "Regex";
        }
        match path_type {
            "Exact" => "Exact",
            _ => "Prefix",
        }
    }

    /// Merges the annotations' fields into a farm `spec`; `has_tls` says whether the
    /// farm's host is listed in the Ingress's `spec.tls`.
    pub fn apply(&self, spec: &mut Value, has_tls: bool) {
        for (k, v) in &self.spec {
            merge(&mut spec[k.as_str()], v);
        }
        if self.force_ssl_redirect || (self.ssl_redirect && has_tls) {
            merge(
                &mut spec["filters"],
                &json!({"httpsRedirect": {"statusCode": 308}}),
            );
        }
    }

    fn set(&mut self, path: &[&str], value: Value) {
        let mut obj = value;
        for key in path.iter().skip(1).rev() {
            obj = json!({ *key: obj });
        }
        let top = self
            .spec
            .entry(path[0].to_owned())
            .or_insert_with(|| json!({}));
        if path.len() == 1 {
            *top = obj;
        } else {
            merge(top, &obj);
        }
    }
}

fn merge(into: &mut Value, from: &Value) {
    match (into.as_object_mut(), from.as_object()) {
        (Some(a), Some(b)) => {
            for (k, v) in b {
                merge(a.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        _ => *into = from.clone(),
    }
}

/// Reads the ingress-nginx annotations of an Ingress. Every annotation under
/// [`PREFIX`] that is not served, or not served as written, adds a [`Finding`];
/// annotations under other prefixes are not ours and pass silently.
pub fn read(
    annotations: &BTreeMap<String, String>,
    namespace: &str,
    findings: &mut Vec<Finding>,
) -> Features {
    let ours: BTreeMap<&str, &str> = annotations
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix(PREFIX)?, v.as_str())))
        .collect();
    let mut r = Reader {
        all: &ours,
        namespace,
        features: Features {
            ssl_redirect: true,
            ..Features::default()
        },
        findings,
    };
    for (&name, &value) in &ours {
        r.one(name, value);
    }
    r.features
}

struct Reader<'a> {
    all: &'a BTreeMap<&'a str, &'a str>,
    /// The Ingress's namespace (`auth-secret` may name it).
    namespace: &'a str,
    features: Features,
    findings: &'a mut Vec<Finding>,
}

impl<'a> Reader<'a> {
    fn finding(&mut self, name: &str, severity: Severity, message: String) {
        self.findings.push(Finding {
            subject: format!("{PREFIX}{name}"),
            severity,
            message,
        });
    }

    fn ignored(&mut self, name: &str, message: impl Into<String>) {
        self.finding(name, Severity::Ignored, message.into());
    }

    fn note(&mut self, name: &str, message: impl Into<String>) {
        self.finding(name, Severity::Note, message.into());
    }

    /// The Ingress asks for protection that cannot be given: it is not served at all
    /// (ingress-nginx answers such locations with an error too).
    fn deny(&mut self, name: &str, why: String) {
        self.ignored(
            name,
            format!("{why}; the Ingress is not served at all rather than served unprotected"),
        );
        self.features.deny.push(format!("{PREFIX}{name}"));
    }

    fn invalid(&mut self, name: &str, value: &str, want: &str) {
        self.ignored(
            name,
            format!("value {value:?} is not {want}; the annotation is ignored"),
        );
    }

    fn get(&self, name: &str) -> Option<&'a str> {
        self.all.get(name).copied()
    }

    fn flag(&mut self, name: &str, value: &str) -> Option<bool> {
        match value {
            "true" => Some(true),
            "false" => Some(false),
            _ => {
                self.invalid(name, value, "\"true\" or \"false\"");
                None
            }
        }
    }

    fn seconds(&mut self, name: &str, value: &str) -> Option<String> {
        match value.trim().parse::<u64>() {
            Ok(n) if n > 0 => Some(format!("{n}s")),
            _ => {
                self.invalid(name, value, "a positive number of seconds");
                None
            }
        }
    }

    fn number(&mut self, name: &str, value: &str) -> Option<u64> {
        let n = value.trim().parse::<u64>().ok();
        if n.is_none() {
            self.invalid(name, value, "a non-negative integer");
        }
        n
    }

    fn list(value: &str) -> Vec<String> {
        value
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// Only meaningful with another annotation: a note when that one is absent.
    fn needs(&mut self, name: &str, other: &str, is: Option<&str>) -> bool {
        let ok = match (self.get(other), is) {
            (Some(v), Some(want)) => v.eq_ignore_ascii_case(want),
            (Some(_), None) => true,
            (None, _) => false,
        };
        if !ok {
            let cond = is.map_or(String::new(), |w| format!(": {w}"));
            self.ignored(
                name,
                format!("only used with {PREFIX}{other}{cond}, which this Ingress does not set"),
            );
        }
        ok
    }

    fn one(&mut self, name: &str, value: &str) {
        if RAW_CONFIG.contains(&name) {
            self.ignored(
                name,
                "carries raw nginx configuration, which Portcullis never executes; the Ingress is served without it",
            );
            return;
        }
        if self.affinity(name, value)
            || self.routing(name, value)
            || self.upstream(name, value)
            || self.access(name, value)
            || self.auth(name, value)
            || self.cors(name, value)
            || self.canary(name, value)
        {
            return;
        }
        self.ignored(
            name,
            "not supported by Portcullis (see the supported-annotation table in the README); the Ingress is served without it",
        );
    }

    fn affinity(&mut self, name: &str, value: &str) -> bool {
        match name {
            "affinity" => {
                if value == "cookie" {
                    self.features.set(&["affinity", "mode"], json!("Cookie"));
                    if self.get("session-cookie-name").is_none() {
                        // ingress-nginx's default name, so applications that look for it
                        // keep finding it.
                        self.features
                            .set(&["affinity", "cookieName"], json!("INGRESSCOOKIE"));
                    }
                } else {
                    self.invalid(
                        name,
                        value,
                        "\"cookie\" (the only affinity ingress-nginx has)",
                    );
                }
            }
            "affinity-mode" => {
                if self.needs(name, "affinity", Some("cookie")) {
                    match value {
                        "persistent" => {}
                        "balanced" => self.note(
                            name,
                            "a session stays on its server until that server fails or the session ends (persistent); sessions are not moved to rebalance after a scale-out",
                        ),
                        _ => self.invalid(name, value, "\"balanced\" or \"persistent\""),
                    }
                }
            }
            "session-cookie-name" => {
                if self.needs(name, "affinity", Some("cookie")) {
                    self.features.set(&["affinity", "cookieName"], json!(value));
                }
            }
            "session-cookie-max-age" | "session-cookie-expires" => {
                let wins = name == "session-cookie-max-age"
                    || self.get("session-cookie-max-age").is_none();
                if self.needs(name, "affinity", Some("cookie"))
                    && let Some(d) = self.seconds(name, value)
                    && wins
                {
                    self.features.set(&["affinity", "maxSessionTime"], json!(d));
                }
            }
            "session-cookie-samesite" => {
                if self.needs(name, "affinity", Some("cookie")) {
                    match value {
                        "Strict" | "Lax" | "None" => {
                            self.features.set(&["affinity", "sameSite"], json!(value));
                        }
                        _ => self.invalid(name, value, "Strict, Lax or None"),
                    }
                }
            }
            _ => return self.affinity_notes(name),
        }
        true
    }

    /// Affinity settings that Portcullis always has one way: a note says which.
    fn affinity_notes(&mut self, name: &str) -> bool {
        match name {
            "session-cookie-path" => {
                if self.needs(name, "affinity", Some("cookie")) {
                    self.note(
                        name,
                        "the sealed affinity cookie is always Path=/: it names a server of this farm only and is useless elsewhere",
                    );
                }
            }
            "session-cookie-secure" => {
                if self.needs(name, "affinity", Some("cookie")) {
                    self.note(
                        name,
                        "the affinity cookie is Secure on HTTPS listeners (and always with SameSite=None), whatever this says",
                    );
                }
            }
            "session-cookie-change-on-failure" => {
                if self.needs(name, "affinity", Some("cookie")) {
                    self.note(
                        name,
                        "a session whose server fails or is ejected always moves to a healthy server (as with \"true\")",
                    );
                }
            }
            _ => return false,
        }
        true
    }

    fn routing(&mut self, name: &str, value: &str) -> bool {
        match name {
            "ssl-redirect" => {
                if let Some(on) = self.flag(name, value) {
                    self.features.ssl_redirect = on;
                }
            }
            "force-ssl-redirect" => {
                if let Some(on) = self.flag(name, value) {
                    self.features.force_ssl_redirect = on;
                }
            }
            "permanent-redirect" | "temporal-redirect" => {
                let (code_name, default) = if name == "permanent-redirect" {
                    ("permanent-redirect-code", 301)
                } else {
                    ("temporal-redirect-code", 302)
                };
                let code = match self.get(code_name).map(|c| c.parse::<u16>()) {
                    Some(Ok(c)) if [301, 302, 303, 307, 308].contains(&c) => c,
                    _ => default,
                };
                if value.starts_with("http://") || value.starts_with("https://") {
                    self.features.set(
                        &["filters", "requestRedirect"],
                        json!({"url": value, "statusCode": code}),
                    );
                } else {
                    self.invalid(name, value, "an absolute http:// or https:// URL");
                }
            }
            "permanent-redirect-code" | "temporal-redirect-code" => {
                let base = name.trim_end_matches("-code");
                if self.needs(name, base, None)
                    && !matches!(value.parse::<u16>(), Ok(301 | 302 | 303 | 307 | 308))
                {
                    self.invalid(name, value, "301, 302, 303, 307 or 308");
                }
            }
            "app-root" => {
                if value.starts_with('/') {
                    self.features.set(&["filters", "appRoot"], json!(value));
                } else {
                    self.invalid(name, value, "a path starting with /");
                }
            }
            "use-regex" => {
                if let Some(on) = self.flag(name, value) {
                    self.features.use_regex |= on;
                }
            }
            "rewrite-target" => {
                // ingress-nginx: rewrite-target implies use-regex.
                self.features.use_regex = true;
                self.features
                    .set(&["filters", "rewrite", "pathTemplate"], json!(value));
            }
            "x-forwarded-prefix" => {
                self.features.set(
                    &["filters", "requestHeaders", "set"],
                    json!({"X-Forwarded-Prefix": value}),
                );
            }
            "upstream-vhost" => {
                self.features.set(&["backendHost"], json!(value));
            }
            "proxy-body-size" => match body_size(value) {
                Some(n) => self
                    .features
                    .set(&["filters", "maxRequestBodySize"], json!(n)),
                None => self.invalid(
                    name,
                    value,
                    "an nginx size (1024, 8k, 10m, 1g; 0 for no limit)",
                ),
            },
            _ => return false,
        }
        true
    }

    fn upstream(&mut self, name: &str, value: &str) -> bool {
        match name {
            "proxy-connect-timeout" => {
                if let Some(d) = self.seconds(name, value) {
                    self.features.set(&["upstream", "connectTimeout"], json!(d));
                }
            }
            "proxy-read-timeout" => {
                if let Some(d) = self.seconds(name, value) {
                    self.features
                        .set(&["upstream", "firstByteTimeout"], json!(d));
                    self.note(
                        name,
                        "bounds the wait for the response head (upstream.firstByteTimeout); once the response streams, reads between chunks are not timed out",
                    );
                }
            }
            "proxy-send-timeout" => {
                if self.seconds(name, value).is_some() {
                    self.note(
                        name,
                        "Portcullis does not time out writes of the request body to a server separately; a stalled server is caught by the response timeout",
                    );
                }
            }
            "backend-protocol" => match value.to_ascii_uppercase().as_str() {
                "HTTP" => {}
                "HTTPS" => self.features.set(
                    &["upstream", "tls"],
                    // ingress-nginx does not verify server certificates by default
                    // (proxy-ssl-verify off); neither does the translation.
                    json!({"insecureSkipVerify": true}),
                ),
                "GRPC" => self.features.set(&["upstream", "protocol"], json!("HTTP2")),
                "GRPCS" => {
                    self.features.set(&["upstream", "protocol"], json!("HTTP2"));
                    self.features
                        .set(&["upstream", "tls"], json!({"insecureSkipVerify": true}));
                }
                _ => self.invalid(name, value, "HTTP, HTTPS, GRPC or GRPCS"),
            },
            "load-balance" => match value {
                "round_robin" => self.features.set(&["loadBalancing"], json!("RoundRobin")),
                "ewma" => self
                    .features
                    .set(&["loadBalancing"], json!("PowerOfTwoEwma")),
                _ => self.invalid(name, value, "round_robin or ewma"),
            },
            _ => return false,
        }
        true
    }

    /// Source ranges and rate limits.
    fn access(&mut self, name: &str, value: &str) -> bool {
        match name {
            "whitelist-source-range" | "allowlist-source-range" => {
                self.features.set(
                    &["access", "sourceRanges", "allow"],
                    json!(Self::list(value)),
                );
            }
            "denylist-source-range" => {
                self.features.set(
                    &["access", "sourceRanges", "deny"],
                    json!(Self::list(value)),
                );
            }
            "limit-rps" | "limit-rpm" | "limit-connections" => {
                let field = match name {
                    "limit-rps" => "requestsPerSecond",
                    "limit-rpm" => "requestsPerMinute",
                    _ => "connections",
                };
                if let Some(n) = self.number(name, value) {
                    self.features.set(&["access", "rateLimit", field], json!(n));
                    // ingress-nginx answers 503 (limit-req-status-code) by default.
                    self.features
                        .set(&["access", "rateLimit", "statusCode"], json!(503));
                }
            }
            "limit-burst-multiplier" => {
                if let Some(n) = self.number(name, value) {
                    self.features
                        .set(&["access", "rateLimit", "burstMultiplier"], json!(n));
                }
            }
            _ => return false,
        }
        true
    }

    /// Basic and external authentication.
    fn auth(&mut self, name: &str, value: &str) -> bool {
        match name {
            "auth-type" => {
                if value != "basic" {
                    self.deny(
                        name,
                        format!("auth-type {value:?} is not supported (only \"basic\")"),
                    );
                } else if self.get("auth-secret").is_none() {
                    self.deny(
                        name,
                        "auth-type basic needs nginx.ingress.kubernetes.io/auth-secret".into(),
                    );
                }
            }
            "auth-secret" => {
                if self.needs(name, "auth-type", Some("basic")) {
                    let secret = match value.split_once('/') {
                        Some((ns, secret)) if ns == self.namespace => Some(secret),
                        Some(_) => None,
                        None => Some(value),
                    };
                    match secret {
                        None => self.deny(
                            name,
                            "a Secret in another namespace is not read (a farm only reads Secrets of its own namespace)".into(),
                        ),
                        Some(secret) => {
                            let mut auth = json!({"secretName": secret});
                            if let Some(realm) = self.get("auth-realm") {
                                auth["realm"] = json!(realm);
                            }
                            self.features.set(&["access", "basicAuth"], auth);
                        }
                    }
                }
            }
            "auth-realm" => {
                self.needs(name, "auth-secret", None);
            }
            "auth-secret-type" => {
                if value != "auth-file" {
                    self.invalid(
                        name,
                        value,
                        "\"auth-file\" (an htpasswd file under key auth)",
                    );
                }
            }
            "auth-url" => {
                if value.starts_with("http://") || value.starts_with("https://") {
                    let mut ext = json!({"url": value});
                    if let Some(s) = self.get("auth-signin") {
                        ext["signin"] = json!(s);
                    }
                    if let Some(m) = self.get("auth-method") {
                        ext["method"] = json!(m);
                    }
                    if let Some(h) = self.get("auth-response-headers") {
                        ext["responseHeaders"] = json!(Self::list(h));
                    }
                    self.features.set(&["access", "externalAuth"], ext);
                } else {
                    self.deny(name, format!("{value:?} is not an http:// or https:// URL"));
                }
            }
            "auth-signin" | "auth-method" | "auth-response-headers" => {
                self.needs(name, "auth-url", None);
            }
            _ => return false,
        }
        true
    }

    fn cors(&mut self, name: &str, value: &str) -> bool {
        let field = match name {
            "enable-cors" => {
                if self.flag(name, value) == Some(true) {
                    self.features.set(&["cors"], json!({}));
                    for (ann, field, list) in [
                        ("cors-allow-origin", "allowOrigins", true),
                        ("cors-allow-methods", "allowMethods", true),
                        ("cors-allow-headers", "allowHeaders", true),
                        ("cors-expose-headers", "exposeHeaders", true),
                        ("cors-allow-credentials", "allowCredentials", false),
                        ("cors-max-age", "maxAge", false),
                    ] {
                        let Some(v) = self.get(ann) else { continue };
                        let parsed = if list {
                            json!(Self::list(v))
                        } else if field == "maxAge" {
                            match v.parse::<u64>() {
                                Ok(n) => json!(n),
                                Err(_) => continue,
                            }
                        } else {
                            json!(v == "true")
                        };
                        self.features.set(&["cors", field], parsed);
                    }
                }
                return true;
            }
            "cors-allow-origin"
            | "cors-allow-methods"
            | "cors-allow-headers"
            | "cors-expose-headers"
            | "cors-allow-credentials"
            | "cors-max-age" => name,
            _ => return false,
        };
        if self.needs(field, "enable-cors", Some("true")) && field == "cors-max-age" {
            self.number(field, value);
        }
        true
    }

    fn canary(&mut self, name: &str, value: &str) -> bool {
        match name {
            "canary" => {
                if self.flag(name, value) == Some(true) {
                    let mut c = json!({});
                    if let Some(w) = self.get("canary-weight") {
                        let total = self
                            .get("canary-weight-total")
                            .and_then(|t| t.parse::<u64>().ok())
                            .filter(|t| *t > 0)
                            .unwrap_or(100);
                        match w.parse::<u64>() {
                            // Rounded to the nearest percent, in u128 so no total overflows.
                            Ok(w) if w <= total => {
                                let pct = (u128::from(w) * 100 + u128::from(total) / 2)
                                    / u128::from(total);
                                c["weight"] = json!(pct as u64);
                            }
                            _ => self.invalid(
                                "canary-weight",
                                w,
                                "an integer from 0 to canary-weight-total (100)",
                            ),
                        }
                    }
                    if let Some(h) = self.get("canary-by-header") {
                        c["header"] = json!(h);
                    }
                    if let Some(v) = self.get("canary-by-header-value") {
                        c["headerValue"] = json!(v);
                    }
                    if let Some(k) = self.get("canary-by-cookie") {
                        c["cookie"] = json!(k);
                    }
                    self.features.set(&["canary"], c);
                }
            }
            "canary-weight"
            | "canary-weight-total"
            | "canary-by-header"
            | "canary-by-header-value"
            | "canary-by-cookie" => {
                self.needs(name, "canary", Some("true"));
            }
            _ => return false,
        }
        true
    }
}

/// An nginx size (`client_max_body_size`): bytes, or with `k`/`m`/`g` (either case).
fn body_size(value: &str) -> Option<u64> {
    let v = value.trim();
    let (digits, unit) = match v.char_indices().last()? {
        (i, c) if c.is_ascii_alphabetic() => (&v[..i], c.to_ascii_lowercase()),
        _ => (v, 'b'),
    };
    let n: u64 = digits.parse().ok()?;
    let mult = match unit {
        'b' => 1,
        'k' => 1 << 10,
        'm' => 1 << 20,
        'g' => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(pairs: &[(&str, &str)]) -> (Features, Vec<Finding>) {
        let ann = pairs
            .iter()
            .map(|(k, v)| (format!("{PREFIX}{k}"), (*v).to_owned()))
            .collect();
        let mut findings = Vec::new();
        let f = read(&ann, "web", &mut findings);
        (f, findings)
    }

    fn spec_of(f: &Features, tls: bool) -> Value {
        let mut spec = json!({});
        f.apply(&mut spec, tls);
        spec
    }

    #[test]
    fn sizes_read_like_nginx() {
        assert_eq!(body_size("0"), Some(0));
        assert_eq!(body_size("1024"), Some(1024));
        assert_eq!(body_size("8k"), Some(8192));
        assert_eq!(body_size("10M"), Some(10 << 20));
        assert_eq!(body_size("1g"), Some(1 << 30));
        assert_eq!(body_size("ten"), None);
        assert_eq!(body_size("5x"), None);
        assert_eq!(body_size(""), None);
    }

    #[test]
    fn cookie_affinity_maps_onto_the_sealed_cookie() {
        let (f, findings) = read_all(&[
            ("affinity", "cookie"),
            ("session-cookie-name", "route"),
            ("session-cookie-max-age", "3600"),
            ("session-cookie-expires", "60"),
            ("session-cookie-samesite", "Strict"),
        ]);
        assert_eq!(findings, []);
        assert_eq!(
            spec_of(&f, false)["affinity"],
            json!({"mode": "Cookie", "cookieName": "route", "maxSessionTime": "3600s", "sameSite": "Strict"})
        );
        let (f, _) = read_all(&[("affinity", "cookie"), ("session-cookie-expires", "60")]);
        assert_eq!(
            spec_of(&f, false)["affinity"],
            json!({"mode": "Cookie", "cookieName": "INGRESSCOOKIE", "maxSessionTime": "60s"})
        );
    }

    #[test]
    fn cookie_settings_without_cookie_affinity_are_reported() {
        let (f, findings) = read_all(&[("session-cookie-name", "x")]);
        assert_eq!(spec_of(&f, false), json!({}));
        assert_eq!(findings.len(), 1);
        assert!(
            findings[0].message.contains("affinity: cookie"),
            "{findings:?}"
        );
    }

    #[test]
    fn snippets_are_never_executed_and_named() {
        let (f, findings) = read_all(&[
            ("server-snippet", "return 200;"),
            ("configuration-snippet", "more_set_headers x;"),
            ("ssl-redirect", "false"),
        ]);
        assert_eq!(spec_of(&f, true), json!({}));
        let subjects: Vec<&str> = findings.iter().map(|f| f.subject.as_str()).collect();
        assert_eq!(
            subjects,
            [
                "nginx.ingress.kubernetes.io/configuration-snippet",
                "nginx.ingress.kubernetes.io/server-snippet"
            ]
        );
        assert!(
            findings
                .iter()
                .all(|f| f.severity == Severity::Ignored && f.message.contains("never executes"))
        );
    }

    #[test]
    fn unknown_annotations_are_reported_and_foreign_prefixes_pass() {
        let mut ann = BTreeMap::new();
        ann.insert(format!("{PREFIX}frobnicate"), "yes".to_owned());
        ann.insert(
            "kubectl.kubernetes.io/last-applied-configuration".into(),
            "{}".into(),
        );
        let mut findings = Vec::new();
        read(&ann, "web", &mut findings);
        assert_eq!(findings.len(), 1);
        assert_eq!(
            findings[0].subject,
            "nginx.ingress.kubernetes.io/frobnicate"
        );
        assert!(findings[0].message.contains("not supported"));
    }

    #[test]
    fn ssl_redirect_is_on_for_tls_hosts_and_forced_otherwise() {
        let (f, _) = read_all(&[]);
        assert_eq!(spec_of(&f, false), json!({}));
        assert_eq!(
            spec_of(&f, true)["filters"]["httpsRedirect"],
            json!({"statusCode": 308})
        );
        let (f, _) = read_all(&[("ssl-redirect", "false")]);
        assert_eq!(spec_of(&f, true), json!({}));
        let (f, _) = read_all(&[("force-ssl-redirect", "true")]);
        assert_eq!(
            spec_of(&f, false)["filters"]["httpsRedirect"],
            json!({"statusCode": 308})
        );
    }

    #[test]
    fn redirects_rewrites_and_headers() {
        let (f, findings) = read_all(&[
            ("permanent-redirect", "https://new.example.com/"),
            ("permanent-redirect-code", "308"),
            ("app-root", "/app"),
            ("rewrite-target", "/$2"),
            ("x-forwarded-prefix", "/api"),
            ("upstream-vhost", "internal.example"),
            ("proxy-body-size", "8m"),
        ]);
        assert_eq!(findings, []);
        assert_eq!(f.path_kind("Prefix"), "Regex");
        assert_eq!(
            spec_of(&f, false),
            json!({
                "backendHost": "internal.example",
                "filters": {
                    "requestRedirect": {"url": "https://new.example.com/", "statusCode": 308},
                    "appRoot": "/app",
                    "rewrite": {"pathTemplate": "/$2"},
                    "requestHeaders": {"set": {"X-Forwarded-Prefix": "/api"}},
                    "maxRequestBodySize": 8 << 20,
                }
            })
        );
        let (f, _) = read_all(&[]);
        assert_eq!(f.path_kind("Exact"), "Exact");
        assert_eq!(f.path_kind("ImplementationSpecific"), "Prefix");
    }

    #[test]
    fn timeouts_and_protocols() {
        let (f, findings) = read_all(&[
            ("proxy-connect-timeout", "5"),
            ("proxy-read-timeout", "120"),
            ("backend-protocol", "GRPCS"),
        ]);
        assert_eq!(findings.len(), 1, "{findings:?}");
        assert_eq!(findings[0].severity, Severity::Note);
        assert_eq!(
            spec_of(&f, false)["upstream"],
            json!({"connectTimeout": "5s", "firstByteTimeout": "120s", "protocol": "HTTP2", "tls": {"insecureSkipVerify": true}})
        );
        let (_, findings) = read_all(&[("proxy-connect-timeout", "soon")]);
        assert!(findings[0].message.contains("positive number of seconds"));
    }

    #[test]
    fn access_cors_and_canary() {
        let (f, findings) = read_all(&[
            ("whitelist-source-range", "10.0.0.0/8, 192.168.1.1"),
            ("limit-rps", "10"),
            ("auth-type", "basic"),
            ("auth-secret", "users"),
            ("auth-realm", "Staff"),
            ("enable-cors", "true"),
            (
                "cors-allow-origin",
                "https://a.example, https://*.b.example",
            ),
            ("cors-allow-credentials", "false"),
            ("canary", "true"),
            ("canary-weight", "20"),
            ("canary-by-header", "X-Canary"),
        ]);
        assert_eq!(findings, []);
        let spec = spec_of(&f, false);
        assert_eq!(
            spec["access"],
            json!({
                "sourceRanges": {"allow": ["10.0.0.0/8", "192.168.1.1"]},
                "rateLimit": {"requestsPerSecond": 10, "statusCode": 503},
                "basicAuth": {"secretName": "users", "realm": "Staff"},
            })
        );
        assert_eq!(
            spec["cors"],
            json!({"allowOrigins": ["https://a.example", "https://*.b.example"], "allowCredentials": false})
        );
        assert_eq!(spec["canary"], json!({"weight": 20, "header": "X-Canary"}));
        let (f, findings) = read_all(&[("auth-type", "basic"), ("auth-secret", "other/users")]);
        assert!(findings[0].message.contains("another namespace"));
        assert_eq!(f.deny, ["nginx.ingress.kubernetes.io/auth-secret"]);
        // Its own namespace may be named.
        let (f, _) = read_all(&[("auth-type", "basic"), ("auth-secret", "web/users")]);
        assert!(f.deny.is_empty());
        assert_eq!(
            spec_of(&f, false)["access"]["basicAuth"]["secretName"],
            "users"
        );
        for bad in [
            &[("auth-type", "digest"), ("auth-secret", "users")][..],
            &[("auth-type", "basic")][..],
            &[("auth-url", "ftp://auth")][..],
        ] {
            let (f, findings) = read_all(bad);
            assert!(!f.deny.is_empty(), "{bad:?}");
            assert!(
                findings
                    .iter()
                    .any(|x| x.message.contains("not served at all")),
                "{findings:?}"
            );
        }
    }
}
