//! Container processes: each runs in its pod's network namespace, in a mount and UTS
//! namespace of its own (its volumes bind-mounted at their `mountPath`, the pod name as
//! hostname), as the user its security context asks for, with stdout and stderr in a log
//! file. The chain `ip netns exec` → `unshare` → `sh` → `setpriv` → the binary is all
//! `exec`, so the child's PID is the container's main process.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use tokio::process::{Child, Command};

/// A bind mount into the container's mount namespace.
#[derive(Clone, Debug)]
pub struct Mount {
    /// The directory (or file) on the host.
    pub source: PathBuf,
    /// Where the container sees it.
    pub target: String,
    /// Mounted read-only.
    pub read_only: bool,
}

/// The identity a container runs as.
#[derive(Clone, Copy, Debug, Default)]
pub struct Identity {
    /// `runAsUser`, `None` for root.
    pub uid: Option<i64>,
    /// `runAsGroup` (defaults to the uid).
    pub gid: Option<i64>,
    /// `allowPrivilegeEscalation: false`.
    pub no_new_privs: bool,
}

/// Everything needed to start one container process.
#[derive(Debug)]
pub struct Launch<'a> {
    /// The pod's network namespace.
    pub netns: &'a str,
    /// The pod's hostname.
    pub hostname: &'a str,
    /// The resolved argv.
    pub argv: &'a [String],
    /// The environment (nothing of the agent's own leaks in).
    pub env: &'a [(String, String)],
    /// Volume mounts.
    pub mounts: &'a [Mount],
    /// Who runs it.
    pub identity: Identity,
    /// `workingDir`.
    pub working_dir: Option<&'a str>,
    /// The log file (appended to).
    pub log: &'a Path,
}

/// Single-quotes a string for `sh`.
pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn setpriv(identity: Identity) -> String {
    let Some(uid) = identity.uid.filter(|u| *u != 0) else {
        return if identity.no_new_privs {
            "/usr/bin/setpriv --no-new-privs".to_owned()
        } else {
            String::new()
        };
    };
    let gid = identity.gid.unwrap_or(uid);
    let mut s = format!(
        "/usr/bin/setpriv --reuid={uid} --regid={gid} --clear-groups --inh-caps=-all --bounding-set=-all"
    );
    if identity.no_new_privs {
        s.push_str(" --no-new-privs");
    }
    s
}

/// Starts the container's main process.
pub fn spawn(launch: &Launch<'_>) -> anyhow::Result<Child> {
    let mut script = String::from("set -e\n");
    script.push_str(&format!("hostname {}\n", quote(launch.hostname)));
    for m in launch.mounts {
        let target = quote(&m.target);
        script.push_str(&format!(
            "mkdir -p {target}\nmount --bind {} {target}\n",
            quote(&m.source.display().to_string())
        ));
        if m.read_only {
            script.push_str(&format!("mount -o remount,bind,ro {target}\n"));
        }
    }
    if let Some(dir) = launch.working_dir {
        script.push_str(&format!("cd {}\n", quote(dir)));
    }
    let setpriv = setpriv(launch.identity);
    if setpriv.is_empty() {
        script.push_str("exec \"$@\"\n");
    } else {
        script.push_str(&format!("exec {setpriv} -- \"$@\"\n"));
    }
    if let Some(parent) = launch.log.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(launch.log)
        .with_context(|| format!("failed to open {}", launch.log.display()))?;
    let mut cmd = Command::new("/usr/bin/ip");
    cmd.args(["netns", "exec", launch.netns])
        .args([
            "/usr/bin/unshare",
            "--mount",
            "--uts",
            "--propagation",
            "private",
            "--",
        ])
        .args(["/bin/sh", "-c", &script, "sh"])
        .args(launch.argv)
        .env_clear()
        .envs(launch.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(false);
    cmd.spawn()
        .with_context(|| format!("failed to start {:?}", launch.argv.first()))
}

/// Runs a command inside a running container's namespaces (exec probes and hooks), with
/// the container's identity and environment; `Ok(true)` when it exits 0 in time.
pub async fn exec_in(
    pid: u32,
    argv: &[String],
    env: &[(String, String)],
    identity: Identity,
    timeout: Duration,
) -> anyhow::Result<(bool, String)> {
    let mut cmd = Command::new("/usr/bin/nsenter");
    cmd.args([
        "--target",
        &pid.to_string(),
        "--net",
        "--mount",
        "--uts",
        "--",
    ]);
    let setpriv = setpriv(identity);
    let mut words = setpriv.split_whitespace();
    if let Some(first) = words.next() {
        cmd.arg(first).args(words).arg("--");
    }
    cmd.args(argv)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(timeout, cmd.output())
        .await
        .with_context(|| format!("{argv:?} timed out after {timeout:?}"))??;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    Ok((out.status.success(), text))
}

/// Sends a signal to a process, ignoring one that is already gone.
pub fn signal(pid: u32, signal: nix::sys::signal::Signal) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_quotes() {
        assert_eq!(quote("a'b"), r"'a'\''b'");
    }

    #[test]
    fn non_root_drops_everything() {
        let s = setpriv(Identity {
            uid: Some(65532),
            gid: None,
            no_new_privs: true,
        });
        assert!(s.contains("--reuid=65532 --regid=65532"));
        assert!(s.contains("--bounding-set=-all"));
        assert!(s.ends_with("--no-new-privs"));
        assert_eq!(setpriv(Identity::default()), "");
    }
}
