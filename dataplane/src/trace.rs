//! OpenTelemetry tracing of the request path.
//!
//! W3C Trace Context comes in on `traceparent`; each sampled request becomes one server
//! span; the backend gets a `traceparent` whose parent is that span; finished spans go to
//! an exporter task that posts them in batches by OTLP/HTTP (JSON encoding) to the
//! configured collector. With no collector configured nothing here runs and a client's
//! `traceparent` reaches the backend untouched, like any other header.
//!
//! Sampling is parent-based: a sampled parent's trace is recorded, an unsampled one is
//! passed on untouched, and a request that starts a trace is sampled at the configured
//! ratio (an unsampled new trace still gets a `traceparent`, flagged unsampled, so the
//! backends see the same decision).
//!
//! A request never waits on the exporter: spans go through a bounded queue and are
//! dropped (and counted) when it is full or the collector fails.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rand::RngCore;
use tokio::sync::mpsc;

use crate::metrics::{Metrics, OutcomeLabel};

/// The most spans one export carries.
const BATCH: usize = 512;
/// The most finished spans waiting for the exporter; more are dropped.
const QUEUE: usize = 4096;
/// How long a span may wait for its batch to fill.
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// How long one export may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where spans go and how many are recorded.
#[derive(Clone, Debug)]
pub struct TraceOptions {
    /// The collector's OTLP/HTTP traces URL, e.g. `http://otel-collector:4318/v1/traces`.
    pub endpoint: Uri,
    /// The share (0 to 1) of new traces that are recorded.
    pub sample_ratio: f64,
    /// `service.name` of the spans.
    pub service_name: String,
    /// `service.instance.id` of the spans (the pod name in cluster mode).
    pub instance: Option<String>,
}

/// Checks an OTLP/HTTP endpoint URL: `http://host[:port][/path]`. A URL without a path
/// gets the standard `/v1/traces`.
pub fn parse_endpoint(s: &str) -> Result<Uri, String> {
    let uri: Uri = s.parse().map_err(|e| format!("{s:?} is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some(other) => {
            return Err(format!(
                "{s:?}: scheme {other} is not supported; use http:// (a collector or agent \
                 next to the member, e.g. a sidecar or node agent)"
            ));
        }
        None => {
            return Err(format!(
                "{s:?} has no scheme; use http://host:4318/v1/traces"
            ));
        }
    }
    let Some(authority) = uri.authority() else {
        return Err(format!("{s:?} has no host"));
    };
    let path = match uri.path() {
        "" | "/" => "/v1/traces",
        p => p,
    };
    Uri::builder()
        .scheme("http")
        .authority(authority.as_str())
        .path_and_query(path)
        .build()
        .map_err(|e| format!("{s:?}: {e}"))
}

/// A parsed `traceparent` (W3C Trace Context level 1, section 3.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Parent {
    pub(crate) trace_id: [u8; 16],
    pub(crate) span_id: [u8; 8],
    pub(crate) sampled: bool,
}

fn hex_lower(bytes: &[u8], out: &mut String) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 15)]));
    }
}

#[cfg(test)]
fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    hex_lower(bytes, &mut s);
    s
}

/// Appends `s` as a JSON string.
fn json_str(s: &str, out: &mut String) {
    use std::fmt::Write as _;
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Writes an OTLP attribute list, one `{"key":..,"value":{..}}` at a time.
struct Attrs<'a> {
    out: &'a mut String,
    first: bool,
}

impl Attrs<'_> {
    fn key(&mut self, key: &str) {
        if !self.first {
            self.out.push(',');
        }
        self.first = false;
        self.out.push_str("{\"key\":");
        json_str(key, self.out);
        self.out.push_str(",\"value\":");
    }

    fn string(&mut self, key: &str, value: &str) {
        self.key(key);
        self.out.push_str("{\"stringValue\":");
        json_str(value, self.out);
        self.out.push_str("}}");
    }

    fn display(&mut self, key: &str, value: &dyn std::fmt::Display) {
        use std::fmt::Write as _;
        self.key(key);
        self.out.push_str("{\"stringValue\":\"");
        // Addresses: no character that needs escaping.
        let _ = write!(self.out, "{value}");
        self.out.push_str("\"}}");
    }

    /// int64 values are decimal strings in OTLP JSON.
    fn int(&mut self, key: &str, value: u64) {
        use std::fmt::Write as _;
        self.key(key);
        let _ = write!(self.out, "{{\"intValue\":\"{value}\"}}}}");
    }
}

