//! Privileged black-box tests of the `sluice-cni` binary, and the same scenarios run against
//! Debian's reference `bridge` + `host-local` plugins with the observable results compared.
//!
//! Every test creates its own "host" and "container" network namespaces
//! (`sluice-cni-<pid>-<n>`) and runs the plugin inside the host one with `ip netns exec`, so
//! the bridge, veths and iptables rules never touch the real root namespace. Namespaces and
//! data directories are removed on drop. Without root, netns support or the reference plugins
//! the tests print `SKIP: <reason>` and return (they fail instead under `SLUICE_REQUIRE_ALL=1`).

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sluice_tests::{bin, skip, text};

const REF_DIR: &str = "/usr/lib/cni";
const BRIDGE: &str = "cnitest0";

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Whether privileged tests can run here; prints SKIP otherwise.
fn privileged() -> bool {
    let uid = Command::new("id").arg("-u").output();
    if !matches!(&uid, Ok(o) if String::from_utf8_lossy(&o.stdout).trim() == "0") {
        skip("not root: privileged CNI tests need CAP_NET_ADMIN");
        return false;
    }
    match Netns::new() {
        Some(_) => true,
        None => {
            skip("cannot create network namespaces (ip netns add failed)");
            false
        }
    }
}

/// Whether Debian's reference `bridge` and `host-local` plugins are in [`REF_DIR`].
fn reference_installed() -> bool {
    ["bridge", "host-local"]
        .iter()
        .all(|p| Path::new(REF_DIR).join(p).exists())
}

/// [`skip`]s the reference half of a test (`what`) when [`reference_installed`] is false.
#[track_caller]
fn skip_reference(what: &str) {
    skip(&format!(
        "Debian containernetworking-plugins (bridge, host-local) not installed in {REF_DIR}: \
         {what} not compared with the reference"
    ));
}

/// A network namespace created by the test, deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn new() -> Option<Netns> {
        let name = format!(
            "sluice-cni-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        ok.then_some(Netns { name })
    }

    fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// Runs a command inside the namespace.
    fn exec(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .output()
            .expect("ip netns exec")
    }

    fn json(&self, args: &[&str]) -> Value {
        let o = self.exec(args);
        assert!(o.status.success(), "{args:?}: {}", text(&o));
        serde_json::from_slice(&o.stdout).unwrap_or(Value::Null)
    }

    /// Link names in the namespace.
    fn links(&self) -> BTreeSet<String> {
        self.json(&["ip", "-j", "link", "show"])
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| l["ifname"].as_str().map(str::to_string))
            .collect()
    }

    /// `addr/prefix` of global IPv4 addresses on `dev` (empty if the link is missing).
    fn v4_addrs(&self, dev: &str) -> Vec<String> {
        let o = self.exec(&["ip", "-j", "-4", "addr", "show", "dev", dev]);
        if !o.status.success() {
            return Vec::new();
        }
        let v: Value = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
        v.as_array()
            .into_iter()
            .flatten()
            .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
            .map(|a| format!("{}/{}", a["local"].as_str().unwrap_or(""), a["prefixlen"]))
            .collect()
    }

    /// IPv4 routes as `dst via gw dev` strings (protocol and metrics ignored).
    fn v4_routes(&self) -> BTreeSet<String> {
        self.json(&["ip", "-j", "-4", "route", "show"])
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                format!(
                    "{} via {} dev {}",
                    r["dst"].as_str().unwrap_or("?"),
                    r["gateway"].as_str().unwrap_or("-"),
                    r["dev"].as_str().unwrap_or("?")
                )
            })
            .collect()
    }

    fn delete(&mut self) {
        if !self.name.is_empty() {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.name])
                .status();
            self.name.clear();
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.delete();
    }
}

/// Which plugin implementation runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Impl {
    Ours,
    Reference,
}

impl Impl {
    fn binary(self) -> PathBuf {
        match self {
            Impl::Ours => bin("sluice-cni"),
            Impl::Reference => Path::new(REF_DIR).join("bridge"),
        }
    }
    fn type_name(self) -> &'static str {
        match self {
            Impl::Ours => "sluice-cni",
            Impl::Reference => "bridge",
        }
    }
}

/// A host namespace, a data dir and a plugin.
struct Lab {
    imp: Impl,
    host: Netns,
    data: tempfile::TempDir,
    net: String,
}

/// One invocation's outcome.
struct Call {
    out: Output,
}

impl Call {
    fn ok(&self) -> bool {
        self.out.status.success()
    }
    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.out.stdout).to_string()
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.out.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", text(&self.out)))
    }
    /// The error code of a failed call (the error object is on stdout).
    fn code(&self) -> i64 {
        assert!(!self.ok(), "expected a failure: {}", text(&self.out));
        self.json()["code"].as_i64().expect("code")
    }
    fn msg(&self) -> String {
        self.json()["msg"].as_str().unwrap_or_default().to_string()
    }
}

impl Lab {
    fn new(imp: Impl) -> Lab {
        let host = Netns::new().expect("host netns");
        // Loopback up, as in a real host.
        host.exec(&["ip", "link", "set", "lo", "up"]);
        Lab {
            imp,
            host,
            data: tempfile::tempdir().expect("tempdir"),
            net: "testnet".into(),
        }
    }

