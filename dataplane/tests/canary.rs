//! Canary farms: a weighted share of a route's requests, and header and cookie
//! overrides, measured at real backends.

mod common;

use common::*;

/// Farm `name` publishing `host/` to `backend`, with `canary`.
fn farm(name: &str, host: &str, backend: &Backend, canary: Option<Canary>) -> FarmBuilder {
    site(name, &[host])
        .server(address_server(backend.addr))
        .with(|spec| spec.canary = canary)
}

#[tokio::test]
async fn a_weighted_canary_takes_its_share_and_headers_and_cookies_override() {
    let primary = Backend::start("primary").await;
    let canary = Backend::start("canary").await;
    let proxy = Proxy::start(
        "canary",
        &[
            farm("main", "a.test", &primary, None),
            farm(
                "beta",
                "a.test",
                &canary,
                Some(Canary {
                    weight: 30,
                    header: Some("X-Canary".into()),
                    cookie: Some("canary".into()),
                    ..defaults()
                }),
            ),
            farm("b-main", "b.test", &primary, None),
            farm(
                "b-beta",
                "b.test",
                &canary,
                Some(Canary {
                    header: Some("X-Env".into()),
                    header_value: Some("blue".into()),
                    ..defaults()
                }),
            ),
        ],
    )
    .await;
    let mut c = Client::connect(proxy.addr).await;
    let mut to_canary = 0;
    const N: usize = 400;
    for _ in 0..N {
        let (status, _, body) = c.get("a.test", "/").await.unwrap();
        assert_eq!(status, 200);
        if body == "canary" {
            to_canary += 1;
        }
    }
    // Binomial(400, 0.3): mean 120, standard deviation 9.2; this bound is over 5 of
    // them each way, and excludes both "never" and "always".
    assert!(
        (70..=170).contains(&to_canary),
        "{to_canary} of {N} went to the canary"
    );

    let addr = proxy.addr;
    let body = |host: &'static str, headers: &'static [(&'static str, &'static str)]| async move {
        Client::connect(addr)
            .await
            .get_with(host, "/", headers)
            .await
            .unwrap()
            .2
    };
    for _ in 0..20 {
        assert_eq!(body("a.test", &[("x-canary", "always")]).await, "canary");
        assert_eq!(body("a.test", &[("x-canary", "never")]).await, "primary");
        assert_eq!(
            body("a.test", &[("cookie", "a=1; canary=always")]).await,
            "canary"
        );
        assert_eq!(
            body("a.test", &[("cookie", "canary=never")]).await,
            "primary"
        );
        // The header is asked before the cookie.
        assert_eq!(
            body(
                "a.test",
                &[("x-canary", "never"), ("cookie", "canary=always")]
            )
            .await,
            "primary"
        );
        // With a header value: only that value picks the canary; weight 0 otherwise.
        assert_eq!(body("b.test", &[("x-env", "blue")]).await, "canary");
        assert_eq!(body("b.test", &[("x-env", "green")]).await, "primary");
        assert_eq!(body("b.test", &[]).await, "primary");
    }

    // Each answer is counted under the farm that served it.
    let m = metrics(proxy.admin_addr()).await;
    let served = |farm: &str| {
        metric_sum(
            &m,
            "portcullis_requests_total",
            &[&format!("farm=\"default/{farm}\""), "status=\"200\""],
        )
    };
    assert_eq!(served("beta"), (to_canary + 40) as f64, "{m}");
    assert_eq!(served("b-beta"), 20.0, "{m}");
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_canary_without_a_primary_is_refused_and_the_rest_is_served() {
    let primary = Backend::start("primary").await;
    let canary = Backend::start("canary").await;
    let proxy = Proxy::start(
        "canary-orphan",
        &[
            farm("main", "a.test", &primary, None),
            farm(
                "orphan",
                "z.test",
                &canary,
                Some(Canary {
                    weight: 100,
                    ..defaults()
                }),
            ),
        ],
    )
    .await;
    assert_eq!(get(proxy.addr, "a.test", "/").await.2, "primary");
    assert_eq!(get(proxy.addr, "z.test", "/").await.0, 404);
    assert_eq!(canary.accepted(), 0);
    proxy.shutdown().await;
}