/// Lowercase hex only: the spec's HEXDIGLC.
fn unhex<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    if s.len() != N * 2 {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        out[i] = (digit(pair[0])? << 4) | digit(pair[1])?;
    }
    Some(out)
}

/// Parses a `traceparent` value; `None` when it is not one (the trace then restarts).
pub(crate) fn parse_traceparent(v: &[u8]) -> Option<Parent> {
    // version "-" trace-id "-" parent-id "-" trace-flags: 2+1+32+1+16+1+2 = 55 bytes.
    if v.len() < 55 || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let version = unhex::<1>(&v[..2])?[0];
    // Version ff is invalid; version 00 is exactly 55 bytes; a later version may carry
    // more after a dash, which is ignored.
    match version {
        0xff => return None,
        0 if v.len() != 55 => return None,
        0 => {}
        _ if v.len() > 55 && v[55] != b'-' => return None,
        _ => {}
    }
    let trace_id = unhex::<16>(&v[3..35])?;
    let span_id = unhex::<8>(&v[36..52])?;
    let flags = unhex::<1>(&v[53..55])?[0];
    if trace_id == [0; 16] || span_id == [0; 8] {
        return None;
    }
    Some(Parent {
        trace_id,
        span_id,
        sampled: flags & 1 == 1,
    })
}

fn traceparent(trace_id: &[u8; 16], span_id: &[u8; 8], sampled: bool) -> HeaderValue {
    let mut s = String::with_capacity(55);
    s.push_str("00-");
    hex_lower(trace_id, &mut s);
    s.push('-');
    hex_lower(span_id, &mut s);
    s.push_str(if sampled { "-01" } else { "-00" });
    HeaderValue::from_str(&s).expect("hex and dashes are a valid header value")
}

fn random_ids() -> ([u8; 16], [u8; 8]) {
    let mut rng = rand::rng();
    let mut trace_id = [0u8; 16];
    let mut span_id = [0u8; 8];
    while trace_id == [0; 16] {
        rng.fill_bytes(&mut trace_id);
    }
    while span_id == [0; 8] {
        rng.fill_bytes(&mut span_id);
    }
    (trace_id, span_id)
}

/// One request's server span, open until its response body ends.
#[derive(Debug)]
pub(crate) struct Span {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    parent: Option<[u8; 8]>,
    start_wall: SystemTime,
    start: Instant,
    method: Method,
    path: String,
    host: Option<String>,
    client: SocketAddr,
    tls: bool,
    version: Version,
    /// The farm that served the request, once routed.
    pub(crate) farm: Option<String>,
    /// The endpoint identity of the last server tried.
    pub(crate) endpoint: Option<String>,
    status: u16,
    error: Option<String>,
    /// Set when the response is complete (or abandoned).
    end_wall: Option<SystemTime>,
}

impl Span {
    pub(crate) fn respond(&mut self, status: StatusCode, error: Option<&str>) {
        self.status = status.as_u16();
        self.error = error.map(str::to_owned);
    }

    /// The body ended early: the client went away or the backend broke off.
    pub(crate) fn abandon(&mut self) {
        if self.error.is_none() {
            self.error = Some("response-incomplete".to_owned());
        }
    }

