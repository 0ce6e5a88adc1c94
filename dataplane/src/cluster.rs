//! In-cluster mode: `--array NAME --namespace NS`.
//!
//! Every poll interval the member GETs (never lists or watches: its Role only grants
//! `get` on these two names) the array's ConfigMap `<array>-config` and its keys Secret
//! (`--keys-secret`, `<array>-keys` by default). The GETs are served from the API
//! server's watch cache, not by a quorum read of etcd: the first at any version
//! (`resourceVersion=0`), each later one at a version no older than the last one seen, so
//! a member never steps back to an older object (another API server's cache may lag).
//! It writes them atomically into the state directory as `config.json`,
//! `keyring.yaml` and `certs/<secret>/{tls.crt,tls.key,ca.crt,auth}`. The runtime serves those
//! files exactly as `--config`/`--keyring`/`--certs` would, so a cluster change goes
//! through the same reload path as a file change: atomic, last good kept on error.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::GetParams;
use kube::{Api, Client};
use portcullis_crds::config::{CONFIG_KEY, DataplaneConfig};
use portcullis_crds::keyring::KEYRING_SECRET_KEY;

use crate::runtime::{Handle, Options, RunError};

/// Where the array's objects live and where their content is written.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// The GatewayArray's name.
    pub array: String,
    /// Its namespace.
    pub namespace: String,
    /// The Secret with the keyring and certificates (`--keys-secret`, the array's
    /// `spec.sessionKeys.secretName`; `<array>-keys` by default).
    pub keys_secret: String,
    /// Directory the config, keyring and certificates are written to.
    pub state_dir: PathBuf,
    /// How often the ConfigMap and Secret are fetched.
    pub poll: Duration,
}

impl ClusterOptions {
    fn config_map(&self) -> String {
        format!("{}-config", self.array)
    }
    fn secret(&self) -> String {
        self.keys_secret.clone()
    }
}

/// Why a sync or the start in cluster mode failed. Never carries secret bytes.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The API server refused or could not be reached.
    #[error("failed to get {kind} {namespace}/{name}: {source}")]
    Get {
        /// `ConfigMap` or `Secret`.
        kind: &'static str,
        /// Namespace.
        namespace: String,
        /// Object name.
        name: String,
        /// The cause.
        #[source]
        source: Box<kube::Error>,
    },
    /// The ConfigMap has no config.
    #[error("failed to read ConfigMap {namespace}/{name}: key {CONFIG_KEY} is missing")]
    MissingConfig {
        /// Namespace.
        namespace: String,
        /// Object name.
        name: String,
    },
    /// A state file could not be written.
    #[error("failed to write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The runtime did not start.
    #[error(transparent)]
    Run(#[from] RunError),
}

/// The resourceVersions of the ConfigMap and the Secret last read.
#[derive(Clone, Debug, Default)]
pub struct Seen {
    config_map: Option<String>,
    secret: Option<String>,
}

/// A GET served from the watch cache: at any version the first time, then at one no
/// older than `seen`.
fn cached(seen: Option<&String>) -> GetParams {
    seen.map_or_else(GetParams::any, |rv| GetParams::at(rv))
}

