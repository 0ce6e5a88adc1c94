//! Exact and regex paths next to prefixes: which farm a request reaches.

mod common;

use common::*;

/// A farm of `backend` on host `a.test`, before its paths.
fn farm(backend: &Backend) -> FarmBuilder {
    FarmBuilder::new(&backend.name)
        .hosts(["a.test"])
        .server(address_server(backend.addr))
}

#[tokio::test]
async fn exact_paths_win_then_prefixes_and_regexes_by_length() {
    let root = Backend::start("root").await;
    let api = Backend::start("api").await;
    let exact = Backend::start("exact").await;
    let versioned = Backend::start("versioned").await;
    let proxy = Proxy::start(
        "path-kinds",
        &[
            farm(&root).paths(["/"]),
            farm(&api).paths(["/api"]),
            farm(&exact).exact_paths(["/api/v1"]),
            farm(&versioned).regex_paths(["/api/v[0-9]+"]),
        ],
    )
    .await;
    let at = |path: &'static str| {
        let addr = proxy.addr;
        async move { get(addr, "a.test", path).await.2 }
    };
    // The exact path beats the longer regex and the prefix.
    assert_eq!(at("/api/v1").await, "exact");
    // Exact means exact: a final slash or another case is something else.
    assert_eq!(at("/api/v1/").await, "versioned");
    assert_eq!(at("/API/V1").await, "versioned", "regexes ignore case");
    // The regex (13 characters) is longer than the prefix /api.
    assert_eq!(at("/api/v22/users?x=1").await, "versioned");
    assert_eq!(at("/api/users").await, "api");
    // Anchored at the start of the path.
    assert_eq!(at("/x/api/v2").await, "root");
    assert_eq!(at("/").await, "root");
    assert_eq!(versioned.seen()[2].path, "/api/v22/users?x=1");
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_farm_with_only_exact_paths_answers_nothing_else() {
    let exact = Backend::start("exact").await;
    let proxy = Proxy::start("exact-only", &[farm(&exact).exact_paths(["/health"])]).await;
    assert_eq!(get(proxy.addr, "a.test", "/health").await.0, 200);
    let (status, headers, _) = get(proxy.addr, "a.test", "/").await;
    assert_eq!(status, 404, "no default / when exactPaths is given");
    assert_eq!(headers["x-portcullis-error"], "no-route");
    assert_eq!(get(proxy.addr, "a.test", "/health/x").await.0, 404);
    proxy.shutdown().await;
}
