//! A small HTTP/1.1 client (hyper) for requests through a port-forward (or straight to a
//! pod IP on the local cluster), with a cookie jar so a test can play one browser session.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// What came back.
#[derive(Clone, Debug)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Every `Set-Cookie` header, raw.
    pub set_cookies: Vec<String>,
    /// The body as text.
    pub body: String,
}

/// Sends `GET path` with `Host: host` (and `Cookie`, when given) to `addr`.
pub async fn get(
    addr: SocketAddr,
    host: &str,
    path: &str,
    cookie: Option<&str>,
) -> anyhow::Result<Response> {
    let cookie: Vec<(&str, &str)> = cookie.map(|c| ("cookie", c)).into_iter().collect();
    get_with(addr, host, path, &cookie).await
}

/// Sends `GET path` with `Host: host` and the extra `headers` to `addr`.
pub async fn get_with(
    addr: SocketAddr,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<Response> {
    tokio::time::timeout(
        Duration::from_secs(15),
        get_inner(addr, host, path, headers),
    )
    .await
    .with_context(|| format!("GET http://{host}{path} via {addr} timed out"))?
    .with_context(|| format!("GET http://{host}{path} via {addr}"))
}

async fn get_inner(
    addr: SocketAddr,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<Response> {
    let stream = TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let driver = tokio::spawn(conn);
    let mut req = hyper::Request::get(path)
        .header(hyper::header::HOST, host)
        .header(hyper::header::USER_AGENT, "portcullis-e2e");
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let resp = sender
        .send_request(req.body(Empty::<Bytes>::new())?)
        .await?;
    let status = resp.status().as_u16();
    let set_cookies = resp
        .headers()
        .get_all(hyper::header::SET_COOKIE)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect();
    let body = resp.into_body().collect().await?.to_bytes();
    drop(sender);
    driver.abort();
    Ok(Response {
        status,
        set_cookies,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// One client's cookies, by name.
#[derive(Clone, Debug, Default)]
pub struct CookieJar {
    cookies: BTreeMap<String, String>,
}

impl CookieJar {
    /// Remembers the cookies a response set (and forgets those it expired).
    pub fn absorb(&mut self, response: &Response) {
        for header in &response.set_cookies {
            let pair = header.split(';').next().unwrap_or_default();
            let Some((name, value)) = pair.split_once('=') else {
                continue;
            };
            let expired = header
                .split(';')
                .any(|attr| attr.trim().eq_ignore_ascii_case("max-age=0"));
            if expired || value.is_empty() {
                self.cookies.remove(name.trim());
            } else {
                self.cookies
                    .insert(name.trim().to_owned(), value.trim().to_owned());
            }
        }
    }

    /// The value of one cookie.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.cookies.get(name).map(String::as_str)
    }

    /// The `Cookie` header to send, if any.
    pub fn header(&self) -> Option<String> {
        (!self.cookies.is_empty()).then(|| {
            self.cookies
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("; ")
        })
    }

    /// `GET` through `addr`, sending and then absorbing cookies.
    pub async fn fetch(
        &mut self,
        addr: SocketAddr,
        host: &str,
        path: &str,
    ) -> anyhow::Result<Response> {
        let response = get(addr, host, path, self.header().as_deref()).await?;
        self.absorb(&response);
        Ok(response)
    }
}

/// Sums every sample of a Prometheus counter (all label sets) in a text exposition.
/// A counter that was never incremented may be absent: that is 0.
pub fn counter_total(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_total_sums_label_sets_and_ignores_lookalikes() {
        let text = "# TYPE portcullis_session_cookie_rejected_total counter\n\
                    portcullis_session_cookie_rejected_total{farm=\"a\",reason=\"unknown_key\"} 2\n\
                    portcullis_session_cookie_rejected_total{farm=\"b\",reason=\"expired\"} 3\n\
                    portcullis_session_cookie_rejected_total_created 1700000000\n";
        assert_eq!(
            counter_total(text, "portcullis_session_cookie_rejected_total"),
            5.0
        );
        assert_eq!(
            counter_total("", "portcullis_session_cookie_rejected_total"),
            0.0
        );
    }

    #[test]
    fn jar_keeps_and_expires_cookies() {
        let mut jar = CookieJar::default();
        jar.absorb(&Response {
            status: 200,
            set_cookies: vec![
                "portcullis-affinity=abc.def; Path=/; HttpOnly; SameSite=Lax".into(),
                "other=1".into(),
            ],
            body: String::new(),
        });
        assert_eq!(jar.get("portcullis-affinity"), Some("abc.def"));
        assert_eq!(
            jar.header().as_deref(),
            Some("other=1; portcullis-affinity=abc.def")
        );
        jar.absorb(&Response {
            status: 200,
            set_cookies: vec!["other=; Max-Age=0".into()],
            body: String::new(),
        });
        assert_eq!(jar.header().as_deref(), Some("portcullis-affinity=abc.def"));
    }
}