/// Fetches the ConfigMap and Secret once and writes what changed into the state
/// directory. A missing Secret is logged and leaves the keyring and certificates as they
/// were; a missing ConfigMap is an error.
pub async fn sync_once(
    client: &Client,
    opts: &ClusterOptions,
    seen: &mut Seen,
) -> Result<(), ClusterError> {
    let ns = &opts.namespace;
    let cm_name = opts.config_map();
    let cm = Api::<ConfigMap>::namespaced(client.clone(), ns)
        .get_with(&cm_name, &cached(seen.config_map.as_ref()))
        .await
        .map_err(|source| ClusterError::Get {
            kind: "ConfigMap",
            namespace: ns.clone(),
            name: cm_name.clone(),
            source: Box::new(source),
        })?;
    if let Some(rv) = cm.metadata.resource_version.clone() {
        seen.config_map = Some(rv);
    }
    let config = cm
        .data
        .as_ref()
        .and_then(|d| d.get(CONFIG_KEY))
        .ok_or_else(|| ClusterError::MissingConfig {
            namespace: ns.clone(),
            name: cm_name.clone(),
        })?;
    let secret_name = opts.secret();
    let secret = match Api::<Secret>::namespaced(client.clone(), ns)
        .get_with(&secret_name, &cached(seen.secret.as_ref()))
        .await
    {
        Ok(s) => {
            if let Some(rv) = s.metadata.resource_version.clone() {
                seen.secret = Some(rv);
            }
            Some(s)
        }
        Err(kube::Error::Api(status)) if status.is_not_found() => {
            tracing::warn!(namespace = %ns, name = %secret_name, "the array's Secret does not exist yet");
            None
        }
        // During a rename of the keys Secret the member Role already names the new one
        // while this (old) member still asks for the old one: keep the last keyring and
        // certificates, and keep following the ConfigMap until the rollout replaces us.
        // Only once a keyring was written: a member that never had one waits (retrying)
        // rather than start with a key of its own no other member can read.
        Err(kube::Error::Api(status))
            if status.code == 403 && opts.state_dir.join("keyring.yaml").exists() =>
        {
            tracing::warn!(namespace = %ns, name = %secret_name, "not allowed to read the keys Secret; keeping the last keyring and certificates");
            None
        }
        Err(source) => {
            return Err(ClusterError::Get {
                kind: "Secret",
                namespace: ns.clone(),
                name: secret_name,
                source: Box::new(source),
            });
        }
    };
    // Certificates and the keyring first, so a config that needs them finds them.
    let mut certs = None;
    if let Some(secret) = secret {
        let mut written = std::collections::BTreeSet::new();
        for (key, value) in secret.data.iter().flatten() {
            if let Some(path) = secret_path(&opts.state_dir, key) {
                write_if_changed(&path, &value.0)?;
                written.insert(path);
            }
        }
        certs = Some(written);
    }
    write_if_changed(&opts.state_dir.join("config.json"), config.as_bytes())?;
    // Then private keys that left the Secret leave the disk. The config written above no
    // longer names them (the controller copies exactly what the config uses), and a
    // loaded certificate stays in memory until the reload replaces it.
    if let Some(mut keep) = certs {
        // The ConfigMap may be a poll older than the Secret (the controller writes the
        // Secret first): files the config just written still names stay until it does
        // not. A config that does not parse removes nothing.
        let Ok(written_config) = DataplaneConfig::from_json(config) else {
            return Ok(());
        };
        for name in written_config.certificate_secrets() {
            for file in ["tls.crt", "tls.key", "ca.crt", "auth"] {
                keep.insert(opts.state_dir.join("certs").join(&name).join(file));
            }
        }
        remove_stale_certs(&opts.state_dir.join("certs"), &keep)?;
    }
    Ok(())
}

/// Removes files under `certs/` that the Secret no longer has, and directories left
/// empty. The keyring is never removed: a Secret without one leaves the last keyring.
fn remove_stale_certs(
    certs: &Path,
    keep: &std::collections::BTreeSet<PathBuf>,
) -> Result<(), ClusterError> {
    let err = |path: &Path| {
        let path = path.to_owned();
        move |source| ClusterError::Write { path, source }
    };
    let dirs = match std::fs::read_dir(certs) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(err(certs)(e)),
    };
    for dir in dirs {
        let dir = dir.map_err(err(certs))?.path();
        if !dir.is_dir() {
            continue;
        }
        let mut left = 0usize;
        for file in std::fs::read_dir(&dir).map_err(err(&dir))? {
            let file = file.map_err(err(&dir))?.path();
            let temp = file
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.'));
            if keep.contains(&file) || temp {
                left += 1;
                continue;
            }
            std::fs::remove_file(&file).map_err(err(&file))?;
            tracing::info!(file = %file.display(), "removed a certificate file that left the Secret");
        }
        if left == 0 {
            std::fs::remove_dir(&dir).map_err(err(&dir))?;
        }
    }
    Ok(())
}

/// Where a Secret key is written: `keyring.yaml`, or `<s>.tls.crt`, `<s>.tls.key`,
/// `<s>.ca.crt` and `<s>.auth` (an htpasswd file) under `certs/<s>/`. Other keys and names that are not one path component are skipped.
fn secret_path(state: &Path, key: &str) -> Option<PathBuf> {
    if key == KEYRING_SECRET_KEY {
        return Some(state.join("keyring.yaml"));
    }
    let (name, file) = if let Some(n) = key.strip_suffix(".ca.crt") {
        (n, "ca.crt")
    } else if let Some(n) = key.strip_suffix(".tls.crt") {
        (n, "tls.crt")
    } else if let Some(n) = key.strip_suffix(".tls.key") {
        (n, "tls.key")
    } else if let Some(n) = key.strip_suffix(".auth") {
        (n, "auth")
    } else {
        return None;
    };
    let ok = !name.is_empty() && name != "." && name != ".." && !name.contains('/');
    ok.then(|| state.join("certs").join(name).join(file))
}

