//! Requests that two parsers could read differently are refused before routing.

use http::header::{CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::{HeaderMap, Method, Request, Version};

use crate::error::ProxyError;

/// Checks framing headers, header values and the request target.
pub(crate) fn check<B>(req: &Request<B>, upgrade: bool) -> Result<(), ProxyError> {
    check_headers(req.headers())?;
    if req.method() == Method::CONNECT && !upgrade {
        return Err(ProxyError::BadRequestTarget);
    }
    let uri = req.uri();
    // RFC 9112 section 3.2: more than one Host, or a Host that is no host, is a 400.
    let mut hosts = req.headers().get_all(HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(ProxyError::DuplicateHost);
    }
    if let Some(h) = host
        && !is_host(h.as_bytes())
    {
        return Err(ProxyError::BadHost);
    }
    if req.version() <= Version::HTTP_11 {
        // The absolute form (`GET http://host/path`) must be accepted (RFC 9112 section
        // 3.2.2); its authority replaces Host. Only http and https.
        if uri.authority().is_some() || uri.scheme().is_some() {
            let scheme_ok = matches!(uri.scheme_str(), Some("http" | "https"));
            let authority_ok = uri
                .authority()
                .is_some_and(|a| is_host(a.as_str().as_bytes()));
            if !scheme_ok || !authority_ok {
                return Err(ProxyError::BadRequestTarget);
            }
        }
    } else if req.headers().values().any(|v| {
        v.as_bytes()
            .first()
            .is_some_and(|b| *b == b' ' || *b == b'\t')
            || v.as_bytes()
                .last()
                .is_some_and(|b| *b == b' ' || *b == b'\t')
    }) {
        // RFC 9113 section 8.2.1: an HTTP/2 field value with leading or trailing
        // whitespace is malformed.
        return Err(ProxyError::BadHeaderValue);
    } else if let (Some(a), Some(h)) = (uri.authority(), host)
        && !a.as_str().eq_ignore_ascii_case(h.to_str().unwrap_or(""))
    {
        // RFC 9113 section 8.3.1: `:authority` and `host` must agree.
        return Err(ProxyError::AuthorityHostMismatch);
    }
    match uri.path_and_query().map(|pq| pq.as_str()) {
        // The asterisk form is for OPTIONS only (RFC 9112 section 3.2.4).
        Some("*") if req.method() == Method::OPTIONS => return Ok(()),
        Some(pq) if pq.starts_with('/') => {}
        _ => return Err(ProxyError::BadRequestTarget),
    }
    check_path(uri.path())
}

/// `uri-host [":" port]` (RFC 9110 section 7.2): a reg-name or an IPv4 address, or an
/// IP literal in brackets, and a port of digits up to 65535. No userinfo, path or space.
fn is_host(v: &[u8]) -> bool {
    let (host, port) = if v.first() == Some(&b'[') {
        let Some(end) = v.iter().position(|b| *b == b']') else {
            return false;
        };
        let inside = &v[1..end];
        if inside.is_empty()
            || !inside
                .iter()
                .all(|b| b.is_ascii_hexdigit() || *b == b':' || *b == b'.')
        {
            return false;
        }
        match &v[end + 1..] {
            [] => (&v[..0], None),
            [b':', port @ ..] => (&v[..0], Some(port)),
            _ => return false,
        }
    } else {
        match v.iter().position(|b| *b == b':') {
            Some(i) => (&v[..i], Some(&v[i + 1..])),
            None => (v, None),
        }
    };
    let host_ok = host.iter().all(|b| {
        b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b'%'
            )
    });
    let port_ok = port.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 5
            && p.iter().all(u8::is_ascii_digit)
            && std::str::from_utf8(p)
                .ok()
                .and_then(|p| p.parse::<u32>().ok())
                .is_some_and(|n| n <= 65535)
    });
    host_ok && port_ok
}

fn check_headers(h: &HeaderMap) -> Result<(), ProxyError> {
    let cl = h.get_all(CONTENT_LENGTH).iter().count();
    if cl > 1 {
        return Err(ProxyError::DuplicateContentLength);
    }
    if cl == 1 {
        let v = h
            .get(CONTENT_LENGTH)
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
            return Err(ProxyError::BadContentLength);
        }
    }
    if cl > 0 && h.contains_key(TRANSFER_ENCODING) {
        return Err(ProxyError::ContentLengthAndTransferEncoding);
    }
    for v in h.values() {
        if v.as_bytes()
            .iter()
            .any(|b| (*b < 0x20 && *b != b'\t') || *b == 0x7f)
        {
            return Err(ProxyError::BadHeaderValue);
        }
    }
    Ok(())
}

/// Refuses encoded slashes, backslashes and dots, dot segments, empty segments and
/// broken percent-encoding.
pub(crate) fn check_path(path: &str) -> Result<(), ProxyError> {
    let b = path.as_bytes();
    if b.first() != Some(&b'/') {
        return Err(ProxyError::BadPath);
    }
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' => return Err(ProxyError::BadPath),
            b'%' => {
                let (Some(h), Some(l)) = (b.get(i + 1), b.get(i + 2)) else {
                    return Err(ProxyError::BadPath);
                };
                if !h.is_ascii_hexdigit() || !l.is_ascii_hexdigit() {
                    return Err(ProxyError::BadPath);
                }
                let byte = (hex(*h) << 4) | hex(*l);
                if matches!(byte, b'/' | b'\\' | b'.') || byte < 0x20 || byte == 0x7f {
                    return Err(ProxyError::BadPath);
                }
                i += 3;
                continue;
            }
            c if c < 0x20 || c == 0x7f => return Err(ProxyError::BadPath),
            _ => {}
        }
        i += 1;
    }
    for seg in path[1..].split('/') {
        if seg == "." || seg == ".." {
            return Err(ProxyError::BadPath);
        }
    }
    if path.contains("//") {
        return Err(ProxyError::BadPath);
    }
    Ok(())
}

fn hex(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        _ => c - b'A' + 10,
    }
}

#[cfg(test)]
mod tests {
    use super::{check_path, is_host};

    #[test]
    fn hosts_are_uri_hosts_with_a_port_at_most() {
        for h in [
            "a.example",
            "A.Example:8080",
            "10.0.0.1:80",
            "[::1]",
            "[::1]:443",
            "x_y",
        ] {
            assert!(is_host(h.as_bytes()), "{h} should pass");
        }
        for h in [
            "a@b", "a/b", "a:", "a:65536", "a:8o", "a b", "[::1", "[::1]x", "a?b", "a#b", "[]",
        ] {
            assert!(!is_host(h.as_bytes()), "{h} should be refused");
        }
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        for p in [
            "/a%2Fb",
            "/a%2fb",
            "/a%5Cb",
            "/%2e%2e/x",
            "/a/./b",
            "/a/../b",
            "/a//b",
            "/a\\b",
            "/a%zz",
            "/a%2",
            "/..",
            "/a/.",
            "/%00",
        ] {
            assert!(check_path(p).is_err(), "{p} should be refused");
        }
        for p in ["/", "/a/b", "/a%20b", "/a.b/c..d", "/.well-known/x"] {
            assert!(check_path(p).is_ok(), "{p} should pass");
        }
    }
}
