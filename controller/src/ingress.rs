//! Ingress reconcile: each Ingress of a Portcullis class becomes generated ServerFarms
//! (see `portcullis_crds::ingress`), which the array reconcile then publishes like any
//! other farm. Steps: classes → target array → Service ports → translate (pure) →
//! apply the farms and delete the stale ones → events → `status.loadBalancer`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass, IngressLoadBalancerIngress};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::Store;
use kube::{Resource, ResourceExt};
use parking_lot::Mutex;
use portcullis_crds::ingress::{
    self, ArrayTarget, FIELD_MANAGER, Finding, INGRESS_LABEL, Migration, ServicePorts, Severity,
};
use portcullis_crds::v1alpha1::ServerFarm;

use crate::reconcile::Context;

/// What the Ingress reconcile needs besides the shared [`Context`].
pub struct IngressContext {
    /// The shared context (client, recorder, metrics).
    pub ctx: Arc<Context>,
    /// Classes served besides Portcullis's own (the ingress-nginx migration switch).
    pub migration: Migration,
    /// The findings last reported per Ingress uid, so events are sent when they change
    /// rather than on every pass.
    reported: Mutex<HashMap<String, u64>>,
    /// The IngressClasses, when a reflector keeps them; otherwise each pass lists them.
    classes: Option<Store<IngressClass>>,
    /// The Ingresses the controller sees, so what was reported for deleted ones is
    /// forgotten.
    live: Option<Store<Ingress>>,
}

impl IngressContext {
    /// A context for `migration`.
    pub fn new(ctx: Arc<Context>, migration: Migration) -> Self {
        IngressContext {
            ctx,
            migration,
            reported: Mutex::new(HashMap::new()),
            classes: None,
            live: None,
        }
    }

    /// Reads IngressClasses from `classes` instead of listing them on every pass, and
    /// forgets the reports of Ingresses no longer in `live`.
    pub fn with_stores(mut self, classes: Store<IngressClass>, live: Store<Ingress>) -> Self {
        self.classes = Some(classes);
        self.live = Some(live);
        self
    }

    /// How many Ingresses have a report remembered.
    pub fn remembered(&self) -> usize {
        self.reported.lock().len()
    }

    /// The cluster's IngressClasses.
    async fn classes(&self) -> Result<Vec<IngressClass>, IngressError> {
        // A reflector that cannot list (RBAC, API down) never becomes ready: then the
        // list below says why.
        if let Some(store) = &self.classes
            && let Ok(Ok(())) =
                tokio::time::timeout(Duration::from_secs(5), store.wait_until_ready()).await
        {
            return Ok(store.state().iter().map(|c| (**c).clone()).collect());
        }
        Ok(Api::<IngressClass>::all(self.ctx.client.clone())
            .list(&ListParams::default())
            .await
            .map_err(err("list IngressClasses"))?
            .items)
    }

    /// Remembers `digest` as what was last reported for `uid`; false when it already
    /// was. Reports of deleted Ingresses are dropped once they outnumber the live ones.
    fn remember(&self, uid: String, digest: u64) -> bool {
        let mut reported = self.reported.lock();
        if reported.insert(uid, digest) == Some(digest) {
            return false;
        }
        if let Some(live) = &self.live {
            let live = live.state();
            if reported.len() > 2 * live.len() + 64 {
                let uids: BTreeSet<String> = live.iter().filter_map(|i| i.uid()).collect();
                reported.retain(|uid, _| uids.contains(uid));
            }
        }
        true
    }
}

/// Why an Ingress reconcile failed (it is retried).
#[derive(Debug, thiserror::Error)]
#[error("failed to {what}: {source}")]
pub struct IngressError {
    what: String,
    #[source]
    source: kube::Error,
}

fn err(what: impl Into<String>) -> impl FnOnce(kube::Error) -> IngressError {
    let what = what.into();
    move |source| IngressError { what, source }
}

