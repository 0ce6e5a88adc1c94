//! Pod volumes, written as directories under the agent's state directory and bind-mounted
//! into each container's own mount namespace at its `mountPath`.
//!
//! Supported: `emptyDir`, `configMap`, `secret`, `downwardAPI` and `projected` (with
//! `serviceAccountToken`, which is how every pod gets its API credentials: the
//! ServiceAccount admission plugin adds the `kube-api-access-*` projected volume). The
//! token is a real TokenRequest bound to the pod, refreshed like the kubelet does. Any
//! other volume type fails the pod with a clear message.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use k8s_openapi::api::core::v1::{
    ConfigMap, DownwardAPIVolumeFile, KeyToPath, Pod, Secret, ServiceAccount, Volume,
};
use kube::api::PostParams;
use kube::{Api, Client};
use serde_json::json;

/// Writes every volume of `pod` under `root/<volume name>`; returns each volume's
/// directory by name. Called again to refresh ConfigMaps and Secrets, and, when
/// `new_tokens`, ServiceAccount tokens (a token that exists is otherwise kept: the kubelet
/// too renews a token only when 80% of its lifetime has passed).
pub async fn materialize(
    client: &Client,
    pod: &Pod,
    root: &Path,
    new_tokens: bool,
) -> anyhow::Result<BTreeMap<String, PathBuf>> {
    let mut dirs = BTreeMap::new();
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let volumes = pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.clone())
        .unwrap_or_default();
    for volume in &volumes {
        let dir = root.join(&volume.name);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("failed to create {}", dir.display()))?;
        write_volume(client, pod, ns, volume, &dir, new_tokens)
            .await
            .with_context(|| format!("volume {:?}", volume.name))?;
        dirs.insert(volume.name.clone(), dir);
    }
    Ok(dirs)
}

async fn write_volume(
    client: &Client,
    pod: &Pod,
    ns: &str,
    volume: &Volume,
    dir: &Path,
    new_tokens: bool,
) -> anyhow::Result<()> {
    if volume.empty_dir.is_some() {
        // World-writable, as the kubelet makes it, so a `runAsUser` can write.
        set_mode(dir, 0o777)?;
        return Ok(());
    }
    if let Some(cm) = &volume.config_map {
        let data = config_map_data(client, ns, &cm.name, cm.optional.unwrap_or(false)).await?;
        return write_keys(dir, &data, cm.items.as_deref(), cm.default_mode);
    }
    if let Some(secret) = &volume.secret {
        let name = secret.secret_name.clone().unwrap_or_default();
        let data = secret_data(client, ns, &name, secret.optional.unwrap_or(false)).await?;
        return write_keys(dir, &data, secret.items.as_deref(), secret.default_mode);
    }
    if let Some(downward) = &volume.downward_api {
        for item in downward.items.as_deref().unwrap_or_default() {
            write_downward(pod, dir, item, downward.default_mode)?;
        }
        return Ok(());
    }
    if let Some(projected) = &volume.projected {
        for source in projected.sources.as_deref().unwrap_or_default() {
            if let Some(token) = &source.service_account_token
                && (new_tokens || !dir.join(&token.path).is_file())
            {
                let value = request_token(
                    client,
                    pod,
                    token.audience.as_deref(),
                    token.expiration_seconds.unwrap_or(3607),
                )
                .await?;
                write_file(dir, &token.path, value.as_bytes(), projected.default_mode)?;
            }
            if let Some(cm) = &source.config_map {
                let data =
                    config_map_data(client, ns, &cm.name, cm.optional.unwrap_or(false)).await?;
                write_keys(dir, &data, cm.items.as_deref(), projected.default_mode)?;
            }
            if let Some(secret) = &source.secret {
                let data =
                    secret_data(client, ns, &secret.name, secret.optional.unwrap_or(false)).await?;
                write_keys(dir, &data, secret.items.as_deref(), projected.default_mode)?;
            }
            if let Some(downward) = &source.downward_api {
                for item in downward.items.as_deref().unwrap_or_default() {
                    write_downward(pod, dir, item, projected.default_mode)?;
                }
            }
        }
        return Ok(());
    }
    bail!("this volume type is not supported by the local cluster's node agent")
}

