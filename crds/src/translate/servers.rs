//! Servers: a farm's `servers` (addresses, host names, Services) into weighted members
//! and the endpoints they resolve to.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use crate::config::*;
use crate::v1alpha1::{self, Server, ServiceRef};

use super::names::normalize_host;
use super::tls::endpoint_tls;
use super::{FarmErrors, Resolutions, ServiceKey};

/// What the servers are looked up with.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ServerContext<'a> {
    /// The farm's namespace (that of its Services).
    pub namespace: &'a str,
    /// The farm's upstream TLS.
    pub tls: Option<&'a UpstreamTlsConfig>,
    /// The farm's `backendHost`: the name verified when no other is known.
    pub backend_host: Option<&'a str>,
    /// The upstream protocol, part of every endpoint's identity.
    pub protocol: UpstreamProtocol,
    /// What host and Service names resolved to.
    pub resolutions: &'a Resolutions,
}

/// The members and endpoints of a farm.
#[derive(Clone, Debug, Default)]
pub(crate) struct Servers {
    /// One per valid server, in order.
    pub members: Vec<MemberConfig>,
    /// Endpoint identity key → endpoint.
    pub endpoints: BTreeMap<String, EndpointConfig>,
    /// Endpoint identity key → the servers that resolved to it.
    pub names_by_identity: BTreeMap<String, Vec<String>>,
    /// Servers that resolved to nothing (yet): the farm is published without them.
    pub unresolved: Vec<String>,
}

impl Servers {
    /// Adds the endpoint `addr` of server `label`; `keys` collects the member's
    /// endpoints. An endpoint named by several servers drains only when all say so.
    fn add(
        &mut self,
        label: &str,
        addr: SocketAddr,
        draining: bool,
        tls: Option<UpstreamTlsIdentity>,
        protocol: UpstreamProtocol,
        keys: &mut Vec<String>,
    ) {
        let identity = EndpointIdentity::new(addr, tls, protocol);
        let key = identity.key();
        self.endpoints
            .entry(key.clone())
            .and_modify(|e| e.draining &= draining)
            .or_insert(EndpointConfig { identity, draining });
        let names = self.names_by_identity.entry(key.clone()).or_default();
        if !names.iter().any(|n| n == label) {
            names.push(label.to_owned());
        }
        if !keys.contains(&key) {
            keys.push(key);
        }
    }

    /// The endpoints for status: each with the servers naming it, draining ones marked.
    pub(crate) fn statuses(&self) -> Vec<v1alpha1::EndpointStatus> {
        self.names_by_identity
            .iter()
            .map(|(identity, servers)| v1alpha1::EndpointStatus {
                health: self
                    .endpoints
                    .get(identity)
                    .filter(|e| e.draining)
                    .map(|_| "Draining".to_owned()),
                identity: identity.clone(),
                servers: servers.clone(),
            })
            .collect()
    }
}

/// A problem with one server: the field, and what is wrong.
type ServerError = (String, String);

/// The farm's servers as members. No servers, only weight 0, and a server that sets
/// not exactly one of host, address and service are errors; a server with an error is
/// left out.
pub(crate) fn servers(
    list: &[Server],
    ctx: &ServerContext<'_>,
    errs: &mut FarmErrors<'_>,
) -> Servers {
    let mut out = Servers::default();
    if list.is_empty() {
        errs.push("spec.servers", "a farm needs at least one server");
    }
    if !list.is_empty() && list.iter().all(|s| s.weight == 0) {
        errs.push(
            "spec.servers",
            "every server has weight 0, so the farm could serve nothing",
        );
    }
    for (i, s) in list.iter().enumerate() {
        let field = format!("spec.servers[{i}]");
        let set = [s.host.is_some(), s.address.is_some(), s.service.is_some()]
            .iter()
            .filter(|x| **x)
            .count();
        if set != 1 {
            errs.push(
                field,
                "a server sets exactly one of host, address or service",
            );
            continue;
        }
        if s.weight > 1000 {
            errs.push(format!("{field}.weight"), "must be 0 to 1000");
        }
        let member = if let Some(address) = &s.address {
            address_server(s, address, &field, ctx, &mut out)
        } else if let Some(host) = &s.host {
            host_server(s, host, &field, ctx, &mut out)
        } else if let Some(svc) = &s.service {
            service_server(s, svc, &field, ctx, &mut out)
        } else {
            continue;
        };
        match member {
            Ok(m) => out.members.push(m),
            Err((field, message)) => errs.push(field, message),
        }
    }
    out
}

/// Server `s` as the member `label` with `target`.
fn member(s: &Server, label: String, target: MemberTarget) -> MemberConfig {
    MemberConfig {
        server: label,
        weight: s.weight,
        target,
    }
}

