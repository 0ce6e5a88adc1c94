//! The access phase with real sockets: source ranges, rate limits and authentication
//! answered by the proxy before a server is picked.

mod common;

use common::*;

/// The farm `name` publishing `<name>.test/` to `backend`, with `access`.
fn farm_with_access(name: &str, backend: &Backend, access: Access) -> FarmBuilder {
    site(name, &[&format!("{name}.test")])
        .server(address_server(backend.addr))
        .with(|spec| spec.access = Some(access))
}

fn source_ranges(allow: &[&str], deny: &[&str]) -> Access {
    let strings = |list: &[&str]| list.iter().map(|s| s.to_string()).collect();
    Access {
        source_ranges: Some(SourceRanges {
            allow: strings(allow),
            deny: strings(deny),
        }),
        ..defaults()
    }
}

fn rate_limit(limit: RateLimit) -> Access {
    Access {
        rate_limit: Some(limit),
        ..defaults()
    }
}

fn external_auth(auth: ExternalAuth) -> Access {
    Access {
        external_auth: Some(auth),
        ..defaults()
    }
}

fn requests(metrics: &str, farm: &str, status: u16) -> f64 {
    metric_sum(
        metrics,
        "portcullis_requests_total",
        &[
            &format!("farm=\"default/{farm}\""),
            &format!("status=\"{status}\""),
        ],
    )
}

#[tokio::test]
async fn source_ranges_refuse_with_403_before_any_server() {
    let open = Backend::start("open").await;
    let shut = Backend::start("shut").await;
    let elsewhere = Backend::start("elsewhere").await;
    let forwarded = Backend::start("forwarded").await;
    let dir = TempDir::new("source-ranges");
    let array = |port| web_array(port).with(|spec| spec.trusted_proxies = vec!["127.0.0.1".into()]);
    let proxy = Proxy::start_in(
        dir,
        array,
        &[
            farm_with_access(
                "open",
                &open,
                source_ranges(&["127.0.0.0/8", "::1"], &["10.0.0.0/8"]),
            ),
            farm_with_access("shut", &shut, source_ranges(&[], &["127.0.0.1"])),
            farm_with_access(
                "elsewhere",
                &elsewhere,
                source_ranges(&["10.0.0.0/8", "2001:db8::/32"], &[]),
            ),
            farm_with_access(
                "forwarded",
                &forwarded,
                source_ranges(&["203.0.113.0/24"], &[]),
            ),
        ],
    )
    .await;
    let addr = proxy.addr;
    assert_eq!(get(addr, "open.test", "/").await.0, 200);
    let (status, headers, _) = get(addr, "shut.test", "/").await;
    assert_eq!(status, 403);
    assert_eq!(headers["x-portcullis-error"], "source-range");
    assert_eq!(get(addr, "elsewhere.test", "/").await.0, 403);
    // Behind a trusted proxy (the test client is 127.0.0.1, trusted here), the client
    // is the forwarded address.
    let mut c = Client::connect(addr).await;
    let via = [("x-forwarded-for", "203.0.113.9")];
    assert_eq!(
        c.get_with("forwarded.test", "/", &via).await.unwrap().0,
        200
    );
    let other = [("x-forwarded-for", "198.51.100.1")];
    assert_eq!(
        c.get_with("forwarded.test", "/", &other).await.unwrap().0,
        403
    );
    assert_eq!(open.seen().len(), 1);
    assert!(shut.seen().is_empty() && elsewhere.seen().is_empty());
    assert_eq!(forwarded.seen().len(), 1);
    assert_eq!(shut.accepted(), 0, "a refused request opens no connection");
    let m = metrics(proxy.admin_addr()).await;
    assert_eq!(requests(&m, "shut", 403), 1.0, "{m}");
    assert_eq!(requests(&m, "elsewhere", 403), 1.0, "{m}");
    proxy.shutdown().await;
}

