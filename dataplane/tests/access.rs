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