    /// Appends the span as OTLP JSON (the protobuf JSON mapping: ids as lowercase hex,
    /// 64-bit integers as decimal strings, enums as numbers).
    fn write_otlp(&self, out: &mut String) {
        use std::fmt::Write as _;
        let nanos = |t: SystemTime| t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let end = self
            .end_wall
            .unwrap_or_else(|| self.start_wall + self.start.elapsed());
        out.push_str("{\"traceId\":\"");
        hex_lower(&self.trace_id, out);
        out.push_str("\",\"spanId\":\"");
        hex_lower(&self.span_id, out);
        out.push('"');
        if let Some(p) = &self.parent {
            out.push_str(",\"parentSpanId\":\"");
            hex_lower(p, out);
            out.push('"');
        }
        out.push_str(",\"name\":");
        json_str(self.method.as_str(), out);
        let _ = write!(
            out,
            ",\"kind\":2,\"startTimeUnixNano\":\"{}\",\"endTimeUnixNano\":\"{}\",\"attributes\":[",
            nanos(self.start_wall),
            nanos(end)
        );
        let mut attrs = Attrs { out, first: true };
        attrs.string("http.request.method", self.method.as_str());
        attrs.string("url.path", &self.path);
        attrs.string("url.scheme", if self.tls { "https" } else { "http" });
        attrs.display("client.address", &self.client.ip());
        attrs.int("client.port", u64::from(self.client.port()));
        attrs.string(
            "network.protocol.version",
            match self.version {
                Version::HTTP_10 => "1.0",
                Version::HTTP_2 => "2",
                _ => "1.1",
            },
        );
        // 0: abandoned before any answer.
        if self.status != 0 {
            attrs.int("http.response.status_code", u64::from(self.status));
        }
        if let Some(h) = &self.host {
            attrs.string("server.address", h);
        }
        if let Some(f) = &self.farm {
            attrs.string("portcullis.farm", f);
        }
        if let Some(e) = &self.endpoint {
            attrs.string("portcullis.endpoint", e);
        }
        if let Some(e) = &self.error {
            attrs.string("error.type", e);
        }
        out.push_str("],\"status\":{");
        // Semantic conventions for a server span: 5xx is an error, 4xx is not.
        if self.status >= 500 || (self.error.is_some() && !(400..500).contains(&self.status)) {
            out.push_str("\"code\":2,\"message\":");
            json_str(self.error.as_deref().unwrap_or(""), out);
        }
        out.push_str("}}");
    }
}

/// Starts spans and hands finished ones to the exporter.
pub(crate) struct Tracer {
    ratio: f64,
    tx: mpsc::Sender<Span>,
    metrics: Arc<Metrics>,
}

impl Tracer {
    /// Starts the exporter task; it exports what is queued and stops when the tracer
    /// is dropped.
    pub(crate) fn start(opts: TraceOptions, metrics: Arc<Metrics>) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        for outcome in ["exported", "dropped"] {
            let _ = metrics.trace_spans.get_or_create(&OutcomeLabel { outcome });
        }
        // The exporter encodes and sends on a thread of its own, so a batch being
        // written never holds up the workers that serve requests.
        let (o, m) = (opts.clone(), metrics.clone());
        let spawned = std::thread::Builder::new()
            .name("portcullis-otlp".into())
            .spawn(move || {
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt.block_on(export_loop(o, rx, m)),
                    Err(e) => tracing::error!(error = %e, "span exporter did not start; spans are dropped"),
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "span exporter did not start; spans are dropped");
        }
        Tracer {
            ratio: opts.sample_ratio.clamp(0.0, 1.0),
            tx,
            metrics,
        }
    }

    /// Reads the request's trace context, writes the backend's `traceparent`, and opens
    /// a span when the request is sampled.
    pub(crate) fn on_request<B>(
        &self,
        req: &mut Request<B>,
        client: SocketAddr,
        tls: bool,
    ) -> Option<Span> {
        let headers = req.headers_mut();
        let parent = headers
            .get("traceparent")
            .and_then(|v| parse_traceparent(v.as_bytes()));
        let (trace_id, span_id) = random_ids();
        let (trace_id, parent_span, sampled) = match parent {
            // Not ours to record, nor to change: the backend sees the caller's context.
            Some(p) if !p.sampled => return None,
            Some(p) => (p.trace_id, Some(p.span_id), true),
            None => {
                // An unparsable traceparent restarts the trace, and its tracestate
                // goes with it (Trace Context section 3.3); so does a tracestate that
                // came without one.
                headers.remove("traceparent");
                headers.remove("tracestate");
                let sampled =
                    self.ratio >= 1.0 || (self.ratio > 0.0 && rand::random::<f64>() < self.ratio);
                (trace_id, None, sampled)
            }
        };
        headers.insert("traceparent", traceparent(&trace_id, &span_id, sampled));
        if !sampled {
            return None;
        }
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .or_else(|| req.uri().host())
            .map(str::to_owned);
        Some(Span {
            trace_id,
            span_id,
            parent: parent_span,
            start_wall: SystemTime::now(),
            start: Instant::now(),
            method: req.method().clone(),
            path: req.uri().path().to_owned(),
            host,
            client,
            tls,
            version: req.version(),
            farm: None,
            endpoint: None,
            status: 0,
            error: None,
            end_wall: None,
        })
    }

    /// Ends a span: it is queued for export, or dropped and counted when the queue is full.
    pub(crate) fn finish(&self, mut span: Span) {
        span.end_wall = Some(span.start_wall + span.start.elapsed());
        if self.tx.try_send(span).is_err() {
            self.metrics
                .trace_spans
                .get_or_create(&OutcomeLabel { outcome: "dropped" })
                .inc();
        }
    }
}