#[tokio::test]
async fn rate_limits_answer_the_farms_status_beyond_the_burst() {
    let limited = Backend::start("limited").await;
    let proxy = Proxy::start(
        "rate-limit",
        &[farm_with_access(
            "limited",
            &limited,
            // A burst of 1 × 2 on top of the first request; refilling takes a minute,
            // far longer than the test.
            rate_limit(RateLimit {
                requests_per_minute: Some(1),
                burst_multiplier: Some(2),
                status_code: Some(503),
                ..defaults()
            }),
        )],
    )
    .await;
    let mut c = Client::connect(proxy.addr).await;
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..6 {
        let (status, headers, _) = c.get("limited.test", "/").await.unwrap();
        if status == 503 {
            assert_eq!(headers["x-portcullis-error"], "rate-limit");
            retry_after = headers.get("retry-after").cloned();
        }
        statuses.push(status);
    }
    assert_eq!(statuses, [200, 200, 200, 503, 503, 503]);
    let retry: u64 = retry_after.unwrap().to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(limited.seen().len(), 3, "refused requests reach no server");
    let m = metrics(proxy.admin_addr()).await;
    assert_eq!(requests(&m, "limited", 503), 3.0, "{m}");
    assert_eq!(
        metric_sum(
            &m,
            "portcullis_access_refused_total",
            &["farm=\"default/limited\"", "reason=\"rate-limit\""]
        ),
        3.0,
        "{m}"
    );
    // A reload that leaves the limit alone keeps the counts: still refused.
    let mut farms = vec![farm_with_access(
        "limited",
        &limited,
        rate_limit(RateLimit {
            requests_per_minute: Some(1),
            burst_multiplier: Some(2),
            status_code: Some(503),
            ..defaults()
        }),
    )];
    farms.push(plain_farm(&Backend::start("other").await));
    proxy.reload(&farms).await;
    assert_eq!(get(proxy.addr, "limited.test", "/").await.0, 503);
    proxy.shutdown().await;
}

#[tokio::test]
async fn connections_limit_requests_in_flight_per_client() {
    let slow = Backend::start("slow").await;
    let proxy = Proxy::start(
        "connection-limit",
        &[farm_with_access(
            "slow",
            &slow,
            rate_limit(RateLimit {
                connections: Some(1),
                ..defaults()
            }),
        )],
    )
    .await;
    let addr = proxy.addr;
    // One request holds the only place until its response ends.
    let first = tokio::spawn(async move {
        Client::connect(addr)
            .await
            .get("slow.test", "/slow/1500")
            .await
            .unwrap()
    });
    wait_until(std::time::Duration::from_secs(5), || slow.seen().len() == 1).await;
    let (status, headers, _) = get(addr, "slow.test", "/").await;
    assert_eq!(status, 429);
    assert_eq!(headers["x-portcullis-error"], "connection-limit");
    assert_eq!(first.await.unwrap().0, 200);
    // Its place is free again once the response ended.
    assert_eq!(get(addr, "slow.test", "/").await.0, 200);
    proxy.shutdown().await;
}

/// `user:password` as a `Basic` `Authorization` value.
fn basic(credentials: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(credentials)
    )
}

