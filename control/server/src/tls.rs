//! The control plane's PKI and kubeconfig files.
//!
//! On first start a CA (`ca.crt`, `ca.key`) and a serving certificate signed by it
//! (`server.crt`, `server.key`) are generated under the data directory with rcgen. Later
//! starts reuse them; when the serving certificate's names no longer cover the requested ones
//! (a new `--advertise-address` or `--tls-san`), a new serving certificate is signed by the
//! same CA, so existing kubeconfigs keep working.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// PKI errors.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// File I/O.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Certificate generation.
    #[error("generating certificates: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// Loading PEM or building the rustls config.
    #[error("TLS configuration: {0}")]
    Config(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn write_private(path: &Path, data: &str) -> Result<(), TlsError> {
    crate::fsutil::write_private(path, data.as_bytes()).map_err(io(path))
}

/// The CA's parameters; rebuilt identically on every start so the stored CA key can sign
/// new serving certificates (an rcgen `Issuer` needs only the DN, key usages and key).
fn ca_params() -> Result<CertificateParams, TlsError> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, "sluice-ca");
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.not_before = rcgen::date_time_ymd(2024, 1, 1);
    p.not_after = rcgen::date_time_ymd(2124, 1, 1);
    Ok(p)
}

/// The loaded PKI.
pub struct Pki {
    /// CA certificate PEM (for kubeconfigs).
    pub ca_pem: String,
    /// Serving chain and key for rustls.
    pub server_config: Arc<rustls::ServerConfig>,
}

/// Creates or loads the PKI in `dir`, with a serving certificate valid for `sans`.
pub fn ensure_pki(dir: &Path, sans: &[String]) -> Result<Pki, TlsError> {
    let ca_crt = dir.join("ca.crt");
    let ca_key = dir.join("ca.key");
    let srv_crt = dir.join("server.crt");
    let srv_key = dir.join("server.key");
    let srv_sans = dir.join("server.sans");

    if !ca_crt.exists() || !ca_key.exists() {
        let key = KeyPair::generate()?;
        let cert = ca_params()?.self_signed(&key)?;
        write_private(&ca_key, &key.serialize_pem())?;
        std::fs::write(&ca_crt, cert.pem()).map_err(io(&ca_crt))?;
        let _ = std::fs::remove_file(&srv_crt);
    }
    let ca_pem = std::fs::read_to_string(&ca_crt).map_err(io(&ca_crt))?;

    let mut want: Vec<String> = sans.to_vec();
    want.sort();
    want.dedup();
    let have = std::fs::read_to_string(&srv_sans).unwrap_or_default();
    let covered = {
        let have: Vec<&str> = have.lines().collect();
        want.iter().all(|w| have.contains(&w.as_str()))
    };
    if !srv_crt.exists() || !srv_key.exists() || !covered {
        let ca_key_pem = std::fs::read_to_string(&ca_key).map_err(io(&ca_key))?;
        let issuer = Issuer::new(ca_params()?, KeyPair::from_pem(&ca_key_pem)?);
        let mut p = CertificateParams::new(want.clone())?;
        p.distinguished_name
            .push(DnType::CommonName, "sluice-apiserver");
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        p.not_before = rcgen::date_time_ymd(2024, 1, 1);
        p.not_after = rcgen::date_time_ymd(2124, 1, 1);
        let key = KeyPair::generate()?;
        let cert = p.signed_by(&key, &issuer)?;
        write_private(&srv_key, &key.serialize_pem())?;
        std::fs::write(&srv_crt, format!("{}{}", cert.pem(), ca_pem)).map_err(io(&srv_crt))?;
        std::fs::write(&srv_sans, want.join("\n")).map_err(io(&srv_sans))?;
    }

    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&srv_crt)
        .map_err(|e| TlsError::Config(format!("{}: {e}", srv_crt.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Config(format!("{}: {e}", srv_crt.display())))?;
    let key = PrivateKeyDer::from_pem_file(&srv_key)
        .map_err(|e| TlsError::Config(format!("{}: {e}", srv_key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    // kubectl (Go) negotiates HTTP/2 when offered; watches work over both.
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Pki {
        ca_pem,
        server_config: Arc::new(cfg),
    })
}

/// A kubeconfig for `user` with `token`, trusting the CA.
pub fn kubeconfig(server_url: &str, ca_pem: &str, user: &str, token: &str) -> String {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: sluice\n  cluster:\n    server: {server_url}\n    certificate-authority-data: {ca}\nusers:\n- name: {user}\n  user:\n    token: {token}\ncontexts:\n- name: sluice\n  context:\n    cluster: sluice\n    user: {user}\n    namespace: default\ncurrent-context: sluice\n"
    )
}

/// Writes a kubeconfig file (mode 0600: it holds a token).
pub fn write_kubeconfig(path: &Path, contents: &str) -> Result<(), TlsError> {
    write_private(path, contents)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pki_is_created_once_and_reissued_for_new_names() {
        let dir = tempfile::tempdir().unwrap();
        let sans = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let a = ensure_pki(dir.path(), &sans).unwrap();
        let srv1 = std::fs::read(dir.path().join("server.crt")).unwrap();
        let b = ensure_pki(dir.path(), &sans).unwrap();
        assert_eq!(a.ca_pem, b.ca_pem);
        assert_eq!(srv1, std::fs::read(dir.path().join("server.crt")).unwrap());
        let more = vec!["localhost".to_string(), "10.1.2.3".to_string()];
        let c = ensure_pki(dir.path(), &more).unwrap();
        assert_eq!(a.ca_pem, c.ca_pem, "the CA survives a reissue");
        assert_ne!(srv1, std::fs::read(dir.path().join("server.crt")).unwrap());
        let kc = kubeconfig("https://127.0.0.1:6443", &a.ca_pem, "admin", "t0k");
        assert!(kc.contains("server: https://127.0.0.1:6443"));
        assert!(kc.contains("token: t0k"));
    }
}
