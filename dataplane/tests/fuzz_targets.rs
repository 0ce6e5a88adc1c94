//! The fuzz targets on stable: each target's body over its seed corpus
//! (`fuzz/corpus/<target>/`, regressions included) and a few thousand generated inputs,
//! so every `cargo test` exercises them in seconds. Long runs: `fuzz/README.md`.

use std::path::PathBuf;

use portcullis_dataplane::fuzz;
use proptest::prelude::*;

/// Every file of `fuzz/corpus/<target>/`.
fn seeds(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut out: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("failed to read {}: {e}", dir.display()))
        .map(|e| {
            let path = e.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            (path, bytes)
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no seeds in {}", dir.display());
    out
}

fn run_seeds(target: &str, body: fn(&[u8])) {
    for (path, bytes) in seeds(target) {
        let r = std::panic::catch_unwind(|| body(&bytes));
        assert!(r.is_ok(), "{target} failed on {}", path.display());
    }
}

#[test]
fn seeds_request_heads() {
    run_seeds("request_heads", fuzz::request_heads);
}

#[test]
fn seeds_cookie_open() {
    run_seeds("cookie_open", fuzz::cookie_open);
}

#[test]
fn seeds_cookie_header() {
    run_seeds("cookie_header", fuzz::cookie_header);
}

#[test]
fn seeds_keyring() {
    run_seeds("keyring", fuzz::keyring);
}

#[test]
fn seeds_manifests() {
    run_seeds("manifests", fuzz::manifests);
}

#[test]
fn seeds_config() {
    run_seeds("config", fuzz::config);
}

#[test]
fn seeds_duration() {
    run_seeds("duration", fuzz::duration);
}

/// A line ending as clients write them, or get them wrong.
fn eol() -> impl Strategy<Value = &'static str> {
    prop_oneof![4 => Just("\r\n"), 2 => Just("\n"), 1 => Just("\r"), 1 => Just("\n\r")]
}

/// A header line, framing headers weighted up.
fn header() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => Just("Host: a".to_owned()),
        3 => (0u32..200).prop_map(|n| format!("Content-Length: {n}")),
        1 => Just("Content-Length: 1, 1".to_owned()),
        1 => Just("Content-Length: +1".to_owned()),
        3 => prop_oneof![
            Just("chunked"),
            Just("gzip, chunked"),
            Just("chunked, gzip"),
            Just("Chunked"),
            Just("identity"),
        ]
        .prop_map(|v| format!("Transfer-Encoding: {v}")),
        1 => Just("Transfer-Encoding : chunked".to_owned()),
        2 => Just("Upgrade: x".to_owned()),
        1 => Just("Connection: upgrade".to_owned()),
        1 => Just("Connection: close".to_owned()),
        1 => Just("Expect: 100-continue".to_owned()),
        1 => Just(" folded".to_owned()),
        1 => "[ -~]{0,12}",
    ]
}

/// A chunked body, well-formed or nearly.
fn chunked() -> impl Strategy<Value = Vec<u8>> {
    let chunk = (0usize..20, eol(), eol(), any::<bool>()).prop_map(|(n, a, b, ext)| {
        let mut c = format!("{n:x}{}{a}", if ext { ";x=1" } else { "" }).into_bytes();
        c.extend(std::iter::repeat_n(b'z', n));
        c.extend_from_slice(b.as_bytes());
        c
    });
    (
        proptest::collection::vec(chunk, 0..3),
        eol(),
        proptest::option::of("[A-Za-z]{1,3}: [a-z]{0,3}"),
        eol(),
    )
        .prop_map(|(chunks, a, trailer, b)| {
            let mut body: Vec<u8> = chunks.concat();
            body.extend_from_slice(format!("0{a}").as_bytes());
            if let Some(t) = trailer {
                body.extend_from_slice(format!("{t}\r\n").as_bytes());
            }
            body.extend_from_slice(b.as_bytes());
            body
        })
}

