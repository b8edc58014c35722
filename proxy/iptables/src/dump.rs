//! `sluice-agent debug dump` for the iptables mode: what the kernel holds, in the render's text.
//!
//! [`dump`] takes `iptables-save -t nat` and `iptables-save -t filter` output and keeps only the
//! Sluice chains (`SLUICE-*`: their declarations and their rules — not the jumps into them from
//! the built-in chains, nor anyone else's chains). It prints them the way
//! [`crate::render::render`] writes them, so a dump can be diffed against a golden file:
//!
//! * `*filter` before `*nat`, each ending in `COMMIT`; a table without Sluice chains is left out;
//! * chains in the render's order — the fixed chains in [`chains::FILTER_CHAINS`] /
//!   [`chains::NAT_CHAINS`] order, then every other chain sorted by name — declared as
//!   `:CHAIN - [0:0]` (counters and policies dropped), then their `-A` rules chain by chain,
//!   each chain's rules in kernel order (which is evaluation order, so never sorted).
//!
//! The rule text is the kernel's: `iptables-save` prints rules canonically (addresses and
//! protocol first, `MARK --or-mark X` as `--set-xmark X/X`, a statistic probability as the
//! 11-digit value of its 31-bit fixed point, `recent` options in its own order with defaults
//! spelled out). [`canonical_render`] puts render output into the same form, so
//! `dump(saved) == canonical_render(render)` holds exactly when the kernel holds what was rendered.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::chains;

/// The Sluice part of one table: declared chains and each chain's rules (argument text after
/// `-A CHAIN `), in input order.
#[derive(Debug, Default)]
struct Table {
    chains: Vec<String>,
    rules: BTreeMap<String, Vec<String>>,
}

/// Parses save/restore text (any number of tables), keeping Sluice chains only. A `-X CHAIN`
/// line (a render deleting a stale chain) removes the chain.
fn parse(text: &str, tables: &mut BTreeMap<String, Table>) {
    let mut current: Option<String> = None;
    for line in text.lines().map(str::trim) {
        if let Some(t) = line.strip_prefix('*') {
            current = Some(t.to_string());
            tables.entry(t.to_string()).or_default();
            continue;
        }
        let Some(table) = current.as_ref().and_then(|t| tables.get_mut(t)) else {
            continue;
        };
        if line == "COMMIT" {
            current = None;
        } else if let Some(decl) = line.strip_prefix(':') {
            let chain = decl.split_whitespace().next().unwrap_or("");
            if chains::is_sluice_chain(chain) && !table.chains.iter().any(|c| c == chain) {
                table.chains.push(chain.to_string());
            }
        } else if let Some(rest) = line.strip_prefix("-A ") {
            let (chain, args) = rest.split_once(' ').unwrap_or((rest, ""));
            if chains::is_sluice_chain(chain) {
                table
                    .rules
                    .entry(chain.to_string())
                    .or_default()
                    .push(args.trim().to_string());
            }
        } else if let Some(chain) = line.strip_prefix("-X ") {
            let chain = chain.trim();
            table.chains.retain(|c| c != chain);
            table.rules.remove(chain);
        }
    }
}

/// Writes the tables in the render's order with each rule passed through `rule`.
fn print(tables: &BTreeMap<String, Table>, rule: impl Fn(&str) -> String) -> String {
    let mut out = String::new();
    for (name, fixed) in [
        ("filter", &chains::FILTER_CHAINS[..]),
        ("nat", &chains::NAT_CHAINS[..]),
    ] {
        let Some(table) = tables.get(name) else {
            continue;
        };
        let mut order: Vec<&str> = fixed
            .iter()
            .copied()
            .filter(|c| table.chains.iter().any(|d| d == c))
            .collect();
        let mut rest: Vec<&str> = table
            .chains
            .iter()
            .map(String::as_str)
            .filter(|c| !fixed.contains(c))
            .collect();
        rest.sort_unstable();
        order.extend(rest);
        if order.is_empty() {
            continue;
        }
        let _ = writeln!(out, "*{name}");
        for c in &order {
            let _ = writeln!(out, ":{c} - [0:0]");
        }
        for c in &order {
            for r in table.rules.get(*c).into_iter().flatten() {
                let _ = writeln!(out, "-A {c} {}", rule(r));
            }
        }
        out.push_str("COMMIT\n");
    }
    out
}

