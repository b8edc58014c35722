//! The control plane's PKI and kubeconfig files.
//!
//! On first start a CA (`ca.crt`, `ca.key`) and a serving certificate signed by it
//! (`server.crt`, `server.key`) are generated under the data directory with rcgen. Later
//! starts reuse them; when the serving certificate's names no longer cover the requested ones
//! (a new `--advertise-address` or `--tls-san`), a new serving certificate is signed by the
//! same CA, so existing kubeconfigs keep working.
//!
//! The client certificate the API server shows node agents' kubelet API (`kubectl logs`,
//! `kubectl exec`) is made once beside them (`kubelet-client.crt`, `kubelet-client.key`,
//! 0600): CN `kube-apiserver-kubelet-client`, O `system:masters`, as kubeadm names it. Like
//! kube-apiserver by default, the API server does not verify the agents' serving certificates.

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
    /// TLS client config for node agents' kubelet API: the kubelet client certificate, the
    /// agents' certificates not verified.
    pub kubelet_client: Arc<rustls::ClientConfig>,
}

/// Common name of the API server's client certificate for kubelets (kubeadm's).
pub const KUBELET_CLIENT_CN: &str = "kube-apiserver-kubelet-client";

/// Makes the kubelet client certificate (signed by the CA in `dir`) unless it exists.
fn ensure_kubelet_client(dir: &Path, fresh_ca: bool) -> Result<(), TlsError> {
    let crt = dir.join("kubelet-client.crt");
    let key_path = dir.join("kubelet-client.key");
    if !fresh_ca && crt.exists() && key_path.exists() {
        return Ok(());
    }
    let ca_key = dir.join("ca.key");
    let ca_key_pem = std::fs::read_to_string(&ca_key).map_err(io(&ca_key))?;
    let issuer = Issuer::new(ca_params()?, KeyPair::from_pem(&ca_key_pem)?);
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.distinguished_name
        .push(DnType::CommonName, KUBELET_CLIENT_CN);
    p.distinguished_name
        .push(DnType::OrganizationName, "system:masters");
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    p.not_before = rcgen::date_time_ymd(2024, 1, 1);
    p.not_after = rcgen::date_time_ymd(2124, 1, 1);
    let key = KeyPair::generate()?;
    let cert = p.signed_by(&key, &issuer)?;
    write_private(&key_path, &key.serialize_pem())?;
    write_private(&crt, &cert.pem())?;
    Ok(())
}

/// Accepts any server certificate (kube-apiserver's default towards kubelets); signatures
/// in the handshake are still checked.
#[derive(Debug)]
struct AnyServerCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The client TLS config towards kubelets, with the kubelet client certificate of `dir`.
fn kubelet_client_config(dir: &Path) -> Result<rustls::ClientConfig, TlsError> {
    let crt = dir.join("kubelet-client.crt");
    let key_path = dir.join("kubelet-client.key");
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&crt)
        .map_err(|e| TlsError::Config(format!("{}: {e}", crt.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Config(format!("{}: {e}", crt.display())))?;
    let key = PrivateKeyDer::from_pem_file(&key_path)
        .map_err(|e| TlsError::Config(format!("{}: {e}", key_path.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServerCert(provider)))
        .with_client_auth_cert(chain, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// Creates or loads the PKI in `dir`, with a serving certificate valid for `sans`.
pub fn ensure_pki(dir: &Path, sans: &[String]) -> Result<Pki, TlsError> {
    let ca_crt = dir.join("ca.crt");
    let ca_key = dir.join("ca.key");
    let srv_crt = dir.join("server.crt");
    let srv_key = dir.join("server.key");
    let srv_sans = dir.join("server.sans");

    let fresh_ca = !ca_crt.exists() || !ca_key.exists();
    if fresh_ca {
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
    ensure_kubelet_client(dir, fresh_ca)?;
    Ok(Pki {
        ca_pem,
        server_config: Arc::new(cfg),
        kubelet_client: Arc::new(kubelet_client_config(dir)?),
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
        // The kubelet client certificate: made once, private, kept across starts.
        let kcrt = dir.path().join("kubelet-client.crt");
        let kkey = dir.path().join("kubelet-client.key");
        let kc1 = std::fs::read(&kcrt).unwrap();
        assert_eq!(kc1, std::fs::read(&kcrt).unwrap());
        use std::os::unix::fs::PermissionsExt;
        for f in [&kcrt, &kkey] {
            let mode = std::fs::metadata(f).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", f.display());
        }
        let pem = String::from_utf8(kc1).unwrap();
        let der = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        // The subject's strings are in the DER as they are.
        let text = String::from_utf8_lossy(der.as_ref()).to_string();
        assert!(text.contains(KUBELET_CLIENT_CN) && text.contains("system:masters"));
        assert_eq!(c.kubelet_client.alpn_protocols, [b"http/1.1".to_vec()]);
        let kc = kubeconfig("https://127.0.0.1:6443", &a.ca_pem, "admin", "t0k");
        assert!(kc.contains("server: https://127.0.0.1:6443"));
        assert!(kc.contains("token: t0k"));
    }
}
