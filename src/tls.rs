//! `[server.tls]`: the gRPC port speaks TLS (rustls), optionally requiring
//! client certificates signed by `client_ca_file` (mutual TLS). The files
//! are re-read on SIGHUP: new connections get the new certificate, open
//! ones keep theirs. A reload that fails keeps the configuration before.
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use tokio_rustls::TlsAcceptor;

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM: the server's certificate chain.
    pub cert_file: PathBuf,
    /// PEM: its private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// PEM: CAs whose client certificates are accepted; set: every client
    /// must present one.
    pub client_ca_file: Option<PathBuf>,
}

/// The current rustls configuration, swapped on reload.
pub struct ReloadableTls {
    files: TlsConfig,
    current: RwLock<Arc<rustls::ServerConfig>>,
}

impl ReloadableTls {
    pub fn load(files: &TlsConfig) -> Result<Self, String> {
        Ok(Self { files: files.clone(), current: RwLock::new(Arc::new(server_config(files)?)) })
    }

    /// For one new connection.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current.read().clone())
    }

    pub fn reload(&self) {
        match server_config(&self.files) {
            Ok(c) => {
                *self.current.write() = Arc::new(c);
                tracing::info!(cert = %self.files.cert_file.display(), "TLS certificate reloaded");
            }
            Err(e) => tracing::error!("keeping the TLS configuration loaded before: {e}"),
        }
    }
}

fn server_config(files: &TlsConfig) -> Result<rustls::ServerConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = read_certs(&files.cert_file, "cert_file")?;
    let key = PrivateKeyDer::from_pem_file(&files.key_file)
        .map_err(|e| format!("key_file: {}: no private key read: {e}", files.key_file.display()))?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match &files.client_ca_file {
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in read_certs(path, "client_ca_file")? {
                roots.add(cert).map_err(|e| format!("client_ca_file: {}: {e}", path.display()))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| format!("client_ca_file: {}: {e}", path.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| {
        let (cert, key) = (files.cert_file.display(), files.key_file.display());
        format!("cert_file: {cert} and key_file {key} do not make a usable pair: {e}")
    })?;
    // gRPC is HTTP/2 only; grpc-java (Bazel) insists on ALPN.
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

fn read_certs(path: &Path, key: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{key}: {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{key}: {}: no certificate in it", path.display()));
    }
    Ok(certs)
}
