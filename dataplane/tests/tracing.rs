//! Issue 15: OpenTelemetry tracing of the request path. W3C `traceparent` in and out,
//! one server span per sampled request, exported by OTLP/HTTP (JSON) to a collector that
//! this test runs on a real socket and that checks every span against the OTLP JSON
//! encoding rules.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use parking_lot::Mutex;
use portcullis_dataplane::trace::{TraceOptions, parse_endpoint};
use serde_json::Value;

/// What the collector received: one entry per exported span, with its resource.
#[derive(Clone, Default)]
struct Received {
    spans: Arc<Mutex<Vec<(Value, Value)>>>,
    content_types: Arc<Mutex<Vec<String>>>,
}

impl Received {
    fn spans(&self) -> Vec<(Value, Value)> {
        self.spans.lock().clone()
    }

    async fn wait_for(&self, n: usize) -> Vec<(Value, Value)> {
        wait_until(Duration::from_secs(10), || self.spans.lock().len() >= n).await;
        self.spans()
    }
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && s.bytes().any(|b| b != b'0')
}

/// Checks one span as the OTLP JSON encoding defines it: ids as lowercase hex, times as
/// decimal strings, kind and status as integers, attributes as typed key/value pairs.
fn check_span(span: &Value) {
    assert!(is_hex(span["traceId"].as_str().unwrap(), 32), "{span}");
    assert!(is_hex(span["spanId"].as_str().unwrap(), 16), "{span}");
    if let Some(p) = span.get("parentSpanId") {
        assert!(is_hex(p.as_str().unwrap(), 16), "{span}");
    }
    assert_eq!(span["kind"], 2, "a server span: {span}");
    let start: u128 = span["startTimeUnixNano"].as_str().unwrap().parse().unwrap();
    let end: u128 = span["endTimeUnixNano"].as_str().unwrap().parse().unwrap();
    assert!(start > 1_600_000_000_000_000_000 && start <= end, "{span}");
    for a in span["attributes"].as_array().unwrap() {
        assert!(a["key"].is_string(), "{a}");
        let v = a["value"].as_object().unwrap();
        assert_eq!(v.len(), 1, "{a}");
        if let Some(i) = v.get("intValue") {
            // int64 is a decimal string in OTLP JSON.
            i.as_str().unwrap().parse::<i64>().unwrap();
        } else {
            assert!(v["stringValue"].is_string(), "{a}");
        }
    }
}

fn attr<'a>(span: &'a Value, key: &str) -> Option<&'a Value> {
    span["attributes"]
        .as_array()?
        .iter()
        .find(|a| a["key"] == key)
        .map(|a| {
            let v = &a["value"];
            v.get("stringValue").or_else(|| v.get("intValue")).unwrap()
        })
}