/// The Sluice chains of `iptables-save -t nat` (`nat`) and `iptables-save -t filter` (`filter`)
/// output, in the render's format and order (see the module docs). Either input may also hold
/// other tables; only `nat` and `filter` are printed.
pub fn dump(nat: &str, filter: &str) -> String {
    let mut tables = BTreeMap::new();
    parse(filter, &mut tables);
    parse(nat, &mut tables);
    print(&tables, canonical_rule)
}

/// Render (restore) text in the form [`dump`] prints for the kernel state it produces: the same
/// chain order, and every rule spelled as `iptables-save` spells it.
pub fn canonical_render(text: &str) -> String {
    let mut tables = BTreeMap::new();
    parse(text, &mut tables);
    print(&tables, canonical_rule)
}

/// Splits rule arguments into words, keeping a double-quoted string (with its quotes) as one.
fn words(rule: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut escaped = false;
    for ch in rule.chars() {
        if escaped {
            cur.push(ch);
            escaped = false;
        } else if ch == '\\' && quoted {
            cur.push(ch);
            escaped = true;
        } else if ch == '"' {
            cur.push(ch);
            quoted = !quoted;
        } else if ch.is_whitespace() && !quoted {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
        } else {
            cur.push(ch);
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Basic (non-match) options in the order `iptables-save` prints them.
const BASIC: [(&str, &str); 5] = [
    ("-s", "--source"),
    ("-d", "--destination"),
    ("-i", "--in-interface"),
    ("-o", "--out-interface"),
    ("-p", "--protocol"),
];

fn basic_index(w: &str) -> Option<usize> {
    BASIC.iter().position(|(s, l)| w == *s || w == *l)
}

/// An address as saved: IPv4 hosts get `/32`, IPv6 hosts `/128`.
fn with_mask(addr: &str) -> String {
    if addr.contains('/') {
        addr.to_string()
    } else if addr.contains(':') {
        format!("{addr}/128")
    } else {
        format!("{addr}/32")
    }
}

fn parse_u32(s: &str) -> Option<u32> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

/// `value[/mask]` as two numbers; `None` if not numeric.
fn value_mask(s: &str) -> Option<(u32, Option<u32>)> {
    match s.split_once('/') {
        Some((v, m)) => Some((parse_u32(v)?, Some(parse_u32(m)?))),
        None => Some((parse_u32(s)?, None)),
    }
}

/// `-j MARK` options as `--set-xmark value/mask` (libxt_MARK's save form).
fn canonical_mark_target(opts: &[String]) -> Vec<String> {
    let [op, arg] = opts else {
        return opts.to_vec();
    };
    let Some((v, m)) = value_mask(arg) else {
        return opts.to_vec();
    };
    let (v, m) = match (op.as_str(), m) {
        ("--set-xmark", m) => (v, m.unwrap_or(u32::MAX)),
        ("--set-mark", m) => (v, m.unwrap_or(u32::MAX)),
        ("--or-mark", None) => (v, v),
        ("--xor-mark", None) => (v, 0),
        ("--and-mark", None) => (0, !v),
        _ => return opts.to_vec(),
    };
    vec!["--set-xmark".into(), format!("{v:#x}/{m:#x}")]
}

/// `-m statistic` options with the probability as saved: the 31-bit fixed-point value the
/// kernel keeps, printed with 11 decimals.
fn canonical_statistic(opts: &[String]) -> Vec<String> {
    let mut out = opts.to_vec();
    for i in 0..out.len().saturating_sub(1) {
        if out[i] == "--probability" {
            if let Ok(p) = out[i + 1].parse::<f64>() {
                let fixed = (p * 2_147_483_648.0).round();
                out[i + 1] = format!("{:.11}", fixed / 2_147_483_648.0);
            }
        }
    }
    out
}

/// `-m recent` options in libxt_recent's save order, defaults spelled out.
fn canonical_recent(opts: &[String]) -> Vec<String> {
    let mut invert = false;
    let mut command: Option<String> = None;
    let mut seconds = None;
    let mut reap = false;
    let mut hitcount = None;
    let mut rttl = false;
    let mut name = "DEFAULT".to_string();
    let mut mask = None;
    let mut side = "--rsource".to_string();
    let mut it = opts.iter();
    while let Some(w) = it.next() {
        match w.as_str() {
            "!" => invert = true,
            "--set" | "--rcheck" | "--update" | "--remove" => command = Some(w.clone()),
            "--seconds" => seconds = it.next().cloned(),
            "--reap" => reap = true,
            "--hitcount" => hitcount = it.next().cloned(),
            "--rttl" => rttl = true,
            "--name" => name = it.next().cloned().unwrap_or_default(),
            "--mask" => mask = it.next().cloned(),
            "--rsource" | "--rdest" => side = w.clone(),
            // Something this canonicaliser does not know: leave the options as written.
            _ => return opts.to_vec(),
        }
    }
    let mut out = Vec::new();
    if invert {
        out.push("!".to_string());
    }
    out.extend(command);
    if let Some(s) = seconds {
        out.extend(["--seconds".to_string(), s]);
    }
    if reap {
        out.push("--reap".into());
    }
    if let Some(h) = hitcount {
        out.extend(["--hitcount".to_string(), h]);
    }
    if rttl {
        out.push("--rttl".into());
    }
    out.extend(["--name".to_string(), name]);
    out.extend([
        "--mask".to_string(),
        mask.unwrap_or_else(|| "255.255.255.255".into()),
    ]);
    out.push(side);
    out
}

/// One rule's arguments (after `-A CHAIN`) as `iptables-save` prints them, for the vocabulary
/// the render uses; anything else passes through unchanged. Idempotent.
pub fn canonical_rule(rule: &str) -> String {
    let ws = words(rule);
    let mut basic: [Option<(bool, String)>; 5] = Default::default();
    let mut rest: Vec<String> = Vec::new();
    let mut i = 0;
    while i < ws.len() {
        let negated = ws[i] == "!" && ws.get(i + 1).and_then(|w| basic_index(w)).is_some();
        let at = if negated { i + 1 } else { i };
        match (basic_index(&ws[at]), ws.get(at + 1)) {
            (Some(k), Some(v)) => {
                let v = if k < 2 { with_mask(v) } else { v.clone() };
                basic[k] = Some((negated, v));
                i = at + 2;
            }
            _ => {
                rest.push(ws[i].clone());
                i += 1;
            }
        }
    }
    let mut out: Vec<String> = Vec::new();
    for (k, b) in basic.iter().enumerate() {
        if let Some((neg, v)) = b {
            if *neg {
                out.push("!".into());
            }
            out.extend([BASIC[k].0.to_string(), v.clone()]);
        }
    }
    // Split the rest into `-m NAME opts…` / `-j|-g TARGET opts…` segments.
    let mut segments: Vec<(Vec<String>, Vec<String>)> = Vec::new();
    for w in rest {
        let starts = matches!(
            w.as_str(),
            "-m" | "--match" | "-j" | "--jump" | "-g" | "--goto"
        );
        match segments.last_mut() {
            Some((head, _)) if head.len() == 1 => head.push(w),
            Some((_, opts)) if !starts => opts.push(w),
            None if !starts => segments.push((Vec::new(), vec![w])),
            _ => segments.push((vec![w], Vec::new())),
        }
    }
    for (head, opts) in segments {
        let opts = match head.iter().map(String::as_str).collect::<Vec<_>>()[..] {
            ["-m" | "--match", "statistic"] => canonical_statistic(&opts),
            ["-m" | "--match", "recent"] => canonical_recent(&opts),
            ["-j" | "--jump", "MARK"] => canonical_mark_target(&opts),
            ["-j" | "--jump", "REJECT"] if opts.is_empty() => {
                vec!["--reject-with".into(), "icmp-port-unreachable".into()]
            }
            _ => opts,
        };
        out.extend(head);
        out.extend(opts);
    }
    out.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `iptables-save -t nat` / `-t filter` (iptables 1.8.9, nf_tables) of a fresh network
    /// namespace after `iptables-restore --noflush testdata/client_ip_affinity.golden`, plus the
    /// agent's jumps from the built-in chains and its `SLUICENODE-MASQ` chain (both must not
    /// show up in a dump).
    const AFFINITY_NAT: &str = r#"# Generated by iptables-nft-save v1.8.9 (nf_tables) on Sun Nov 22 08:02:41 2026
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:SLUICE-MARK-MASQ - [0:0]
:SLUICE-NODEPORTS - [0:0]
:SLUICE-POSTROUTING - [0:0]
:SLUICE-SERVICES - [0:0]
:SLUICE-SVC-ALLRKIL3KZGEYWBT - [0:0]
:SLUICENODE-MASQ - [0:0]
-A PREROUTING -m comment --comment "sluice service portals" -j SLUICE-SERVICES
-A POSTROUTING -j SLUICENODE-MASQ
-A SLUICE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
-A SLUICE-POSTROUTING -m comment --comment "sluice hairpin: service traffic DNATed back to its source" -m conntrack --ctstate DNAT -m bpf --bytecode "6,32 0 0 12,7 0 0 0,32 0 0 16,29 0 1 0,6 0 0 1,6 0 0 0" -j MASQUERADE --random-fully
-A SLUICE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A SLUICE-POSTROUTING -j MARK --set-xmark 0x4000/0x0
-A SLUICE-POSTROUTING -m comment --comment "sluice service traffic requiring SNAT" -j MASQUERADE --random-fully
-A SLUICE-SERVICES -d 10.96.0.10/32 -p tcp -m comment --comment "default/web:http cluster IP" -m tcp --dport 80 -j SLUICE-SVC-ALLRKIL3KZGEYWBT
-A SLUICE-SERVICES -m comment --comment "sluice service nodeports; must be last" -m addrtype --dst-type LOCAL -j SLUICE-NODEPORTS
-A SLUICE-SVC-ALLRKIL3KZGEYWBT ! -s 10.244.0.0/16 -d 10.96.0.10/32 -p tcp -m comment --comment "default/web:http cluster IP" -m tcp --dport 80 -j SLUICE-MARK-MASQ
-A SLUICE-SVC-ALLRKIL3KZGEYWBT -p tcp -m comment --comment "default/web:http -> 10.244.1.1:8080" -m recent --update --seconds 10800 --reap --name SLUICE-AFF-6HG5LCLXNHZCSLOG --mask 255.255.255.255 --rsource -j DNAT --to-destination 10.244.1.1:8080
-A SLUICE-SVC-ALLRKIL3KZGEYWBT -p tcp -m comment --comment "default/web:http -> 10.244.2.1:8080" -m recent --update --seconds 10800 --reap --name SLUICE-AFF-3H2N6UTDNHZBS2TY --mask 255.255.255.255 --rsource -j DNAT --to-destination 10.244.2.1:8080
-A SLUICE-SVC-ALLRKIL3KZGEYWBT -p tcp -m comment --comment "default/web:http -> 10.244.1.1:8080" -m statistic --mode random --probability 0.50000000000 -m recent --set --name SLUICE-AFF-6HG5LCLXNHZCSLOG --mask 255.255.255.255 --rsource -j DNAT --to-destination 10.244.1.1:8080
-A SLUICE-SVC-ALLRKIL3KZGEYWBT -p tcp -m comment --comment "default/web:http -> 10.244.2.1:8080" -m recent --set --name SLUICE-AFF-3H2N6UTDNHZBS2TY --mask 255.255.255.255 --rsource -j DNAT --to-destination 10.244.2.1:8080
-A SLUICENODE-MASQ -s 10.244.1.0/24 ! -d 10.244.0.0/16 -j MASQUERADE
COMMIT
# Completed on Sun Nov 22 08:02:41 2026
"#;
    const AFFINITY_FILTER: &str = r#"# Generated by iptables-nft-save v1.8.9 (nf_tables) on Sun Nov 22 08:02:41 2026
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:SLUICE-EXTERNAL-SERVICES - [0:0]
:SLUICE-FIREWALL - [0:0]
:SLUICE-FORWARD - [0:0]
:SLUICE-SERVICES - [0:0]
-A FORWARD -j SLUICE-FORWARD
-A SLUICE-FORWARD -m conntrack --ctstate INVALID -j DROP
-A SLUICE-FORWARD -m comment --comment "sluice forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT
-A SLUICE-FORWARD -m comment --comment "sluice forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
COMMIT
# Completed on Sun Nov 22 08:02:41 2026
"#;
    /// The same for `testdata/etp_local_without_local_endpoints.golden`.
    const ETP_LOCAL_NAT: &str = r#"# Generated by iptables-nft-save v1.8.9 (nf_tables) on Sun Nov 22 08:02:41 2026
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:SLUICE-EXT-ALLRKIL3KZGEYWBT - [0:0]
:SLUICE-MARK-MASQ - [0:0]
:SLUICE-NODEPORTS - [0:0]
:SLUICE-POSTROUTING - [0:0]
:SLUICE-SERVICES - [0:0]
:SLUICE-SVC-ALLRKIL3KZGEYWBT - [0:0]
:SLUICENODE-MASQ - [0:0]
-A PREROUTING -m comment --comment "sluice service portals" -j SLUICE-SERVICES
-A POSTROUTING -j SLUICENODE-MASQ
-A SLUICE-EXT-ALLRKIL3KZGEYWBT -s 10.244.0.0/16 -m comment --comment "pod traffic for default/web:http external destinations" -j SLUICE-SVC-ALLRKIL3KZGEYWBT
-A SLUICE-EXT-ALLRKIL3KZGEYWBT -m comment --comment "masquerade LOCAL traffic for default/web:http external destinations" -m addrtype --src-type LOCAL -j SLUICE-MARK-MASQ
-A SLUICE-EXT-ALLRKIL3KZGEYWBT -m comment --comment "route LOCAL traffic for default/web:http external destinations" -m addrtype --src-type LOCAL -j SLUICE-SVC-ALLRKIL3KZGEYWBT
-A SLUICE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
-A SLUICE-NODEPORTS -p tcp -m comment --comment "default/web:http" -m tcp --dport 30080 -j SLUICE-EXT-ALLRKIL3KZGEYWBT
-A SLUICE-POSTROUTING -m comment --comment "sluice hairpin: service traffic DNATed back to its source" -m conntrack --ctstate DNAT -m bpf --bytecode "6,32 0 0 12,7 0 0 0,32 0 0 16,29 0 1 0,6 0 0 1,6 0 0 0" -j MASQUERADE --random-fully
-A SLUICE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A SLUICE-POSTROUTING -j MARK --set-xmark 0x4000/0x0
-A SLUICE-POSTROUTING -m comment --comment "sluice service traffic requiring SNAT" -j MASQUERADE --random-fully
-A SLUICE-SERVICES -d 10.96.0.10/32 -p tcp -m comment --comment "default/web:http cluster IP" -m tcp --dport 80 -j SLUICE-SVC-ALLRKIL3KZGEYWBT
-A SLUICE-SERVICES -d 198.51.100.7/32 -p tcp -m comment --comment "default/web:http external IP" -m tcp --dport 80 -j SLUICE-EXT-ALLRKIL3KZGEYWBT
-A SLUICE-SERVICES -d 203.0.113.10/32 -p tcp -m comment --comment "default/web:http loadbalancer IP" -m tcp --dport 80 -j SLUICE-EXT-ALLRKIL3KZGEYWBT
-A SLUICE-SERVICES -m comment --comment "sluice service nodeports; must be last" -m addrtype --dst-type LOCAL -j SLUICE-NODEPORTS
-A SLUICE-SVC-ALLRKIL3KZGEYWBT ! -s 10.244.0.0/16 -d 10.96.0.10/32 -p tcp -m comment --comment "default/web:http cluster IP" -m tcp --dport 80 -j SLUICE-MARK-MASQ
-A SLUICE-SVC-ALLRKIL3KZGEYWBT -p tcp -m comment --comment "default/web:http -> 10.244.2.1:8080" -j DNAT --to-destination 10.244.2.1:8080
-A SLUICENODE-MASQ -s 10.244.1.0/24 ! -d 10.244.0.0/16 -j MASQUERADE
COMMIT
# Completed on Sun Nov 22 08:02:41 2026
"#;
    const ETP_LOCAL_FILTER: &str = r#"# Generated by iptables-nft-save v1.8.9 (nf_tables) on Sun Nov 22 08:02:41 2026
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:SLUICE-EXTERNAL-SERVICES - [0:0]
:SLUICE-FIREWALL - [0:0]
:SLUICE-FORWARD - [0:0]
:SLUICE-SERVICES - [0:0]
-A FORWARD -j SLUICE-FORWARD
-A SLUICE-EXTERNAL-SERVICES -d 198.51.100.7/32 -p tcp -m comment --comment "default/web:http has no local endpoints" -m tcp --dport 80 -j DROP
-A SLUICE-EXTERNAL-SERVICES -d 203.0.113.10/32 -p tcp -m comment --comment "default/web:http has no local endpoints" -m tcp --dport 80 -j DROP
-A SLUICE-EXTERNAL-SERVICES -p tcp -m comment --comment "default/web:http has no local endpoints" -m addrtype --dst-type LOCAL -m tcp --dport 30080 -j DROP
-A SLUICE-FORWARD -m conntrack --ctstate INVALID -j DROP
-A SLUICE-FORWARD -m comment --comment "sluice forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT
-A SLUICE-FORWARD -m comment --comment "sluice forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
COMMIT
# Completed on Sun Nov 22 08:02:41 2026
"#;

    fn golden(name: &str) -> String {
        let path = format!("{}/testdata/{name}.golden", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    #[test]
    fn saved_rulesets_dump_to_their_golden_renders() {
        for (name, nat, filter) in [
            ("client_ip_affinity", AFFINITY_NAT, AFFINITY_FILTER),
            (
                "etp_local_without_local_endpoints",
                ETP_LOCAL_NAT,
                ETP_LOCAL_FILTER,
            ),
        ] {
            let got = dump(nat, filter);
            assert_eq!(got, canonical_render(&golden(name)), "{name}");
            assert!(!got.contains("SLUICENODE"), "{got}");
            assert!(
                !got.contains("-A PREROUTING") && !got.contains("-A FORWARD"),
                "{got}"
            );
        }
    }

    #[test]
    fn canonical_render_only_respells_rules() {
        // Same lines in the same order as the golden, modulo the rule spelling.
        let g = golden("client_ip_affinity");
        let c = canonical_render(&g);
        let shape = |t: &str| -> Vec<String> {
            t.lines()
                .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
                .collect()
        };
        assert_eq!(shape(&c), shape(&g));
        assert!(c.contains("-A SLUICE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000\n"));
        assert!(c.contains("--probability 0.50000000000 "));
        assert!(c.contains(
            "-m recent --set --name SLUICE-AFF-3H2N6UTDNHZBS2TY --mask 255.255.255.255 --rsource"
        ));
    }

    #[test]
    fn canonical_form_is_a_fixed_point() {
        let dir = format!("{}/testdata", env!("CARGO_MANIFEST_DIR"));
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "golden") {
                let once = canonical_render(&std::fs::read_to_string(&path).unwrap());
                assert_eq!(canonical_render(&once), once, "{}", path.display());
                seen += 1;
            }
        }
        assert!(seen > 0);
    }

    #[test]
    fn rules() {
        for (render, saved) in [
            (
                "-m comment --comment \"a b\" -d 10.96.0.10/32 -p tcp -m tcp --dport 80 ! -s 10.244.0.0/16 -j X",
                "! -s 10.244.0.0/16 -d 10.96.0.10/32 -p tcp -m comment --comment \"a b\" -m tcp --dport 80 -j X",
            ),
            ("-s 10.0.0.1 -j MARK --xor-mark 0x4000", "-s 10.0.0.1/32 -j MARK --set-xmark 0x4000/0x0"),
            ("-j MARK --set-mark 16", "-j MARK --set-xmark 0x10/0xffffffff"),
            ("-m statistic --mode random --probability 0.3333333333 -j X",
             "-m statistic --mode random --probability 0.33333333349 -j X"),
            ("-m mark ! --mark 0x4000/0x4000 -j RETURN", "-m mark ! --mark 0x4000/0x4000 -j RETURN"),
            ("-p udp -j REJECT", "-p udp -j REJECT --reject-with icmp-port-unreachable"),
        ] {
            assert_eq!(canonical_rule(render), saved);
            assert_eq!(canonical_rule(saved), saved);
        }
    }

    #[test]
    fn empty_and_foreign_only() {
        assert_eq!(dump("", ""), "");
        let saved = "*nat\n:PREROUTING ACCEPT [3:180]\n:KUBE-SERVICES - [0:0]\n-A KUBE-SERVICES -j RETURN\nCOMMIT\n";
        assert_eq!(dump(saved, ""), "");
        // Counters and stale-chain deletions.
        let saved = "*nat\n:SLUICE-SERVICES - [5:300]\n:SLUICE-SVC-OLD - [0:0]\n-A SLUICE-SERVICES -j RETURN\n-X SLUICE-SVC-OLD\nCOMMIT\n";
        assert_eq!(
            dump(saved, ""),
            "*nat\n:SLUICE-SERVICES - [0:0]\n-A SLUICE-SERVICES -j RETURN\nCOMMIT\n"
        );
    }
}
