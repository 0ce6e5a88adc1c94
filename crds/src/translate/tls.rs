//! TLS: towards upstreams (which roots to trust, which name to verify) and towards
//! clients (the order of SNI certificates).

use crate::config::*;
use crate::v1alpha1::Upstream;

use super::FarmErrors;
use super::names::normalize_host;

/// The farm's upstream TLS, when it has one. `caSecretName` with `insecureSkipVerify`
/// and an SNI that is not a host name are errors.
/// `secret_id` gives the id a Secret name travels under (see [`super::secret_id`]).
pub(crate) fn upstream_tls(
    up: &Upstream,
    secret_id: impl Fn(&str) -> String,
    errs: &mut FarmErrors<'_>,
) -> Option<UpstreamTlsConfig> {
    let t = up.tls.as_ref()?;
    if t.insecure_skip_verify && t.ca_secret_name.is_some() {
        errs.push(
            "spec.upstream.tls",
            "caSecretName and insecureSkipVerify exclude each other",
        );
    }
    if let Some(sni) = &t.sni
        && let Err(m) = normalize_host(sni)
    {
        errs.push("spec.upstream.tls.sni", m);
    }
    Some(UpstreamTlsConfig {
        sni: t.sni.clone(),
        trust: if t.insecure_skip_verify {
            UpstreamTrust::Insecure
        } else if let Some(secret) = &t.ca_secret_name {
            UpstreamTrust::Ca {
                secret: secret_id(secret),
            }
        } else {
            UpstreamTrust::System
        },
    })
}

/// The TLS identity of one server's endpoints: the name verified is `upstream.tls.sni`,
/// else the server's own name (`sni_fallback`), else `backend_host`. `None` without
/// upstream TLS; an error when no name is known.
pub(crate) fn endpoint_tls(
    tls: Option<&UpstreamTlsConfig>,
    sni_fallback: Option<&str>,
    backend_host: Option<&str>,
) -> Result<Option<UpstreamTlsIdentity>, String> {
    let Some(t) = tls else { return Ok(None) };
    let sni = t
        .sni
        .as_deref()
        .or(sni_fallback)
        .or(backend_host)
        .ok_or_else(|| {
            "upstream TLS needs upstream.tls.sni (or backendHost) to verify an address server"
                .to_owned()
        })?;
    Ok(Some(UpstreamTlsIdentity {
        sni: sni.to_ascii_lowercase(),
        trust: t.trust.clone(),
    }))
}

/// Sorts SNI certificates: exact hosts first, each group by name.
pub(crate) fn sort_sni(sni: &mut [SniCertificate]) {
    sni.sort_by(|a, b| {
        (a.host.starts_with("*."), &a.host).cmp(&(b.host.starts_with("*."), &b.host))
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::testing::{farm, fields};

    fn upstream(f: &crate::v1alpha1::ServerFarm) -> Upstream {
        f.spec.upstream.clone().unwrap_or_default()
    }

    #[test]
    fn a_ca_secret_is_the_trust() {
        let f = farm(
            "a",
            "upstream:\n  tls:\n    caSecretName: ca\n    sni: Backend.Example\n",
        );
        let mut errs = FarmErrors::new(&f);
        let tls = upstream_tls(&upstream(&f), str::to_owned, &mut errs).unwrap();
        assert!(errs.errors.is_empty());
        assert_eq!(
            tls.trust,
            UpstreamTrust::Ca {
                secret: "ca".into()
            }
        );
        assert_eq!(tls.sni.as_deref(), Some("Backend.Example"));
        let id = endpoint_tls(Some(&tls), Some("fallback"), None)
            .unwrap()
            .unwrap();
        assert_eq!(id.sni, "backend.example");
    }

    #[test]
    fn no_tls_is_none() {
        let f = farm("a", "");
        let mut errs = FarmErrors::new(&f);
        assert_eq!(upstream_tls(&upstream(&f), str::to_owned, &mut errs), None);
        assert_eq!(endpoint_tls(None, None, None), Ok(None));
    }

    #[test]
    fn contradicting_trust_and_a_bad_sni_are_errors() {
        let f = farm(
            "a",
            "upstream:\n  tls:\n    caSecretName: ca\n    insecureSkipVerify: true\n    sni: 'a b'\n",
        );
        let mut errs = FarmErrors::new(&f);
        let tls = upstream_tls(&upstream(&f), str::to_owned, &mut errs).unwrap();
        assert_eq!(tls.trust, UpstreamTrust::Insecure);
        assert_eq!(
            fields(&errs.errors),
            ["spec.upstream.tls", "spec.upstream.tls.sni"]
        );
    }

    #[test]
    fn the_verified_name_falls_back_to_the_server_then_the_backend_host() {
        let tls = UpstreamTlsConfig {
            sni: None,
            trust: UpstreamTrust::System,
        };
        let sni = |fallback, backend| {
            endpoint_tls(Some(&tls), fallback, backend).map(|id| id.unwrap().sni)
        };
        assert_eq!(
            sni(Some("Web.NS.svc"), Some("b")),
            Ok("web.ns.svc".to_owned())
        );
        assert_eq!(sni(None, Some("B.example")), Ok("b.example".to_owned()));
        assert!(sni(None, None).unwrap_err().contains("upstream.tls.sni"));
    }

    #[test]
    fn exact_sni_hosts_come_before_wildcards() {
        let cert = |host: &str| SniCertificate {
            host: host.into(),
            certificate: CertificateRef { secret: "s".into() },
        };
        let mut sni = vec![cert("*.a.example"), cert("z.example"), cert("b.example")];
        sort_sni(&mut sni);
        let hosts: Vec<&str> = sni.iter().map(|s| s.host.as_str()).collect();
        assert_eq!(hosts, ["b.example", "z.example", "*.a.example"]);
    }
}