/// An OTLP/HTTP receiver on 127.0.0.1: `POST /v1/traces` with a JSON body.
async fn collector() -> (SocketAddr, Received) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Received::default();
    let r = received.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let r = r.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                    let r = r.clone();
                    async move {
                        let ok =
                            req.method() == http::Method::POST && req.uri().path() == "/v1/traces";
                        let ct = req
                            .headers()
                            .get("content-type")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_owned();
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let status = match serde_json::from_slice::<Value>(&body) {
                            Ok(v) if ok => {
                                r.content_types.lock().push(ct);
                                for rs in v["resourceSpans"].as_array().unwrap() {
                                    for ss in rs["scopeSpans"].as_array().unwrap() {
                                        for s in ss["spans"].as_array().unwrap() {
                                            r.spans
                                                .lock()
                                                .push((rs["resource"].clone(), s.clone()));
                                        }
                                    }
                                }
                                200
                            }
                            _ => 400,
                        };
                        Ok::<_, Infallible>(
                            http::Response::builder()
                                .status(status)
                                .header("content-type", "application/json")
                                .body(Full::new(Bytes::from_static(b"{}")))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    (addr, received)
}

/// A dataplane with tracing to `endpoint` at `ratio`, serving `farms`.
async fn traced_proxy(
    tag: &str,
    endpoint: &str,
    ratio: f64,
    farms: &[FarmBuilder],
) -> (portcullis_dataplane::Handle, SocketAddr, TempDir) {
    let dir = TempDir::new(tag);
    let port = dir.write_manifests(web_array, farms);
    let opts = portcullis_dataplane::Options {
        tracing: Some(TraceOptions {
            endpoint: parse_endpoint(endpoint).unwrap(),
            sample_ratio: ratio,
            service_name: "portcullis-test".to_owned(),
            instance: Some("member-0".to_owned()),
        }),
        ..options(dir.path())
    };
    let handle = portcullis_dataplane::start(opts).await.unwrap();
    wait_until(Duration::from_secs(10), || handle.is_ready()).await;
    let addr = handle.listener_addr(port).unwrap();
    (handle, addr, dir)
}

fn last_traceparent(b: &Backend) -> Option<String> {
    b.seen()
        .last()?
        .headers
        .get("traceparent")
        .map(|v| v.to_str().unwrap().to_owned())
}

const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sampled_request_is_one_span_and_the_backend_is_its_child() {
    let (collector_addr, received) = collector().await;
    let backend = Backend::start("app").await;
    let (handle, addr, _dir) = traced_proxy(
        "trace-sampled",
        &format!("http://{collector_addr}"),
        1.0,
        &[plain_farm(&backend)],
    )
    .await;
    let mut client = Client::connect(addr).await;

    // 1. A caller's sampled trace continues: same trace id, our span as the parent.
    let incoming = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01");
    let (status, _, _) = client
        .get_with(
            "app.test",
            "/orders?id=1",
            &[("traceparent", &incoming), ("tracestate", "vendor=opaque")],
        )
        .await
        .unwrap();
    assert_eq!(status, 200);
    let forwarded = last_traceparent(&backend).expect("the backend gets a traceparent");
    let parts: Vec<&str> = forwarded.split('-').collect();
    assert_eq!(parts.len(), 4, "{forwarded}");
    assert_eq!((parts[0], parts[1], parts[3]), ("00", CALLER_TRACE, "01"));
    assert_ne!(parts[2], CALLER_SPAN, "the proxy is a hop of its own");
    let our_span = parts[2].to_owned();
    assert_eq!(
        backend.seen().last().unwrap().headers["tracestate"],
        "vendor=opaque",
        "tracestate travels with a valid traceparent"
    );

    // 2. No traceparent: a new sampled trace starts here.
    // A tracestate that came without a traceparent belongs to no trace of ours.
    client
        .get_with("app.test", "/new", &[("tracestate", "vendor=orphan")])
        .await
        .unwrap();
    let root = last_traceparent(&backend).expect("a new trace is propagated");
    assert!(
        root.ends_with("-01") && !root.contains(CALLER_TRACE),
        "{root}"
    );
    assert!(
        !backend
            .seen()
            .last()
            .unwrap()
            .headers
            .contains_key("tracestate")
    );

    // 3. An unsampled caller's trace is passed on untouched and not recorded.
    let unsampled = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-00");
    client
        .get_with("app.test", "/quiet", &[("traceparent", &unsampled)])
        .await
        .unwrap();
    assert_eq!(last_traceparent(&backend).unwrap(), unsampled);

    // 4. A malformed traceparent (uppercase hex) restarts the trace and drops tracestate.
    client
        .get_with(
            "app.test",
            "/malformed",
            &[
                ("traceparent", &incoming.to_uppercase()),
                ("tracestate", "vendor=stale"),
            ],
        )
        .await
        .unwrap();
    let restarted = last_traceparent(&backend).unwrap();
    assert!(
        !restarted.contains(CALLER_TRACE) && restarted.ends_with("-01"),
        "{restarted}"
    );
    assert!(
        !backend
            .seen()
            .last()
            .unwrap()
            .headers
            .contains_key("tracestate")
    );

    let spans = received.wait_for(3).await;
    // Let a wrongly exported fourth span arrive before counting.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let spans_now = received.spans();
    assert_eq!(
        spans_now.len(),
        3,
        "the unsampled request is not recorded: {spans_now:?}"
    );
    assert!(
        received
            .content_types
            .lock()
            .iter()
            .all(|c| c == "application/json")
    );
    for (resource, span) in &spans {
        check_span(span);
        assert_eq!(attr(resource, "service.name").unwrap(), "portcullis-test");
        assert_eq!(attr(resource, "service.instance.id").unwrap(), "member-0");
    }
    let by_path = |p: &str| {
        spans
            .iter()
            .map(|(_, s)| s)
            .find(|s| attr(s, "url.path").and_then(Value::as_str) == Some(p))
            .unwrap_or_else(|| panic!("no span for {p}: {spans:?}"))
            .clone()
    };
    let continued = by_path("/orders");
    assert_eq!(continued["traceId"], CALLER_TRACE);
    assert_eq!(continued["parentSpanId"], CALLER_SPAN);
    assert_eq!(continued["spanId"], our_span.as_str());
    assert_eq!(continued["name"], "GET");
    assert_eq!(attr(&continued, "http.request.method").unwrap(), "GET");
    assert_eq!(
        attr(&continued, "http.response.status_code").unwrap(),
        "200"
    );
    assert_eq!(attr(&continued, "server.address").unwrap(), "app.test");
    assert_eq!(attr(&continued, "portcullis.farm").unwrap(), "default/app");
    assert_eq!(
        attr(&continued, "portcullis.endpoint")
            .unwrap()
            .as_str()
            .unwrap(),
        format!("http1://{}", backend.addr)
    );
    assert!(continued["status"].get("code").is_none(), "{continued}");
    // The query string is not recorded: it may carry tokens.
    assert!(!continued.to_string().contains("id=1"), "{continued}");

    let new = by_path("/new");
    assert!(new.get("parentSpanId").is_none(), "{new}");
    assert_eq!(
        format!(
            "00-{}-{}-01",
            new["traceId"].as_str().unwrap(),
            new["spanId"].as_str().unwrap()
        ),
        root
    );

    let m = metrics(handle.admin_addr()).await;
    assert_eq!(
        metric_sum(
            &m,
            "portcullis_trace_spans_total",
            &["outcome=\"exported\""]
        ),
        3.0,
        "{m}"
    );
    handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_errors_are_error_spans() {
    let (collector_addr, received) = collector().await;
    // A server nobody listens on: the connection is refused, the answer is a 502/503.
    let dead: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let (handle, addr, _dir) = traced_proxy(
        "trace-errors",
        &format!("http://{collector_addr}/v1/traces"),
        1.0,
        &[site("dead", &["dead.test"]).server(address_server(dead))],
    )
    .await;
    let (failed_status, failed_headers, _) = get(addr, "dead.test", "/x").await;
    assert!(
        failed_status == 502 || failed_status == 503,
        "{failed_status}"
    );
    let (status, _, _) = get(addr, "nobody.test", "/y").await;
    assert_eq!(status, 404);
    let spans = received.wait_for(2).await;
    let by_path = |p: &str| {
        spans
            .iter()
            .map(|(_, s)| s)
            .find(|s| attr(s, "url.path").and_then(Value::as_str) == Some(p))
            .unwrap()
            .clone()
    };
    let failed = by_path("/x");
    check_span(&failed);
    assert_eq!(failed["status"]["code"], 2, "{failed}");
    assert_eq!(
        attr(&failed, "http.response.status_code").unwrap(),
        failed_status.to_string().as_str()
    );
    // The span names the error the proxy answered with, as the client saw it.
    assert_eq!(
        attr(&failed, "error.type").and_then(Value::as_str),
        failed_headers["x-portcullis-error"].to_str().ok(),
        "{failed}"
    );
    assert_eq!(attr(&failed, "portcullis.farm").unwrap(), "default/dead");
    // A 404 is the client's business: recorded, not an error.
    let unrouted = by_path("/y");
    assert_eq!(attr(&unrouted, "http.response.status_code").unwrap(), "404");
    assert!(attr(&unrouted, "portcullis.farm").is_none());
    assert_eq!(attr(&unrouted, "error.type").unwrap(), "no-route");
    assert!(unrouted["status"].get("code").is_none(), "{unrouted}");
    handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ratio_zero_propagates_an_unsampled_trace_and_records_nothing() {
    let (collector_addr, received) = collector().await;
    let backend = Backend::start("app").await;
    let (handle, addr, _dir) = traced_proxy(
        "trace-ratio0",
        &format!("http://{collector_addr}"),
        0.0,
        &[plain_farm(&backend)],
    )
    .await;
    let mut client = Client::connect(addr).await;
    for _ in 0..20 {
        client.get("app.test", "/").await.unwrap();
        let tp = last_traceparent(&backend).expect("a traceparent all the same");
        assert!(tp.ends_with("-00"), "{tp}");
    }
    // A caller's sampled trace is still recorded: the caller decided.
    let incoming = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01");
    client
        .get_with("app.test", "/", &[("traceparent", &incoming)])
        .await
        .unwrap();
    let spans = received.wait_for(1).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(received.spans().len(), 1, "{spans:?}");
    assert_eq!(spans[0].1["traceId"], CALLER_TRACE);
    handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_collector_costs_spans_not_requests() {
    let closed = free_port();
    let backend = Backend::start("app").await;
    let (handle, addr, _dir) = traced_proxy(
        "trace-down",
        &format!("http://127.0.0.1:{closed}"),
        1.0,
        &[plain_farm(&backend)],
    )
    .await;
    let mut client = Client::connect(addr).await;
    for _ in 0..10 {
        let (status, _, _) = client.get("app.test", "/").await.unwrap();
        assert_eq!(status, 200);
    }
    let admin = handle.admin_addr();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let m = metrics(admin).await;
        if metric_sum(&m, "portcullis_trace_spans_total", &["outcome=\"dropped\""]) >= 10.0 {
            assert_eq!(
                metric_sum(
                    &m,
                    "portcullis_trace_spans_total",
                    &["outcome=\"exported\""]
                ),
                0.0
            );
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{m}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_collector_traceparent_passes_untouched() {
    let backend = Backend::start("app").await;
    let proxy = Proxy::start("trace-off", &[plain_farm(&backend)]).await;
    let mut client = Client::connect(proxy.addr).await;
    let incoming = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01");
    client
        .get_with("app.test", "/", &[("traceparent", &incoming)])
        .await
        .unwrap();
    assert_eq!(last_traceparent(&backend).unwrap(), incoming);
    client.get("app.test", "/").await.unwrap();
    assert_eq!(last_traceparent(&backend), None, "no trace is started");
    let m = metrics(proxy.admin_addr()).await;
    assert!(!m.contains("portcullis_trace_spans_total{"), "{m}");
    proxy.shutdown().await;
}

/// A request the client abandons while the backend is still working ends its span
/// anyway, as incomplete: the backend's own spans keep a parent that exists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_request_still_ends_its_span() {
    let (collector_addr, received) = collector().await;
    let backend = Backend::start("app").await;
    let (handle, addr, _dir) = traced_proxy(
        "trace-abandoned",
        &format!("http://{collector_addr}"),
        1.0,
        &[plain_farm(&backend)],
    )
    .await;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(
        &mut s,
        b"GET /slow/3000 HTTP/1.1\r\nHost: app.test\r\n\r\n",
    )
    .await
    .unwrap();
    wait_until(Duration::from_secs(5), || !backend.seen().is_empty()).await;
    drop(s);
    let spans = received.wait_for(1).await;
    let span = &spans[0].1;
    check_span(span);
    assert_eq!(attr(span, "url.path").unwrap(), "/slow/3000");
    assert_eq!(attr(span, "error.type").unwrap(), "response-incomplete");
    assert!(attr(span, "http.response.status_code").is_none(), "{span}");
    assert_eq!(span["status"]["code"], 2, "{span}");
    let sent = last_traceparent(&backend).unwrap();
    assert!(
        sent.contains(span["spanId"].as_str().unwrap()),
        "{sent} {span}"
    );
    handle.shutdown().await;
}