#[tokio::test]
async fn basic_auth_checks_bcrypt_and_apr1_users_and_forwards_the_header() {
    let site = Backend::start("site").await;
    let dir = TempDir::new("basic-auth");
    // Local mode: the Secret `users` is the directory certs/users.
    let secret = dir.path().join("certs/users");
    std::fs::create_dir_all(&secret).unwrap();
    let bcrypt_hash = bcrypt::hash("b-secret", 4).unwrap();
    std::fs::write(
        secret.join("auth"),
        // apr1: `openssl passwd -apr1 -salt lZL6V/ci password`.
        format!("alice:{bcrypt_hash}\nbob:$apr1$lZL6V/ci$eIMz/iKDkbtys/uU7LEK00\n"),
    )
    .unwrap();
    let proxy = Proxy::start_in(
        dir,
        web_array,
        &[farm_with_access(
            "site",
            &site,
            Access {
                basic_auth: Some(BasicAuth {
                    secret_name: "users".into(),
                    realm: Some("Staff only".into()),
                }),
                ..defaults()
            },
        )],
    )
    .await;
    let mut c = Client::connect(proxy.addr).await;
    let (status, headers, _) = c.get("site.test", "/").await.unwrap();
    assert_eq!(status, 401);
    assert_eq!(headers["www-authenticate"], "Basic realm=\"Staff only\"");
    let alice = basic("alice:b-secret");
    for (credentials, want) in [
        (alice.as_str(), 200),
        (&basic("alice:wrong"), 401),
        (&basic("bob:password"), 200),
        (&basic("bob:b-secret"), 401),
        (&basic("mallory:password"), 401),
        // Repeated: answered from the verdict of the first check.
        (alice.as_str(), 200),
        (&basic("alice:wrong"), 401),
    ] {
        let auth = [("authorization", credentials)];
        let got = c.get_with("site.test", "/", &auth).await.unwrap().0;
        assert_eq!(got, want, "{credentials}");
    }
    let seen = site.seen();
    assert_eq!(
        seen.len(),
        3,
        "only authenticated requests reach the server"
    );
    // As ingress-nginx, the credentials go on to the server.
    assert_eq!(seen[0].headers["authorization"], alice.as_str());
    let m = metrics(proxy.admin_addr()).await;
    assert_eq!(requests(&m, "site", 401), 5.0, "{m}");
    assert!(!m.contains("b-secret") && !m.contains("$2"), "{m}");
    proxy.shutdown().await;
}

/// An auth service on 127.0.0.1: `Bearer good` is alice (200 with `X-Auth-User`),
/// `Bearer forbidden` gets 403, `Bearer odd` a 302, anything else 401. Records the
/// requests it saw.
struct AuthService {
    addr: std::net::SocketAddr,
    seen: std::sync::Arc<parking_lot::Mutex<Vec<Seen>>>,
}