/// Writes `bytes` to `path` (mode 0600) through a temp file and a rename, only if the
/// content differs.
fn write_if_changed(path: &Path, bytes: &[u8]) -> Result<(), ClusterError> {
    if std::fs::read(path).is_ok_and(|old| old == bytes) {
        return Ok(());
    }
    let err = |source| ClusterError::Write {
        path: path.to_owned(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(err)?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("state");
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(err)?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(err)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(err)
}

/// Waits for the first successful sync (retrying with backoff), starts the runtime on the
/// state directory's files, and keeps syncing every `cluster.poll` until shutdown.
pub async fn start(
    client: Client,
    cluster: ClusterOptions,
    mut opts: Options,
) -> Result<Handle, ClusterError> {
    let mut backoff = Duration::from_millis(200);
    let mut seen = Seen::default();
    loop {
        match sync_once(&client, &cluster, &mut seen).await {
            Ok(()) => break,
            Err(e @ ClusterError::Write { .. }) => return Err(e),
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "waiting for the array's ConfigMap");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
    let state = &cluster.state_dir;
    opts.manifests = None;
    opts.config = Some(state.join("config.json"));
    opts.keyring = Some(state.join("keyring.yaml"));
    opts.certs = Some(state.join("certs"));
    let mut handle = crate::runtime::start(opts).await?;
    let sync = tokio::spawn(async move {
        loop {
            tokio::time::sleep(cluster.poll).await;
            if let Err(e) = sync_once(&client, &cluster, &mut seen).await {
                tracing::warn!(error = %e, "cluster sync failed; the last files keep serving");
            }
        }
    });
    handle.add_task(sync);
    Ok(handle)
}

/// Runs in cluster mode until SIGTERM or SIGINT, then drains.
pub async fn run(
    client: Client,
    cluster: ClusterOptions,
    opts: Options,
) -> Result<(), ClusterError> {
    // A member still waiting for its first ConfigMap stops on a signal too, instead of
    // waiting for the kubelet's SIGKILL at the end of the grace period.
    let signal = crate::runtime::wait_for_signal();
    tokio::pin!(signal);
    let handle = tokio::select! {
        started = start(client, cluster, opts) => started?,
        () = &mut signal => {
            tracing::info!("stopped before the first config was loaded");
            return Ok(());
        }
    };
    tracing::info!(admin = %handle.admin_addr(), "dataplane started in cluster mode");
    signal.await;
    tracing::info!("draining");
    handle.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_keys_map_to_one_file_each_even_with_dotted_names() {
        let st = Path::new("/state");
        let p = |k: &str| secret_path(st, k).map(|p| p.display().to_string());
        assert_eq!(p("keyring.yaml").as_deref(), Some("/state/keyring.yaml"));
        // `x` and `x.ca` are both valid Secret names: their keys must not collide.
        assert_eq!(p("x.ca.crt").as_deref(), Some("/state/certs/x/ca.crt"));
        assert_eq!(
            p("x.ca.tls.crt").as_deref(),
            Some("/state/certs/x.ca/tls.crt")
        );
        assert_eq!(
            p("x.ca.tls.key").as_deref(),
            Some("/state/certs/x.ca/tls.key")
        );
        assert_eq!(p("x.tls.crt").as_deref(), Some("/state/certs/x/tls.crt"));
        assert_eq!(p("x.auth").as_deref(), Some("/state/certs/x/auth"));
        assert_eq!(p("x.ca.auth").as_deref(), Some("/state/certs/x.ca/auth"));
        // Nothing escapes certs/, and unknown keys are skipped.
        for bad in [
            "..tls.crt",
            "..ca.crt",
            "..auth",
            "a/b.auth",
            ".tls.key",
            "a/b.tls.crt",
            "x.crt",
            "x.key",
            "x",
        ] {
            assert_eq!(p(bad), None, "{bad}");
        }
    }
}
