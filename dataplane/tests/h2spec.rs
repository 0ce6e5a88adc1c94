//! h2spec (`github.com/summerwind/h2spec`), the HTTP/2 conformance suite, against an
//! HTTPS listener that negotiates h2 by ALPN. Skipped, saying why, when `h2spec` is not
//! on PATH; `PORTCULLIS_REQUIRE_H2SPEC=1` (CI) makes its absence a failure.
//!
//! Cleartext h2c with prior knowledge is not run: the cleartext listener also serves
//! HTTP/1.1, so h2spec's "invalid connection preface" (section 3.5, case 2) is an
//! HTTP/1 request there, rightly answered 400, where h2spec expects a closed
//! connection; its other 144 cases pass there too.

mod common;

use std::path::PathBuf;

use common::*;

/// `name` in a directory of PATH.
fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2spec_passes_over_tls_with_alpn_h2() {
    let Some(h2spec) = on_path("h2spec") else {
        assert!(
            std::env::var_os("PORTCULLIS_REQUIRE_H2SPEC").is_none(),
            "PORTCULLIS_REQUIRE_H2SPEC is set and h2spec is not on PATH"
        );
        eprintln!(
            "skipped: h2spec is not on PATH (install: GOFLAGS=-mod=mod go install \
             github.com/summerwind/h2spec/cmd/h2spec@v2.2.1+incompatible, as .ci/run does)"
        );
        return;
    };
    // The body is the backend's name: h2spec skips its negative-window case (6.9.2,
    // case 3) when the answer has fewer than 5 bytes. The backend answers after 100 ms
    // (`--path /slow/100`): h2spec's case 5.1/9 resets its request right after sending
    // it, and expects the reset to arrive before the answer; a faster answer ends the
    // stream first, and after that the server rightly ignores the stream's frames
    // (RFC 9113 section 5.1), which h2spec counts as a failure.
    let b = Backend::start("h2spec").await;
    let dir = TempDir::new("h2spec");
    write_cert(&dir, "cert", "127.0.0.1");
    let https = |port| edge_array().https("tls", port, "cert");
    // h2spec's requests name `127.0.0.1:<port>`.
    let farm = site("h2spec", &["127.0.0.1"]).server(address_server(b.addr));
    let proxy = Proxy::start_in(dir, https, &[farm]).await;
    let port = proxy.addr.port().to_string();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(h2spec)
            .args(["--tls", "--insecure", "--timeout", "5"])
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                &port,
                "--path",
                "/slow/100",
            ])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    let summary = report
        .lines()
        .rev()
        .find(|l| l.contains(" tests, "))
        .unwrap_or("no summary line");
    eprintln!("h2spec: {summary}");
    assert!(out.status.success(), "{report}");
    assert!(summary.ends_with(" 0 skipped, 0 failed"), "{report}");
    assert!(b.accepted() > 0, "no h2spec request reached the backend");
    proxy.shutdown().await;
}
