//! Route features (`spec.filters`): checked, into the farm's [`FiltersConfig`].

use crate::config::*;
use crate::v1alpha1::{Filters, RequestHeaders, Rewrite};

use super::FarmErrors;
use super::names::http_token;

/// The farm's route features; every bad field is reported. `https_port` is the port
/// an HTTPS redirect names (see [`ArrayDefaults`](super::array::ArrayDefaults)).
pub(crate) fn filters(
    filters: Option<&Filters>,
    https_port: Option<u16>,
    errs: &mut FarmErrors<'_>,
) -> FiltersConfig {
    let Some(f) = filters else {
        return FiltersConfig::default();
    };
    FiltersConfig {
        rewrite: f.rewrite.as_ref().and_then(|r| rewrite(r, errs)),
        redirect: f.request_redirect.as_ref().and_then(|r| {
            let field = "spec.filters.requestRedirect";
            let status = redirect_status(r.status_code, field, errs);
            let location = location(&r.url, &format!("{field}.url"), errs);
            Some(RedirectConfig {
                location: location?,
                status: status?,
            })
        }),
        https_redirect: f.https_redirect.as_ref().and_then(|r| {
            Some(HttpsRedirectConfig {
                status: redirect_status(r.status_code, "spec.filters.httpsRedirect", errs)?,
                port: https_port,
            })
        }),
        app_root: f
            .app_root
            .as_ref()
            .filter(|p| origin_path(p, "spec.filters.appRoot", errs))
            .cloned(),
        request_headers: f
            .request_headers
            .as_ref()
            .and_then(|h| header_changes(h, "spec.filters.requestHeaders", errs)),
        max_request_body_size: f.max_request_body_size.filter(|n| *n > 0),
    }
}

/// Checked header changes (names lower-cased), or `None` when one is bad or there are
/// none.
fn header_changes(
    h: &RequestHeaders,
    field: &str,
    errs: &mut FarmErrors<'_>,
) -> Option<HeaderChanges> {
    let before = errs.errors.len();
    let name_ok = |name: &str, at: String, errs: &mut FarmErrors<'_>| -> Option<String> {
        let lower = name.to_ascii_lowercase();
        if http_token(name).is_err() {
            errs.push(at, format!("{name:?} is not a header name (an HTTP token)"));
            None
        } else if PROTECTED_REQUEST_HEADERS.contains(&lower.as_str()) {
            let why = if lower == "host" {
                "; set spec.backendHost to change the Host sent upstream"
            } else {
                ""
            };
            errs.push(
                at,
                format!("{name} is managed by the proxy and cannot be changed{why}"),
            );
            None
        } else {
            Some(lower)
        }
    };
    let value_ok = |value: &str| {
        value.len() <= 4096
            && value
                .bytes()
                .all(|b| b == b'\t' || (0x20..0x7f).contains(&b))
    };
    let mut out = HeaderChanges::default();
    for (list, name) in [("set", &h.set), ("add", &h.add)] {
        for (n, v) in name {
            let at = format!("{field}.{list}.{n}");
            let Some(lower) = name_ok(n, at.clone(), errs) else {
                continue;
            };
            if !value_ok(v) {
                errs.push(
                    at,
                    format!(
                        "{v:?} is not a header value: up to 4096 printable ASCII characters, spaces and tabs"
                    ),
                );
                continue;
            }
            let map = if list == "set" {
                &mut out.set
            } else {
                &mut out.add
            };
            if map.insert(lower, v.clone()).is_some() {
                errs.push(at, format!("{n} is listed twice (names ignore case)"));
            }
        }
    }
    for (i, n) in h.remove.iter().enumerate() {
        let at = format!("{field}.remove[{i}]");
        let Some(lower) = name_ok(n, at.clone(), errs) else {
            continue;
        };
        if out.set.contains_key(&lower) || out.add.contains_key(&lower) {
            errs.push(at, format!("{n} is both removed and set or added"));
            continue;
        }
        out.remove.push(lower);
    }
    let empty = out == HeaderChanges::default();
    (errs.errors.len() == before && !empty).then_some(out)
}

/// A redirect status the farm may ask for.
fn redirect_status(code: u16, field: &str, errs: &mut FarmErrors<'_>) -> Option<u16> {
    if [301, 302, 303, 307, 308].contains(&code) {
        return Some(code);
    }
    errs.push(
        format!("{field}.statusCode"),
        format!("{code} is not a redirect status: use 301, 302, 303, 307 or 308"),
    );
    None
}