    fn conf(&self, version: &str, subnet: &str) -> Value {
        json!({
            "cniVersion": version,
            "name": self.net,
            "type": self.imp.type_name(),
            "bridge": BRIDGE,
            "isGateway": true,
            "ipam": {
                "type": "host-local",
                "dataDir": self.data.path(),
                "ranges": [[{"subnet": subnet}]],
                "routes": [{"dst": "0.0.0.0/0"}]
            }
        })
    }

    fn lease_dir(&self) -> PathBuf {
        self.data.path().join(&self.net)
    }

    /// IP lease files and their contents.
    fn leases(&self) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = std::fs::read_dir(self.lease_dir())
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let n = e.file_name().to_string_lossy().to_string();
                n.parse::<std::net::IpAddr>().ok()?;
                Some((n, std::fs::read_to_string(e.path()).unwrap_or_default()))
            })
            .collect();
        v.sort();
        v
    }

    fn run(&self, cmd: &str, conf: &Value, env: &[(&str, &str)]) -> Call {
        self.run_with(self.imp.binary(), cmd, conf, env)
    }

    fn run_with(&self, binary: PathBuf, cmd: &str, conf: &Value, env: &[(&str, &str)]) -> Call {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.host.name])
            .arg(&binary)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("CNI_PATH", REF_DIR)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if !cmd.is_empty() {
            c.env("CNI_COMMAND", cmd);
        }
        for (k, v) in env {
            if v.is_empty() && *k == "CNI_PATH" {
                c.env_remove(k);
            } else {
                c.env(k, v);
            }
        }
        let mut child = c.spawn().expect("spawn plugin");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(conf.to_string().as_bytes())
            .expect("write stdin");
        Call {
            out: child.wait_with_output().expect("plugin output"),
        }
    }

    fn add(&self, conf: &Value, ctr: &Netns, id: &str) -> Call {
        self.run(
            "ADD",
            conf,
            &[
                ("CNI_CONTAINERID", id),
                ("CNI_NETNS", &ctr.path()),
                ("CNI_IFNAME", "eth0"),
            ],
        )
    }

    fn del(&self, conf: &Value, netns: &str, id: &str) -> Call {
        self.run(
            "DEL",
            conf,
            &[
                ("CNI_CONTAINERID", id),
                ("CNI_NETNS", netns),
                ("CNI_IFNAME", "eth0"),
            ],
        )
    }

    fn check(&self, conf: &Value, ctr: &Netns, id: &str) -> Call {
        self.run(
            "CHECK",
            conf,
            &[
                ("CNI_CONTAINERID", id),
                ("CNI_NETNS", &ctr.path()),
                ("CNI_IFNAME", "eth0"),
            ],
        )
    }
}

fn with_prev(conf: &Value, prev: &Value) -> Value {
    let mut c = conf.clone();
    c["prevResult"] = prev.clone();
    c
}

/// What a scenario observed, in a form comparable across implementations.
#[derive(Debug, PartialEq, Eq)]
struct Observed {
    iface_pattern: Vec<String>,
    ips: Value,
    result_routes: Value,
    dns: Value,
    container_addrs: Vec<String>,
    container_routes: BTreeSet<String>,
    bridge_addrs: Vec<String>,
    host_links_after_add: usize,
    leases_after_add: Vec<(String, String)>,
    add_again_code: i64,
    add_again_leases_unchanged: bool,
    add_again_links_unchanged: bool,
    check_ok: bool,
    check_broken_code: i64,
    check_broken_msg_names_addr: bool,
    check_no_prev_code: i64,
    del_outputs_empty: bool,
    leases_after_del: Vec<(String, String)>,
    host_links_after_del: BTreeSet<String>,
    container_links_after_del: BTreeSet<String>,
    dels_ok: Vec<bool>,
    next_address_after_release: String,
}

