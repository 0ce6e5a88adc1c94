//! The immutable snapshot requests are served from, and how one is built.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use portcullis_crds::config::{
    DataplaneConfig, EndpointIdentity, ListenerProtocol, MemberTarget, UpstreamProtocol,
    UpstreamTlsIdentity, UpstreamTrust,
};
use rustls::ClientConfig;

use crate::balance::{FarmEndpoint, FarmRt};
use crate::filters::HeaderOps;
use crate::health::{ProbeKey, ProbeWant, Verifiers};
use crate::pool::{Endpoints, PoolLimits};
use crate::routes::RouteIndex;
use crate::source::SourceError;
use crate::tls::{ListenerCerts, client_config, load_certified_key};

/// DNS results: (host, port) → addresses.
pub(crate) type DnsResults = BTreeMap<(String, u16), Vec<SocketAddr>>;

/// Everything a request needs, immutable.
pub(crate) struct Snapshot {
    pub(crate) config: Arc<DataplaneConfig>,
    pub(crate) hash: String,
    pub(crate) routes: RouteIndex,
    pub(crate) farms: HashMap<String, Arc<FarmRt>>,
    /// Request header changes of the farms that make some, by farm id.
    pub(crate) header_ops: HashMap<String, HeaderOps>,
    /// The access checks of farms that have some, by farm id.
    pub(crate) access: crate::access::AccessMap,
}

/// Certificates by listener port.
pub(crate) type ListenerCertMap = HashMap<u16, Arc<ListenerCerts>>;
/// Upstream TLS client configs by (trust, speaks h2).
pub(crate) type ClientConfigs = HashMap<(UpstreamTrust, bool), Arc<ClientConfig>>;

