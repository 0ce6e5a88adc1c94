//! The access phase with real sockets: source ranges, rate limits and authentication
//! answered by the proxy before a server is picked.

mod common;

use common::*;

/// The farm `name` publishing `<name>.test/` to `backend`, with `access` (YAML under
/// `spec.access`, indented four spaces).
fn farm_with_access(name: &str, backend: &Backend, access: &str) -> String {
    let host = format!("{name}.test");
    farm_yaml(
        name,
        &[&host],
        &["/"],
        &[addr_server(backend.addr)],
        &format!("  access:\n{access}"),
    )
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
    let array = |port| format!("{}  trustedProxies: [127.0.0.1]\n", web_array(port));
    let proxy = Proxy::start_in(
        dir,
        array,
        &[
            farm_with_access(
                "open",
                &open,
                "    sourceRanges: {allow: [127.0.0.0/8, '::1'], deny: [10.0.0.0/8]}\n",
            ),
            farm_with_access("shut", &shut, "    sourceRanges: {deny: [127.0.0.1]}\n"),
            farm_with_access(
                "elsewhere",
                &elsewhere,
                "    sourceRanges: {allow: ['10.0.0.0/8', '2001:db8::/32']}\n",
            ),
            farm_with_access(
                "forwarded",
                &forwarded,
                "    sourceRanges: {allow: [203.0.113.0/24]}\n",
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
            "    rateLimit: {requestsPerMinute: 1, burstMultiplier: 2, statusCode: 503}\n",
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
        "    rateLimit: {requestsPerMinute: 1, burstMultiplier: 2, statusCode: 503}\n",
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
            "    rateLimit: {connections: 1}\n",
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
            "    basicAuth: {secretName: users, realm: Staff only}\n",
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
