//! The bodies of the fuzz targets: every parser of ours that takes attacker- or
//! operator-supplied bytes.
//!
//! Each function takes arbitrary bytes, must never panic on its own, and asserts the
//! property it guards. `fuzz/` (cargo-fuzz, nightly) calls them for long runs;
//! `tests/fuzz_targets.rs` runs them on stable over their seed corpora and a few
//! thousand generated inputs, so every `cargo test` exercises them.

use std::path::PathBuf;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{COOKIE, SET_COOKIE};
use http::{HeaderMap, HeaderValue, Method, Version};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use portcullis_crds::config::{
    AffinityConfig, AffinityMode, CookieProtection, DataplaneConfig, EndpointIdentity, FarmConfig,
    LoadBalancing, PassiveConfig, SameSite, UpstreamConfig, UpstreamProtocol,
};
use portcullis_crds::keyring::{KeyState, KeyringDoc};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::error::ProxyError;
use crate::framing::{FramedHead, Framer, Gate};
use crate::session::{RequestSession, SEALED_NAME_PREFIX, SessionManager};

/// Inputs longer than this are cut: longer ones find nothing new and slow the runs.
const MAX_INPUT: usize = 4096;

/// The listener's defaults (`limits` of a GatewayArray that sets none).
const MAX_HEADERS: usize = 100;
const MAX_HEADER_BYTES: usize = 32 * 1024;
/// Far below the listener's: inputs are short, and targets over it must occur.
const MAX_TARGET: usize = 48;

// ---------------------------------------------------------------------------------------
// Request heads: the checks against the serving parser, whole and split.

/// How a connection ends for the framer alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FramerEnd {
    /// Still framing: every byte was followed.
    Framing,
    /// Stopped after a refused or unparsable head, or broken in a body: the gate hands
    /// hyper nothing more.
    Stopped,
    /// The HTTP/2 preface: not ours to frame.
    Http2,
    /// A request switched protocols (a 2xx to `CONNECT` here): nothing more is framed.
    Tunnel,
}

/// One request as a hyper service saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Served {
    method: Method,
    version: Version,
    /// Header lines as hyper kept them.
    headers: usize,
    /// With the gate: why the checks refused it.
    refusal: Option<ProxyError>,
}

/// The differential target: the same bytes go to the framer (whose heads the checks
/// judge) and to hyper (which serves them), whole, byte by byte, and in pieces chosen
/// by the input. Asserts that the verdicts and the version digits the framer rewrites
/// do not depend on the segmentation, that the framer finds the message boundaries
/// hyper finds in the bytes as rewritten, and that behind the gate hyper serves exactly
/// the heads the framer framed, in order, and nothing it did not.
pub fn request_heads(data: &[u8]) {
    let data = &data[..data.len().min(MAX_INPUT)];
    let splits = [
        vec![data.len().max(1)],
        vec![1],
        data.iter().map(|b| usize::from(b % 7) + 1).collect(),
    ];
    let framed: Vec<_> = splits.iter().map(|s| frame_alone(data, s)).collect();
    for (f, s) in framed.iter().zip(&splits).skip(1) {
        assert_eq!(
            f, &framed[0],
            "framer verdicts changed with the split {s:?}"
        );
    }
    let (heads, end, rewritten) = &framed[0];
    let mut gated_first = None;
    for split in &splits {
        let served = serve(rewritten, split, false);
        agree(heads, *end, &served);
        let gated = serve(data, split, true);
        check_gated(heads, &gated);
        // The refusals hyper cannot parse its way to (a version it does not know, a
        // target cut at the limit) reach the service, which answers them, wherever
        // hyper serves the rewritten head.
        if let Some(first) = heads.first()
            && matches!(
                first.refusal,
                Some(ProxyError::UriTooLong | ProxyError::HttpVersionNotSupported)
            )
            && !served.is_empty()
        {
            assert!(!gated.is_empty(), "hyper did not serve {first:?}");
        }
        match &gated_first {
            None => gated_first = Some(gated),
            Some(first) => assert_eq!(&gated, first, "gated answers changed with the split"),
        }
    }
}

