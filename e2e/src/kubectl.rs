//! `kubectl` subprocesses: state dumps and port-forwards.
//!
//! Port-forwarding goes through `kubectl port-forward` rather than the API's websocket
//! subresource so that the tests reach the array exactly the way a person following the
//! quick start does.

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
    /// `pod/NAME`) and waits until it listens on an ephemeral loopback port.
    pub async fn port_forward(
        &self,
        target: &str,
        remote_port: u16,
    ) -> anyhow::Result<PortForward> {
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
            local_port,
            target: target.to_owned(),
            _child: child,
        })
    }
}

fn parse_forwarding_line(line: &str) -> Option<u16> {
    let rest = line.strip_prefix("Forwarding from 127.0.0.1:")?;
    rest.split_whitespace().next()?.parse().ok()
}

/// A running `kubectl port-forward`; stopped when dropped.
#[derive(Debug)]
pub struct PortForward {
    /// The loopback port that reaches the target.
    pub local_port: u16,
    /// What it forwards to (`service/NAME` or `pod/NAME`).
    pub target: String,
    _child: Child,
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
