//! A farm's request body limit: a declared length over it is refused before any server
//! sees the request, a streamed body that grows past it is cut off, and neither counts
//! against the servers' health.

mod common;

use common::*;

const LIMIT: usize = 1000;

fn limited(servers: impl IntoIterator<Item = Server>) -> FarmBuilder {
    site("up", &["a.test"]).servers(servers).with(|spec| {
        spec.filters = Some(Filters {
            max_request_body_size: Some(LIMIT as u64),
            ..defaults()
        })
    })
}

fn post_with_length(len: usize) -> Vec<u8> {
    let mut req = format!(
        "POST /upload HTTP/1.1\r\nHost: a.test\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    req.extend(std::iter::repeat_n(b'a', len));
    req
}

/// A chunked POST of `chunks` chunks of 600 bytes.
fn post_chunked(chunks: usize) -> Vec<u8> {
    let mut req = b"POST /upload HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
    for _ in 0..chunks {
        req.extend(b"258\r\n");
        req.extend([b'a'; 600]);
        req.extend(b"\r\n");
    }
    req.extend(b"0\r\n\r\n");
    req
}

#[tokio::test]
async fn a_declared_length_over_the_limit_never_reaches_a_server() {
    let up = Backend::start("up").await;
    let proxy = Proxy::start("body-declared", &[limited([address_server(up.addr)])]).await;
    let answer = raw(proxy.addr, &post_with_length(LIMIT + 1)).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(
        answer.contains("x-portcullis-error: body-too-large"),
        "{answer}"
    );
    assert_eq!(up.accepted(), 0);
    let answer = raw(proxy.addr, &post_with_length(LIMIT)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let m = metrics(proxy.admin_addr()).await;
    assert_eq!(
        metric_sum(
            &m,
            "portcullis_requests_total",
            &["farm=\"default/up\"", "status=\"413\""]
        ),
        1.0,
        "{m}"
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_streamed_body_past_the_limit_is_cut_and_no_server_is_blamed() {
    let one = Backend::start("one").await;
    let two = Backend::start("two").await;
    let proxy = Proxy::start(
        "body-streamed",
        &[limited([
            address_server(one.addr),
            address_server(two.addr),
        ])],
    )
    .await;
    let answer = raw(proxy.addr, &post_chunked(1)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // Twelve over the limit: six per server with round robin, more than the five
    // consecutive failures that would eject one if they counted.
    for _ in 0..12 {
        let answer = raw(proxy.addr, &post_chunked(3)).await;
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    }
    let m = metrics(proxy.admin_addr()).await;
    assert_eq!(
        metric_sum(
            &m,
            "portcullis_farm_endpoints_ejected",
            &["farm=\"default/up\""]
        ),
        0.0,
        "{m}"
    );
    assert_eq!(
        metric_sum(
            &m,
            "portcullis_requests_total",
            &["farm=\"default/up\"", "status=\"413\""]
        ),
        12.0,
        "{m}"
    );
    // Both servers still take requests.
    let mut c = Client::connect(proxy.addr).await;
    for _ in 0..4 {
        assert_eq!(c.get("a.test", "/").await.unwrap().0, 200);
    }
    assert!(one.seen().iter().any(|s| s.method == "GET"));
    assert!(two.seen().iter().any(|s| s.method == "GET"));
    proxy.shutdown().await;
}
