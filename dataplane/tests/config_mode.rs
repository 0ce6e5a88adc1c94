//! `--config FILE` mode, the admin endpoints, metric names and client idle timeout.

mod common;

use std::time::Duration;

use common::*;
use portcullis_crds::config::DataplaneConfig;
use portcullis_crds::translate::{Resolutions, translate};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn render(array: ArrayBuilder, farm: FarmBuilder) -> DataplaneConfig {
    let mut config = translate(&array.build(), &[farm.build()], &Resolutions::default())
        .unwrap()
        .config;
    // A rendered config may ask for an ephemeral port (manifests cannot).
    config.listeners[0].port = 0;
    config
}

#[tokio::test]
async fn serves_a_rendered_config_and_reports_status_and_metrics() {
    let b = Backend::start("b").await;
    let dir = TempDir::new("config");
    let array = web_array(8080).limits(ClientLimits {
        header_read_timeout: Some(duration("1s")),
        client_idle_timeout: Some(duration("1s")),
        ..defaults()
    });
    let config = render(array, plain_farm(&b));
    dir.write("config.json", &config.to_json());
    let mut opts = options(dir.path());
    opts.manifests = None;
    opts.config = Some(dir.path().join("config.json"));
    let h = portcullis_dataplane::start(opts).await.unwrap();
    wait_until(Duration::from_secs(5), || h.is_ready()).await;
    let addr = h.listener_addr(0).unwrap();
    assert_ne!(addr.port(), 0);
    let (s, _, body) = get(addr, "b.test", "/").await;
    assert_eq!((s, body.as_str()), (200, "b"));

    let admin = h.admin_addr();
    assert_eq!(get(admin, "admin", "/healthz").await.0, 200);
    assert_eq!(get(admin, "admin", "/readyz").await.0, 200);
    let (s, _, status) = get(admin, "admin", "/status").await;
    assert_eq!(s, 200);
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["configHash"], config.content_hash());
    assert_eq!(status["ready"], true);
    assert!(status["keyIds"].is_array());
    let m = metrics(admin).await;
    for name in [
        "portcullis_requests_total{",
        "portcullis_upstream_latency_seconds_bucket{",
        "portcullis_pool_connections_opened_total{",
        "portcullis_pool_connections_idle{",
        "portcullis_config_reloads_total{",
    ] {
        assert!(m.contains(name), "{name} missing from\n{m}");
    }
    assert_eq!(
        metric_sum(
            &m,
            "portcullis_requests_total",
            &["farm=\"default/b\"", "status=\"200\""]
        ),
        1.0
    );
    // What the member serves, set when scraped: the hash and key ids `/status` reports,
    // and the farm's one endpoint, usable.
    let loaded = format!(
        "portcullis_config_loaded{{hash=\"{}\"}} 1",
        config.content_hash()
    );
    assert!(m.contains(&loaded), "{loaded} missing from\n{m}");
    let keys = status["keyIds"].as_array().unwrap();
    for key in keys {
        let key = key.as_str().unwrap();
        assert!(
            m.contains(&format!("portcullis_session_key_loaded{{key_id=\"{key}\"")),
            "{m}"
        );
    }
    let key_lines = m
        .lines()
        .filter(|l| l.starts_with("portcullis_session_key_loaded{"))
        .count();
    assert_eq!(key_lines, keys.len(), "{m}");
    for (name, want) in [
        ("portcullis_farm_endpoints{", 1.0),
        ("portcullis_farm_endpoints_usable{", 1.0),
        ("portcullis_farm_endpoints_ejected{", 0.0),
    ] {
        assert_eq!(
            metric_sum(&m, name, &["farm=\"default/b\""]),
            want,
            "{name}"
        );
    }

    // A bad config is refused; the good one keeps serving.
    let hash = h.config_hash();
    dir.write("config.json", "{\"version\": 1}");
    wait_until(Duration::from_secs(5), || {
        // Counted as a failure without changing the served config.
        h.config_hash() == hash
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(h.config_hash(), hash);
    assert_eq!(get(addr, "b.test", "/").await.0, 200);
    let m = metrics(admin).await;
    assert!(metric_sum(&m, "portcullis_config_reloads_total", &["failure"]) >= 1.0);

    // An idle keep-alive connection is closed after the client idle timeout (1 s).
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: b.test\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let closed = tokio::time::timeout(Duration::from_secs(4), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "idle connection was not closed");
    h.shutdown().await;
}
