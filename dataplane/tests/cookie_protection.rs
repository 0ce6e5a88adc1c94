//! Cookie protection through a real listener: a protected farm's servers receive only
//! cookies they set through the array, with the names and values they set (issue 12).

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use common::*;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// A backend that sets `sid=real` and `csrf=token` on `/login` and answers every request
/// with the Cookie header it received (empty when none).
async fn cookie_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: http::Request<Incoming>| async move {
                    let cookie = cookie_header(req.headers());
                    let mut resp = http::Response::builder();
                    if req.uri().path() == "/login" {
                        resp = resp
                            .header("set-cookie", "sid=real; Path=/; HttpOnly")
                            .header("set-cookie", "csrf=token; Path=/");
                    }
                    Ok::<_, Infallible>(resp.body(Full::new(Bytes::from(cookie))).unwrap())
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    addr
}

/// The `name=value` pair of a `Set-Cookie` line.
fn pair(set_cookie: &http::HeaderValue) -> (String, String) {
    let text = set_cookie.to_str().unwrap();
    let (name, rest) = text.split_once('=').unwrap();
    (name.to_owned(), rest.split(';').next().unwrap().to_owned())
}

#[tokio::test]
async fn a_protected_farm_gets_only_the_cookies_its_servers_set() {
    let backend = cookie_backend().await;
    let farm = site("shop", &["shop.test"])
        .server(address_server(backend))
        .with(|spec| spec.cookie_protection = CookieProtection::Encrypt);
    let proxy = Proxy::start("cookie-protection", &[farm]).await;
    let mut client = Client::connect(proxy.addr).await;
    let mut send = async |cookie: &str| {
        let headers: &[(&str, &str)] = if cookie.is_empty() {
            &[]
        } else {
            &[("cookie", cookie)]
        };
        let (status, _, body) = client.get_with("shop.test", "/", headers).await.unwrap();
        assert_eq!(status, 200);
        body
    };

    let (status, headers, _) = Client::connect(proxy.addr)
        .await
        .get("shop.test", "/login")
        .await
        .unwrap();
    assert_eq!(status, 200);
    let set: Vec<_> = headers.get_all(http::header::SET_COOKIE).iter().collect();
    assert_eq!(set.len(), 2, "{set:?}");
    let (sid_name, sid_value) = pair(set[0]);
    let (csrf_name, csrf_value) = pair(set[1]);
    for (name, value) in [(&sid_name, &sid_value), (&csrf_name, &csrf_value)] {
        assert!(name.starts_with("__pc_v1."), "{name}");
        // The value is sealed too: the client never sees what the server set.
        assert!(value.starts_with("v1."), "value left in the clear: {value}");
    }
    assert!(set[0].to_str().unwrap().ends_with("; Path=/; HttpOnly"));
    let sid = format!("{sid_name}={sid_value}");
    let csrf = format!("{csrf_name}={csrf_value}");

    // The cookies as set come back as the server set them.
    assert_eq!(
        send(&format!("{sid}; {csrf}")).await,
        "sid=real; csrf=token"
    );
    // A valid sealed name with a value of the client's choosing never reaches the server.
    assert_eq!(send(&format!("{sid_name}=ANY")).await, "");
    let mut changed = sid_value.clone();
    let last = if changed.pop() == Some('A') { 'B' } else { 'A' };
    changed.push(last);
    assert_eq!(send(&format!("{sid_name}={changed}")).await, "");
    // Nor does one cookie's value moved under another's name.
    assert_eq!(send(&format!("{sid_name}={csrf_value}")).await, "");
    // An unsealed cookie is not the server's: a forged `sid` next to the real one, or
    // alone, or any other unsealed cookie, is dropped.
    assert_eq!(send(&format!("sid=forged; {sid}")).await, "sid=real");
    assert_eq!(send("sid=forged").await, "");
    assert_eq!(send("theme=dark").await, "");

    let text = metrics(proxy.admin_addr()).await;
    let rejected = |reason: &str| {
        metric_sum(
            &text,
            "portcullis_session_cookie_rejected_total",
            &["farm=\"default/shop\"", &format!("reason=\"{reason}\"")],
        )
    };
    assert_eq!(rejected("tampered") + rejected("malformed"), 3.0, "{text}");
    assert_eq!(rejected("unsealed"), 3.0, "{text}");
    proxy.shutdown().await;
}