/// Splits `data` into pieces whose lengths cycle through `pattern`.
fn pieces(data: &[u8], pattern: &[usize]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut at = 0;
    let mut i = 0;
    while at < data.len() {
        let n = pattern[i % pattern.len()].max(1).min(data.len() - at);
        out.push(data[at..at + n].to_vec());
        at += n;
        i += 1;
    }
    out
}

/// The framer alone; a request that may switch protocols is answered "no switch", as
/// the servers in [`serve`] answer. Also returns `data` with the version digits the
/// framer rewrote.
fn frame_alone(data: &[u8], pattern: &[usize]) -> (Vec<FramedHead>, FramerEnd, Vec<u8>) {
    let mut framer = Framer::new(
        crate::listener::max_buf_size(MAX_HEADER_BYTES),
        MAX_HEADERS,
        MAX_TARGET,
        true,
    );
    let framing = framer.framing();
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let mut heads: Vec<FramedHead> = Vec::new();
    let mut rewritten = Vec::with_capacity(data.len());
    for mut piece in pieces(data, pattern) {
        let mut rest = &mut piece[..];
        while !rest.is_empty() {
            let n = framer.feed(rest);
            heads.extend(framer.take_heads());
            rest = &mut rest[n..];
            if framer.is_awaiting_switch() {
                // The servers in `serve` answer 200: only a CONNECT switches.
                let connect = heads.last().is_some_and(|h| h.method == Method::CONNECT);
                framing.decide(connect);
                let _ = framer.poll_switch(&mut cx);
            } else if n == 0 {
                break;
            }
        }
        rewritten.extend_from_slice(&piece);
    }
    // A request that ended the input may still wait for its answer.
    if framer.is_awaiting_switch() {
        let connect = heads.last().is_some_and(|h| h.method == Method::CONNECT);
        framing.decide(connect);
        let _ = framer.poll_switch(&mut cx);
    }
    let end = if framer.is_stopped() {
        FramerEnd::Stopped
    } else if framer.is_off() && heads.is_empty() {
        FramerEnd::Http2
    } else if framer.is_off() {
        FramerEnd::Tunnel
    } else {
        FramerEnd::Framing
    };
    (heads, end, rewritten)
}

/// The framer and hyper alone agree on every message boundary: hyper's n-th request is
/// the framer's n-th head, up to the first refusal (after which the gate hands hyper
/// nothing), and hyper serves no request the framer did not frame unless the framer
/// stopped.
fn agree(heads: &[FramedHead], end: FramerEnd, served: &[Served]) {
    if end == FramerEnd::Http2 {
        return;
    }
    for (i, (f, s)) in heads.iter().zip(served).enumerate() {
        assert_eq!(f.method, s.method, "request {i}: method");
        if f.refusal.is_some() {
            return;
        }
        assert_eq!(f.headers, s.headers, "request {i}: header count");
    }
    if served.len() > heads.len() {
        assert_eq!(
            end,
            FramerEnd::Stopped,
            "hyper served {} requests, the framer framed {}",
            served.len(),
            heads.len()
        );
    }
}

/// Behind the gate, hyper serves the framed heads in order, each with the framer's
/// verdict, and never one the framer did not frame.
fn check_gated(heads: &[FramedHead], gated: &[Served]) {
    let gated: Vec<&Served> = gated
        .iter()
        .filter(|s| s.version <= Version::HTTP_11)
        .collect();
    assert!(gated.len() <= heads.len(), "{gated:?} vs {heads:?}");

    for (i, (f, s)) in heads.iter().zip(&gated).enumerate() {
        assert_ne!(s.refusal, Some(ProxyError::UnframedRequest), "request {i}");
        assert_eq!(f.method, s.method, "request {i}");
        assert_eq!(f.refusal, s.refusal, "request {i}");
        if f.refusal.is_some() {
            assert_eq!(i + 1, gated.len(), "a request was served after a refusal");
        }
    }
}

/// Serves `data`, delivered in pieces, with the listener's HTTP server and a service
/// that reads each body and answers 200; with `gated`, through the [`Gate`] and with
/// the listener's admission of each request.
fn serve(data: &[u8], pattern: &[usize], gated: bool) -> Vec<Served> {
    thread_local! {
        static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime");
    }
    RUNTIME.with(|rt| rt.block_on(serve_on(data, pattern, gated)))
}

