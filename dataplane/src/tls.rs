//! TLS: certificates for listeners (chosen by SNI) and client configs for upstreams.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use portcullis_crds::config::UpstreamTrust;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

use crate::source::SourceError;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Loads `<dir>/<secret>/tls.crt` and `tls.key`.
pub(crate) fn load_certified_key(
    dir: &Path,
    secret: &str,
) -> Result<Arc<CertifiedKey>, SourceError> {
    let err = |message: String| SourceError::Certificate {
        secret: secret.to_owned(),
        message,
    };
    let base = dir.join(secret);
    let crt = std::fs::read(base.join("tls.crt"))
        .map_err(|e| err(format!("failed to read tls.crt: {e}")))?;
    let key = std::fs::read(base.join("tls.key"))
        .map_err(|e| err(format!("failed to read tls.key: {e}")))?;
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut crt.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| err(format!("tls.crt is not PEM: {e}")))?;
    if certs.is_empty() {
        return Err(err("tls.crt holds no certificate".into()));
    }
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut key.as_slice())
        .map_err(|_| err("tls.key is not PEM".into()))?
        .ok_or_else(|| err("tls.key holds no private key".into()))?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|_| err("tls.key is not a supported private key".into()))?;
    Ok(Arc::new(CertifiedKey::new(certs, signer)))
}

/// The certificates of one HTTPS listener.
#[derive(Debug, Default)]
pub(crate) struct ListenerCerts {
    pub(crate) exact: HashMap<String, Arc<CertifiedKey>>,
    /// `(suffix with leading dot, key)`, longest suffix first.
    pub(crate) wildcard: Vec<(String, Arc<CertifiedKey>)>,
    pub(crate) default: Option<Arc<CertifiedKey>>,
}

impl ListenerCerts {
    pub(crate) fn pick(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = sni {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            if let Some(k) = self.exact.get(&name) {
                return Some(k.clone());
            }
            for (suffix, k) in &self.wildcard {
                if name.ends_with(suffix.as_str()) && name.len() > suffix.len() {
                    let head = &name[..name.len() - suffix.len()];
                    if !head.contains('.') {
                        return Some(k.clone());
                    }
                }
            }
        }
        self.default.clone()
    }
}

/// Picks a certificate by SNI from the current snapshot.
#[derive(Debug)]
pub(crate) struct SniResolver {
    pub(crate) certs: Arc<ArcSwap<ListenerCerts>>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.certs.load().pick(hello.server_name())
    }
}

/// The server config of an HTTPS listener: TLS 1.2 and 1.3, ALPN h2 and http/1.1.
pub(crate) fn server_config(certs: Arc<ArcSwap<ListenerCerts>>) -> Arc<ServerConfig> {
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("ring supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver { certs }));
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(cfg)
}

/// Builds the client config used towards upstreams with `trust`.
pub(crate) fn client_config(
    certs_dir: &Path,
    trust: &UpstreamTrust,
    h2: bool,
) -> Result<Arc<ClientConfig>, SourceError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default versions");
    let mut cfg = match trust {
        UpstreamTrust::Insecure => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify))
            .with_no_client_auth(),
        UpstreamTrust::Ca { secret } => {
            let pem = std::fs::read(certs_dir.join(secret).join("ca.crt")).map_err(|e| {
                SourceError::Certificate {
                    secret: secret.clone(),
                    message: format!("failed to read ca.crt: {e}"),
                }
            })?;
            builder
                .with_root_certificates(roots(&pem, secret)?)
                .with_no_client_auth()
        }
        UpstreamTrust::System => {
            let pem = std::fs::read("/etc/ssl/certs/ca-certificates.crt").unwrap_or_default();
            builder
                .with_root_certificates(roots(&pem, "system")?)
                .with_no_client_auth()
        }
    };
    cfg.alpn_protocols = if h2 {
        vec![b"h2".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(Arc::new(cfg))
}

fn roots(pem: &[u8], secret: &str) -> Result<RootCertStore, SourceError> {
    let mut store = RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut &pem[..]) {
        let c = c.map_err(|e| SourceError::Certificate {
            secret: secret.to_owned(),
            message: format!("ca.crt is not PEM: {e}"),
        })?;
        let _ = store.add(c);
    }
    Ok(store)
}

#[derive(Debug)]
struct NoVerify;

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