/// The scenario list: ADD, shape, state, CHECK, ADD again, broken CHECK, DEL ×4.
fn scenario(imp: Impl) -> Observed {
    let lab = Lab::new(imp);
    let ctr = Netns::new().expect("container netns");
    let conf = lab.conf("1.0.0", "10.78.0.0/24");

    let add = lab.add(&conf, &ctr, "ctr1");
    assert!(add.ok(), "{imp:?} ADD: {}", text(&add.out));
    let res = add.json();
    eprintln!("{imp:?} ADD result: {res}");
    let ifs = res["interfaces"].as_array().expect("interfaces");
    assert_eq!(ifs.len(), 3, "{res}");
    assert_eq!(ifs[0]["name"], BRIDGE);
    assert!(
        ifs[1]["name"].as_str().unwrap().starts_with("veth"),
        "{res}"
    );
    assert_eq!(ifs[2]["name"], "eth0");
    assert_eq!(ifs[2]["sandbox"], ctr.path().as_str());
    for i in ifs {
        assert_eq!(i["mac"].as_str().unwrap().len(), 17, "{i}");
    }
    assert!(ifs[0].get("sandbox").is_none() && ifs[1].get("sandbox").is_none());
    let iface_pattern = ifs
        .iter()
        .map(|i| {
            let n = i["name"].as_str().unwrap();
            let n = if n.starts_with("veth") { "veth*" } else { n };
            format!("{n} sandbox={}", i.get("sandbox").is_some())
        })
        .collect();
    let host_veth = ifs[1]["name"].as_str().unwrap().to_string();
    let host_links = lab.host.links();
    assert_eq!(
        host_links,
        BTreeSet::from(["lo".to_string(), BRIDGE.to_string(), host_veth.clone()]),
        "{imp:?}"
    );
    // The bridge's MAC is its own (stable), not the veth's.
    let br_mac = lab.host.json(&["ip", "-j", "link", "show", BRIDGE])[0]["address"].clone();
    assert_eq!(br_mac, ifs[0]["mac"], "{imp:?} bridge MAC in result");
    assert_ne!(
        ifs[0]["mac"], ifs[1]["mac"],
        "{imp:?} bridge MAC must differ from veth MAC"
    );
    let ctr_link = ctr.json(&["ip", "-j", "link", "show", "eth0"]);
    assert_eq!(ctr_link[0]["address"], ifs[2]["mac"]);
    assert_eq!(ctr_link[0]["operstate"], "UP", "{ctr_link}");

    let container_addrs = ctr.v4_addrs("eth0");
    let container_routes = ctr.v4_routes();
    let bridge_addrs = lab.host.v4_addrs(BRIDGE);
    let leases_after_add = lab.leases();
    let files: BTreeSet<String> = std::fs::read_dir(lab.lease_dir())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    assert!(
        files.contains("lock") && files.contains("last_reserved_ip.0"),
        "{files:?}"
    );

    // CHECK with prevResult.
    let check_conf = with_prev(&conf, &res);
    let check = lab.check(&check_conf, &ctr, "ctr1");
    let check_ok = check.ok() && check.stdout().trim().is_empty();
    assert!(check_ok, "{imp:?} CHECK: {}", text(&check.out));

    // ADD again: error, nothing leaked.
    let again = lab.add(&conf, &ctr, "ctr1");
    let add_again_code = again.code();
    assert!(again.msg().contains("already exists"), "{}", again.msg());
    let add_again_leases_unchanged = lab.leases() == leases_after_add;
    let add_again_links_unchanged = lab.host.links() == host_links;

    // CHECK without prevResult.
    let check_no_prev_code = lab.check(&conf, &ctr, "ctr1").code();

    // Break the address: CHECK fails.
    let addr = container_addrs[0].clone();
    let o = ctr.exec(&["ip", "addr", "del", &addr, "dev", "eth0"]);
    assert!(o.status.success(), "{}", text(&o));
    let broken = lab.check(&check_conf, &ctr, "ctr1");
    let check_broken_code = broken.code();
    let check_broken_msg_names_addr = broken.msg().contains(&addr);

    // DEL ×4: normal, again, empty CNI_NETNS without prevResult, after the netns is gone.
    let mut dels = Vec::new();
    dels.push(lab.del(&check_conf, &ctr.path(), "ctr1"));
    let leases_after_del = lab.leases();
    let host_links_after_del = lab.host.links();
    let container_links_after_del = ctr.links();
    dels.push(lab.del(&check_conf, &ctr.path(), "ctr1"));
    dels.push(lab.del(&conf, "", "ctr1"));
    let gone = ctr.path();
    let mut ctr = ctr;
    ctr.delete();
    dels.push(lab.del(&check_conf, &gone, "ctr1"));
    for d in &dels {
        if !d.ok() {
            eprintln!("{imp:?} DEL failed: {}", text(&d.out));
        }
    }
    let dels_ok = dels.iter().map(Call::ok).collect();
    let del_outputs_empty = dels.iter().all(|d| d.stdout().trim().is_empty());

    // Round robin: the next ADD gets .3, not the released .2.
    let ctr2 = Netns::new().expect("netns");
    let add2 = lab.add(&conf, &ctr2, "ctr2");
    assert!(add2.ok(), "{}", text(&add2.out));
    let next_address_after_release = add2.json()["ips"][0]["address"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(lab.del(&conf, &ctr2.path(), "ctr2").ok());

    Observed {
        iface_pattern,
        ips: res["ips"].clone(),
        result_routes: res["routes"].clone(),
        dns: res["dns"].clone(),
        container_addrs,
        container_routes,
        bridge_addrs,
        host_links_after_add: host_links.len(),
        leases_after_add,
        add_again_code,
        add_again_leases_unchanged,
        add_again_links_unchanged,
        check_ok,
        check_broken_code,
        check_broken_msg_names_addr,
        check_no_prev_code,
        del_outputs_empty,
        leases_after_del,
        host_links_after_del,
        container_links_after_del,
        dels_ok,
        next_address_after_release,
    }
}

fn expected_core(o: &Observed) {
    assert_eq!(
        o.ips,
        json!([{"address": "10.78.0.2/24", "gateway": "10.78.0.1", "interface": 2}])
    );
    assert_eq!(o.result_routes, json!([{"dst": "0.0.0.0/0"}]));
    assert_eq!(o.dns, json!({}));
    assert_eq!(o.container_addrs, ["10.78.0.2/24"]);
    assert!(
        o.container_routes
            .contains("default via 10.78.0.1 dev eth0"),
        "{:?}",
        o.container_routes
    );
    assert!(
        o.container_routes.contains("10.78.0.0/24 via - dev eth0"),
        "{:?}",
        o.container_routes
    );
    assert_eq!(o.bridge_addrs, ["10.78.0.1/24"]);
    assert_eq!(o.host_links_after_add, 3);
    assert_eq!(
        o.leases_after_add,
        [("10.78.0.2".to_string(), "ctr1\r\neth0".to_string())]
    );
    assert_eq!(o.add_again_code, 999);
    assert!(o.add_again_leases_unchanged && o.add_again_links_unchanged);
    assert!(o.check_ok);
    assert_eq!(o.check_broken_code, 999);
    assert!(o.check_broken_msg_names_addr);
    assert_eq!(o.check_no_prev_code, 999);
    assert_eq!(o.dels_ok, [true, true, true, true]);
    assert!(o.del_outputs_empty);
    assert!(o.leases_after_del.is_empty());
    // The bridge stays; the veth is gone.
    assert_eq!(
        o.host_links_after_del,
        BTreeSet::from(["lo".to_string(), BRIDGE.to_string()])
    );
    assert_eq!(
        o.container_links_after_del,
        BTreeSet::from(["lo".to_string()])
    );
    assert_eq!(o.next_address_after_release, "10.78.0.3/24");
}

#[test]
fn ours_add_check_del_scenario() {
    if !privileged() {
        return;
    }
    let o = scenario(Impl::Ours);
    expected_core(&o);
}

#[test]
fn reference_bridge_matches_ours() {
    if !privileged() {
        return;
    }
    if !reference_installed() {
        skip_reference("the core scenario");
        return;
    }
    let reference = scenario(Impl::Reference);
    let ours = scenario(Impl::Ours);
    // The reference is the oracle: the same expectations hold for it…
    expected_core(&reference);
    // …and every observation is equal.
    assert_eq!(ours, reference);
}

#[test]
fn old_versions_and_subnet_form() {
    if !privileged() {
        return;
    }
    for imp in [Impl::Reference, Impl::Ours] {
        if imp == Impl::Reference && !reference_installed() {
            skip_reference("CNI versions and subnet form");
            continue;
        }
        // Debian's 1.1.1 plugins stop at 1.0.0; ours also takes 1.1.0.
        let versions: &[&str] = match imp {
            Impl::Reference => &["0.3.1", "0.4.0", "1.0.0"],
            Impl::Ours => &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"],
        };
        for &v in versions {
            let lab = Lab::new(imp);
            let ctr = Netns::new().unwrap();
            let mut conf = lab.conf(v, "10.79.0.0/24");
            conf["ipam"] =
                json!({"type": "host-local", "dataDir": lab.data.path(), "subnet": "10.79.0.0/24"});
            conf["isDefaultGateway"] = json!(true);
            let add = lab.add(&conf, &ctr, "c1");
            assert!(add.ok(), "{imp:?} {v}: {}", text(&add.out));
            let r = add.json();
            assert_eq!(r["cniVersion"], v, "{imp:?} {r}");
            if v.starts_with("0.") {
                assert_eq!(r["ips"][0]["version"], "4", "{imp:?} {r}");
            } else {
                assert!(r["ips"][0].get("version").is_none(), "{imp:?} {r}");
            }
            assert_eq!(
                r["routes"],
                json!([{"dst": "0.0.0.0/0", "gw": "10.79.0.1"}]),
                "{imp:?} {r}"
            );
            assert!(ctr.v4_routes().contains("default via 10.79.0.1 dev eth0"));
            assert!(lab.del(&with_prev(&conf, &r), &ctr.path(), "c1").ok());
            assert!(lab.leases().is_empty());
        }
    }
}

#[test]
fn rollback_on_exhaustion_leaves_nothing() {
    if !privileged() {
        return;
    }
    let lab = Lab::new(Impl::Ours);
    // A /30 has one allocatable address besides the gateway.
    let conf = lab.conf("1.0.0", "10.80.0.0/30");
    let c1 = Netns::new().unwrap();
    let c2 = Netns::new().unwrap();
    assert!(lab.add(&conf, &c1, "c1").ok());
    let links = lab.host.links();
    let leases = lab.leases();
    let fail = lab.add(&conf, &c2, "c2");
    assert_eq!(fail.code(), 999);
    assert!(
        fail.msg().contains("no IP addresses available"),
        "{}",
        fail.msg()
    );
    assert_eq!(lab.host.links(), links, "host veth leaked");
    assert_eq!(
        c2.links(),
        BTreeSet::from(["lo".to_string()]),
        "container veth leaked"
    );
    assert_eq!(lab.leases(), leases);
    // The runtime still calls DEL after a failed ADD: it must succeed.
    assert!(lab.del(&conf, &c2.path(), "c2").ok());
    assert!(lab.del(&conf, &c1.path(), "c1").ok());
    assert!(lab.leases().is_empty());
}

#[test]
fn rollback_after_ipam_releases_lease_and_veth() {
    if !privileged() {
        return;
    }
    let lab = Lab::new(Impl::Ours);
    // A real failure after the address is leased and both veth ends exist: the kernel refuses
    // a route through a gateway that is not on the container's link (no fault injection in the
    // plugin).
    let mut conf = lab.conf("1.0.0", "10.81.0.0/24");
    conf["ipam"]["routes"] = json!([
        {"dst": "0.0.0.0/0"},
        {"dst": "192.0.2.0/24", "gw": "198.51.100.1"}
    ]);
    let ctr = Netns::new().unwrap();
    let fail = lab.add(&conf, &ctr, "c1");
    assert_eq!(fail.code(), 999, "{}", text(&fail.out));
    assert!(
        fail.msg().to_lowercase().contains("route"),
        "not the route's failure: {}",
        text(&fail.out)
    );
    assert!(lab.leases().is_empty(), "lease leaked: {:?}", lab.leases());
    assert_eq!(ctr.links(), BTreeSet::from(["lo".to_string()]));
    assert_eq!(
        lab.host.links(),
        BTreeSet::from(["lo".to_string(), BRIDGE.to_string()])
    );
    // A normal ADD afterwards works (round robin moved on to .3).
    let ok = lab.add(&lab.conf("1.0.0", "10.81.0.0/24"), &ctr, "c1");
    assert!(ok.ok(), "{}", text(&ok.out));
    assert_eq!(ok.json()["ips"][0]["address"], "10.81.0.3/24");
    assert!(lab
        .del(&lab.conf("1.0.0", "10.81.0.0/24"), &ctr.path(), "c1")
        .ok());
}

#[test]
fn version_and_about() {
    if !privileged() {
        return;
    }
    let lab = Lab::new(Impl::Ours);
    let v = lab.run("VERSION", &json!({"cniVersion": "1.1.0"}), &[]);
    assert!(v.ok(), "{}", text(&v.out));
    let j = v.json();
    assert_eq!(j["cniVersion"], "1.1.0");
    let sv: Vec<&str> = j["supportedVersions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    for want in ["0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
        assert!(sv.contains(&want), "{sv:?}");
    }
    let about = lab.run("", &json!({}), &[]);
    assert!(about.ok());
    assert!(about.out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&about.out.stderr).contains("CNI protocol versions supported"));
}