async fn export_loop(opts: TraceOptions, mut rx: mpsc::Receiver<Span>, metrics: Arc<Metrics>) {
    // Everything before the spans, written once.
    let mut head = String::from("{\"resourceSpans\":[{\"resource\":{\"attributes\":[");
    {
        let mut attrs = Attrs {
            out: &mut head,
            first: true,
        };
        attrs.string("service.name", &opts.service_name);
        attrs.string("service.version", env!("CARGO_PKG_VERSION"));
        if let Some(id) = &opts.instance {
            attrs.string("service.instance.id", id);
        }
    }
    head.push_str("]},\"scopeSpans\":[{\"scope\":{\"name\":\"portcullis-dataplane\",\"version\":");
    json_str(env!("CARGO_PKG_VERSION"), &mut head);
    head.push_str("},\"spans\":[");
    let mut conn: Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>> = None;
    let mut last_warning: Option<Instant> = None;
    let mut batch: Vec<Span> = Vec::with_capacity(BATCH);
    loop {
        // Wait for a first span, then up to FLUSH_EVERY for the batch to fill.
        let stopping = match rx.recv().await {
            Some(s) => {
                batch.push(s);
                false
            }
            None => true,
        };
        if !stopping {
            let deadline = tokio::time::Instant::now() + FLUSH_EVERY;
            while batch.len() < BATCH {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(s)) => batch.push(s),
                    Ok(None) | Err(_) => break,
                }
            }
        } else {
            while batch.len() < BATCH {
                match rx.try_recv() {
                    Ok(s) => batch.push(s),
                    Err(_) => break,
                }
            }
        }
        if !batch.is_empty() {
            let n = batch.len() as u64;
            let mut body = String::with_capacity(head.len() + batch.len() * 700);
            body.push_str(&head);
            for (i, span) in batch.drain(..).enumerate() {
                if i > 0 {
                    body.push(',');
                }
                span.write_otlp(&mut body);
            }
            body.push_str("]}]}]}");
            let outcome =
                match tokio::time::timeout(EXPORT_TIMEOUT, post(&opts.endpoint, &mut conn, body))
                    .await
                {
                    Ok(Ok(())) => "exported",
                    Ok(Err(e)) => {
                        conn = None;
                        warn_now_and_then(&mut last_warning, &e);
                        "dropped"
                    }
                    Err(_) => {
                        conn = None;
                        warn_now_and_then(
                            &mut last_warning,
                            "the collector did not answer in time",
                        );
                        "dropped"
                    }
                };
            metrics
                .trace_spans
                .get_or_create(&OutcomeLabel { outcome })
                .inc_by(n);
        }
        if stopping {
            return;
        }
    }
}

fn warn_now_and_then(last: &mut Option<Instant>, error: &str) {
    if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
        *last = Some(Instant::now());
        tracing::warn!(
            error,
            "span export failed; spans dropped (logged once a minute)"
        );
    }
}

/// Posts one batch, on the kept connection or a new one.
async fn post(
    endpoint: &Uri,
    conn: &mut Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>>,
    body: String,
) -> Result<(), String> {
    let authority = endpoint
        .authority()
        .ok_or("the endpoint has no host")?
        .clone();
    if conn.as_ref().is_none_or(|c| c.is_closed()) {
        let port = authority.port_u16().unwrap_or(80);
        // An IPv6 literal comes bracketed in the authority; resolving wants it bare.
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| format!("resolving {authority}: {e}"))?
            .collect();
        let mut stream = None;
        let mut last = String::from("no address");
        for a in addrs {
            match tokio::net::TcpStream::connect(a).await {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last = format!("connecting to {authority}: {e}"),
            }
        }
        let stream = stream.ok_or(last)?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("{authority}: {e}"))?;
        tokio::spawn(connection);
        *conn = Some(sender);
    }
    let sender = conn.as_mut().expect("connected above");
    sender
        .ready()
        .await
        .map_err(|e| format!("{authority}: {e}"))?;
    let req = Request::post(endpoint.path())
        .header(header::HOST, authority.as_str())
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("{authority}: {e}"))?;
    let status = resp.status();
    // Read the answer to the end so the connection can carry the next batch.
    let _ = resp.into_body().collect().await;
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("the collector at {authority} answered {status}"))
    }
}