/// How often an Ingress is looked at again without a change (its array's Service
/// address, Services of named ports).
const REQUEUE: Duration = Duration::from_secs(60);

/// Reconciles one Ingress.
#[tracing::instrument(skip_all, fields(ingress = %ing.name_any(), namespace = ing.namespace().unwrap_or_default()))]
pub async fn reconcile_ingress(
    ing: Arc<Ingress>,
    ictx: Arc<IngressContext>,
) -> Result<Action, IngressError> {
    let client = &ictx.ctx.client;
    let ns = ing.namespace().unwrap_or_default();
    let classes = ictx.classes().await?;
    let farms_api: Api<ServerFarm> = Api::namespaced(client.clone(), &ns);
    let existing = farms_api
        .list(&ListParams::default().labels(&format!(
            "{INGRESS_LABEL}={}",
            ingress::label_value(&ing.name_any())
        )))
        .await
        .map_err(err(format!(
            "list the farms of Ingress {ns}/{}",
            ing.name_any()
        )))?
        .items;
    let Some((_class, target)) = ingress::target(&ing, &classes, &ictx.migration) else {
        release(&ictx, &ing, &classes, &farms_api, &existing).await?;
        return Ok(Action::await_change());
    };
    let ports = service_ports(client, &ns, &ing).await?;
    let translated = ingress::translate(&ing, &target, &ports);
    let mut findings = translated.findings;
    let applied = apply_farms(&farms_api, &ing, translated.farms, &mut findings).await?;
    let keep: BTreeSet<String> = applied.iter().map(ResourceExt::name_any).collect();
    delete_stale(&farms_api, &ing, &existing, &keep).await?;
    findings.extend(rejected_farms(&existing, &keep));
    report(&ictx, &ing, &findings).await;
    publish_status(client, &ing, &target).await?;
    Ok(Action::requeue(REQUEUE))
}

/// An Ingress that is not (or no longer) ours: takes back what it had become, and says
/// on it when the class it asks for is ours but cannot be used.
async fn release(
    ictx: &IngressContext,
    ing: &Ingress,
    classes: &[IngressClass],
    farms_api: &Api<ServerFarm>,
    existing: &[ServerFarm],
) -> Result<(), IngressError> {
    delete_stale(farms_api, ing, existing, &BTreeSet::new()).await?;
    let broken: Vec<Finding> = classes
        .iter()
        .filter(|c| Some(c.name_any()) == ingress::requested_class(ing))
        .filter_map(ingress::class_problem)
        .map(|message| Finding {
            subject: "spec.ingressClassName".into(),
            severity: Severity::Ignored,
            message,
        })
        .collect();
    if !existing.is_empty() || !broken.is_empty() {
        report(ictx, ing, &broken).await;
        write_status(&ictx.ctx.client, ing, Vec::new()).await?;
    }
    Ok(())
}

/// Applies the farms an Ingress becomes; returns those written. A farm name that
/// belongs to someone else, or a farm the API server refuses, becomes a finding and
/// the others still apply.
async fn apply_farms(
    farms_api: &Api<ServerFarm>,
    ing: &Ingress,
    farms: Vec<ServerFarm>,
    findings: &mut Vec<Finding>,
) -> Result<Vec<ServerFarm>, IngressError> {
    let ns = ing.namespace().unwrap_or_default();
    let mut applied = Vec::new();
    for farm in farms {
        let name = farm.name_any();
        if let Some(other) = foreign_farm(farms_api, ing, &name).await? {
            findings.push(Finding {
                subject: format!("ServerFarm {name}"),
                severity: Severity::Ignored,
                message: other,
            });
            continue;
        }
        let written = farms_api
            .patch(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&farm),
            )
            .await;
        match written {
            Ok(w) => applied.push(w),
            // The API server refused this farm (its schema or CEL rules): say why on
            // the Ingress and go on with the others.
            Err(kube::Error::Api(s)) if s.code == 422 || s.code == 400 => {
                findings.push(Finding {
                    subject: format!("ServerFarm {name}"),
                    severity: Severity::Ignored,
                    message: format!("refused by the API server, not served: {}", s.message),
                });
            }
            Err(e) => return Err(err(format!("apply ServerFarm {ns}/{name}"))(e)),
        }
    }
    Ok(applied)
}

