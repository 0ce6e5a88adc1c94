//! Requests that two parsers could read differently are refused before routing.

use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, Method, Request, Version};

/// Why a request was refused (the `x-portcullis-error` value).
pub(crate) type Refusal = &'static str;

/// Checks framing headers, header values and the request target.
pub(crate) fn check<B>(req: &Request<B>, upgrade: bool) -> Result<(), Refusal> {
    check_headers(req.headers())?;
    if req.method() == Method::CONNECT && !upgrade {
        return Err("bad-request-target");
    }
    let uri = req.uri();
    if req.version() <= Version::HTTP_11 && (uri.scheme().is_some() || uri.authority().is_some()) {
        return Err("bad-request-target");
    }
    if let Some(pq) = uri.path_and_query() {
        if !pq.as_str().starts_with('/') {
            return Err("bad-request-target");
        }
    } else {
        return Err("bad-request-target");
    }
    check_path(uri.path())
}

fn check_headers(h: &HeaderMap) -> Result<(), Refusal> {
    let cl = h.get_all(CONTENT_LENGTH).iter().count();
    if cl > 1 {
        return Err("duplicate-content-length");
    }
    if cl == 1 {
        let v = h
            .get(CONTENT_LENGTH)
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
            return Err("bad-content-length");
        }
    }
    if cl > 0 && h.contains_key(TRANSFER_ENCODING) {
        return Err("content-length-and-transfer-encoding");
    }
    for v in h.values() {
        if v.as_bytes()
            .iter()
            .any(|b| (*b < 0x20 && *b != b'\t') || *b == 0x7f)
        {
            return Err("bad-header-value");
        }
    }
    Ok(())
}

/// Refuses encoded slashes, backslashes and dots, dot segments, empty segments and
/// broken percent-encoding.
pub(crate) fn check_path(path: &str) -> Result<(), Refusal> {
    let b = path.as_bytes();
    if b.first() != Some(&b'/') {
        return Err("bad-path");
    }
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' => return Err("bad-path"),
            b'%' => {
                let (Some(h), Some(l)) = (b.get(i + 1), b.get(i + 2)) else {
                    return Err("bad-path");
                };
                if !h.is_ascii_hexdigit() || !l.is_ascii_hexdigit() {
                    return Err("bad-path");
                }
                let byte = (hex(*h) << 4) | hex(*l);
                if matches!(byte, b'/' | b'\\' | b'.') || byte < 0x20 || byte == 0x7f {
                    return Err("bad-path");
                }
                i += 3;
                continue;
            }
            c if c < 0x20 || c == 0x7f => return Err("bad-path"),
            _ => {}
        }
        i += 1;
    }
    for seg in path[1..].split('/') {
        if seg == "." || seg == ".." {
            return Err("bad-path");
        }
    }
    if path.contains("//") {
        return Err("bad-path");
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
    use super::check_path;

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