/// Reports a request's span when its response body ends (or is dropped).
pub(crate) struct Finisher {
    pub(crate) tracer: Arc<Tracer>,
    pub(crate) span: Option<Span>,
    pub(crate) complete: bool,
}

impl Drop for Finisher {
    fn drop(&mut self) {
        if let Some(mut span) = self.span.take() {
            if !self.complete {
                span.abandon();
            }
            self.tracer.finish(span);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_parses_per_the_spec() {
        let ok = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let p = parse_traceparent(ok).expect("the spec's example parses");
        assert!(p.sampled);
        assert_eq!(hex(&p.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex(&p.span_id), "00f067aa0ba902b7");
        let unsampled = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        assert!(!parse_traceparent(unsampled).unwrap().sampled);
        // A later version may carry more fields.
        assert!(
            parse_traceparent(b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xyz")
                .is_some()
        );
        for bad in [
            &b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"[..],
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
            b"00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            b"",
        ] {
            assert_eq!(
                parse_traceparent(bad),
                None,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn written_traceparent_round_trips() {
        let (t, s) = random_ids();
        for sampled in [true, false] {
            let v = traceparent(&t, &s, sampled);
            assert_eq!(
                parse_traceparent(v.as_bytes()),
                Some(Parent {
                    trace_id: t,
                    span_id: s,
                    sampled
                })
            );
        }
    }

    #[test]
    fn spans_are_valid_json_whatever_the_request_carried() {
        let (trace_id, span_id) = random_ids();
        let mut span = Span {
            trace_id,
            span_id,
            parent: Some([7; 8]),
            start_wall: SystemTime::now(),
            start: Instant::now(),
            method: Method::from_bytes(b"PURGE").unwrap(),
            path: "/a\"b\\c\u{1}d/é".to_owned(),
            host: Some("h\"ost".to_owned()),
            client: "[2001:db8::1]:4242".parse().unwrap(),
            tls: true,
            version: Version::HTTP_2,
            farm: Some("ns/farm".to_owned()),
            endpoint: None,
            status: 0,
            error: None,
            end_wall: None,
        };
        span.respond(StatusCode::BAD_GATEWAY, Some("upstream-reset"));
        let mut out = String::new();
        span.write_otlp(&mut out);
        let v: serde_json::Value = serde_json::from_str(&out).expect(&out);
        let attr = |k: &str| {
            v["attributes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|a| a["key"] == k)
                .map(|a| a["value"].clone())
                .unwrap()
        };
        assert_eq!(attr("url.path")["stringValue"], "/a\"b\\c\u{1}d/é");
        assert_eq!(attr("server.address")["stringValue"], "h\"ost");
        assert_eq!(attr("client.address")["stringValue"], "2001:db8::1");
        assert_eq!(attr("client.port")["intValue"], "4242");
        assert_eq!(attr("http.response.status_code")["intValue"], "502");
        assert_eq!(attr("network.protocol.version")["stringValue"], "2");
        assert_eq!(v["parentSpanId"], "0707070707070707");
        assert_eq!(v["name"], "PURGE");
        assert_eq!(v["status"]["code"], 2);
        assert_eq!(v["status"]["message"], "upstream-reset");
        assert_eq!(v["traceId"], hex(&trace_id));
    }

    #[test]
    fn endpoints_take_http_only_and_default_the_path() {
        assert_eq!(
            parse_endpoint("http://collector:4318").unwrap().to_string(),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            parse_endpoint("http://10.0.0.1:4318/custom/traces")
                .unwrap()
                .to_string(),
            "http://10.0.0.1:4318/custom/traces"
        );
        for bad in ["https://c:4318", "collector:4318", "", "http://"] {
            assert!(parse_endpoint(bad).is_err(), "{bad}");
        }
    }
}
