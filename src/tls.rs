//! TLS: certificate loading, SNI selection and the one `rustls::ServerConfig` built at
//! start-up.
//!
//! The crypto provider is named explicitly (ring) so that no other crate in the tree can
//! change which one is used by installing a process default. Only TLS 1.2 and 1.3 are
//! offered; ALPN offers `h2` then `http/1.1`, and the connection layer serves whichever
//! the client picked.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// Certificates, already loaded and checked (key matches certificate).
pub struct TlsConfig {
    pub self_signed_dev: bool,
    pub certificates: Vec<ServerCert>,
}

pub struct ServerCert {
    /// Lower-cased SNI names; `*.example.com` matches one label.
    pub server_names: Vec<String>,
    pub key: Arc<CertifiedKey>,
    pub source: String,
}

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("TlsConfig")
            .field("self_signed_dev", &self.self_signed_dev)
            .field(
                "certificates",
                &self
                    .certificates
                    .iter()
                    .map(|c| (&c.source, &c.server_names))
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read certificate file {}: {detail}", path.display())]
    Cert { path: PathBuf, detail: String },
    #[error("cannot read private key file {}: {detail}", path.display())]
    Key { path: PathBuf, detail: String },
    #[error("generating the development certificate failed: {0}")]
    DevCert(String),
    #[error("TLS configuration rejected: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("no certificate configured")]
    NoCertificate,
}

impl TlsError {
    /// Whether the private key (rather than the certificate) is at fault.
    pub fn is_key(&self) -> bool {
        matches!(self, TlsError::Key { .. })
    }
}

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads every certificate in a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |detail: String| TlsError::Cert {
        path: path.to_owned(),
        detail,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("no PEM CERTIFICATE block found".into()));
    }
    Ok(certs)
}

/// Reads a certificate chain and its private key, and checks that they belong together.
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let chain = load_certs(cert)?;
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
        path: key.to_owned(),
        detail: format!(
            "{e} (expected a PEM PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY block)"
        ),
    })?;
    CertifiedKey::from_der(chain, key_der, &provider()).map_err(|e| TlsError::Key {
        path: key.to_owned(),
        detail: format!("{e} (does the key belong to the certificate?)"),
    })
}

/// A throw-away certificate for `localhost`, generated at start-up. Development only:
/// browsers will warn, and every restart changes it.
pub fn self_signed_dev_cert() -> Result<ServerCert, TlsError> {
    let names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    let generated =
        rcgen::generate_simple_self_signed(names).map_err(|e| TlsError::DevCert(e.to_string()))?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        generated.signing_key.serialize_der(),
    ));
    let key = CertifiedKey::from_der(vec![generated.cert.der().clone()], key, &provider())?;
    Ok(ServerCert {
        server_names: vec!["localhost".to_owned()],
        key: Arc::new(key),
        source: "self-signed development certificate".to_owned(),
    })
}

/// Builds the server-side TLS configuration.
pub fn server_config(tls: &TlsConfig) -> Result<Arc<ServerConfig>, TlsError> {
    let resolver = SniResolver::new(&tls.certificates)?;
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Builds the client-side TLS configuration for `https://` upstreams: the web PKI plus
/// any configured extra roots.
pub fn upstream_client_config(
    extra_roots: &[CertificateDer<'static>],
) -> Result<rustls::ClientConfig, TlsError> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    for cert in extra_roots {
        roots.add(cert.clone())?;
    }
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Picks a certificate by SNI: exact name, then `*.` wildcard one label deep, then the
/// first configured certificate.
#[derive(Debug)]
pub struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl SniResolver {
    pub fn new(certs: &[ServerCert]) -> Result<SniResolver, TlsError> {
        let default = certs.first().ok_or(TlsError::NoCertificate)?.key.clone();
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for c in certs {
            for name in &c.server_names {
                // First certificate listed for a name wins, as with the default.
                let (map, key) = match name.strip_prefix("*.") {
                    Some(parent) => (&mut wildcard, parent),
                    None => (&mut exact, name.as_str()),
                };
                map.entry(key.to_owned()).or_insert_with(|| c.key.clone());
            }
        }
        Ok(SniResolver {
            exact,
            wildcard,
            default,
        })
    }

    pub fn pick(&self, server_name: Option<&str>) -> Arc<CertifiedKey> {
        let Some(name) = server_name.map(str::to_ascii_lowercase) else {
            return self.default.clone();
        };
        if let Some(k) = self.exact.get(&name) {
            return k.clone();
        }
        name.split_once('.')
            .and_then(|(_, parent)| self.wildcard.get(parent))
            .unwrap_or(&self.default)
            .clone()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.pick(hello.server_name()))
    }
}
