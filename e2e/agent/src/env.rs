//! A container's environment, built as the kubelet builds it: `envFrom`, then `env` with
//! `$(VAR)` expansion and `valueFrom` (fieldRef, resourceFieldRef, configMapKeyRef,
//! secretKeyRef), plus the variables every pod gets (`HOSTNAME`, `PATH` and the
//! `kubernetes` Service's `KUBERNETES_SERVICE_HOST`/`PORT`).

use std::collections::BTreeMap;

use anyhow::bail;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret};
use kube::{Api, Client};

/// Where pods reach the API server (the `kubernetes` Service's endpoint).
#[derive(Clone, Debug)]
pub struct ApiEndpoint {
    /// Host (an IP on the pod bridge).
    pub host: String,
    /// Port.
    pub port: u16,
}

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The ordered environment of one container.
pub async fn build(
    client: &Client,
    pod: &Pod,
    container: &Container,
    api: &ApiEndpoint,
) -> anyhow::Result<Vec<(String, String)>> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    env.insert("PATH".into(), DEFAULT_PATH.into());
    env.insert(
        "HOSTNAME".into(),
        pod.metadata.name.clone().unwrap_or_default(),
    );
    env.insert("KUBERNETES_SERVICE_HOST".into(), api.host.clone());
    env.insert("KUBERNETES_SERVICE_PORT".into(), api.port.to_string());
    env.insert("KUBERNETES_SERVICE_PORT_HTTPS".into(), api.port.to_string());
    env.insert(
        "KUBERNETES_PORT".into(),
        format!("tcp://{}:{}", api.host, api.port),
    );
    for from in container.env_from.as_deref().unwrap_or_default() {
        let prefix = from.prefix.clone().unwrap_or_default();
        if let Some(cm) = &from.config_map_ref {
            let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
            match api.get_opt(&cm.name).await? {
                Some(found) => {
                    for (k, v) in found.data.unwrap_or_default() {
                        env.insert(format!("{prefix}{k}"), v);
                    }
                }
                None if cm.optional.unwrap_or(false) => {}
                None => bail!("configmap {ns}/{} not found", cm.name),
            }
        }
        if let Some(secret) = &from.secret_ref {
            let api: Api<Secret> = Api::namespaced(client.clone(), ns);
            match api.get_opt(&secret.name).await? {
                Some(found) => {
                    for (k, v) in found.data.unwrap_or_default() {
                        env.insert(
                            format!("{prefix}{k}"),
                            String::from_utf8_lossy(&v.0).into_owned(),
                        );
                    }
                }
                None if secret.optional.unwrap_or(false) => {}
                None => bail!("secret {ns}/{} not found", secret.name),
            }
        }
    }
    for var in container.env.as_deref().unwrap_or_default() {
        let value = match &var.value_from {
            None => expand(var.value.as_deref().unwrap_or_default(), &env),
            Some(from) => {
                if let Some(field) = &from.field_ref {
                    field_value(pod, &field.field_path)?
                } else if let Some(resource) = &from.resource_field_ref {
                    resource_value(container, &resource.resource)
                } else if let Some(key) = &from.config_map_key_ref {
                    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
                    let found = api
                        .get_opt(&key.name)
                        .await?
                        .and_then(|cm| cm.data.unwrap_or_default().remove(&key.key));
                    match found {
                        Some(v) => v,
                        None if key.optional.unwrap_or(false) => continue,
                        None => bail!(
                            "env {}: configmap key {}/{} not found",
                            var.name,
                            key.name,
                            key.key
                        ),
                    }
                } else if let Some(key) = &from.secret_key_ref {
                    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
                    let found = api
                        .get_opt(&key.name)
                        .await?
                        .and_then(|s| s.data.unwrap_or_default().remove(&key.key));
                    match found {
                        Some(v) => String::from_utf8_lossy(&v.0).into_owned(),
                        None if key.optional.unwrap_or(false) => continue,
                        None => bail!(
                            "env {}: secret key {}/{} not found",
                            var.name,
                            key.name,
                            key.key
                        ),
                    }
                } else {
                    bail!("env {}: unsupported valueFrom", var.name)
                }
            }
        };
        env.insert(var.name.clone(), value);
    }
    Ok(env.into_iter().collect())
}

