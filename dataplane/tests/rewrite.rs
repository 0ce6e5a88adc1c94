//! Path rewrites as the backend sees them: regex captures into a template, and a
//! matched prefix replaced.

mod common;

use common::*;

/// A farm of `backend` on host `a.test` whose requests are rewritten by `rewrite`,
/// before its paths.
fn farm(backend: &Backend, rewrite: Rewrite) -> FarmBuilder {
    FarmBuilder::new(&backend.name)
        .hosts(["a.test"])
        .server(address_server(backend.addr))
        .with(|spec| {
            spec.filters = Some(Filters {
                rewrite: Some(rewrite),
                ..defaults()
            })
        })
}

fn replace_prefix(with: &str) -> Rewrite {
    Rewrite {
        replace_prefix_match: Some(with.into()),
        ..defaults()
    }
}

#[tokio::test]
async fn a_regex_route_rewrites_with_its_capture_groups() {
    let api = Backend::start("api").await;
    let proxy = Proxy::start(
        "rewrite-regex",
        &[farm(
            &api,
            Rewrite {
                path_template: Some("/$2".into()),
                ..defaults()
            },
        )
        .regex_paths(["/api(/|$)(.*)"])],
    )
    .await;
    for path in ["/api/users?x=1", "/API/v1/items/7", "/api", "/api/"] {
        assert_eq!(get(proxy.addr, "a.test", path).await.0, 200, "{path}");
    }
    let seen: Vec<String> = api.seen().into_iter().map(|s| s.path).collect();
    assert_eq!(seen, ["/users?x=1", "/v1/items/7", "/", "/"]);
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_prefix_is_replaced_and_the_rest_kept() {
    let v2 = Backend::start("v2").await;
    let root = Backend::start("root").await;
    let proxy = Proxy::start(
        "rewrite-prefix",
        &[
            farm(&v2, replace_prefix("/v2")).paths(["/api"]),
            farm(&root, replace_prefix("/app")).paths(["/"]),
        ],
    )
    .await;
    for path in ["/api/x?q=1", "/api", "/apix", "/"] {
        assert_eq!(get(proxy.addr, "a.test", path).await.0, 200, "{path}");
    }
    let seen = |b: &Backend| b.seen().into_iter().map(|s| s.path).collect::<Vec<_>>();
    assert_eq!(seen(&v2), ["/v2/x?q=1", "/v2"]);
    assert_eq!(seen(&root), ["/app/apix", "/app"]);
    proxy.shutdown().await;
}