/// A `Location` value: visible ASCII only, so it is a valid header value and cannot
/// split the response.
fn location(url: &str, field: &str, errs: &mut FarmErrors<'_>) -> Option<String> {
    if url.is_empty() || url.len() > 2048 || !url.bytes().all(|b| b.is_ascii_graphic()) {
        errs.push(
            field,
            format!(
                "{url:?} is not a URL: 1 to 2048 visible ASCII characters (percent-encode others)"
            ),
        );
        return None;
    }
    Some(url.to_owned())
}

fn rewrite(r: &Rewrite, errs: &mut FarmErrors<'_>) -> Option<RewriteConfig> {
    const FIELD: &str = "spec.filters.rewrite";
    match (&r.replace_prefix_match, &r.path_template) {
        (Some(with), None) => origin_path(with, &format!("{FIELD}.replacePrefixMatch"), errs)
            .then(|| RewriteConfig::ReplacePrefixMatch { with: with.clone() }),
        (None, Some(template)) => origin_path(template, &format!("{FIELD}.pathTemplate"), errs)
            .then(|| RewriteConfig::PathTemplate {
                template: template.clone(),
            }),
        _ => {
            errs.push(
                FIELD,
                "a rewrite sets exactly one of replacePrefixMatch or pathTemplate",
            );
            None
        }
    }
}