/// Retries a failed Ingress reconcile.
pub fn ingress_error_policy(
    _ing: Arc<Ingress>,
    error: &IngressError,
    _ctx: Arc<IngressContext>,
) -> Action {
    tracing::warn!(error = %error, "ingress reconcile failed");
    Action::requeue(Duration::from_secs(10))
}

/// The named ports of the Services the Ingress's backends name by port name.
async fn service_ports(
    client: &kube::Client,
    ns: &str,
    ing: &Ingress,
) -> Result<ServicePorts, IngressError> {
    let spec = ing.spec.as_ref();
    let backends = spec
        .and_then(|s| s.default_backend.iter().next().cloned())
        .into_iter()
        .chain(
            spec.and_then(|s| s.rules.clone())
                .into_iter()
                .flatten()
                .filter_map(|r| r.http)
                .flat_map(|h| h.paths.into_iter().map(|p| p.backend)),
        );
    let named: BTreeSet<String> = backends
        .filter_map(|b| b.service)
        .filter(|s| s.port.as_ref().is_some_and(|p| p.name.is_some()))
        .map(|s| s.name)
        .collect();
    let mut ports = ServicePorts::new();
    let api: Api<Service> = Api::namespaced(client.clone(), ns);
    for svc in named {
        let Some(found) = api
            .get_opt(&svc)
            .await
            .map_err(err(format!("read Service {ns}/{svc}")))?
        else {
            continue;
        };
        for p in found.spec.and_then(|s| s.ports).into_iter().flatten() {
            if let (Some(name), Ok(port)) = (p.name, u16::try_from(p.port)) {
                ports.insert((svc.clone(), name), port);
            }
        }
    }
    Ok(ports)
}

/// Whether `farm` is controlled by `ing` (by uid).
fn owned_by(farm: &ServerFarm, ing: &Ingress) -> bool {
    farm.owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && Some(&o.uid) == ing.uid().as_ref())
}

/// Why a farm named `name` may not be written for `ing`: it exists and belongs to
/// someone else (never taken over).
async fn foreign_farm(
    api: &Api<ServerFarm>,
    ing: &Ingress,
    name: &str,
) -> Result<Option<String>, IngressError> {
    let found = api
        .get_opt(name)
        .await
        .map_err(err(format!("read ServerFarm {name}")))?;
    Ok(found.filter(|f| !owned_by(f, ing)).map(|_| {
        format!(
            "a ServerFarm named {name} already exists and this Ingress does not control it; it is left alone and these paths are not served"
        )
    }))
}

/// Deletes the farms `ing` controls that are not in `keep`.
async fn delete_stale(
    api: &Api<ServerFarm>,
    ing: &Ingress,
    existing: &[ServerFarm],
    keep: &BTreeSet<String>,
) -> Result<(), IngressError> {
    for farm in existing
        .iter()
        .filter(|f| owned_by(f, ing) && !keep.contains(&f.name_any()))
    {
        let name = farm.name_any();
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(err(format!("delete ServerFarm {name}"))(e)),
        }
    }
    Ok(())
}

/// The generated farms the array refused (a conflict with an older farm or Ingress, a
/// missing Secret), as findings on the Ingress.
fn rejected_farms(existing: &[ServerFarm], keep: &BTreeSet<String>) -> Vec<Finding> {
    existing
        .iter()
        .filter(|f| keep.contains(&f.name_any()))
        .filter_map(|f| {
            let c = f
                .status
                .as_ref()?
                .conditions
                .iter()
                .find(|c| c.type_ == "Accepted" && c.status == "False")?;
            Some(Finding {
                subject: format!("ServerFarm {}", f.name_any()),
                severity: Severity::Ignored,
                message: format!("not published ({}): {}", c.reason, c.message),
            })
        })
        .collect()
}

