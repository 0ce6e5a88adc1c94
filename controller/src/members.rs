//! Reading what members have loaded: `GET http://<podIP>:9901/status` on each member.
//!
//! Behind a trait so reconcile tests pass fixed reports. The controller needs no write
//! permission on members and members need none on anything: they publish their state on
//! their own admin port, which only the controller reads.

use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::builders::MEMBER_ADMIN_PORT;
use crate::keyring::MemberReport;

/// The largest `/status` body read.
const MAX_STATUS_BYTES: usize = 64 * 1024;

/// Fetches a member's report. `None` when it did not answer with a valid report.
pub trait MemberStatusSource: Send + Sync {
    /// The report of pod `pod` at `ip`.
    fn fetch<'a>(&'a self, pod: &'a str, ip: &'a str) -> BoxFuture<'a, Option<MemberReport>>;
}

/// The real source: plain HTTP to the member's admin port, with a timeout.
#[derive(Clone, Debug)]
pub struct HttpMemberStatus {
    client: Client<HttpConnector, Empty<Bytes>>,
    timeout: Duration,
    port: u16,
}

impl HttpMemberStatus {
    /// A source with `timeout` per request, on the members' admin port.
    pub fn new(timeout: Duration) -> Self {
        Self::with_port(timeout, MEMBER_ADMIN_PORT)
    }

    /// A source on another port (tests).
    pub fn with_port(timeout: Duration, port: u16) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeout));
        HttpMemberStatus {
            client: Client::builder(TokioExecutor::new()).build(connector),
            timeout,
            port,
        }
    }

    async fn get(&self, ip: &str) -> Option<MemberReport> {
        let host = match ip.parse::<std::net::IpAddr>().ok()? {
            std::net::IpAddr::V4(v4) => v4.to_string(),
            std::net::IpAddr::V6(v6) => format!("[{v6}]"),
        };
        let uri: http::Uri = format!("http://{host}:{}/status", self.port).parse().ok()?;
        let response = tokio::time::timeout(self.timeout, self.client.get(uri))
            .await
            .ok()?
            .ok()?;
        if !response.status().is_success() {
            return None;
        }
        let body = tokio::time::timeout(
            self.timeout,
            Limited::new(response.into_body(), MAX_STATUS_BYTES).collect(),
        )
        .await
        .ok()?
        .ok()?
        .to_bytes();
        serde_json::from_slice(&body).ok()
    }
}

impl MemberStatusSource for HttpMemberStatus {
    fn fetch<'a>(&'a self, pod: &'a str, ip: &'a str) -> BoxFuture<'a, Option<MemberReport>> {
        Box::pin(async move {
            let report = self.get(ip).await;
            if report.is_none() {
                tracing::debug!(pod, "member did not report its status");
            }
            report
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn reads_a_real_member_status_endpoint() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 1024];
            let n = sock.read(&mut buf).await.unwrap();
            assert!(String::from_utf8_lossy(&buf[..n]).starts_with("GET /status HTTP/1.1"));
            let body = r#"{"configHash":"sha256:ab","keyIds":["k1","k2"],"ready":true}"#;
            let resp = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            sock.write_all(resp.as_bytes()).await.unwrap();
        });
        let source = HttpMemberStatus::with_port(Duration::from_secs(5), port);
        let report = source.fetch("m1", "127.0.0.1").await.unwrap();
        assert_eq!(
            report,
            MemberReport {
                config_hash: Some("sha256:ab".into()),
                key_ids: vec!["k1".into(), "k2".into()],
                ready: true
            }
        );
        server.await.unwrap();
        // Nobody listening: no report, quickly.
        drop(source);
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let source = HttpMemberStatus::with_port(Duration::from_secs(2), port);
        assert_eq!(source.fetch("m2", "127.0.0.1").await, None);
    }
}
