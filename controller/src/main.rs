//! `portcullis-controller`: parse flags, start telemetry, call `run()`.

use std::net::SocketAddr;

use clap::builder::BoolishValueParser;
use clap::{ArgAction, Parser, Subcommand, ValueEnum};
use portcullis_controller::reconcile::Settings;
use portcullis_controller::{RunConfig, run};
use portcullis_crds::ingress::{ArrayTarget, Migration};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Json,
    Text,
}

/// Reconciles Portcullis GatewayArrays, ServerFarms and Ingresses into dataplane arrays.
#[derive(Debug, Parser)]
#[command(
    name = "portcullis-controller",
    version,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Address of the admin endpoint (/healthz, /readyz, /metrics). `[::]` takes IPv4
    /// and IPv6 clients alike.
    #[arg(long, env = "PORTCULLIS_ADMIN", default_value = "[::]:9902")]
    admin: SocketAddr,
    /// Image of dataplane members when a GatewayArray sets no spec.pod.image.
    #[arg(long, env = "PORTCULLIS_DATAPLANE_IMAGE")]
    dataplane_image: Option<String>,
    /// Only this namespace is watched; all namespaces when unset.
    #[arg(long, env = "PORTCULLIS_WATCH_NAMESPACE")]
    watch_namespace: Option<String>,
    /// Run only while holding the lease, so several replicas can run safely.
    #[arg(long, env = "PORTCULLIS_LEADER_ELECTION", default_value_t = true,
          action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true",
          value_parser = BoolishValueParser::new())]
    leader_election: bool,
    /// Name of the leader-election Lease.
    #[arg(
        long,
        env = "PORTCULLIS_LEASE_NAME",
        default_value = "portcullis-controller"
    )]
    lease_name: String,
    /// Namespace of the leader-election Lease (the controller's own namespace).
    #[arg(long, env = "POD_NAMESPACE")]
    lease_namespace: Option<String>,
    /// List and watch Secrets (cluster-wide or in --watch-namespace). Off: referenced
    /// Secrets are read by name during reconcile and re-read every 60s (least privilege).
    #[arg(long, env = "PORTCULLIS_WATCH_SECRETS", default_value_t = false,
          action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true",
          value_parser = BoolishValueParser::new())]
    watch_secrets: bool,
    /// Allow servers that are loopback, link-local or the cloud metadata address.
    #[arg(long, env = "PORTCULLIS_ALLOW_PRIVATE_TARGETS", default_value_t = false,
          action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true",
          value_parser = BoolishValueParser::new())]
    allow_private_targets: bool,
    /// Serve networking.k8s.io/v1 Ingresses of Portcullis's IngressClasses (controller
    /// portcullis.io/ingress-controller).
    #[arg(long, env = "PORTCULLIS_SERVE_INGRESS", default_value_t = true,
          action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true",
          value_parser = BoolishValueParser::new())]
    serve_ingress: bool,
    /// Migration from ingress-nginx: also serve Ingresses of these classes
    /// (comma-separated; by ingressClassName or kubernetes.io/ingress.class) on the array
    /// given by --nginx-migration-array.
    #[arg(
        long,
        env = "PORTCULLIS_NGINX_MIGRATION_CLASSES",
        value_delimiter = ',',
        default_value = "nginx"
    )]
    nginx_migration_classes: Vec<String>,
    /// The GatewayArray (`namespace/name`) that publishes the ingress-nginx classes'
    /// Ingresses. Unset: those Ingresses are left to ingress-nginx.
    #[arg(long, env = "PORTCULLIS_NGINX_MIGRATION_ARRAY", value_parser = parse_array)]
    nginx_migration_array: Option<ArrayTarget>,
    /// Log format.
    #[arg(
        long,
        env = "PORTCULLIS_LOG_FORMAT",
        value_enum,
        default_value = "json"
    )]
    log_format: LogFormat,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print, per Ingress, what Portcullis will serve and every annotation it will not,
    /// with the reason. Reads Ingresses, IngressClasses and Services from the YAML files
    /// given (as `kubectl get ingress,ingressclass,service -A -o yaml` writes them), or
    /// from the cluster of the current kubeconfig context when none is given.
    IngressAudit(AuditArgs),
}

#[derive(Debug, clap::Args)]
struct AuditArgs {
    /// YAML files or directories of them; the cluster when none.
    #[arg(short = 'f', long = "filename")]
    files: Vec<std::path::PathBuf>,
    /// Audit Ingresses of these classes (comma-separated) as the migration switch would
    /// serve them.
    #[arg(long, value_delimiter = ',', default_value = "nginx")]
    nginx_classes: Vec<String>,
    /// The GatewayArray (`namespace/name`) that would publish them.
    #[arg(long, value_parser = parse_array, default_value = "portcullis-system/public")]
    array: ArrayTarget,
}

