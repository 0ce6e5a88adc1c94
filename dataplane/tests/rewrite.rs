//! Path rewrites as the backend sees them: regex captures into a template, and a
//! matched prefix replaced.

mod common;

use common::*;

/// A farm of `backend` on host `a.test`; `publish` is the rest of its `publish` mapping
/// and `rewrite` its `filters.rewrite` mapping.
fn farm(backend: &Backend, publish: &str, rewrite: &str) -> String {
    let name = &backend.name;
    format!(
        "apiVersion: portcullis.io/v1alpha1\nkind: ServerFarm\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  arrayRef: {{name: edge}}\n  publish: {{hosts: [a.test], {publish}}}\n  servers:\n  - {}\n  filters:\n    rewrite: {rewrite}\n",
        addr_server(backend.addr)
    )
}

#[tokio::test]
async fn a_regex_route_rewrites_with_its_capture_groups() {
    let api = Backend::start("api").await;
    let proxy = Proxy::start(
        "rewrite-regex",
        &[farm(
            &api,
            "regexPaths: ['/api(/|$)(.*)']",
            "{pathTemplate: '/$2'}",
        )],
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
            farm(&v2, "paths: [/api]", "{replacePrefixMatch: /v2}"),
            farm(&root, "paths: [/]", "{replacePrefixMatch: /app}"),
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
