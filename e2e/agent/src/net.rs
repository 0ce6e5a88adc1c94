//! Pod networking: one Linux bridge on a private range, one network namespace and veth
//! pair per pod, addresses handed out from the node's pod CIDR.
//!
//! Nothing is routed or NATed beyond the bridge: pods reach each other and the host's
//! bridge address (where the API server listens), and the host reaches every pod IP. No
//! address outside the namespaces this agent created is ever a target.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use anyhow::{Context as _, bail};
use tokio::process::Command;
use tokio::sync::Mutex;

/// The node's pod network.
#[derive(Debug)]
pub struct Network {
    bridge: String,
    base: u32,
    prefix: u8,
    used: Mutex<BTreeSet<u32>>,
}

/// One pod's network namespace and address.
#[derive(Clone, Debug)]
pub struct Sandbox {
    /// The namespace's name under `/run/netns`.
    pub netns: String,
    /// The host end of the pod's veth pair.
    pub host_veth: String,
    /// The pod IP.
    pub ip: Ipv4Addr,
}

/// The prefix of every network namespace the agent creates (`down.sh` removes them).
pub const NETNS_PREFIX: &str = "pcpod-";

/// Runs `ip ARGS`, failing with its stderr.
pub async fn ip(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .await
        .context("failed to run ip (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Network {
    /// Creates (or reuses) the bridge with the gateway address, the first host of `cidr`.
    pub async fn setup(bridge: &str, cidr: &str) -> anyhow::Result<Self> {
        let (addr, prefix) = cidr
            .split_once('/')
            .with_context(|| format!("pod CIDR {cidr:?} is not ADDRESS/PREFIX"))?;
        let addr: Ipv4Addr = addr.parse().with_context(|| format!("pod CIDR {cidr:?}"))?;
        let prefix: u8 = prefix
            .parse()
            .with_context(|| format!("pod CIDR {cidr:?}"))?;
        if !(8..=30).contains(&prefix) || !addr.is_private() {
            bail!("pod CIDR {cidr:?} must be a private IPv4 range of /8 to /30");
        }
        let mask = u32::MAX << (32 - prefix);
        let net = Self {
            bridge: bridge.to_owned(),
            base: u32::from(addr) & mask,
            prefix,
            used: Mutex::new(BTreeSet::new()),
        };
        if ip(&["link", "show", bridge]).await.is_err() {
            ip(&["link", "add", bridge, "type", "bridge"]).await?;
        }
        let gw = format!("{}/{prefix}", net.gateway());
        ip(&["addr", "replace", &gw, "dev", bridge]).await?;
        ip(&["link", "set", bridge, "up"]).await?;
        Ok(net)
    }

    /// The bridge's own address: the node IP, and every pod's default gateway.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.base + 1)
    }

    async fn allocate(&self) -> anyhow::Result<Ipv4Addr> {
        let size = 1u32 << (32 - self.prefix);
        let mut used = self.used.lock().await;
        let host = (2..size - 1)
            .find(|h| !used.contains(h))
            .context("the pod CIDR has no free address")?;
        used.insert(host);
        Ok(Ipv4Addr::from(self.base + host))
    }

    /// A namespace for the pod `uid`, with `eth0` on the bridge and a default route.
    pub async fn create_sandbox(&self, uid: &str) -> anyhow::Result<Sandbox> {
        let id: String = uid
            .chars()
            .filter(char::is_ascii_hexdigit)
            .take(8)
            .collect();
        let sandbox = Sandbox {
            netns: format!("{NETNS_PREFIX}{id}"),
            host_veth: format!("pcv{id}"),
            ip: self.allocate().await?,
        };
        let peer = format!("pcp{id}");
        let result = async {
            // Leftovers of an earlier run of the same pod (an agent restart).
            let _ = ip(&["netns", "del", &sandbox.netns]).await;
            let _ = ip(&["link", "del", &sandbox.host_veth]).await;
            ip(&["netns", "add", &sandbox.netns]).await?;
            ip(&[
                "link",
                "add",
                &sandbox.host_veth,
                "type",
                "veth",
                "peer",
                "name",
                &peer,
            ])
            .await?;
            ip(&["link", "set", &peer, "netns", &sandbox.netns]).await?;
            let ns = sandbox.netns.as_str();
            ip(&["-n", ns, "link", "set", &peer, "name", "eth0"]).await?;
            let cidr = format!("{}/{}", sandbox.ip, self.prefix);
            ip(&["-n", ns, "addr", "add", &cidr, "dev", "eth0"]).await?;
            ip(&["-n", ns, "link", "set", "eth0", "up"]).await?;
            ip(&["-n", ns, "link", "set", "lo", "up"]).await?;
            ip(&[
                "-n",
                ns,
                "route",
                "add",
                "default",
                "via",
                &self.gateway().to_string(),
            ])
            .await?;
            ip(&["link", "set", &sandbox.host_veth, "master", &self.bridge]).await?;
            ip(&["link", "set", &sandbox.host_veth, "up"]).await?;
            anyhow::Ok(())
        }
        .await;
        if let Err(e) = result {
            self.destroy(&sandbox).await;
            return Err(e.context(format!("failed to create the sandbox of pod {uid}")));
        }
        Ok(sandbox)
    }

    /// Sets a namespaced sysctl (`net.*`) inside the sandbox.
    pub async fn sysctl(&self, sandbox: &Sandbox, name: &str, value: &str) -> anyhow::Result<()> {
        if !name.starts_with("net.") || name.contains('/') || name.contains("..") {
            bail!("sysctl {name} is not a namespaced net.* sysctl");
        }
        let path = format!("/proc/sys/{}", name.replace('.', "/"));
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &sandbox.netns,
                "sh",
                "-c",
                "printf '%s' \"$1\" > \"$2\"",
                "sh",
                value,
                &path,
            ])
            .output()
            .await?;
        if !out.status.success() {
            bail!(
                "sysctl {name}={value}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// Kills whatever still runs in the sandbox and removes it, releasing its address.
    pub async fn destroy(&self, sandbox: &Sandbox) {
        if let Ok(pids) = ip(&["netns", "pids", &sandbox.netns]).await {
            for pid in pids
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
            {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        let _ = ip(&["netns", "del", &sandbox.netns]).await;
        let _ = ip(&["link", "del", &sandbox.host_veth]).await;
        let host = u32::from(sandbox.ip).wrapping_sub(self.base);
        self.used.lock().await.remove(&host);
    }
}

/// Removes every namespace an earlier run of the agent left behind.
pub async fn remove_leftovers() {
    let Ok(list) = ip(&["netns", "list"]).await else {
        return;
    };
    for name in list
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(NETNS_PREFIX))
    {
        let _ = Command::new("sh")
            .args([
                "-c",
                "ip netns pids \"$1\" | xargs -r kill -9; ip netns del \"$1\"",
                "sh",
                name,
            ])
            .status()
            .await;
    }
}
