//! `kubectl` subprocesses: state dumps and port-forwards.
//!
//! Port-forwarding goes through `kubectl port-forward` rather than the API's websocket
//! subresource so that the tests reach the array exactly the way a person following the
//! quick start does. On the local cluster (`PORTCULLIS_E2E_POD_NETWORK=direct`) there is
//! no kubelet streaming API to forward through, but the test process reaches pod IPs
//! directly: a "forward" then resolves its target to a pod IP and port the way
//! `kubectl port-forward` picks them (a Service's ready endpoint, its target port).

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// A `kubectl` bound to a context and (optionally) a namespace.
#[derive(Clone, Debug)]
pub struct Kubectl {
    context: Option<String>,
    namespace: Option<String>,
}

impl Kubectl {
    /// `kubectl [--context C] [-n NS]`.
    pub fn new(context: Option<String>, namespace: Option<String>) -> Self {
        Self { context, namespace }
    }

    /// The same context in another namespace.
    pub fn in_namespace(&self, namespace: &str) -> Self {
        Self {
            context: self.context.clone(),
            namespace: Some(namespace.to_owned()),
        }
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into()));
        if let Some(context) = &self.context {
            cmd.arg("--context").arg(context);
        }
        if let Some(ns) = &self.namespace {
            cmd.arg("--namespace").arg(ns);
        }
        cmd.kill_on_drop(true);
        cmd
    }

    /// Runs `kubectl ARGS` and returns its stdout, or an error with its stderr.
    pub async fn output(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self
            .command()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .await
            .with_context(|| format!("failed to run kubectl {}", args.join(" ")))?;
        if !out.status.success() {
            bail!(
                "kubectl {} failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Starts `kubectl port-forward TARGET :REMOTE` (TARGET is `service/NAME` or
    /// `pod/NAME`) and waits until it listens on an ephemeral loopback port; on the local
    /// cluster, resolves TARGET to a pod address instead.
    pub async fn port_forward(
        &self,
        target: &str,
        remote_port: u16,
    ) -> anyhow::Result<PortForward> {
        if direct_pod_network() {
            let addr = self.resolve_direct(target, remote_port).await?;
            return Ok(PortForward {
                addr,
                target: target.to_owned(),
                _child: None,
            });
        }
        let mut child = self
            .command()
            .args([
                "port-forward",
                "--address",
                "127.0.0.1",
                target,
                &format!(":{remote_port}"),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("failed to start kubectl port-forward")?;
        let stdout = child.stdout.take().context("port-forward has no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        // "Forwarding from 127.0.0.1:40123 -> 8080"
        let local_port = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await? {
                if let Some(port) = parse_forwarding_line(&line) {
                    return Ok(port);
                }
            }
            bail!("kubectl port-forward {target} exited before forwarding")
        })
        .await
        .with_context(|| format!("kubectl port-forward {target} did not start within 30s"))??;
        // Keep draining stdout ("Handling connection for ...") so kubectl never blocks.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(PortForward {
            addr: SocketAddr::from(([127, 0, 0, 1], local_port)),
            target: target.to_owned(),
            _child: Some(child),
        })
    }

    /// The pod address `kubectl port-forward TARGET :PORT` would reach.
    async fn resolve_direct(&self, target: &str, port: u16) -> anyhow::Result<SocketAddr> {
        if let Some(pod) = target.strip_prefix("pod/") {
            let ip = self
                .output(&["get", "pod", pod, "-o", "jsonpath={.status.podIP}"])
                .await?;
            let ip = ip
                .trim()
                .parse()
                .with_context(|| format!("pod {pod} has no IP yet"))?;
            return Ok(SocketAddr::new(ip, port));
        }
        let Some(service) = target.strip_prefix("service/") else {
            bail!("cannot resolve {target}: only pod/NAME and service/NAME");
        };
        let svc: serde_json::Value = serde_json::from_str(
            &self
                .output(&["get", "service", service, "-o", "json"])
                .await?,
        )?;
        let port_name = svc["spec"]["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["port"].as_u64() == Some(u64::from(port)))
            .map(|p| p["name"].as_str().unwrap_or_default().to_owned())
            .with_context(|| format!("service {service} has no port {port}"))?;
        let label = format!("kubernetes.io/service-name={service}");
        let slices: serde_json::Value = serde_json::from_str(
            &self
                .output(&["get", "endpointslices", "-l", &label, "-o", "json"])
                .await?,
        )?;
        for slice in slices["items"].as_array().into_iter().flatten() {
            let Some(target_port) = slice["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|p| p["name"].as_str().unwrap_or_default() == port_name)
                .and_then(|p| p["port"].as_u64())
            else {
                continue;
            };
            for endpoint in slice["endpoints"].as_array().into_iter().flatten() {
                if endpoint["conditions"]["ready"].as_bool() != Some(true) {
                    continue;
                }
                if let Some(ip) = endpoint["addresses"][0].as_str() {
                    return Ok(SocketAddr::new(ip.parse()?, u16::try_from(target_port)?));
                }
            }
        }
        bail!("service {service} has no ready endpoint for port {port}")
    }
}

/// Whether the test process reaches pod IPs directly (the local cluster).
pub fn direct_pod_network() -> bool {
    std::env::var("PORTCULLIS_E2E_POD_NETWORK").is_ok_and(|v| v == "direct")
}

fn parse_forwarding_line(line: &str) -> Option<u16> {
    let rest = line.strip_prefix("Forwarding from 127.0.0.1:")?;
    rest.split_whitespace().next()?.parse().ok()
}

/// A running `kubectl port-forward` (stopped when dropped), or on the local cluster the
/// pod address it resolved to.
#[derive(Debug)]
pub struct PortForward {
    /// The address that reaches the target.
    pub addr: SocketAddr,
    /// What it forwards to (`service/NAME` or `pod/NAME`).
    pub target: String,
    _child: Option<Child>,
}

#[cfg(test)]
mod tests {
    use super::parse_forwarding_line;

    #[test]
    fn parses_the_forwarding_line() {
        assert_eq!(
            parse_forwarding_line("Forwarding from 127.0.0.1:40123 -> 8080"),
            Some(40123)
        );
        assert_eq!(
            parse_forwarding_line("Forwarding from [::1]:40123 -> 8080"),
            None
        );
        assert_eq!(parse_forwarding_line("Handling connection for 40123"), None);
    }
}
