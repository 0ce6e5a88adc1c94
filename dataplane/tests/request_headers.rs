//! Request header changes of a farm, as its server sees them.

mod common;

use common::*;

#[tokio::test]
async fn headers_are_removed_set_and_added_after_the_proxys_own() {
    let web = Backend::start("web").await;
    let proxy = Proxy::start(
        "request-headers",
        &[site("web", &["a.test"])
            .server(address_server(web.addr))
            .with(|spec| {
                spec.filters = Some(Filters {
                    request_headers: Some(RequestHeaders {
                        set: [("X-Tenant", "blue"), ("X-Forwarded-Proto", "https")]
                            .map(|(k, v)| (k.to_owned(), v.to_owned()))
                            .into(),
                        add: [("X-Trace".to_owned(), "edge".to_owned())].into(),
                        remove: vec!["X-Debug".into()],
                    }),
                    ..defaults()
                })
            })],
    )
    .await;
    let mut c = Client::connect(proxy.addr).await;
    let (status, _, _) = c
        .get_with(
            "a.test",
            "/",
            &[("x-tenant", "red"), ("x-debug", "1"), ("x-trace", "client")],
        )
        .await
        .unwrap();
    assert_eq!(status, 200);
    let seen = &web.seen()[0];
    let all = |name: &str| -> Vec<&str> {
        seen.headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect()
    };
    assert_eq!(all("x-tenant"), ["blue"], "set replaces the client's value");
    assert!(all("x-debug").is_empty(), "removed");
    assert_eq!(
        all("x-trace"),
        ["client", "edge"],
        "added after the client's"
    );
    // Set after the proxy wrote its own forwarding headers, so the farm's value wins.
    assert_eq!(all("x-forwarded-proto"), ["https"]);
    assert_eq!(all("host"), ["a.test"]);
    proxy.shutdown().await;
}
