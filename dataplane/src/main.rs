//! `portcullis-dataplane`: parses flags, starts logging, runs the library.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{ArgGroup, Parser, ValueEnum};

/// jemalloc with its background thread, not glibc's malloc: memory a burst of
/// connections took goes back to the system about a second after they close, even when
/// the member is idle (glibc kept all of it: issue 12, section 5). The decay times are
/// set at build time (`.cargo/config.toml`).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The Portcullis dataplane: a reverse proxy that pools upstream connections by
/// endpoint identity.
#[derive(Parser, Debug)]
#[command(name = "portcullis-dataplane", version)]
#[command(group(ArgGroup::new("source").required(true).args(["manifests", "config", "array"])))]
struct Args {
    /// Local mode: serve the GatewayArray and ServerFarm manifests in DIR; reload on change.
    #[arg(long, value_name = "DIR", env = "PORTCULLIS_MANIFESTS")]
    manifests: Option<PathBuf>,
    /// Serve a rendered dataplane config (JSON); reload on change.
    #[arg(long, value_name = "FILE", env = "PORTCULLIS_CONFIG")]
    config: Option<PathBuf>,
    /// In-cluster mode: serve the GatewayArray NAME's ConfigMap and Secret (GET only).
    #[arg(
        long,
        value_name = "NAME",
        env = "PORTCULLIS_ARRAY",
        requires = "namespace"
    )]
    array: Option<String>,
    /// The array's namespace (in-cluster mode).
    #[arg(long, value_name = "NS", env = "POD_NAMESPACE")]
    namespace: Option<String>,
    /// In-cluster mode: the Secret with the keyring and certificates (the array's
    /// `spec.sessionKeys.secretName`); defaults to `<array>-keys`.
    #[arg(
        long,
        value_name = "NAME",
        env = "PORTCULLIS_KEYS_SECRET",
        requires = "array"
    )]
    keys_secret: Option<String>,
    /// In-cluster mode: where the synced config, keyring and certificates are written.
    #[arg(
        long,
        value_name = "DIR",
        default_value = "/run/portcullis",
        env = "PORTCULLIS_STATE_DIR"
    )]
    state_dir: PathBuf,
    /// In-cluster mode: how often the ConfigMap and Secret are fetched.
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "2s",
        env = "PORTCULLIS_CLUSTER_POLL"
    )]
    cluster_poll: portcullis_crds::Duration,
    /// Address the listeners bind to. `::` takes IPv4 and IPv6 clients alike.
    #[arg(
        long,
        value_name = "IP",
        default_value = "0.0.0.0",
        env = "PORTCULLIS_BIND"
    )]
    bind: IpAddr,
    /// Admin server address (/healthz, /readyz, /metrics, /status).
    #[arg(
        long,
        value_name = "ADDR",
        default_value = "127.0.0.1:9901",
        env = "PORTCULLIS_ADMIN"
    )]
    admin: SocketAddr,
    /// The session keyring file.
    #[arg(long, value_name = "FILE", env = "PORTCULLIS_KEYRING")]
    keyring: Option<PathBuf>,
    /// Directory with `<secret>/tls.crt`, `tls.key` and `ca.crt` (default: `certs` next to
    /// the manifests or the config file).
    #[arg(long, value_name = "DIR", env = "PORTCULLIS_CERTS")]
    certs: Option<PathBuf>,
    /// How often DNS server names are re-resolved.
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "30s",
        env = "PORTCULLIS_DNS_REFRESH"
    )]
    dns_refresh: portcullis_crds::Duration,
    /// Log format.
    #[arg(
        long,
        value_enum,
        default_value = "json",
        env = "PORTCULLIS_LOG_FORMAT"
    )]
    log_format: LogFormat,
    /// One log line per request (target `access`). Lines are written by a logging
    /// thread, never on the request path; when it falls behind, lines are dropped
    /// rather than slowing requests down.
    #[arg(long, value_enum, default_value = "on", env = "PORTCULLIS_ACCESS_LOG")]
    access_log: Switch,
    /// Trace requests: export one span per sampled request to this OpenTelemetry
    /// collector's OTLP/HTTP URL (`http://host:4318`, path `/v1/traces` by default) and
    /// send backends a W3C `traceparent` naming it. Off when not given: a client's
    /// `traceparent` then reaches the backend untouched.
    #[arg(
        long,
        value_name = "URL",
        env = "PORTCULLIS_OTLP_ENDPOINT",
        value_parser = portcullis_dataplane::trace::parse_endpoint
    )]
    otlp_endpoint: Option<http::Uri>,
    /// The share of new traces recorded, from 0 to 1. A request with a sampled
    /// `traceparent` is always recorded, one with an unsampled one never.
    #[arg(
        long,
        value_name = "RATIO",
        default_value = "1",
        env = "PORTCULLIS_TRACE_SAMPLE_RATIO",
        value_parser = parse_ratio
    )]
    trace_sample_ratio: f64,
    /// `service.name` of exported spans.
    #[arg(
        long,
        value_name = "NAME",
        default_value = "portcullis",
        env = "PORTCULLIS_TRACE_SERVICE_NAME"
    )]
    trace_service_name: String,
    /// Threads that serve connections. Defaults to the CPUs the process may use (its
    /// cgroup's CPU quota included).
    #[arg(
        long,
        value_name = "N",
        env = "PORTCULLIS_WORKER_THREADS",
        value_parser = clap::value_parser!(u16).range(1..=1024)
    )]
    worker_threads: Option<u16>,
}

