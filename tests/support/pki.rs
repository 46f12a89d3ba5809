//! A throw-away PKI: a CA, leaf certificates, client and server TLS configs.
#![allow(unused_imports)]

use super::*;

/// A test CA and leaf certificates written as PEM files in a temp dir.
pub struct Pki {
    pub dir: tempfile::TempDir,
    ca_params: CertificateParams,
    ca_key: KeyPair,
    pub ca_der: CertificateDer<'static>,
    ca_pem: String,
}

pub struct LeafFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub der: CertificateDer<'static>,
}

impl Pki {
    pub fn new() -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "sessiongate test CA");
        let ca_key = KeyPair::generate().unwrap();
        let ca = params.self_signed(&ca_key).unwrap();
        Pki {
            dir: tempfile::tempdir().unwrap(),
            ca_der: ca.der().clone(),
            ca_pem: ca.pem(),
            ca_params: params,
            ca_key,
        }
    }

    /// Issues a certificate for `names` with a new key of the given algorithm, as files
    /// `<stem>.crt` and `<stem>.key`.
    pub fn leaf_with(
        &self,
        stem: &str,
        names: &[&str],
        alg: &'static rcgen::SignatureAlgorithm,
    ) -> LeafFiles {
        let key = KeyPair::generate_for(alg).unwrap();
        let key_path = self.dir.path().join(format!("{stem}.key"));
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        let (cert, der) = self.issue(stem, names, &key);
        LeafFiles {
            cert,
            key: key_path,
            der,
        }
    }

    /// Issues a certificate for an existing key; returns the `<stem>.crt` path.
    pub fn sign_with_key(&self, stem: &str, names: &[&str], key: &KeyPair) -> PathBuf {
        self.issue(stem, names, key).0
    }

    fn issue(
        &self,
        stem: &str,
        names: &[&str],
        key: &KeyPair,
    ) -> (PathBuf, CertificateDer<'static>) {
        let params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        let issuer = Issuer::from_params(&self.ca_params, &self.ca_key);
        let cert = params.signed_by(key, &issuer).unwrap();
        let path = self.dir.path().join(format!("{stem}.crt"));
        std::fs::write(&path, cert.pem()).unwrap();
        (path, cert.der().clone())
    }

    pub fn leaf(&self, stem: &str, names: &[&str]) -> LeafFiles {
        self.leaf_with(stem, names, &rcgen::PKCS_ECDSA_P256_SHA256)
    }

    pub fn write_ca(&self) -> PathBuf {
        let p = self.dir.path().join("ca.pem");
        std::fs::write(&p, &self.ca_pem).unwrap();
        p
    }

    /// A TLS server config for an upstream app, with a leaf for `localhost`.
    pub fn upstream_tls(&self) -> Arc<rustls::ServerConfig> {
        use rustls_pki_types::pem::PemObject;
        let leaf = self.leaf("upstream", &["localhost"]);
        let key = rustls_pki_types::PrivateKeyDer::from_pem_file(&leaf.key).unwrap();
        let cfg = rustls::ServerConfig::builder_with_provider(sessiongate::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![leaf.der], key)
            .unwrap();
        Arc::new(cfg)
    }

    pub fn client_config(&self, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der.clone()).unwrap();
        let mut cfg = rustls::ClientConfig::builder_with_provider(sessiongate::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(cfg)
    }
}
