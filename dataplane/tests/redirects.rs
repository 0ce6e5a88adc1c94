//! Redirects the proxy answers itself: a farm's fixed redirect, plain HTTP to HTTPS and
//! the application root. None reaches a server; each is counted like other answers.

mod common;

use std::sync::Arc;

use common::*;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn with_filters(backend: &Backend, host: &str, filters: Filters) -> FarmBuilder {
    site(&backend.name, &[host])
        .server(address_server(backend.addr))
        .with(|spec| spec.filters = Some(filters))
}

#[tokio::test]
async fn a_request_redirect_answers_every_request_without_a_server() {
    let moved = Backend::start("moved").await;
    let root = Backend::start("root").await;
    let proxy = Proxy::start(
        "redirect",
        &[
            with_filters(
                &moved,
                "moved.test",
                Filters {
                    request_redirect: Some(RequestRedirect {
                        url: "https://new.example/landing?from=old".into(),
                        status_code: 301,
                    }),
                    ..defaults()
                },
            ),
            with_filters(
                &root,
                "root.test",
                Filters {
                    app_root: Some("/app1".into()),
                    ..defaults()
                },
            ),
        ],
    )
    .await;
    for path in ["/", "/any/thing?x=1"] {
        let (status, headers, body) = get(proxy.addr, "moved.test", path).await;
        assert_eq!(status, 301, "{path}");
        assert_eq!(headers["location"], "https://new.example/landing?from=old");
        assert_eq!(body, "");
    }
    assert_eq!(moved.accepted(), 0, "a redirect never reaches a server");

    let (status, headers, _) = get(proxy.addr, "root.test", "/").await;
    assert_eq!(status, 302);
    assert_eq!(headers["location"], "/app1");
    // Only `/` itself is sent to the application root.
    let (status, _, body) = get(proxy.addr, "root.test", "/app1").await;
    assert_eq!((status, body.as_str()), (200, "root"));
    assert_eq!(get(proxy.addr, "root.test", "/x?y=1").await.0, 200);
    assert_eq!(root.seen().len(), 2);

    let m = metrics(proxy.admin_addr()).await;
    let count = |farm: &str, status: &str| {
        metric_sum(
            &m,
            "portcullis_requests_total",
            &[&format!("farm=\"{farm}\""), &format!("status=\"{status}\"")],
        )
    };
    assert_eq!(count("default/moved", "301"), 2.0, "{m}");
    assert_eq!(count("default/root", "302"), 1.0, "{m}");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_is_sent_to_the_https_listener_and_https_passes() {
    let web = Backend::start("web").await;
    let dir = TempDir::new("https-redirect");
    let ck = rcgen::generate_simple_self_signed(vec!["a.test".to_owned()]).unwrap();
    let base = dir.path().join("certs").join("cert-a");
    std::fs::create_dir_all(&base).unwrap();
    std::fs::write(base.join("tls.crt"), ck.cert.pem()).unwrap();
    std::fs::write(base.join("tls.key"), ck.signing_key.serialize_pem()).unwrap();
    let https_port = free_port();
    let array = move |port| {
        edge_array()
            .http("web", port)
            .https("tls", https_port, "cert-a")
    };
    let proxy = Proxy::start_in(
        dir,
        array,
        &[with_filters(
            &web,
            "a.test",
            Filters {
                https_redirect: Some(defaults()),
                ..defaults()
            },
        )],
    )
    .await;
    let (status, headers, _) = get(proxy.addr, "A.Test:8080", "/p/q?x=1&y=2").await;
    assert_eq!(status, 308);
    assert_eq!(
        headers["location"],
        format!("https://a.test:{https_port}/p/q?x=1&y=2").as_str(),
        "the host without the client's port, the lone HTTPS listener's port"
    );
    assert_eq!(web.accepted(), 0);

    // On the HTTPS listener the request passes.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ck.cert.der().clone()).unwrap();
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let addr = proxy.handle.listener_addr(https_port).unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from("a.test").unwrap(), tcp)
        .await
        .unwrap();
    tls.write_all(b"GET /p HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out).await;
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert_eq!(web.seen().len(), 1);
    proxy.shutdown().await;
}
