//! Cost of sealing (issuing) and opening (reading) session cookies, through the same
//! calls the proxy makes per request.
//!
//! `cargo bench -p portcullis-dataplane --bench cookie`

// `criterion_group!` defines an undocumented public function.
#![allow(missing_docs)]

use std::hint::black_box;
use std::time::SystemTime;

use criterion::{Criterion, criterion_group, criterion_main};
use http::header::{COOKIE, SET_COOKIE};
use http::{HeaderMap, HeaderValue};
use portcullis_crds::config::{AffinityMode, CookieProtection, EndpointIdentity, UpstreamProtocol};
use portcullis_crds::keyring::{KeyState, KeyringDoc};
use portcullis_dataplane::session::{RequestSession, SessionManager};
use portcullis_testkit::session::farm;
use prometheus_client::registry::Registry;

fn bench(c: &mut Criterion) {
    let manager = SessionManager::new(&mut Registry::with_prefix("portcullis"));
    let doc = KeyringDoc {
        keys: vec![
            KeyringDoc::entry("k2", &[7; 32], "2026-11-21T00:00:00Z", KeyState::Active),
            KeyringDoc::entry("k1", &[6; 32], "2026-11-14T00:00:00Z", KeyState::Accept),
        ],
    };
    manager.set_keyring_text(&doc.to_yaml()).unwrap();
    let sticky = farm("shop/web", AffinityMode::Cookie, CookieProtection::Off);
    let chosen = EndpointIdentity::new(
        "10.1.2.3:8080".parse().unwrap(),
        None,
        UpstreamProtocol::Http1,
    );
    let now = SystemTime::now();
    let none = RequestSession::default();

    c.bench_function("affinity_seal", |b| {
        b.iter(|| {
            let mut headers = HeaderMap::new();
            manager.on_response(&sticky, &none, &chosen, true, "/", &mut headers, now);
            black_box(headers)
        })
    });

    let mut issued = HeaderMap::new();
    manager.on_response(&sticky, &none, &chosen, true, "/", &mut issued, now);
    let pair = pair_of(issued[SET_COOKIE].to_str().unwrap());
    let cookie: HeaderValue = format!("theme=dark; {pair}; lang=en").parse().unwrap();
    c.bench_function("affinity_open", |b| {
        b.iter(|| {
            let mut headers = HeaderMap::new();
            headers.insert(COOKIE, cookie.clone());
            let s = manager.on_request(&sticky, &mut headers, now);
            assert!(s.sticky.is_some());
            black_box((s, headers))
        })
    });

    let protected = farm("shop/web", AffinityMode::None, CookieProtection::Encrypt);
    let server_sets: [HeaderValue; 2] = [
        "JSESSIONID=abc123; Path=/; HttpOnly".parse().unwrap(),
        "csrf=xyz; Path=/".parse().unwrap(),
    ];
    c.bench_function("protected_cookies_seal_2", |b| {
        b.iter(|| {
            let mut headers = HeaderMap::new();
            for v in &server_sets {
                headers.append(SET_COOKIE, v.clone());
            }
            manager.on_response(&protected, &none, &chosen, true, "/", &mut headers, now);
            black_box(headers)
        })
    });

    let mut sealed = HeaderMap::new();
    for v in &server_sets {
        sealed.append(SET_COOKIE, v.clone());
    }
    manager.on_response(&protected, &none, &chosen, true, "/", &mut sealed, now);
    let jar: Vec<String> = sealed
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| pair_of(v.to_str().unwrap()))
        .collect();
    let cookie: HeaderValue = format!("{}; theme=dark", jar.join("; ")).parse().unwrap();
    c.bench_function("protected_cookies_open_2", |b| {
        b.iter(|| {
            let mut headers = HeaderMap::new();
            headers.insert(COOKIE, cookie.clone());
            let s = manager.on_request(&protected, &mut headers, now);
            black_box((s, headers))
        })
    });
}

fn pair_of(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap().to_owned()
}

criterion_group!(benches, bench);
criterion_main!(benches);
