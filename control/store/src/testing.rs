//! Throwaway etcd clusters for tests (feature `testing`): real `etcd` processes (Debian's
//! `etcd-server`) on free loopback ports, with their data and logs in a directory the caller
//! owns, killed when dropped. Members can be killed and restarted to test faults. With
//! [`EtcdCluster::start_tls`] clients must speak TLS with a client certificate of the test CA
//! ([`EtcdCluster::tls`] names the files). Health is read from each member's plain-HTTP
//! metrics listener, which works either way.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// For a test that cannot run here: prints `SKIP: <why>` and returns (the test passes), unless
/// every tier must run (`SLUICE_REQUIRE_ALL=1`, as CI sets it): then it fails.
pub fn skip(why: &str) {
    println!("SKIP: {why}");
    eprintln!("SKIP: {why}");
    let require = std::env::var("SLUICE_REQUIRE_ALL")
        .map(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true"))
        .unwrap_or(false);
    assert!(
        !require,
        "this test could not run: {why} (SLUICE_REQUIRE_ALL is set)"
    );
}

/// The `etcd` binary, or why there is none.
pub fn etcd_binary() -> Result<PathBuf, String> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/local/bin")])
        .map(|d| d.join("etcd"))
        .find(|p| p.is_file())
        .ok_or_else(|| "etcd is not installed (Debian: apt-get install etcd-server)".to_string())
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    metrics_port: u16,
    child: Option<Child>,
}

/// PEM files of a TLS cluster: the CA, and a client certificate and key it signed.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// CA certificate (verifies the members' serving certificates).
    pub ca: PathBuf,
    /// Client certificate.
    pub cert: PathBuf,
    /// Client key.
    pub key: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
}

/// Makes a CA, a serving certificate for 127.0.0.1 and a client certificate in `dir`.
fn make_pki(dir: &Path) -> Result<TlsFiles, String> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let e = |e: rcgen::Error| e.to_string();
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(e)?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "etcd-test-ca");
    let ca_key = KeyPair::generate().map_err(e)?;
    let ca_cert = ca.self_signed(&ca_key).map_err(e)?;
    let issuer = Issuer::new(ca, ca_key);
    let leaf = |names: Vec<String>, cn: &str, client: bool| -> Result<(String, String), String> {
        let mut p = CertificateParams::new(names).map_err(e)?;
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = if client {
            vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth]
        } else {
            vec![
                rcgen::ExtendedKeyUsagePurpose::ServerAuth,
                rcgen::ExtendedKeyUsagePurpose::ClientAuth,
            ]
        };
        let key = KeyPair::generate().map_err(e)?;
        let cert = p.signed_by(&key, &issuer).map_err(e)?;
        Ok((cert.pem(), key.serialize_pem()))
    };
    let (srv_pem, srv_key) = leaf(
        vec!["127.0.0.1".into(), "localhost".into()],
        "etcd-member",
        false,
    )?;
    let (cli_pem, cli_key) = leaf(Vec::new(), "sluice-apiserver", true)?;
    let files = TlsFiles {
        ca: dir.join("ca.crt"),
        cert: dir.join("client.crt"),
        key: dir.join("client.key"),
        server_cert: dir.join("server.crt"),
        server_key: dir.join("server.key"),
    };
    for (path, pem) in [
        (&files.ca, ca_cert.pem()),
        (&files.cert, cli_pem),
        (&files.key, cli_key),
        (&files.server_cert, srv_pem),
        (&files.server_key, srv_key),
    ] {
        std::fs::write(path, pem).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(files)
}

/// An etcd cluster of one or more members.
pub struct EtcdCluster {
    dir: PathBuf,
    binary: PathBuf,
    members: Vec<Member>,
    initial_cluster: String,
    token: String,
    tls: Option<TlsFiles>,
}

impl EtcdCluster {
    /// Starts `n` members under `dir` and waits until every one reports healthy.
    pub fn start(dir: &Path, n: usize) -> Result<Self, String> {
        Self::start_with(dir, n, false)
    }

    /// [`EtcdCluster::start`] with client TLS: https client URLs, and members that require a
    /// client certificate signed by the test CA.
    pub fn start_tls(dir: &Path, n: usize) -> Result<Self, String> {
        Self::start_with(dir, n, true)
    }

