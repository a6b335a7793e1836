//! The rustls server configuration for serving HTTPS directly, loaded from PEM files.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// What is wrong, named by the configuration key it belongs to.
#[derive(Debug)]
pub struct TlsProblem {
    pub key: &'static str,
    pub message: String,
}

/// Reads the certificate chain and its private key and checks that they belong together.
/// TLS 1.2 and 1.3 only, with aws-lc-rs (the library that signs our tokens).
pub fn server_config(cert_path: &str, key_path: &str) -> Result<rustls::ServerConfig, TlsProblem> {
    let problem = |key, message: String| TlsProblem { key, message };
    let certs = CertificateDer::pem_file_iter(cert_path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            problem(
                "server.tls_cert",
                format!("cannot read a PEM certificate chain from {cert_path}: {e}"),
            )
        })?;
    if certs.is_empty() {
        return Err(problem(
            "server.tls_cert",
            format!("{cert_path} holds no CERTIFICATE block"),
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| {
        problem(
            "server.tls_key",
            format!("cannot read a PEM private key from {key_path}: {e}"),
        )
    })?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| problem("server.tls_cert", e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            problem(
                "server.tls_key",
                format!("does not match the certificate in {cert_path}: {e}"),
            )
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}