/// The port of a host or address server.
fn port(s: &Server, field: &str) -> Result<u16, ServerError> {
    s.port.filter(|p| *p != 0).ok_or_else(|| {
        (
            format!("{field}.port"),
            "port is required for host and address servers".to_owned(),
        )
    })
}

/// An `address` server: one endpoint.
fn address_server(
    s: &Server,
    address: &str,
    field: &str,
    ctx: &ServerContext<'_>,
    out: &mut Servers,
) -> Result<MemberConfig, ServerError> {
    let port = port(s, field)?;
    let ip: IpAddr = address.parse().map_err(|_| {
        (
            format!("{field}.address"),
            format!("{address:?} is not an IP address"),
        )
    })?;
    let tls = endpoint_tls(ctx.tls, None, ctx.backend_host)
        .map_err(|m| (format!("{field}.address"), m))?;
    let addr = SocketAddr::new(ip, port);
    let label = format!("address {addr}");
    let mut keys = Vec::new();
    out.add(&label, addr, false, tls, ctx.protocol, &mut keys);
    Ok(member(
        s,
        label,
        MemberTarget::Endpoints { identities: keys },
    ))
}

/// A `host` server: its resolved addresses, or a name the dataplane resolves itself
/// when the caller did not resolve it.
fn host_server(
    s: &Server,
    host: &str,
    field: &str,
    ctx: &ServerContext<'_>,
    out: &mut Servers,
) -> Result<MemberConfig, ServerError> {
    let port = port(s, field)?;
    let host = match normalize_host(host) {
        Ok(h) if !h.starts_with("*.") => h,
        Ok(_) => {
            return Err((
                format!("{field}.host"),
                format!("{host:?} is a wildcard, not a server name"),
            ));
        }
        Err(m) => return Err((format!("{field}.host"), m)),
    };
    let label = format!("host {host}:{port}");
    let Some(addrs) = ctx.resolutions.hosts.get(&host) else {
        return Ok(member(s, label, MemberTarget::Dns { host, port }));
    };
    let tls = endpoint_tls(ctx.tls, Some(&host), ctx.backend_host)
        .map_err(|m| (format!("{field}.host"), m))?;
    let mut keys = Vec::new();
    for ip in addrs {
        let addr = SocketAddr::new(*ip, port);
        out.add(&label, addr, false, tls.clone(), ctx.protocol, &mut keys);
    }
    if keys.is_empty() {
        out.unresolved
            .push(format!("{label} resolved to no address"));
    }
    Ok(member(
        s,
        label,
        MemberTarget::Endpoints { identities: keys },
    ))
}