    fn start_with(dir: &Path, n: usize, tls: bool) -> Result<Self, String> {
        // The free ports are only free when picked: a test starting beside this one may take
        // one before etcd binds it, and the member exits. Such a start is tried again on fresh
        // ports and data.
        let mut last = String::new();
        for _ in 0..4 {
            match Self::start_once(dir, n, tls) {
                Ok(c) => return Ok(c),
                Err(e) if e.contains("exited") => {
                    for i in 0..n.max(1) {
                        let _ = std::fs::remove_dir_all(dir.join(format!("m{i}")));
                    }
                    last = e;
                }
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    fn start_once(dir: &Path, n: usize, tls: bool) -> Result<Self, String> {
        let binary = etcd_binary()?;
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut members = Vec::new();
        for i in 0..n.max(1) {
            members.push(Member {
                name: format!("m{i}"),
                client_port: free_port().map_err(|e| e.to_string())?,
                peer_port: free_port().map_err(|e| e.to_string())?,
                metrics_port: free_port().map_err(|e| e.to_string())?,
                child: None,
            });
        }
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let mut c = EtcdCluster {
            dir: dir.to_path_buf(),
            binary,
            members,
            initial_cluster,
            token: format!("sluice-test-{}", std::process::id()),
            tls: if tls {
                Some(make_pki(&dir.join("pki"))?)
            } else {
                None
            },
        };
        for i in 0..c.members.len() {
            c.spawn(i)?;
        }
        for i in 0..c.members.len() {
            c.wait_healthy(i, Duration::from_secs(30))?;
        }
        Ok(c)
    }

    fn spawn(&mut self, i: usize) -> Result<(), String> {
        let m = &self.members[i];
        let data = self.dir.join(&m.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{}.log", m.name)))
            .map_err(|e| e.to_string())?;
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let client = format!("{scheme}://127.0.0.1:{}", m.client_port);
        let peer = format!("http://127.0.0.1:{}", m.peer_port);
        let metrics = format!("http://127.0.0.1:{}", m.metrics_port);
        let mut cmd = Command::new(&self.binary);
        if let Some(t) = &self.tls {
            cmd.arg("--cert-file")
                .arg(&t.server_cert)
                .arg("--key-file")
                .arg(&t.server_key)
                .arg("--trusted-ca-file")
                .arg(&t.ca)
                .arg("--client-cert-auth");
        }
        let child = cmd
            .arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", &self.token])
            .args(["--listen-metrics-urls", &metrics])
            .args(["--logger", "zap"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", self.binary.display()))?;
        self.members[i].child = Some(child);
        Ok(())
    }

    /// Polls the member's `/health` until it says `true`.
    fn wait_healthy(&mut self, i: usize, limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        loop {
            if self.healthy(i) {
                return Ok(());
            }
            if let Some(Ok(Some(status))) = self.members[i].child.as_mut().map(|c| c.try_wait()) {
                let log = self.dir.join(format!("{}.log", self.members[i].name));
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(3).collect();
                return Err(format!(
                    "etcd member {} exited ({status}); {}: {}",
                    self.members[i].name,
                    log.display(),
                    tail.join(" | ")
                ));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "etcd member {} not healthy within {limit:?}",
                    self.members[i].name
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Whether member `i` answers `/health` with `"health":"true"`.
    pub fn healthy(&self, i: usize) -> bool {
        let Ok(mut s) = TcpStream::connect_timeout(
            &([127, 0, 0, 1], self.members[i].metrics_port).into(),
            Duration::from_millis(500),
        ) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        if s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .is_err()
        {
            return false;
        }
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out.contains("\"health\":\"true\"")
    }

    /// Client URLs of every member.
    pub fn endpoints(&self) -> Vec<String> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        self.members
            .iter()
            .map(|m| format!("{scheme}://127.0.0.1:{}", m.client_port))
            .collect()
    }

    /// The CA and client certificate of a TLS cluster.
    pub fn tls(&self) -> Option<&TlsFiles> {
        self.tls.as_ref()
    }

    /// The endpoints joined with commas (the `--etcd-endpoints` form).
    pub fn endpoints_arg(&self) -> String {
        self.endpoints().join(",")
    }

    /// Kills member `i` with SIGKILL.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts member `i` again on its data (after [`EtcdCluster::kill`]); with `wait`, until
    /// it is healthy (which needs a quorum of members up).
    pub fn restart(&mut self, i: usize, wait: bool) -> Result<(), String> {
        self.kill(i);
        self.spawn(i)?;
        if wait {
            self.wait_healthy(i, Duration::from_secs(30))?;
        }
        Ok(())
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}