fn parse_ratio(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("{s:?} is not a ratio from 0 to 1")),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Switch {
    On,
    Off,
}

/// Refuses paths that do not exist or are of the wrong kind, before anything starts: a
/// typo would otherwise start a dataplane that serves no config, or (for the keyring)
/// one that seals cookies with a made-up key no other member can open. Nothing is
/// waited for: Kubernetes mounts ConfigMap and Secret volumes before the container
/// starts, and in cluster mode (`--array`) the member writes its own files, waiting for
/// the API instead.
fn check_paths(args: &Args) -> Result<(), String> {
    if args.array.is_some() {
        return Ok(());
    }
    let paths = [
        ("--manifests", "PORTCULLIS_MANIFESTS", &args.manifests, true),
        ("--config", "PORTCULLIS_CONFIG", &args.config, false),
        ("--keyring", "PORTCULLIS_KEYRING", &args.keyring, false),
        ("--certs", "PORTCULLIS_CERTS", &args.certs, true),
    ];
    for (flag, env, path, want_dir) in paths {
        let Some(path) = path else { continue };
        let problem = match std::fs::metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => "does not exist".to_owned(),
            Err(e) => format!("cannot be read: {e}"),
            Ok(m) if want_dir && !m.is_dir() => "is not a directory".to_owned(),
            Ok(m) if !want_dir && m.is_dir() => "is a directory, not a file".to_owned(),
            Ok(_) => continue,
        };
        return Err(format!("{flag} ({env}) {}: {problem}", path.display()));
    }
    Ok(())
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Json,
    Text,
}

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            let code = if e.use_stderr() { 64 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    if let Err(message) = check_paths(&args) {
        eprintln!("error: {message}");
        return ExitCode::from(64);
    }
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    if args.access_log == Switch::Off {
        filter = filter.add_directive("access=off".parse().expect("a constant directive parses"));
    }
    // A logging thread writes through a buffer: a request never waits on stderr. The
    // guard flushes what is queued when main returns.
    let (writer, _flush_on_exit) = tracing_appender::non_blocking(std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match args.log_format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
    let opts = portcullis_dataplane::Options {
        manifests: args.manifests,
        config: args.config,
        bind: args.bind,
        admin: args.admin,
        keyring: args.keyring,
        certs: args.certs,
        dns_refresh: args
            .dns_refresh
            .get()
            .max(std::time::Duration::from_secs(1)),
        poll_interval: std::time::Duration::from_millis(500),
        tracing: args
            .otlp_endpoint
            .map(|endpoint| portcullis_dataplane::trace::TraceOptions {
                endpoint,
                sample_ratio: args.trace_sample_ratio,
                service_name: args.trace_service_name,
                instance: std::env::var("POD_NAME").ok(),
            }),
    };
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(n) = args.worker_threads {
        builder.worker_threads(usize::from(n));
    }
    let rt = match builder.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("failed to start the runtime: {e}");
            return ExitCode::from(70);
        }
    };
    let result: anyhow::Result<()> = rt.block_on(async {
        match (args.array, args.namespace) {
            (Some(array), Some(namespace)) => {
                let cluster = portcullis_dataplane::cluster::ClusterOptions {
                    keys_secret: args.keys_secret.unwrap_or_else(|| format!("{array}-keys")),
                    array,
                    namespace,
                    state_dir: args.state_dir,
                    poll: args
                        .cluster_poll
                        .get()
                        .max(std::time::Duration::from_millis(100)),
                };
                let client = kube::Client::try_default().await?;
                Ok(portcullis_dataplane::cluster::run(client, cluster, opts).await?)
            }
            _ => Ok(portcullis_dataplane::run(opts).await?),
        }
    });
    // The drain is over. What may still run (a reload being built on the blocking pool)
    // could only be thrown away: dropping the runtime would wait for it to finish.
    rt.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "dataplane failed");
            eprintln!("{e:#}");
            ExitCode::from(1)
        }
    }
}
