//! `portcullis-node-agent`: the local cluster's kubelet. See the library docs.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use kube::config::{KubeConfigOptions, Kubeconfig};

/// Plays the kubelet for one Node: runs pods as local processes, each in its own network
/// namespace with its own pod IP. Needs root (namespaces, veths, bind mounts).
#[derive(Debug, Parser)]
#[command(name = "portcullis-node-agent", version)]
struct Args {
    /// The kubeconfig to reach the API server with.
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: PathBuf,
    /// The Node's name.
    #[arg(long, default_value = "portcullis-node-0")]
    node_name: String,
    /// The pod CIDR: a private IPv4 range; its first address goes to the bridge.
    #[arg(long, default_value = "10.244.0.0/24")]
    pod_cidr: String,
    /// The bridge the pods' veths join.
    #[arg(long, default_value = "pcbr0")]
    bridge: String,
    /// The image table (JSON: [{name, entrypoint, files, path, user}]).
    #[arg(long)]
    images: PathBuf,
    /// Where volumes and staged binaries live (must be traversable by pod users).
    #[arg(long)]
    state_dir: PathBuf,
    /// Where container logs go.
    #[arg(long)]
    log_dir: PathBuf,
    /// The API server address pods are given as KUBERNETES_SERVICE_HOST.
    #[arg(long)]
    api_host: String,
    /// The API server port pods are given as KUBERNETES_SERVICE_PORT.
    #[arg(long, default_value_t = 6443)]
    api_port: u16,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,kube=warn".into()),
        )
        .with_ansi(false)
        .init();
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) if e.use_stderr() => {
            let _ = e.print();
            return ExitCode::from(64);
        }
        Err(e) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
    };
    let client = match client(&args).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("portcullis-node-agent: {e:#}");
            return ExitCode::from(64);
        }
    };
    let settings = portcullis_node_agent::Settings {
        node_name: args.node_name,
        pod_cidr: args.pod_cidr,
        bridge: args.bridge,
        images: args.images,
        state_dir: args.state_dir,
        log_dir: args.log_dir,
        api: portcullis_node_agent::env::ApiEndpoint {
            host: args.api_host,
            port: args.api_port,
        },
    };
    match portcullis_node_agent::run(client, settings).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("portcullis-node-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn client(args: &Args) -> anyhow::Result<kube::Client> {
    let kubeconfig = Kubeconfig::read_from(&args.kubeconfig)?;
    let config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    Ok(kube::Client::try_from(config)?)
}
