//! Upstream TLS verified against a CA secret, SNI from the farm, HTTP/2 upstream.

mod common;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use common::*;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use parking_lot::Mutex;

/// A TLS backend speaking h2 (ALPN) or HTTP/1.1; records (version, SNI, Host/authority).
async fn tls_backend(
    cert: &rcgen::CertifiedKey<rcgen::KeyPair>,
) -> (
    std::net::SocketAddr,
    Arc<AtomicUsize>,
    Arc<Mutex<Vec<(String, String, String)>>>,
) {
    let certs = vec![cert.cert.der().clone()];
    let key = rustls::pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der()).unwrap();
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (acc, seen2) = (accepted.clone(), seen.clone());
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            acc.fetch_add(1, Ordering::SeqCst);
            let acceptor = acceptor.clone();
            let seen = seen2.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let sni = tls.get_ref().1.server_name().unwrap_or("").to_owned();
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let host = req
                            .headers()
                            .get("host")
                            .map(|h| h.to_str().unwrap().to_owned())
                            .or_else(|| req.uri().authority().map(|a| a.to_string()))
                            .unwrap_or_default();
                        seen.lock()
                            .push((format!("{:?}", req.version()), sni.clone(), host));
                        async move {
                            Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from_static(
                                b"secure",
                            ))))
                        }
                    });
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let _ = builder.serve_connection(TokioIo::new(tls), svc).await;
            });
        }
    });
    (addr, accepted, seen)
}

/// TLS to the servers, verified against the CA in `certs/upstream-ca`, with `sni`.
fn upstream_tls(sni: Option<&str>) -> UpstreamTls {
    UpstreamTls {
        sni: sni.map(str::to_owned),
        ca_secret_name: Some("upstream-ca".into()),
        insecure_skip_verify: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_tls_with_ca_and_h2_shares_one_connection() {
    let cert = rcgen::generate_simple_self_signed(vec!["api.internal".to_owned()]).unwrap();
    let (baddr, accepted, seen) = tls_backend(&cert).await;
    let dir = TempDir::new("uptls");
    let ca = dir.path().join("certs").join("upstream-ca");
    std::fs::create_dir_all(&ca).unwrap();
    std::fs::write(ca.join("ca.crt"), cert.cert.pem()).unwrap();
    let proxy = Proxy::start_in(
        dir,
        web_array,
        &[
            site("h2", &["h2.test"])
                .server(address_server(baddr))
                .with(|spec| {
                    spec.upstream = Some(Upstream {
                        protocol: UpstreamProtocol::Http2,
                        tls: Some(upstream_tls(Some("api.internal"))),
                        ..defaults()
                    })
                }),
            site("h1", &["h1.test"])
                .server(address_server(baddr))
                .with(|spec| {
                    spec.backend_host = Some("api.internal".into());
                    spec.upstream = Some(Upstream {
                        tls: Some(upstream_tls(None)),
                        ..defaults()
                    })
                }),
            site("wrong", &["wrong.test"])
                .server(address_server(baddr))
                .with(|spec| {
                    spec.upstream = Some(Upstream {
                        retries: Some(Retries { attempts: 0 }),
                        tls: Some(upstream_tls(Some("other.internal"))),
                        ..defaults()
                    })
                }),
        ],
    )
    .await;
    let addr = proxy.addr;
    let mut tasks = Vec::new();
    for _ in 0..20 {
        tasks.push(tokio::spawn(async move { get(addr, "h2.test", "/").await }));
    }
    for t in tasks {
        let (s, _, body) = t.await.unwrap();
        assert_eq!((s, body.as_str()), (200, "secure"));
    }
    let (s, _, body) = get(addr, "h1.test", "/").await;
    assert_eq!((s, body.as_str()), (200, "secure"));
    let seen = seen.lock().clone();
    assert!(
        seen.iter()
            .any(|(v, sni, host)| v == "HTTP/2.0" && sni == "api.internal" && host == "h2.test"),
        "{seen:?}"
    );
    assert!(
        seen.iter().any(|(v, sni, host)| v == "HTTP/1.1"
            && sni == "api.internal"
            && host == "api.internal"),
        "{seen:?}"
    );
    // One h2 connection carried the 20 requests; the HTTP/1 farm is another identity.
    let before_wrong = accepted.load(Ordering::SeqCst);
    assert!(before_wrong <= 3, "accepted {before_wrong}");
    // A certificate that does not match the SNI is refused: 502, not a silent pass.
    let (s, hd, _) = get(addr, "wrong.test", "/").await;
    assert_eq!(s, 502);
    assert_eq!(hd["x-portcullis-error"], "upstream-tls-failed");
    proxy.shutdown().await;
}