/// Whether `path` can start the path of an origin-form request target: a `/`, then
/// only characters a URI path may hold (RFC 3986 `pchar`, `%` for escapes), so no
/// query, fragment, space or control character.
pub(crate) fn origin_path(path: &str, field: &str, errs: &mut FarmErrors<'_>) -> bool {
    if !path.starts_with('/') {
        errs.push(field, format!("{path:?} must start with /"));
        return false;
    }
    let pchar = |b: u8| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/%".contains(&b);
    if let Some(bad) = path.bytes().find(|b| !pchar(*b)) {
        errs.push(
            field,
            format!(
                "{path:?} may hold only characters of a URI path, not {:?}",
                char::from(bad)
            ),
        );
        return false;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::testing::{farm, problems};

    fn translated(spec: &str) -> (FiltersConfig, Vec<(String, String)>) {
        let f = farm("a", spec);
        let mut errs = FarmErrors::new(&f);
        let out = filters(f.spec.filters.as_ref(), Some(8443), &mut errs);
        let problems = problems(&errs.errors)
            .into_iter()
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
            .collect();
        (out, problems)
    }

    #[test]
    fn no_filters_is_empty() {
        let (out, problems) = translated("");
        assert!(out.is_empty() && problems.is_empty());
    }

    #[test]
    fn a_rewrite_is_one_of_two_kinds() {
        let (out, problems) = translated("filters:\n  rewrite:\n    pathTemplate: /$2\n");
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(
            out.rewrite,
            Some(RewriteConfig::PathTemplate {
                template: "/$2".into()
            })
        );
        let (out, _) = translated("filters:\n  rewrite:\n    replacePrefixMatch: /v2\n");
        assert_eq!(
            out.rewrite,
            Some(RewriteConfig::ReplacePrefixMatch { with: "/v2".into() })
        );
    }

    #[test]
    fn redirects_take_their_default_status_and_the_https_port() {
        let (out, problems) = translated(
            "filters:\n  requestRedirect: {url: 'https://new.example/x?a=1'}\n  httpsRedirect: {}\n  appRoot: /app1\n",
        );
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(
            out.redirect,
            Some(RedirectConfig {
                location: "https://new.example/x?a=1".into(),
                status: 302
            })
        );
        assert_eq!(
            out.https_redirect,
            Some(HttpsRedirectConfig {
                status: 308,
                port: Some(8443)
            })
        );
        assert_eq!(out.app_root.as_deref(), Some("/app1"));
        let (out, _) = translated(
            "filters:\n  requestRedirect: {url: /moved, statusCode: 301}\n  httpsRedirect: {statusCode: 307}\n",
        );
        assert_eq!(out.redirect.unwrap().status, 301);
        assert_eq!(out.https_redirect.unwrap().status, 307);
    }

    #[test]
    fn bad_redirects_are_refused_naming_the_field() {
        let (out, problems) = translated(
            "filters:\n  requestRedirect: {url: 'https://a.example/x y', statusCode: 200}\n  httpsRedirect: {statusCode: 304}\n  appRoot: app\n",
        );
        assert_eq!(out.redirect, None);
        assert_eq!(out.https_redirect, None);
        assert_eq!(out.app_root, None);
        let fields: Vec<&str> = problems.iter().map(|p| p.0.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.filters.requestRedirect.statusCode",
                "spec.filters.requestRedirect.url",
                "spec.filters.httpsRedirect.statusCode",
                "spec.filters.appRoot",
            ]
        );
        assert_eq!(
            problems[0].1,
            "200 is not a redirect status: use 301, 302, 303, 307 or 308"
        );
    }

    #[test]
    fn header_changes_are_lower_cased() {
        let (out, problems) = translated(
            "filters:\n  requestHeaders:\n    set: {X-Tenant: blue, X-Forwarded-Proto: https}\n    add: {X-Trace: 'a b'}\n    remove: [X-Debug]\n",
        );
        assert!(problems.is_empty(), "{problems:?}");
        let h = out.request_headers.unwrap();
        assert_eq!(
            h.set.iter().collect::<Vec<_>>(),
            [
                (&"x-forwarded-proto".to_owned(), &"https".to_owned()),
                (&"x-tenant".to_owned(), &"blue".to_owned())
            ]
        );
        assert_eq!(h.add["x-trace"], "a b");
        assert_eq!(h.remove, ["x-debug"]);
    }

    #[test]
    fn bad_header_changes_are_refused_naming_the_field() {
        let (out, problems) = translated(
            "filters:\n  requestHeaders:\n    set: {Host: x, 'bad name': v, X-Ok: \"a\\nb\", Connection: close}\n    add: {Transfer-Encoding: chunked, Content-Length: '1', X-A: '1', x-a: '2'}\n    remove: [Upgrade, X-Ok2, x-a]\n",
        );
        assert_eq!(out.request_headers, None);
        let fields: Vec<&str> = problems.iter().map(|p| p.0.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.filters.requestHeaders.set.Connection",
                "spec.filters.requestHeaders.set.Host",
                "spec.filters.requestHeaders.set.X-Ok",
                "spec.filters.requestHeaders.set.bad name",
                "spec.filters.requestHeaders.add.Content-Length",
                "spec.filters.requestHeaders.add.Transfer-Encoding",
                "spec.filters.requestHeaders.add.x-a",
                "spec.filters.requestHeaders.remove[0]",
                "spec.filters.requestHeaders.remove[2]",
            ]
        );
        assert_eq!(
            problems[1].1,
            "Host is managed by the proxy and cannot be changed; set spec.backendHost to change the Host sent upstream"
        );
        assert_eq!(problems[6].1, "x-a is listed twice (names ignore case)");
    }

    #[test]
    fn a_zero_body_limit_is_no_limit() {
        let (out, _) = translated("filters:\n  maxRequestBodySize: 0\n");
        assert_eq!(out.max_request_body_size, None);
        assert!(out.is_empty());
        let (out, _) = translated("filters:\n  maxRequestBodySize: 1048576\n");
        assert_eq!(out.max_request_body_size, Some(1 << 20));
    }

    #[test]
    fn a_bad_rewrite_is_refused_naming_the_field() {
        for (spec, field, message) in [
            (
                "rewrite: {}",
                "spec.filters.rewrite",
                "a rewrite sets exactly one of replacePrefixMatch or pathTemplate",
            ),
            (
                "rewrite: {replacePrefixMatch: /a, pathTemplate: /b}",
                "spec.filters.rewrite",
                "a rewrite sets exactly one of replacePrefixMatch or pathTemplate",
            ),
            (
                "rewrite: {replacePrefixMatch: v2}",
                "spec.filters.rewrite.replacePrefixMatch",
                "\"v2\" must start with /",
            ),
            (
                "rewrite: {pathTemplate: '/$1?x=1'}",
                "spec.filters.rewrite.pathTemplate",
                "\"/$1?x=1\" may hold only characters of a URI path, not '?'",
            ),
            (
                "rewrite: {pathTemplate: '/a b'}",
                "spec.filters.rewrite.pathTemplate",
                "\"/a b\" may hold only characters of a URI path, not ' '",
            ),
        ] {
            let (out, problems) = translated(&format!("filters:\n  {spec}\n"));
            assert_eq!(out.rewrite, None, "{spec}");
            assert_eq!(problems, [(field.to_owned(), message.to_owned())], "{spec}");
        }
    }
}