#[test]
fn error_codes() {
    if !privileged() {
        return;
    }
    let lab = Lab::new(Impl::Ours);
    let ctr = Netns::new().unwrap();
    let conf = lab.conf("1.0.0", "10.82.0.0/24");
    let env = |ns: &str| {
        vec![
            ("CNI_CONTAINERID", "c1".to_string()),
            ("CNI_NETNS", ns.to_string()),
            ("CNI_IFNAME", "eth0".to_string()),
        ]
    };
    let run = |cmd: &str, c: &Value, e: Vec<(&str, String)>| {
        let e: Vec<(&str, &str)> = e.iter().map(|(k, v)| (*k, v.as_str())).collect();
        lab.run(cmd, c, &e)
    };
    let p = ctr.path();

    // 1: incompatible version (error JSON carries details).
    let mut bad = conf.clone();
    bad["cniVersion"] = json!("9.9.9");
    let e = run("ADD", &bad, env(&p));
    assert_eq!(e.code(), 1);
    assert!(e.json()["details"].as_str().unwrap().contains("9.9.9"));
    // 1: CHECK needs 0.4.0+.
    let mut old = conf.clone();
    old["cniVersion"] = json!("0.3.1");
    assert_eq!(run("CHECK", &old, env(&p)).code(), 1);
    // 2: unsupported field.
    let mut bad = conf.clone();
    bad["ipam"]["type"] = json!("dhcp");
    let e = run("ADD", &bad, env(&p));
    assert_eq!(e.code(), 2);
    assert!(e.msg().contains("ipam.type"), "{}", e.msg());
    // 3: unknown container (netns missing).
    assert_eq!(
        run("ADD", &conf, env("/run/netns/sluice-cni-does-not-exist")).code(),
        3
    );
    // 4: missing env.
    let e = lab.run("ADD", &conf, &[]);
    assert_eq!(e.code(), 4);
    assert_eq!(
        e.msg(),
        "required env variables [CNI_CONTAINERID,CNI_NETNS,CNI_IFNAME] missing"
    );
    let e = lab.run("ADD", &conf, &[("CNI_PATH", "")]);
    assert!(e.msg().contains("CNI_PATH"), "{}", e.msg());
    // 4: invalid container id / ifname.
    let mut e4 = env(&p);
    e4[0].1 = "-bad id".into();
    assert_eq!(run("ADD", &conf, e4).code(), 4);
    // 6: bad JSON.
    let e = lab.run_with(
        bin("sluice-cni"),
        "ADD",
        &Value::String("{not json".into()),
        &[
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", &p),
            ("CNI_IFNAME", "eth0"),
        ],
    );
    assert_eq!(e.code(), 6);
    // 7: missing network name.
    let mut bad = conf.clone();
    bad.as_object_mut().unwrap().remove("name");
    assert_eq!(run("ADD", &bad, env(&p)).code(), 7);
    // 7: invalid subnet.
    let mut bad = conf.clone();
    bad["ipam"]["ranges"] = json!([[{"subnet": "10.0.0.0/31"}]]);
    assert_eq!(run("ADD", &bad, env(&p)).code(), 7);
    // 8: CNI_NETNS is the plugin's own namespace.
    assert_eq!(run("ADD", &conf, env(&lab.host.path())).code(), 8);
    // 11: the IPAM lock is held past the timeout.
    std::fs::create_dir_all(lab.lease_dir()).unwrap();
    let lock = lab.lease_dir().join("lock");
    std::fs::write(&lock, "").unwrap();
    // Held by this process (flock locks are per open file, so the plugin process blocks).
    let holder = nix::fcntl::Flock::lock(
        std::fs::File::open(&lock).unwrap(),
        nix::fcntl::FlockArg::LockExclusive,
    )
    .map_err(|(_, e)| e)
    .expect("flock");
    let mut e11 = env(&p);
    e11.push(("SLUICE_CNI_LOCK_TIMEOUT_MS", "200".into()));
    let e = run("ADD", &conf, e11);
    drop(holder);
    assert_eq!(e.code(), 11, "{}", text(&e.out));
    assert_eq!(
        ctr.links(),
        BTreeSet::from(["lo".to_string()]),
        "veth leaked"
    );
    // STATUS: 0 when usable, 50 when the data dir is not.
    assert!(lab.run("STATUS", &conf, &[]).ok());
    let mut bad = conf.clone();
    bad["cniVersion"] = json!("1.1.0");
    bad["ipam"]["dataDir"] = json!("/proc/sluice-no-such-dir");
    assert_eq!(lab.run("STATUS", &bad, &[]).code(), 50);
    // Unknown command.
    assert_eq!(lab.run("FROB", &conf, &[]).code(), 4);
    // Every error object names the version.
    let e = run("ADD", &bad, env("/run/netns/sluice-cni-does-not-exist"));
    assert_eq!(e.json()["cniVersion"], "1.1.0");
}

