//! Members bind `[::]` (the controller passes `--bind :: --admin [::]:9901`): IPv4 clients
//! reach the listeners and the admin port, and are seen (X-Forwarded-For, logs, source
//! ranges) by their IPv4 address, not as IPv4-mapped IPv6.

mod common;

use std::net::{Ipv4Addr, SocketAddr};

use common::*;

#[tokio::test]
async fn a_member_bound_to_the_unspecified_ipv6_address_serves_ipv4_clients_as_ipv4() {
    let backend = Backend::start("v4").await;
    let dir = TempDir::new("dual-stack");
    let port = dir.write_manifests(
        web_array,
        &[site("web", &["dual.example.com"]).server(address_server(backend.addr))],
    );
    let mut opts = options(dir.path());
    opts.bind = "::".parse().unwrap();
    opts.admin = "[::]:0".parse().unwrap();
    let handle = portcullis_dataplane::start(opts).await.unwrap();
    wait_until(std::time::Duration::from_secs(10), || handle.is_ready()).await;

    let v4 = |p: u16| SocketAddr::new(Ipv4Addr::LOCALHOST.into(), p);
    let (status, _, body) = get(v4(port), "dual.example.com", "/").await;
    assert_eq!((status, body.as_str()), (200, "v4"));
    assert_eq!(backend.seen()[0].headers["x-forwarded-for"], "127.0.0.1");
    let (status, _, _) = get(v4(handle.admin_addr().port()), "localhost", "/healthz").await;
    assert_eq!(status, 200);
    handle.shutdown().await;
}