async fn serve_on(data: &[u8], pattern: &[usize], gated: bool) -> Vec<Served> {
    let progress = Arc::new(AtomicUsize::new(0));
    let script = Script {
        pieces: pieces(data, pattern).into(),
        progress: progress.clone(),
    };
    let framer = Framer::new(
        crate::listener::max_buf_size(MAX_HEADER_BYTES),
        MAX_HEADERS,
        MAX_TARGET,
        true,
    );
    let framing = framer.framing();
    let io: Pin<Box<dyn crate::pool::Io>> = if gated {
        Box::pin(Gate::new(script, framer))
    } else {
        Box::pin(script)
    };
    let served = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let seen = served.clone();
    let events = progress.clone();
    let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        events.fetch_add(1, Ordering::Relaxed);
        let admitted = if gated {
            framing.admit(req.method(), req.version())
        } else {
            Ok(Default::default())
        };
        seen.lock().push(Served {
            method: req.method().clone(),
            version: req.version(),
            headers: req.headers().len(),
            refusal: admitted.as_ref().err().copied(),
        });
        let events = events.clone();
        async move {
            let admitted = match admitted {
                Ok(a) => a,
                Err(error) => {
                    return Ok::<_, std::convert::Infallible>(error.response());
                }
            };
            let mut body = req.into_body();
            while let Some(frame) = body.frame().await {
                events.fetch_add(1, Ordering::Relaxed);
                if frame.is_err() {
                    break;
                }
            }
            admitted.answered(http::StatusCode::OK);
            let body: crate::body::RespBody = http_body_util::Full::new(Bytes::from_static(b"ok"))
                .map_err(|never| match never {})
                .boxed_unsync();
            Ok(http::Response::new(body))
        }
    });
    let builder = crate::listener::http_builder(MAX_HEADERS, MAX_HEADER_BYTES);
    let mut conn = pin!(builder.serve_connection_with_upgrades(TokioIo::new(io), service));
    // In-memory bytes: run until the connection ends or nothing moves any more.
    let mut idle = 0;
    let mut last = usize::MAX;
    for _ in 0..200_000 {
        if futures::poll!(conn.as_mut()).is_ready() {
            break;
        }
        let now = progress.load(Ordering::Relaxed);
        if now == last {
            idle += 1;
            if idle > 16 {
                break;
            }
        } else {
            idle = 0;
            last = now;
        }
        tokio::task::yield_now().await;
    }
    served.lock().clone()
}

/// A client that sends its pieces one read at a time, then waits forever; what the
/// server writes is dropped.
struct Script {
    pieces: std::collections::VecDeque<Vec<u8>>,
    progress: Arc<AtomicUsize>,
}