/// One request: a request line, headers, an end of head and a body, each of which may
/// be off in the ways parsers disagree about.
fn request() -> impl Strategy<Value = Vec<u8>> {
    let method = prop_oneof![
        4 => Just("GET"),
        4 => Just("POST"),
        1 => Just("CONNECT"),
        1 => Just("G"),
        1 => Just("PRI")
    ];
    // Versions httparse refuses that the framer rewrites for hyper (a higher HTTP/1
    // minor, another major) and ones it must leave alone.
    let version = prop_oneof![
        5 => Just("HTTP/1.1"),
        1 => Just("HTTP/1.0"),
        1 => Just("HTTP/2.0"),
        1 => Just("HTTP/1.2"),
        1 => Just("HTTP/1.9"),
        1 => Just("HTTP/3.0"),
        1 => Just("HTTP/0.9"),
        1 => Just("HTTP/1.10"),
        1 => Just("HTTP/2"),
        1 => Just("HTTP/x.1"),
    ];
    // The fuzz body's target limit is 48 bytes: targets at it and over it.
    let target = prop_oneof![
        4 => Just("/"),
        1 => Just("*"),
        1 => Just("a:1"),
        1 => Just("/x y"),
        1 => Just("/at-the-limit-of-forty-eight-bytes-aaaaaaaaaaaaa"),
        1 => Just("/over-the-limit-of-forty-eight-bytes-aaaaaaaaaaaa"),
        1 => Just("/far-over-the-limit-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"),
    ];
    let headers = proptest::collection::vec((header(), eol()), 0..5);
    let body = prop_oneof![
        3 => Just(Vec::new()),
        2 => chunked(),
        2 => proptest::collection::vec(
            prop_oneof![Just(b'x'), Just(b'\r'), Just(b'\n'), Just(b'0')],
            0..120
        ),
    ];
    (method, target, version, eol(), headers, eol(), body).prop_map(
        |(m, t, v, e, headers, end, body)| {
            let mut r = format!("{m} {t} {v}{e}").into_bytes();
            for (h, e) in headers {
                r.extend_from_slice(h.as_bytes());
                r.extend_from_slice(e.as_bytes());
            }
            r.extend_from_slice(end.as_bytes());
            r.extend_from_slice(&body);
            r
        },
    )
}

/// Streams of a few requests, sometimes with stray bytes between them.
fn stream() -> impl Strategy<Value = Vec<u8>> {
    (
        proptest::option::of(prop_oneof![
            Just(b"\r\n".to_vec()),
            Just(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec())
        ]),
        proptest::collection::vec(
            (request(), proptest::collection::vec(any::<u8>(), 0..2)),
            1..4,
        ),
    )
        .prop_map(|(lead, reqs)| {
            let mut s = lead.unwrap_or_default();
            for (r, stray) in reqs {
                s.extend_from_slice(&r);
                s.extend_from_slice(&stray);
            }
            s
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1500, ..ProptestConfig::default() })]

    #[test]
    fn generated_request_heads(data in stream()) {
        fuzz::request_heads(&data);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn generated_cookie_open(data in proptest::collection::vec(any::<u8>(), 0..400)) {
        fuzz::cookie_open(&data);
    }

    #[test]
    fn generated_cookie_header(
        set in proptest::collection::vec("[ -~]{0,40}", 0..4),
        jar in proptest::collection::vec(
            prop_oneof![
                "[ -~]{0,30}",
                Just("__pc_".to_owned()),
                Just("__pc_v1.k1.AAAA".to_owned()),
                Just("portcullis-affinity=v1.k1.AAAA".to_owned()),
                Just("=__pc_x".to_owned()),
            ],
            0..5,
        ),
    ) {
        let mut data = set.join("\n").into_bytes();
        data.push(0);
        data.extend_from_slice(jar.join("; ").as_bytes());
        fuzz::cookie_header(&data);
    }

    #[test]
    fn generated_keyring(text in "(keys:\n(  - id: [a-z0-9]{0,3}\n    secret: [A-Za-z0-9+/=]{0,46}\n    created: [0-9TZ:-]{0,5}\n    state: (active|accept|x)\n){0,3})?[ -~\n]{0,20}") {
        fuzz::keyring(text.as_bytes());
    }

    #[test]
    fn generated_config(text in "\\{(\"version\": ?[0-9],?)?[ -~]{0,60}\\}") {
        fuzz::config(text.as_bytes());
    }

    #[test]
    fn generated_duration(text in "[0-9hmsé\u{1F600}. -]{0,10}") {
        fuzz::duration(text.as_bytes());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn generated_manifests(
        session in "[0-9a-zé]{0,4}",
        port in 0u32..70000,
        extra in "[ -~]{0,12}",
    ) {
        // Raw text on purpose: the durations, ports and trailing bytes are fuzzed, and
        // most of them are no valid GatewayArray.
        let text = format!(
            "apiVersion: portcullis.io/v1alpha1\nkind: GatewayArray\nmetadata: {{name: a, namespace: n}}\nspec:\n  maxSessionTime: \"{session}\"\n  listeners:\n  - {{name: web, port: {port}, protocol: HTTP}}\n---\n{extra}\n"
        );
        fuzz::manifests(text.as_bytes());
    }
}
