//! Canary splits: whether a request on a route with a canary goes to the canary farm,
//! by header, then cookie, then weight (ingress-nginx's order and values).

use http::header::{COOKIE, HeaderMap, HeaderName};
use portcullis_crds::config::CanaryConfig;

/// A route's canary, ready to decide.
#[derive(Debug)]
pub(crate) struct CanaryRule {
    pub(crate) farm: String,
    weight: u32,
    header: Option<HeaderName>,
    header_value: Option<String>,
    cookie: Option<String>,
}

/// What a header or cookie says.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Canary,
    Primary,
    Undecided,
}

impl CanaryRule {
    pub(crate) fn new(c: &CanaryConfig) -> Self {
        CanaryRule {
            farm: c.farm.clone(),
            weight: c.weight.min(100),
            header: c
                .header
                .as_ref()
                .and_then(|h| HeaderName::from_bytes(h.as_bytes()).ok()),
            header_value: c.header_value.clone(),
            cookie: c.cookie.clone(),
        }
    }

    /// Whether this request goes to the canary.
    pub(crate) fn takes(&self, headers: &HeaderMap) -> bool {
        match self.by_header(headers) {
            Verdict::Canary => return true,
            Verdict::Primary => return false,
            Verdict::Undecided => {}
        }
        match self.by_cookie(headers) {
            Verdict::Canary => return true,
            Verdict::Primary => return false,
            Verdict::Undecided => {}
        }
        match self.weight {
            0 => false,
            100.. => true,
            w => rand::random_range(0..100) < w,
        }
    }

    fn by_header(&self, headers: &HeaderMap) -> Verdict {
        let Some(value) = self.header.as_ref().and_then(|h| headers.get(h)) else {
            return Verdict::Undecided;
        };
        let value = value.as_bytes();
        match &self.header_value {
            // Another value is ignored, as ingress-nginx does: the cookie and the
            // weight decide.
            Some(want) if value == want.as_bytes() => Verdict::Canary,
            Some(_) => Verdict::Undecided,
            None => always_never(value),
        }
    }

    fn by_cookie(&self, headers: &HeaderMap) -> Verdict {
        let Some(name) = &self.cookie else {
            return Verdict::Undecided;
        };
        let found = headers
            .get_all(COOKIE)
            .iter()
            .flat_map(|v| v.as_bytes().split(|b| *b == b';'))
            .find_map(|pair| {
                let pair = pair.trim_ascii();
                let eq = pair.iter().position(|b| *b == b'=')?;
                (pair[..eq].trim_ascii() == name.as_bytes()).then(|| pair[eq + 1..].trim_ascii())
            });
        found.map_or(Verdict::Undecided, always_never)
    }
}

fn always_never(value: &[u8]) -> Verdict {
    match value {
        b"always" => Verdict::Canary,
        b"never" => Verdict::Primary,
        _ => Verdict::Undecided,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(weight: u32, header: Option<&str>, value: Option<&str>) -> CanaryRule {
        CanaryRule::new(&CanaryConfig {
            farm: "c".into(),
            weight,
            header: header.map(Into::into),
            header_value: value.map(Into::into),
            cookie: Some("canary".into()),
        })
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn header_then_cookie_then_weight() {
        let r = rule(0, Some("x-canary"), None);
        assert!(r.takes(&headers(&[("x-canary", "always")])));
        assert!(!rule(100, Some("x-canary"), None).takes(&headers(&[("x-canary", "never")])));
        // An unknown header value falls through to the cookie.
        assert!(r.takes(&headers(&[
            ("x-canary", "maybe"),
            ("cookie", "a=1; canary=always")
        ])));
        // The header decides before the cookie.
        assert!(!r.takes(&headers(&[
            ("x-canary", "never"),
            ("cookie", "canary=always")
        ])));
        assert!(
            !rule(100, None, None)
                .takes(&headers(&[("cookie", "x=1"), ("cookie", "canary=never")]))
        );
        assert!(!r.takes(&headers(&[])));
        assert!(rule(100, None, None).takes(&headers(&[])));
    }

    #[test]
    fn a_header_value_picks_the_canary_and_others_fall_through() {
        let r = rule(0, Some("x-env"), Some("blue"));
        assert!(r.takes(&headers(&[("x-env", "blue")])));
        assert!(!r.takes(&headers(&[("x-env", "always")])));
        assert!(!r.takes(&headers(&[("x-env", "Blue")])));
        assert!(r.takes(&headers(&[("x-env", "green"), ("cookie", "canary=always")])));
    }
}