#[test]
fn concurrent_adds_unique_addresses_then_gc() {
    if !privileged() {
        return;
    }
    let lab = Lab::new(Impl::Ours);
    let mut conf = lab.conf("1.1.0", "10.83.0.0/24");
    let ctrs: Vec<Netns> = (0..8).map(|_| Netns::new().unwrap()).collect();
    let results: Vec<Value> = std::thread::scope(|s| {
        let hs: Vec<_> = ctrs
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let (lab, conf) = (&lab, &conf);
                s.spawn(move || {
                    let r = lab.add(conf, c, &format!("c{i}"));
                    assert!(r.ok(), "{}", text(&r.out));
                    r.json()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let addrs: BTreeSet<String> = results
        .iter()
        .map(|r| r["ips"][0]["address"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(addrs.len(), 8, "{addrs:?}");
    assert!(!addrs.contains("10.83.0.1/24"));
    assert_eq!(lab.leases().len(), 8);
    // GC keeps only the valid attachments (old key spelling too).
    conf["cni.dev/valid-attachments"] = json!((0..4)
        .map(|i| json!({"containerID": format!("c{i}"), "ifname": "eth0"}))
        .collect::<Vec<_>>());
    let gc = lab.run("GC", &conf, &[]);
    assert!(gc.ok(), "{}", text(&gc.out));
    let left: BTreeSet<String> = lab.leases().into_iter().map(|(_, c)| c).collect();
    let want: BTreeSet<String> = (0..4).map(|i| format!("c{i}\r\neth0")).collect();
    assert_eq!(left, want);
    let mut conf2 = lab.conf("1.1.0", "10.83.0.0/24");
    conf2["cni.dev/attachments"] = json!([{"containerID": "c0", "ifname": "eth0"}]);
    assert!(lab.run("GC", &conf2, &[]).ok());
    assert_eq!(lab.leases().len(), 1);
    for (i, c) in ctrs.iter().enumerate() {
        assert!(lab.del(&conf, &c.path(), &format!("c{i}")).ok());
    }
    assert!(lab.leases().is_empty());
    assert_eq!(
        lab.host.links(),
        BTreeSet::from(["lo".to_string(), BRIDGE.to_string()])
    );
}

#[test]
fn ip_masq_rules_in_host_namespace_only() {
    if !privileged() {
        return;
    }
    let lab = Lab::new(Impl::Ours);
    let probe = lab.host.exec(&["iptables", "-w", "5", "-t", "nat", "-S"]);
    if !probe.status.success() {
        skip("iptables nat table unavailable in a namespace");
        return;
    }
    let mut conf = lab.conf("1.0.0", "10.84.0.0/24");
    conf["ipMasq"] = json!(true);
    let ctr = Netns::new().unwrap();
    let add = lab.add(&conf, &ctr, "c1");
    assert!(add.ok(), "{}", text(&add.out));
    let rules = String::from_utf8_lossy(
        &lab.host
            .exec(&["iptables", "-w", "5", "-t", "nat", "-S"])
            .stdout,
    )
    .to_string();
    assert!(rules.contains("-A POSTROUTING -s 10.84.0.2/32"), "{rules}");
    assert!(rules.contains("-d 10.84.0.0/24 -j ACCEPT"), "{rules}");
    assert!(rules.contains("! -d 224.0.0.0/4 -j MASQUERADE"), "{rules}");
    // DEL without prevResult still removes the jump (the lease names the address).
    assert!(lab.del(&conf, "", "c1").ok());
    let rules = String::from_utf8_lossy(
        &lab.host
            .exec(&["iptables", "-w", "5", "-t", "nat", "-S"])
            .stdout,
    )
    .to_string();
    assert!(!rules.contains("10.84.0.2/32"), "{rules}");
    assert!(lab.del(&conf, &ctr.path(), "c1").ok());
}

#[test]
fn chained_with_reference_portmap() {
    if !privileged() {
        return;
    }
    let portmap = Path::new(REF_DIR).join("portmap");
    if !portmap.exists() {
        skip("Debian portmap plugin not installed");
        return;
    }
    let lab = Lab::new(Impl::Ours);
    let ctr = Netns::new().unwrap();
    let conf = lab.conf("1.0.0", "10.85.0.0/24");
    let p = ctr.path();
    let env = [
        ("CNI_CONTAINERID", "c1"),
        ("CNI_NETNS", p.as_str()),
        ("CNI_IFNAME", "eth0"),
    ];
    let add = lab.run("ADD", &conf, &env);
    assert!(add.ok(), "{}", text(&add.out));
    let res = add.json();
    // containerd's capitalised keys, as it really sends them.
    let pm = json!({
        "cniVersion": "1.0.0",
        "name": lab.net,
        "type": "portmap",
        "capabilities": {"portMappings": true},
        "runtimeConfig": {"portMappings": [
            {"HostPort": 18081, "ContainerPort": 8080, "Protocol": "tcp", "HostIP": ""}
        ]},
        "prevResult": res,
    });
    let out = lab.run_with(portmap.clone(), "ADD", &pm, &env);
    assert!(out.ok(), "portmap ADD: {}", text(&out.out));
    // portmap passes our result through.
    let chained = out.json();
    assert_eq!(chained["ips"], res["ips"]);
    assert_eq!(chained["interfaces"], res["interfaces"]);
    let rules =
        String::from_utf8_lossy(&lab.host.exec(&["iptables-save", "-t", "nat"]).stdout).to_string();
    assert!(rules.contains("18081"), "{rules}");
    assert!(rules.contains("10.85.0.2:8080"), "{rules}");
    // Our plugin also accepts the capitalised runtimeConfig (CHECK with the final result).
    let mut ours = with_prev(&conf, &chained);
    ours["runtimeConfig"] = pm["runtimeConfig"].clone();
    assert!(lab.run("CHECK", &ours, &env).ok());
    // DEL in reverse order, twice (containerd's pattern).
    let mut pm_del = pm.clone();
    pm_del["prevResult"] = chained.clone();
    for _ in 0..2 {
        assert!(lab.run_with(portmap.clone(), "DEL", &pm_del, &env).ok());
        assert!(lab.run("DEL", &ours, &env).ok());
    }
    let rules =
        String::from_utf8_lossy(&lab.host.exec(&["iptables-save", "-t", "nat"]).stdout).to_string();
    assert!(!rules.contains("10.85.0.2:8080"), "{rules}");
    assert!(lab.leases().is_empty());
}

fn p50(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[test]
fn add_del_latency_ours_vs_reference() {
    if !privileged() {
        return;
    }
    let n: usize = std::env::var("SLUICE_CNI_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let mut report = Vec::new();
    for imp in [Impl::Ours, Impl::Reference] {
        if imp == Impl::Reference && !reference_installed() {
            skip_reference("ADD/DEL latency");
            continue;
        }
        let lab = Lab::new(imp);
        let conf = lab.conf("1.0.0", "10.86.0.0/16");
        let ctr = Netns::new().unwrap();
        let (mut adds, mut dels) = (Vec::new(), Vec::new());
        for i in 0..n {
            let id = format!("c{i}");
            let t = Instant::now();
            let a = lab.add(&conf, &ctr, &id);
            adds.push(t.elapsed());
            assert!(a.ok(), "{}", text(&a.out));
            let t = Instant::now();
            assert!(lab.del(&with_prev(&conf, &a.json()), &ctr.path(), &id).ok());
            dels.push(t.elapsed());
        }
        report.push(format!(
            "{imp:?}: ADD p50 {:?}, DEL p50 {:?} over {n}",
            p50(adds),
            p50(dels)
        ));
    }
    for r in &report {
        println!("latency {r}");
    }
}

#[test]
fn bridge_options_mtu_hairpin_promisc_match_reference() {
    if !privileged() {
        return;
    }
    for imp in [Impl::Reference, Impl::Ours] {
        if imp == Impl::Reference && !reference_installed() {
            skip_reference("bridge options");
            continue;
        }
        // Both together are refused, by the reference too.
        let lab = Lab::new(imp);
        let ctr = Netns::new().unwrap();
        let mut conf = lab.conf("1.0.0", "10.87.0.0/24");
        conf["hairpinMode"] = json!(true);
        conf["promiscMode"] = json!(true);
        let e = lab.add(&conf, &ctr, "c1");
        assert!(
            e.msg()
                .contains("cannot set hairpin mode and promiscuous mode"),
            "{imp:?}"
        );
        assert!(lab.leases().is_empty());
        for (hairpin, promisc) in [(true, false), (false, true)] {
            let lab = Lab::new(imp);
            let ctr = Netns::new().unwrap();
            let mut conf = lab.conf("1.0.0", "10.87.0.0/24");
            conf["mtu"] = json!(1400);
            conf["hairpinMode"] = json!(hairpin);
            conf["promiscMode"] = json!(promisc);
            let add = lab.add(&conf, &ctr, "c1");
            assert!(add.ok(), "{imp:?}: {}", text(&add.out));
            let res = add.json();
            let veth = res["interfaces"][1]["name"].as_str().unwrap().to_string();
            let eth0 = ctr.json(&["ip", "-j", "link", "show", "eth0"]);
            assert_eq!(eth0[0]["mtu"], 1400, "{imp:?} container mtu");
            let hv = lab.host.json(&["ip", "-j", "-d", "link", "show", &veth]);
            assert_eq!(hv[0]["mtu"], 1400, "{imp:?} host veth mtu");
            assert_eq!(hv[0]["master"], BRIDGE, "{imp:?}");
            assert_eq!(
                hv[0]["linkinfo"]["info_slave_data"]["hairpin"], hairpin,
                "{imp:?} hairpin: {hv}"
            );
            let br = lab.host.json(&["ip", "-j", "-d", "link", "show", BRIDGE]);
            assert_eq!(
                br[0]["promiscuity"].as_i64().unwrap_or(0) >= 1,
                promisc,
                "{imp:?} promisc: {br}"
            );
            assert_eq!(br[0]["linkinfo"]["info_kind"], "bridge");
            assert_eq!(br[0]["mtu"], 1400, "{imp:?} bridge mtu");
            assert!(lab.del(&with_prev(&conf, &res), &ctr.path(), "c1").ok());
        }
    }
}

/// The review's bug: `rangeStart` after `rangeEnd` used to wrap and hand out 10.80.1.0 on
/// 10.80.0.0/24. The real binary now refuses the config with the spec's error JSON (code 7,
/// the field and both values in `msg`), exits non-zero and creates nothing: no lease, no store
/// directory, no bridge, no veth. CHECK, STATUS and GC refuse it the same way; DEL succeeds
/// (there is nothing to release, and a DEL that always fails would block the sandbox's removal).
#[test]
fn inverted_range_is_refused_with_code_7() {
    if !privileged() {
        return;
    }
    let lab = Lab::new(Impl::Ours);
    let ctr = Netns::new().unwrap();
    let mut conf = lab.conf("1.1.0", "10.80.0.0/24");
    conf["ipam"]["ranges"] = json!([[{
        "subnet": "10.80.0.0/24", "rangeStart": "10.80.0.200", "rangeEnd": "10.80.0.100"
    }]]);
    let add = lab.add(&conf, &ctr, "c1");
    assert!(!add.ok(), "ADD succeeded: {}", text(&add.out));
    assert_eq!(add.code(), 7, "{}", text(&add.out));
    let e = add.json();
    assert_eq!(e["cniVersion"], "1.1.0", "{e}");
    assert_eq!(
        e["msg"], "ipam.ranges[0][0]: rangeStart 10.80.0.200 is after rangeEnd 10.80.0.100",
        "{e}"
    );
    assert!(
        !lab.lease_dir().exists(),
        "store touched: {:?}",
        lab.leases()
    );
    assert_eq!(lab.host.links(), BTreeSet::from(["lo".to_string()]));
    assert_eq!(ctr.links(), BTreeSet::from(["lo".to_string()]));

    assert_eq!(lab.check(&conf, &ctr, "c1").code(), 7);
    assert_eq!(lab.run("STATUS", &conf, &[]).code(), 7);
    assert_eq!(lab.run("GC", &conf, &[]).code(), 7);
    assert!(!lab.lease_dir().exists());
    let del = lab.del(&conf, &ctr.path(), "c1");
    assert!(del.ok(), "{}", text(&del.out));
    assert!(del.stdout().is_empty(), "{}", del.stdout());
    assert!(lab.leases().is_empty());

    // The reference refuses it too (its message blames rangeStart: "not in network").
    if Path::new(REF_DIR).join("bridge").exists() && Path::new(REF_DIR).join("host-local").exists()
    {
        let lab = Lab::new(Impl::Reference);
        let mut conf = lab.conf("1.0.0", "10.80.0.0/24");
        conf["ipam"]["ranges"] = json!([[{
            "subnet": "10.80.0.0/24", "rangeStart": "10.80.0.200", "rangeEnd": "10.80.0.100"
        }]]);
        let add = lab.add(&conf, &ctr, "c1");
        assert!(!add.ok(), "reference ADD succeeded: {}", text(&add.out));
        assert!(lab.leases().is_empty());
    }
}