/// A `service` server: the ready (and terminating, draining) endpoints of the Service
/// port.
fn service_server(
    s: &Server,
    svc: &ServiceRef,
    field: &str,
    ctx: &ServerContext<'_>,
    out: &mut Servers,
) -> Result<MemberConfig, ServerError> {
    if s.port.is_some() {
        return Err((
            format!("{field}.port"),
            "a service server takes its port from service.port; remove port".to_owned(),
        ));
    }
    if svc.port == 0 {
        return Err((
            format!("{field}.service.port"),
            "port must be 1-65535".to_owned(),
        ));
    }
    let label = format!("service {}:{}", svc.name, svc.port);
    let fallback_sni = format!("{}.{}.svc", svc.name, ctx.namespace);
    let tls = endpoint_tls(ctx.tls, Some(&fallback_sni), ctx.backend_host)
        .map_err(|m| (format!("{field}.service"), m))?;
    let key = ServiceKey {
        namespace: ctx.namespace.to_owned(),
        name: svc.name.clone(),
        port: svc.port,
    };
    let mut keys = Vec::new();
    match ctx.resolutions.services.get(&key) {
        Some(eps) => {
            for ep in eps {
                // Not ready and not terminating: starting up, not yet a target.
                if ep.ready || ep.terminating {
                    out.add(
                        &label,
                        ep.address,
                        !ep.ready,
                        tls.clone(),
                        ctx.protocol,
                        &mut keys,
                    );
                }
            }
            if keys.is_empty() {
                out.unresolved
                    .push(format!("{label} has no ready endpoints"));
            }
        }
        None => out.unresolved.push(format!(
            "Service {} port {} has no EndpointSlices",
            svc.name, svc.port
        )),
    }
    Ok(member(
        s,
        label,
        MemberTarget::Endpoints { identities: keys },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::ServiceEndpoint;
    use crate::translate::testing::farm;

    fn context(resolutions: &Resolutions) -> ServerContext<'_> {
        ServerContext {
            namespace: "default",
            tls: None,
            backend_host: None,
            protocol: UpstreamProtocol::default(),
            resolutions,
        }
    }

    fn translate(spec: &str, resolutions: &Resolutions) -> (Servers, Vec<(String, String)>) {
        let f = farm("a", spec);
        let mut errs = FarmErrors::new(&f);
        let out = servers(&f.spec.servers, &context(resolutions), &mut errs);
        let errors = errs
            .errors
            .into_iter()
            .map(|e| (e.field, e.message))
            .collect();
        (out, errors)
    }

    #[test]
    fn an_address_server_is_one_endpoint() {
        let (out, errors) = translate(
            "servers:\n- address: 10.0.0.1\n  port: 80\n  weight: 3\n",
            &Resolutions::default(),
        );
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(out.members.len(), 1);
        assert_eq!(out.members[0].server, "address 10.0.0.1:80");
        assert_eq!(out.members[0].weight, 3);
        assert_eq!(out.endpoints.len(), 1);
        let statuses = out.statuses();
        assert_eq!(statuses[0].servers, ["address 10.0.0.1:80"]);
        assert_eq!(statuses[0].health, None);
    }

    #[test]
    fn an_unresolved_host_is_left_to_dns() {
        let (out, errors) = translate(
            "servers:\n- host: Web.Example.\n  port: 8080\n",
            &Resolutions::default(),
        );
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(
            out.members[0].target,
            MemberTarget::Dns {
                host: "web.example".into(),
                port: 8080
            }
        );
        assert!(out.endpoints.is_empty());
    }

    #[test]
    fn a_terminating_service_endpoint_drains() {
        let mut resolutions = Resolutions::default();
        let endpoint = |ip: &str, ready, terminating| ServiceEndpoint {
            address: SocketAddr::new(ip.parse().unwrap(), 8080),
            ready,
            terminating,
        };
        resolutions.services.insert(
            ServiceKey {
                namespace: "default".into(),
                name: "web".into(),
                port: 80,
            },
            vec![
                endpoint("10.1.0.1", true, false),
                endpoint("10.1.0.2", false, true),
                endpoint("10.1.0.3", false, false),
            ],
        );
        let (out, errors) = translate(
            "servers:\n- service:\n    name: web\n    port: 80\n- service:\n    name: api\n    port: 80\n",
            &resolutions,
        );
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(out.endpoints.len(), 2);
        let statuses = out.statuses();
        let draining: Vec<Option<&str>> = statuses.iter().map(|s| s.health.as_deref()).collect();
        assert_eq!(draining, [None, Some("Draining")]);
        assert_eq!(
            out.unresolved,
            ["Service api port 80 has no EndpointSlices"]
        );
    }

    #[test]
    fn a_bad_server_is_left_out_with_its_error() {
        let (out, errors) = translate(
            "servers:\n- address: nowhere\n  port: 80\n- host: '*.example'\n  port: 80\n- address: 10.0.0.1\n- service:\n    name: web\n    port: 80\n  port: 80\n- address: 10.0.0.2\n  host: b\n  port: 80\n",
            &Resolutions::default(),
        );
        assert!(out.members.is_empty());
        let fields: Vec<&str> = errors.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.servers[0].address",
                "spec.servers[1].host",
                "spec.servers[2].port",
                "spec.servers[3].port",
                "spec.servers[4]",
            ]
        );
        assert_eq!(errors[0].1, "\"nowhere\" is not an IP address");
    }

    #[test]
    fn upstream_tls_needs_a_name_for_an_address() {
        let tls = UpstreamTlsConfig {
            sni: None,
            trust: UpstreamTrust::System,
        };
        let resolutions = Resolutions::default();
        let ctx = ServerContext {
            tls: Some(&tls),
            ..context(&resolutions)
        };
        let f = farm("a", "servers:\n- address: 10.0.0.1\n  port: 443\n");
        let mut errs = FarmErrors::new(&f);
        let out = servers(&f.spec.servers, &ctx, &mut errs);
        assert!(out.members.is_empty());
        assert_eq!(errs.errors[0].field, "spec.servers[0].address");
        let ctx = ServerContext {
            backend_host: Some("api.example"),
            ..ctx
        };
        let mut errs = FarmErrors::new(&f);
        let out = servers(&f.spec.servers, &ctx, &mut errs);
        assert!(errs.errors.is_empty());
        let key = match &out.members[0].target {
            MemberTarget::Endpoints { identities } => identities[0].clone(),
            other => panic!("{other:?}"),
        };
        let tls = out.endpoints[&key].identity.tls.as_ref().unwrap();
        assert_eq!(tls.sni, "api.example");
    }
}