async fn config_map_data(
    client: &Client,
    ns: &str,
    name: &str,
    optional: bool,
) -> anyhow::Result<BTreeMap<String, Vec<u8>>> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let Some(cm) = api.get_opt(name).await? else {
        if optional {
            return Ok(BTreeMap::new());
        }
        bail!("configmap {ns}/{name} not found");
    };
    let mut data: BTreeMap<String, Vec<u8>> = cm
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.into_bytes()))
        .collect();
    data.extend(
        cm.binary_data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0)),
    );
    Ok(data)
}

async fn secret_data(
    client: &Client,
    ns: &str,
    name: &str,
    optional: bool,
) -> anyhow::Result<BTreeMap<String, Vec<u8>>> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let Some(secret) = api.get_opt(name).await? else {
        if optional {
            return Ok(BTreeMap::new());
        }
        bail!("secret {ns}/{name} not found");
    };
    Ok(secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect())
}

/// A TokenRequest for the pod's ServiceAccount, bound to the pod.
async fn request_token(
    client: &Client,
    pod: &Pod,
    audience: Option<&str>,
    expiration: i64,
) -> anyhow::Result<String> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let sa = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .unwrap_or_else(|| "default".to_owned());
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let mut spec = json!({
        "expirationSeconds": expiration,
        "boundObjectRef": {
            "apiVersion": "v1",
            "kind": "Pod",
            "name": pod.metadata.name,
            "uid": pod.metadata.uid,
        },
    });
    if let Some(audience) = audience {
        spec["audiences"] = json!([audience]);
    }
    let request = json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": spec,
    });
    let response: serde_json::Value = api
        .create_subresource("token", &sa, &PostParams::default(), &request)
        .await
        .with_context(|| format!("failed to request a token for serviceaccount {ns}/{sa}"))?;
    response["status"]["token"]
        .as_str()
        .map(str::to_owned)
        .context("the TokenRequest answer has no token")
}

fn write_keys(
    dir: &Path,
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
    default_mode: Option<i32>,
) -> anyhow::Result<()> {
    match items {
        Some(items) => {
            for item in items {
                let Some(value) = data.get(&item.key) else {
                    bail!("key {:?} not found", item.key);
                };
                write_file(dir, &item.path, value, item.mode.or(default_mode))?;
            }
        }
        None => {
            for (key, value) in data {
                write_file(dir, key, value, default_mode)?;
            }
        }
    }
    Ok(())
}

fn write_downward(
    pod: &Pod,
    dir: &Path,
    item: &DownwardAPIVolumeFile,
    default_mode: Option<i32>,
) -> anyhow::Result<()> {
    let value = match &item.field_ref {
        Some(field) => crate::env::field_value(pod, &field.field_path)
            .with_context(|| format!("downward API field {:?}", field.field_path))?,
        None => bail!(
            "downward API item {:?}: only fieldRef is supported",
            item.path
        ),
    };
    write_file(
        dir,
        &item.path,
        value.as_bytes(),
        item.mode.or(default_mode),
    )
}

/// Writes a file atomically (temporary file, then rename) so a reader never sees half.
fn write_file(dir: &Path, rel: &str, value: &[u8], mode: Option<i32>) -> anyhow::Result<()> {
    if rel.split('/').any(|p| p == ".." || p.is_empty()) {
        bail!("volume path {rel:?} is not a relative path");
    }
    let path = dir.join(rel);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let tmp = path.with_extension("portcullis-agent-tmp");
    std::fs::write(&tmp, value).with_context(|| format!("failed to write {}", tmp.display()))?;
    set_mode(&tmp, u32::try_from(mode.unwrap_or(0o644)).unwrap_or(0o644))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("failed to write {}", path.display()))?;
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("failed to chmod {}", path.display()))
}