/// A downward-API field of the pod.
pub fn field_value(pod: &Pod, path: &str) -> anyhow::Result<String> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    let from_map = |map: &Option<BTreeMap<String, String>>, key: &str| {
        map.as_ref()
            .and_then(|m| m.get(key).cloned())
            .unwrap_or_default()
    };
    Ok(match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.podIP" | "status.podIPs" => {
            status.and_then(|s| s.pod_ip.clone()).unwrap_or_default()
        }
        "status.hostIP" | "status.hostIPs" => {
            status.and_then(|s| s.host_ip.clone()).unwrap_or_default()
        }
        p => {
            if let Some(key) = bracketed(p, "metadata.labels") {
                from_map(&meta.labels, key)
            } else if let Some(key) = bracketed(p, "metadata.annotations") {
                from_map(&meta.annotations, key)
            } else {
                bail!("field path {p:?} is not supported")
            }
        }
    })
}

fn bracketed<'a>(path: &'a str, prefix: &str) -> Option<&'a str> {
    path.strip_prefix(prefix)?
        .strip_prefix("['")?
        .strip_suffix("']")
}

/// `limits.cpu` and friends: the container's own value, or the node's capacity (what the
/// kubelet gives when no limit is set), as whole units.
fn resource_value(container: &Container, resource: &str) -> String {
    let resources = container.resources.as_ref();
    let (kind, name) = resource.split_once('.').unwrap_or(("limits", resource));
    let set = match kind {
        "requests" => resources.and_then(|r| r.requests.as_ref()),
        _ => resources.and_then(|r| r.limits.as_ref()),
    };
    if let Some(q) = set.and_then(|m| m.get(name)) {
        return q.0.clone();
    }
    match name {
        "cpu" => std::thread::available_parallelism()
            .map(|n| n.get().to_string())
            .unwrap_or_else(|_| "1".into()),
        "memory" => "4294967296".into(),
        _ => "0".into(),
    }
}

/// Kubernetes' `$(VAR)` expansion: a defined variable is replaced, `$$` is a literal `$`,
/// anything else is left as written.
pub fn expand(input: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let tail = &rest[i + 1..];
        if let Some(after) = tail.strip_prefix('$') {
            out.push('$');
            rest = after;
        } else if let Some(inner) = tail.strip_prefix('(')
            && let Some(end) = inner.find(')')
            && let Some(value) = env.get(&inner[..end])
        {
            out.push_str(value);
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = tail;
        }
    }
    out.push_str(rest);
    out
}

/// Expands `$(VAR)` in a container's command and args.
pub fn expand_all(items: &[String], env: &[(String, String)]) -> Vec<String> {
    let map: BTreeMap<String, String> = env.iter().cloned().collect();
    items.iter().map(|s| expand(s, &map)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansion_follows_kubernetes() {
        let env = BTreeMap::from([("A".to_owned(), "x".to_owned())]);
        assert_eq!(expand("$(A)-$(B)-$$(A)-$", &env), "x-$(B)-$(A)-$");
    }

    #[test]
    fn fields() -> anyhow::Result<()> {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "n", "labels": {"app": "web"}},
            "spec": {"containers": [], "nodeName": "node-0"},
        }))?;
        assert_eq!(field_value(&pod, "metadata.namespace")?, "n");
        assert_eq!(field_value(&pod, "metadata.labels['app']")?, "web");
        assert_eq!(field_value(&pod, "spec.nodeName")?, "node-0");
        assert!(field_value(&pod, "spec.nope").is_err());
        Ok(())
    }
}