impl AuthService {
    async fn start() -> AuthService {
        use http_body_util::{BodyExt, Full};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = std::sync::Arc::new(parking_lot::Mutex::new(Vec::<Seen>::new()));
        let record = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let record = record.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: http::Request<hyper::body::Incoming>| {
                            let record = record.clone();
                            async move {
                                let (parts, body) = req.into_parts();
                                let body = body.collect().await.unwrap().to_bytes();
                                assert!(body.is_empty(), "the auth request has no body");
                                record.lock().push(Seen {
                                    method: parts.method.to_string(),
                                    path: parts.uri.to_string(),
                                    headers: parts.headers.clone(),
                                });
                                let token = parts
                                    .headers
                                    .get("authorization")
                                    .and_then(|v| v.to_str().ok())
                                    .unwrap_or("");
                                let resp = http::Response::builder();
                                let resp = match token {
                                    "Bearer good" => {
                                        resp.status(200).header("x-auth-user", "alice")
                                    }
                                    "Bearer forbidden" => resp.status(403),
                                    "Bearer odd" => resp.status(302).header("location", "/x"),
                                    _ => resp
                                        .status(401)
                                        .header("www-authenticate", "Bearer realm=\"auth\""),
                                };
                                Ok::<_, std::convert::Infallible>(
                                    resp.body(Full::new(bytes::Bytes::from_static(b"auth")))
                                        .unwrap(),
                                )
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        AuthService { addr, seen }
    }
}

#[tokio::test]
async fn external_auth_decides_with_a_subrequest() {
    let auth = AuthService::start().await;
    let guarded = Backend::start("guarded").await;
    let signin = Backend::start("signin").await;
    let broken = Backend::start("broken").await;
    let closed = free_port();
    let url = format!("http://{}/check?svc=1", auth.addr);
    let proxy = Proxy::start(
        "external-auth",
        &[
            farm_with_access(
                "guarded",
                &guarded,
                external_auth(ExternalAuth {
                    url: url.clone(),
                    response_headers: vec!["X-Auth-User".into()],
                    ..Default::default()
                }),
            ),
            farm_with_access(
                "signin",
                &signin,
                external_auth(ExternalAuth {
                    url: url.clone(),
                    method: Some("POST".into()),
                    signin: Some("https://login.example/start".into()),
                    ..Default::default()
                }),
            ),
            farm_with_access(
                "broken",
                &broken,
                external_auth(ExternalAuth {
                    url: format!("http://127.0.0.1:{closed}/"),
                    ..Default::default()
                }),
            ),
        ],
    )
    .await;
    let mut c = Client::connect(proxy.addr).await;
    let ask = |token: &'static str| {
        [
            ("authorization", token),
            // A client cannot name the user itself.
            ("x-auth-user", "mallory"),
        ]
    };

    // Allowed: the request goes on with the auth answer's header.
    let (status, _, body) = c
        .get_with("guarded.test", "/some/path?q=1", &ask("Bearer good"))
        .await
        .unwrap();
    assert_eq!((status, body.as_str()), (200, "guarded"));
    let upstream = &guarded.seen()[0];
    assert_eq!(upstream.headers["x-auth-user"], "alice");
    assert_eq!(upstream.headers["authorization"], "Bearer good");
    let sub = auth.seen.lock()[0].clone();
    assert_eq!(sub.method, "GET");
    assert_eq!(sub.path, "/check?svc=1");
    assert_eq!(
        sub.headers["x-original-url"],
        "http://guarded.test/some/path?q=1"
    );
    assert_eq!(sub.headers["x-original-method"], "GET");
    assert_eq!(sub.headers["x-real-ip"], "127.0.0.1");
    assert_eq!(sub.headers["authorization"], "Bearer good");
    assert_eq!(sub.headers["host"], auth.addr.to_string());

    // Denied: 401 with the service's challenge, or 403; nothing reaches the server.
    let (status, headers, _) = c
        .get_with("guarded.test", "/", &ask("Bearer nobody"))
        .await
        .unwrap();
    assert_eq!(status, 401);
    assert_eq!(headers["www-authenticate"], "Bearer realm=\"auth\"");
    let forbidden = c
        .get_with("guarded.test", "/", &ask("Bearer forbidden"))
        .await;
    assert_eq!(forbidden.unwrap().0, 403);
    // Anything else from the service is the proxy's 500.
    let odd = c.get_with("guarded.test", "/", &ask("Bearer odd")).await;
    assert_eq!(odd.unwrap().0, 500);
    assert_eq!(guarded.seen().len(), 1);

    // With signin, a 401 redirects there with the original URL.
    let (status, headers, _) = c
        .get_with("signin.test", "/p?a=b", &ask("Bearer nobody"))
        .await
        .unwrap();
    assert_eq!(status, 302);
    assert_eq!(
        headers["location"],
        "https://login.example/start?rd=http%3A%2F%2Fsignin.test%2Fp%3Fa%3Db"
    );
    assert_eq!(auth.seen.lock().last().unwrap().method, "POST");
    assert!(signin.seen().is_empty());

    // An auth service that cannot be reached: 500, never the server.
    let (status, headers, _) = c.get("broken.test", "/").await.unwrap();
    assert_eq!(status, 500);
    assert_eq!(headers["x-portcullis-error"], "external-auth-error");
    assert!(broken.seen().is_empty());

    let m = metrics(proxy.admin_addr()).await;
    assert_eq!(requests(&m, "guarded", 401), 1.0, "{m}");
    assert_eq!(requests(&m, "signin", 302), 1.0, "{m}");
    assert_eq!(requests(&m, "broken", 500), 1.0, "{m}");
    proxy.shutdown().await;
}

/// A preflight from `origin` to `host`, on its own connection: the raw answer.
async fn preflight(addr: std::net::SocketAddr, host: &str, origin: &str) -> String {
    let req = format!(
        "OPTIONS /api HTTP/1.1\r\nHost: {host}\r\nOrigin: {origin}\r\nAccess-Control-Request-Method: PUT\r\nAccess-Control-Request-Headers: content-type\r\nConnection: close\r\n\r\n"
    );
    raw(addr, req.as_bytes()).await.to_ascii_lowercase()
}

#[tokio::test]
async fn cors_preflights_are_answered_and_allowed_origins_get_headers() {
    let app = Backend::start("app").await;
    let open = Backend::start("open").await;
    let proxy = Proxy::start(
        "cors",
        &[
            site("app", &["app.test"])
                .server(address_server(app.addr))
                .with(|spec| {
                    spec.cors = Some(Cors {
                        allow_origins: Some(vec![
                            "https://app.example.com".into(),
                            "https://*.example.org".into(),
                        ]),
                        expose_headers: vec!["X-Total".into()],
                        ..defaults()
                    })
                }),
            site("open", &["open.test"])
                .server(address_server(open.addr))
                .with(|spec| {
                    spec.cors = Some(Cors {
                        allow_credentials: Some(false),
                        max_age: Some(60),
                        ..defaults()
                    })
                }),
        ],
    )
    .await;
    let addr = proxy.addr;

    // A preflight from an allowed origin: the proxy's 204, never the server.
    let answer = preflight(addr, "app.test", "https://app.example.com").await;
    assert!(answer.starts_with("http/1.1 204"), "{answer}");
    for line in [
        "access-control-allow-origin: https://app.example.com\r\n",
        "access-control-allow-credentials: true\r\n",
        "access-control-allow-methods: get, put, post, delete, patch, options\r\n",
        "access-control-allow-headers: dnt, keep-alive, user-agent, x-requested-with, if-modified-since, cache-control, content-type, range, authorization\r\n",
        "access-control-max-age: 1728000\r\n",
        "vary: origin\r\n",
    ] {
        assert!(answer.contains(line), "{line}in\n{answer}");
    }
    assert!(app.seen().is_empty());

    // A request from an allowed (wildcard) origin gets the headers on the server's answer.
    let mut c = Client::connect(addr).await;
    let origin = [("origin", "https://shop.example.org")];
    let (status, headers, body) = c.get_with("app.test", "/", &origin).await.unwrap();
    assert_eq!((status, body.as_str()), (200, "app"));
    assert_eq!(
        headers["access-control-allow-origin"],
        "https://shop.example.org"
    );
    assert_eq!(headers["access-control-expose-headers"], "X-Total");
    assert_eq!(headers["access-control-allow-credentials"], "true");

    // Another origin gets none, and its preflight goes to the server.
    let evil = [("origin", "https://evil.example")];
    let (status, headers, _) = c.get_with("app.test", "/", &evil).await.unwrap();
    assert_eq!(status, 200);
    assert!(!headers.contains_key("access-control-allow-origin"));
    let answer = preflight(addr, "app.test", "https://a.b.example.org").await;
    assert!(answer.starts_with("http/1.1 200"), "{answer}");
    assert!(!answer.contains("access-control-allow-origin"), "{answer}");
    assert_eq!(app.seen().last().unwrap().method, "OPTIONS");

    // Any origin without credentials: `*`.
    let (_, headers, _) = c
        .get_with("open.test", "/", &[("origin", "https://x.example")])
        .await
        .unwrap();
    assert_eq!(headers["access-control-allow-origin"], "*");
    assert!(!headers.contains_key("access-control-allow-credentials"));
    let answer = preflight(addr, "open.test", "https://x.example").await;
    assert!(
        answer.contains("access-control-max-age: 60\r\n"),
        "{answer}"
    );

    let m = metrics(proxy.admin_addr()).await;
    assert_eq!(requests(&m, "app", 204), 1.0, "{m}");
    proxy.shutdown().await;
}