/// Sends the findings as events when they differ from those last sent.
async fn report(ictx: &IngressContext, ing: &Ingress, findings: &[Finding]) {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    findings.hash(&mut h);
    ing.metadata.generation.hash(&mut h);
    let digest = h.finish();
    if !ictx.remember(ing.uid().unwrap_or_default(), digest) {
        return;
    }
    let reference = ing.object_ref(&());
    for f in findings {
        let (type_, reason) = match f.severity {
            Severity::Ignored => (EventType::Warning, "NotServed"),
            Severity::Note => (EventType::Normal, "ServedDifferently"),
        };
        // The recorder folds events of one reason and action into a series that keeps
        // the first note: each finding gets its own action (what it is about), so every
        // one is seen.
        let action: String = f.subject.chars().take(128).collect();
        ictx.ctx
            .publish(
                &reference,
                type_,
                reason,
                &action,
                format!("{}: {}", f.subject, f.message),
            )
            .await;
    }
}

/// `status.loadBalancer` from the array's Service: its load-balancer addresses, else
/// its external IPs, else its cluster IP.
async fn publish_status(
    client: &kube::Client,
    ing: &Ingress,
    target: &ArrayTarget,
) -> Result<(), IngressError> {
    let svc = Api::<Service>::namespaced(client.clone(), &target.namespace)
        .get_opt(&target.name)
        .await
        .map_err(err(format!(
            "read Service {}/{}",
            target.namespace, target.name
        )))?;
    let addresses = svc.map(|s| lb_addresses(&s)).unwrap_or_default();
    write_status(client, ing, addresses).await
}

/// Sets `status.loadBalancer.ingress` to `addresses` unless it already is. An empty list
/// is written as an explicit null, so a merge patch clears what was there.
async fn write_status(
    client: &kube::Client,
    ing: &Ingress,
    addresses: Vec<IngressLoadBalancerIngress>,
) -> Result<(), IngressError> {
    let current = ing
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.clone())
        .unwrap_or_default();
    if current == addresses {
        return Ok(());
    }
    let value = if addresses.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::to_value(&addresses).unwrap_or_default()
    };
    let ns = ing.namespace().unwrap_or_default();
    Api::<Ingress>::namespaced(client.clone(), &ns)
        .patch_status(
            &ing.name_any(),
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"status": {"loadBalancer": {"ingress": value}}})),
        )
        .await
        .map_err(err(format!(
            "write the status of Ingress {ns}/{}",
            ing.name_any()
        )))?;
    Ok(())
}

/// The addresses a Service is reached at, most public first.
pub fn lb_addresses(svc: &Service) -> Vec<IngressLoadBalancerIngress> {
    let from_lb: Vec<IngressLoadBalancerIngress> = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.clone())
        .into_iter()
        .flatten()
        .map(|i| IngressLoadBalancerIngress {
            ip: i.ip,
            hostname: i.hostname,
            ports: None,
        })
        .collect();
    if !from_lb.is_empty() {
        return from_lb;
    }
    let spec = svc.spec.clone().unwrap_or_default();
    let ips: Vec<String> = match spec.external_ips.filter(|e| !e.is_empty()) {
        Some(e) => e,
        None => spec
            .cluster_ip
            .into_iter()
            .filter(|ip| !ip.is_empty() && ip != "None")
            .collect(),
    };
    let mut seen = BTreeMap::new();
    for ip in ips {
        seen.entry(ip.clone())
            .or_insert(IngressLoadBalancerIngress {
                ip: Some(ip),
                hostname: None,
                ports: None,
            });
    }
    seen.into_values().collect()
}