/// Runs `ingress-audit`; returns the process exit code.
async fn ingress_audit(args: AuditArgs) -> anyhow::Result<i32> {
    use anyhow::Context as _;
    use portcullis_controller::audit::{AuditInput, assume_array, audit, read_yaml};
    let mut input = AuditInput::default();
    if args.files.is_empty() {
        let client = kube::Client::try_default()
            .await
            .context("failed to reach the cluster (give YAML files with -f to audit offline)")?;
        let lp = kube::api::ListParams::default();
        input.ingresses = kube::Api::all(client.clone())
            .list(&lp)
            .await
            .context("failed to list Ingresses")?
            .items;
        input.classes = kube::Api::all(client.clone())
            .list(&lp)
            .await
            .context("failed to list IngressClasses")?
            .items;
        input.services = kube::Api::all(client)
            .list(&lp)
            .await
            .context("failed to list Services")?
            .items;
    } else {
        for path in yaml_files(&args.files)? {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("failed to read {}", path.display()))?;
            read_yaml(&text, &mut input)
                .with_context(|| format!("{} is not YAML", path.display()))?;
        }
    }
    input.migration.classes = args.nginx_classes;
    assume_array(&mut input, args.array);
    let (report, _) = audit(&input);
    print!("{report}");
    Ok(0)
}

/// The files named, with directories expanded to their `.yaml`/`.yml`/`.json` files.
fn yaml_files(paths: &[std::path::PathBuf]) -> anyhow::Result<Vec<std::path::PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut entries: Vec<_> = std::fs::read_dir(p)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|e| {
                    e.extension()
                        .is_some_and(|x| x == "yaml" || x == "yml" || x == "json")
                })
                .collect();
            entries.sort();
            out.extend(entries);
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

/// `namespace/name` of a GatewayArray.
fn parse_array(s: &str) -> Result<ArrayTarget, String> {
    match s.split_once('/') {
        Some((ns, name))
            if portcullis_crds::translate::is_namespace(ns)
                && portcullis_crds::translate::is_dns_label(name) =>
        {
            Ok(ArrayTarget {
                namespace: ns.to_owned(),
                name: name.to_owned(),
            })
        }
        _ => Err(format!(
            "{s:?} is not namespace/name of a GatewayArray (e.g. edge/public)"
        )),
    }
}

/// Exit code for bad flags (EX_USAGE).
const EXIT_USAGE: i32 = 64;

fn usage_error(cmd_error: clap::Error) -> ! {
    use clap::error::ErrorKind;
    if matches!(
        cmd_error.kind(),
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
    ) {
        cmd_error.exit();
    }
    let _ = cmd_error.print();
    std::process::exit(EXIT_USAGE);
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::try_parse().unwrap_or_else(|e| usage_error(e));
    if let Some(Command::IngressAudit(args)) = cli.command {
        match ingress_audit(args).await {
            Ok(code) => std::process::exit(code),
            Err(e) => {
                eprintln!("portcullis-controller ingress-audit: {e:#}");
                std::process::exit(1);
            }
        }
    }
    let Some(dataplane_image) = cli.dataplane_image.clone() else {
        use clap::CommandFactory;
        usage_error(Cli::command().error(
            clap::error::ErrorKind::MissingRequiredArgument,
            "--dataplane-image (or PORTCULLIS_DATAPLANE_IMAGE) is required",
        ));
    };
    let leader_election = if cli.leader_election {
        match cli.lease_namespace.clone() {
            Some(ns) => Some((cli.lease_name.clone(), ns)),
            None => {
                use clap::CommandFactory;
                usage_error(Cli::command().error(
                    clap::error::ErrorKind::MissingRequiredArgument,
                    "--lease-namespace (or POD_NAMESPACE) is required with --leader-election",
                ));
            }
        }
    } else {
        None
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    match cli.log_format {
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init(),
        LogFormat::Text => tracing_subscriber::fmt().with_env_filter(filter).init(),
    }
    let identity = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| format!("portcullis-controller-{}", std::process::id()));
    let migration = Migration {
        classes: cli.nginx_migration_classes,
        array: cli.nginx_migration_array,
    };
    let result = run(RunConfig {
        admin: cli.admin,
        settings: Settings {
            dataplane_image,
            watch_secrets: cli.watch_secrets,
            allow_private_targets: cli.allow_private_targets,
            watch_namespace: cli.watch_namespace.clone(),
            migration: migration.clone(),
        },
        watch_namespace: cli.watch_namespace,
        leader_election,
        identity,
        serve_ingress: cli.serve_ingress,
        migration,
    })
    .await;
    if let Err(e) = result {
        // One line with the cause chain; no backtrace for an operational failure.
        tracing::error!(error = %format!("{:#}", anyhow::Error::from(e)), "controller stopped");
        std::process::exit(1);
    }
    Ok(())
}