/// DNS names every farm wants resolved.
pub(crate) fn dns_names(config: &DataplaneConfig) -> Vec<(String, u16)> {
    let mut out: Vec<(String, u16)> = config
        .farms
        .values()
        .flat_map(|f| f.members.iter())
        .filter_map(|m| match &m.target {
            MemberTarget::Dns { host, port } => Some((host.clone(), *port)),
            MemberTarget::Endpoints { .. } => None,
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Loads certificates and upstream client configs. Fails whole when anything is missing.
pub(crate) fn load_tls(
    config: &DataplaneConfig,
    certs_dir: &Path,
) -> Result<(ListenerCertMap, ClientConfigs), SourceError> {
    let mut keys = HashMap::new();
    let mut certs = HashMap::new();
    for l in &config.listeners {
        if l.protocol != ListenerProtocol::Https {
            continue;
        }
        let mut lc = ListenerCerts::default();
        let mut load = |secret: &str| -> Result<_, SourceError> {
            if let Some(k) = keys.get(secret) {
                return Ok(Arc::clone(k));
            }
            let k = load_certified_key(certs_dir, secret)?;
            keys.insert(secret.to_owned(), k.clone());
            Ok(k)
        };
        if let Some(d) = &l.default_certificate {
            lc.default = Some(load(&d.secret)?);
        }
        for s in &l.sni {
            let k = load(&s.certificate.secret)?;
            match s.host.strip_prefix('*') {
                Some(suffix) => lc.wildcard.push((suffix.to_owned(), k)),
                None => {
                    lc.exact.insert(s.host.clone(), k);
                }
            }
        }
        lc.wildcard.sort_by_key(|w| std::cmp::Reverse(w.0.len()));
        certs.insert(l.port, Arc::new(lc));
    }
    let mut clients = HashMap::new();
    for f in config.farms.values() {
        if let Some(t) = &f.upstream.tls {
            let h2 = f.upstream.protocol == UpstreamProtocol::Http2;
            if let std::collections::hash_map::Entry::Vacant(v) =
                clients.entry((t.trust.clone(), h2))
            {
                v.insert(client_config(certs_dir, &t.trust, h2)?);
            }
        }
    }
    Ok((certs, clients))
}

/// Builds a snapshot, syncing the endpoint registry and the verifiers.
pub(crate) fn build(
    config: Arc<DataplaneConfig>,
    dns: &DnsResults,
    clients: &ClientConfigs,
    endpoints: &Endpoints,
    verifiers: &Verifiers,
) -> Snapshot {
    // Each farm's (identity, weight, draining).
    let mut farm_members: BTreeMap<&str, Vec<(EndpointIdentity, u32, bool)>> = BTreeMap::new();
    let mut wanted: HashMap<EndpointIdentity, PoolLimits> = HashMap::new();
    for (id, farm) in &config.farms {
        let mut list: Vec<(EndpointIdentity, u32, bool)> = Vec::new();
        let mut add = |ident: EndpointIdentity, weight: u32, draining: bool| {
            if let Some(e) = list.iter_mut().find(|e| e.0 == ident) {
                e.1 += weight;
                e.2 &= draining;
            } else {
                list.push((ident, weight, draining));
            }
        };
        for m in &farm.members {
            match &m.target {
                MemberTarget::Endpoints { identities } => {
                    for key in identities {
                        if let Some(ep) = config.endpoints.get(key) {
                            add(ep.identity.clone(), m.weight, ep.draining);
                        }
                    }
                }
                MemberTarget::Dns { host, port } => {
                    let tls = farm.upstream.tls.as_ref().map(|t| UpstreamTlsIdentity {
                        sni: t
                            .sni
                            .clone()
                            .unwrap_or_else(|| host.clone())
                            .to_ascii_lowercase(),
                        trust: t.trust.clone(),
                    });
                    for addr in dns.get(&(host.clone(), *port)).into_iter().flatten() {
                        add(
                            EndpointIdentity::new(*addr, tls.clone(), farm.upstream.protocol),
                            m.weight,
                            false,
                        );
                    }
                }
            }
        }
        let limits = PoolLimits {
            max_idle: farm.upstream.max_idle_per_endpoint as usize,
            max_connections: farm.upstream.max_connections_per_endpoint,
            idle_timeout: farm.upstream.pool_idle_timeout.get(),
        };
        for (ident, _, _) in &list {
            wanted
                .entry(ident.clone())
                .and_modify(|l| *l = l.merge(limits))
                .or_insert(limits);
        }
        farm_members.insert(id, list);
    }
    let registry = endpoints.sync(&wanted);

    // Each farm's upstream TLS client, looked up once for both uses below.
    let farm_tls: HashMap<&str, _> = config
        .farms
        .iter()
        .map(|(id, farm)| {
            let tls = farm.upstream.tls.as_ref().and_then(|t| {
                clients
                    .get(&(
                        t.trust.clone(),
                        farm.upstream.protocol == UpstreamProtocol::Http2,
                    ))
                    .cloned()
            });
            (id.as_str(), tls)
        })
        .collect();
    let mut wants = Vec::new();
    for (id, farm) in &config.farms {
        let tls = &farm_tls[id.as_str()];
        if let Some(v) = &farm.verifier {
            for (ident, _, _) in &farm_members[id.as_str()] {
                let ep = registry[ident].clone();
                wants.push(ProbeWant {
                    key: ProbeKey::new(&ep, v),
                    endpoint: ep,
                    verifier: v.clone(),
                    tls: tls.clone(),
                    farm: id.clone(),
                });
            }
        }
    }
    let probes = verifiers.sync(wants);

    let mut farms = HashMap::new();
    for (id, farm) in &config.farms {
        let tls = farm_tls[id.as_str()].clone();
        let eps = farm_members[id.as_str()]
            .iter()
            .map(|(ident, weight, draining)| {
                let endpoint = registry[ident].clone();
                let probe = farm
                    .verifier
                    .as_ref()
                    .and_then(|v| probes.get(&ProbeKey::new(&endpoint, v)).cloned());
                FarmEndpoint {
                    endpoint,
                    weight: *weight,
                    draining: *draining,
                    probe,
                }
            })
            .collect();
        farms.insert(id.clone(), Arc::new(FarmRt::new(farm.clone(), eps, tls)));
    }
    let header_ops = config
        .farms
        .iter()
        .filter_map(|(id, f)| {
            let changes = f.filters.request_headers.as_ref()?;
            Some((id.clone(), HeaderOps::new(changes)))
        })
        .collect();
    Snapshot {
        hash: config.content_hash(),
        routes: RouteIndex::new(&config.routes),
        farms,
        header_ops,
        access: Default::default(),
        config,
    }
}
