//! Probes and lifecycle handlers, executed for real: `httpGet` and `tcpSocket` from the
//! host to the pod IP (where the kubelet probes from), `exec` inside the container.

use std::net::Ipv4Addr;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, ExecAction, HTTPGetAction, Probe, TCPSocketAction};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::process::{self, Identity};

/// What a probe needs to know about the running container.
#[derive(Clone, Debug)]
pub struct Target<'a> {
    /// The pod IP.
    pub ip: Ipv4Addr,
    /// The container (for named ports).
    pub container: &'a Container,
    /// The container's main process.
    pub pid: u32,
    /// The container's environment (exec actions inherit it).
    pub env: &'a [(String, String)],
    /// The container's identity.
    pub identity: Identity,
    /// The image, to resolve exec commands.
    pub image: &'a crate::images::ImageSpec,
}

/// One probe attempt; `Err` carries the reason it failed.
pub async fn run(probe: &Probe, target: &Target<'_>) -> Result<(), String> {
    let timeout =
        Duration::from_secs(u64::try_from(probe.timeout_seconds.unwrap_or(1).max(1)).unwrap_or(1));
    if let Some(http) = &probe.http_get {
        return http_get(http, target, timeout).await;
    }
    if let Some(tcp) = &probe.tcp_socket {
        return tcp_socket(tcp, target, timeout).await;
    }
    if let Some(exec) = &probe.exec {
        return exec_action(exec, target, timeout).await;
    }
    Err("probe type not supported by the local cluster's node agent (grpc)".into())
}

/// A named or numbered port of the container.
fn port(port: &IntOrString, container: &Container) -> Result<u16, String> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n).map_err(|_| format!("port {n} out of range")),
        IntOrString::String(name) => container
            .ports
            .as_deref()
            .unwrap_or_default()
            .iter()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok())
            .ok_or_else(|| format!("container has no port named {name:?}")),
    }
}

/// An HTTP GET; a status from 200 to 399 is a success, as for the kubelet.
pub async fn http_get(
    action: &HTTPGetAction,
    target: &Target<'_>,
    timeout: Duration,
) -> Result<(), String> {
    if action
        .scheme
        .as_deref()
        .is_some_and(|s| s.eq_ignore_ascii_case("https"))
    {
        return Err("HTTPS probes are not supported by the local cluster's node agent".into());
    }
    let port = port(&action.port, target.container)?;
    let host = action.host.clone().unwrap_or_else(|| target.ip.to_string());
    let path = action.path.clone().unwrap_or_else(|| "/".into());
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: kube-probe/1.37\r\nAccept: */*\r\nConnection: close\r\n"
    );
    for h in action.http_headers.as_deref().unwrap_or_default() {
        request.push_str(&format!("{}: {}\r\n", h.name, h.value));
    }
    request.push_str("\r\n");
    let attempt = async {
        let mut stream = TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| format!("dial {host}:{port}: {e}"))?;
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut head = vec![0u8; 1024];
        let mut read = 0;
        while read < 12 {
            let n = stream
                .read(&mut head[read..])
                .await
                .map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                break;
            }
            read += n;
        }
        let line = String::from_utf8_lossy(&head[..read]);
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("not an HTTP response: {:?}", line.lines().next()))?;
        if (200..400).contains(&status) {
            Ok(())
        } else {
            Err(format!("HTTP probe failed with statuscode: {status}"))
        }
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| format!("Get \"http://{host}:{port}{path}\": timeout after {timeout:?}"))?
}

async fn tcp_socket(
    action: &TCPSocketAction,
    target: &Target<'_>,
    timeout: Duration,
) -> Result<(), String> {
    let port = port(&action.port, target.container)?;
    let host = action.host.clone().unwrap_or_else(|| target.ip.to_string());
    match tokio::time::timeout(timeout, TcpStream::connect((host.as_str(), port))).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("dial tcp {host}:{port}: {e}")),
        Err(_) => Err(format!("dial tcp {host}:{port}: timeout")),
    }
}

/// Runs an exec action inside the container.
pub async fn exec_action(
    action: &ExecAction,
    target: &Target<'_>,
    timeout: Duration,
) -> Result<(), String> {
    let mut argv = action.command.clone().unwrap_or_default();
    let Some(first) = argv.first_mut() else {
        return Err("exec action has no command".into());
    };
    *first = target.image.resolve(first)?;
    match process::exec_in(target.pid, &argv, target.env, target.identity, timeout).await {
        Ok((true, _)) => Ok(()),
        Ok((false, out)) => Err(format!("command {argv:?} failed: {}", out.trim())),
        Err(e) => Err(format!("{e:#}")),
    }
}