impl AsyncRead for Script {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let Some(mut piece) = self.pieces.pop_front() else {
            return Poll::Pending;
        };
        let n = buf.remaining().min(piece.len());
        buf.put_slice(&piece[..n]);
        if n < piece.len() {
            piece.drain(..n);
            self.pieces.push_front(piece);
        }
        self.progress.fetch_add(1, Ordering::Relaxed);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Script {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

// ---------------------------------------------------------------------------------------
// Session cookies.

fn keyring_text() -> String {
    let doc = KeyringDoc {
        keys: vec![
            KeyringDoc::entry("k0", &[7; 32], "2026-01-01T00:00:00Z", KeyState::Accept),
            KeyringDoc::entry("k1", &[9; 32], "2026-01-02T00:00:00Z", KeyState::Active),
        ],
    };
    doc.to_yaml()
}

fn manager() -> Arc<SessionManager> {
    let mut registry = prometheus_client::registry::Registry::default();
    let m = SessionManager::new(&mut registry);
    m.set_keyring_text(&keyring_text())
        .expect("the fixed keyring loads");
    m
}

/// A cookie-protected farm with affinity cookies, as the session tests build it.
fn protected_farm(id: &str) -> FarmConfig {
    FarmConfig {
        id: id.into(),
        backend_host: None,
        load_balancing: LoadBalancing::RoundRobin,
        hash_header: None,
        members: vec![],
        upstream: UpstreamConfig {
            tls: None,
            protocol: UpstreamProtocol::Http1,
            max_idle_per_endpoint: 8,
            max_connections_per_endpoint: None,
            pool_idle_timeout: Duration::from_secs(60).into(),
            connect_timeout: Duration::from_secs(1).into(),
            first_byte_timeout: Duration::from_secs(10).into(),
            idle_timeout: Duration::from_secs(10).into(),
            retries: 0,
        },
        affinity: AffinityConfig {
            mode: AffinityMode::Cookie,
            cookie_name: "portcullis-affinity".into(),
            max_session_time: Duration::from_secs(3600).into(),
            idle_timeout: Duration::from_secs(600).into(),
            same_site: SameSite::Lax,
        },
        verifier: None,
        passive: PassiveConfig {
            consecutive_failures: 0,
            count_5xx: false,
            base_ejection_time: Duration::from_secs(10).into(),
            max_ejected_percent: 50,
        },
        cookie_protection: CookieProtection::Encrypt,
        allowed_upgrades: vec!["websocket".into()],
        filters: Default::default(),
        access: Default::default(),
    }
}

/// Cookie opening: arbitrary text never opens (no forgery), a sealed text changed in
/// any way never opens (no malleability), and whatever seals opens again to the same
/// plaintext, for its own purpose and farm only.
pub fn cookie_open(data: &[u8]) {
    let data = &data[..data.len().min(MAX_INPUT)];
    crate::session::fuzz_seal_open(data);
}

/// Cookie-header rewriting: whatever the client sends and the server sets, every
/// `Set-Cookie` leaves with its name and value sealed; the protected farm's server gets
/// back exactly cookies it set, name and value as it set them (nothing sealed or
/// sealed-looking, no affinity cookie, no unsealed or altered cookie of the client's);
/// another protected farm on the host gets nothing.
pub fn cookie_header(data: &[u8]) {
    let data = &data[..data.len().min(MAX_INPUT)];
    let (set, jar) = match data.iter().position(|&b| b == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (&data[..0], data),
    };
    // Built once: a keyring parse and key derivation per input would make the setup, not
    // the header handling, what the target spends its time on.
    thread_local! {
        static FIXTURE: (Arc<SessionManager>, FarmConfig, FarmConfig) =
            (manager(), protected_farm("shop/web"), protected_farm("shop/admin"));
    }
    FIXTURE.with(|(m, shop, admin)| rewrite_cookies(m, shop, admin, set, jar));
}

fn rewrite_cookies(
    m: &SessionManager,
    shop: &FarmConfig,
    admin: &FarmConfig,
    set: &[u8],
    jar: &[u8],
) {
    let endpoint = EndpointIdentity::new(
        "10.0.0.1:80".parse().expect("an address"),
        None,
        UpstreamProtocol::Http1,
    );
    let now = SystemTime::now();
    // The server's Set-Cookie lines, sealed on the way out.
    let mut resp = HeaderMap::new();
    for line in set.split(|&b| b == b'\n') {
        if let Ok(v) = HeaderValue::from_bytes(line) {
            resp.append(SET_COOKIE, v);
        }
    }
    let originals: Vec<(Vec<u8>, Vec<u8>)> = resp
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| {
            let (name, value) = split_pair(v.as_bytes().split(|&c| c == b';').next()?)?;
            Some((name.to_vec(), value.to_vec()))
        })
        .collect();
    let session = RequestSession::default();
    m.on_response(shop, &session, &endpoint, true, "/", &mut resp, now);
    let mut cookie = Vec::new();
    for v in resp.get_all(SET_COOKIE) {
        let b = v.as_bytes();
        let pair = b.split(|&c| c == b';').next().unwrap_or_default();
        let (name, value) = split_pair(pair).unwrap_or_default();
        assert!(
            (name.starts_with(SEALED_NAME_PREFIX.as_bytes()) && value.starts_with(b"v1."))
                || name == shop.affinity.cookie_name.as_bytes(),
            "a Set-Cookie left unsealed: {:?}",
            String::from_utf8_lossy(b)
        );
        cookie.extend_from_slice(pair);
        cookie.extend_from_slice(b"; ");
    }
    cookie.extend_from_slice(jar);
    let Ok(value) = HeaderValue::from_bytes(&cookie) else {
        return;
    };
    for farm in [shop, admin] {
        let mut req = HeaderMap::new();
        req.insert(COOKIE, value.clone());
        m.on_request(farm, &mut req, now);
        if farm.id == admin.id {
            assert!(
                req.get(COOKIE).is_none(),
                "another farm's server got cookies: {:?}",
                req.get(COOKIE)
            );
        }
        for v in req.get_all(COOKIE) {
            for piece in v.as_bytes().split(|&c| c == b';') {
                let piece = piece.trim_ascii();
                assert!(
                    split_pair(piece).is_some_and(|(name, value)| originals
                        .iter()
                        .any(|(n, v)| n == name && v == value)),
                    "forwarded a cookie the server did not set: {:?}",
                    String::from_utf8_lossy(piece)
                );
            }
        }
    }
}

/// The trimmed name and value of a `name=value` piece.
fn split_pair(piece: &[u8]) -> Option<(&[u8], &[u8])> {
    let eq = piece.iter().position(|&c| c == b'=')?;
    Some((piece[..eq].trim_ascii(), piece[eq + 1..].trim_ascii()))
}

// ---------------------------------------------------------------------------------------
// Loaders.

/// The keyring loader: never panics; a keyring that loads has exactly one active key,
/// survives writing and reading again, and the dataplane accepts it.
pub fn keyring(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(&data[..data.len().min(MAX_INPUT)]) else {
        return;
    };
    let Ok(doc) = KeyringDoc::parse(text) else {
        return;
    };
    let Ok(keys) = doc.validate() else {
        return;
    };
    assert_eq!(
        keys.iter().filter(|k| k.state == KeyState::Active).count(),
        1
    );
    let again = KeyringDoc::load(&doc.to_yaml()).expect("a written keyring loads");
    assert_eq!(again.len(), keys.len());
    let mut registry = prometheus_client::registry::Registry::default();
    SessionManager::new(&mut registry)
        .set_keyring_text(text)
        .expect("the dataplane loads what validates");
}

/// The local-mode manifest loader: never panics; what loads is a valid config that
/// survives its JSON form.
pub fn manifests(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(&data[..data.len().min(MAX_INPUT)]) else {
        return;
    };
    let dir = PathBuf::from("manifests");
    let texts = [(dir.join("fuzz.yaml"), text.to_owned())];
    if let Ok(loaded) = crate::source::from_manifests(&dir, &texts) {
        let config = loaded.config;
        config.check().expect("a translated config checks");
        let back = DataplaneConfig::from_json(&config.to_json()).expect("its JSON loads");
        assert_eq!(back, config);
    }
}

/// The rendered-config loader: never panics; what loads survives writing and reading.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(&data[..data.len().min(MAX_INPUT)]) else {
        return;
    };
    if let Ok(config) = DataplaneConfig::from_json(text) {
        let back = DataplaneConfig::from_json(&config.to_json()).expect("its JSON loads");
        assert_eq!(back, config);
    }
}

/// The duration parser: never panics; accepts exactly the CRD pattern's strings (less
/// those too large), and what it accepts prints back to the same value.
pub fn duration(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(&data[..data.len().min(256)]) else {
        return;
    };
    match text.parse::<portcullis_crds::Duration>() {
        Ok(d) => {
            assert!(matches_duration_pattern(text), "{text:?}");
            let shown = d.to_string();
            assert_eq!(shown.parse::<portcullis_crds::Duration>().ok(), Some(d));
        }
        Err(e) => {
            let message = e.to_string();
            assert!(message.starts_with("failed to parse duration"), "{message}");
            if matches_duration_pattern(text) {
                assert!(
                    matches!(e, portcullis_crds::duration::DurationError::Overflow(_)),
                    "{text:?}: {e}"
                );
            }
        }
    }
}

/// `^([0-9]+(ms|s|m|h))+$`, the CRD's `DURATION_PATTERN`.
fn matches_duration_pattern(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    if b.is_empty() {
        return false;
    }
    while i < b.len() {
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return false;
        }
        match &b[i..] {
            [b'm', b's', ..] => i += 2,
            [b's' | b'm' | b'h', ..] => i += 1,
            _ => return false,
        }
    }
    true
}
