//! A validating in-memory iptables with a packet tracer.
//!
//! [`Fake::restore`] applies `iptables-restore --noflush` text atomically (a failed transaction
//! leaves the state untouched) and rejects what the kernel would reject for our rules: jumps to
//! missing chains, appends to missing chains, deleting missing, built-in or still-referenced
//! chains — and, stricter than the kernel, duplicate chain declarations in one transaction and
//! any match/target option it does not understand.
//!
//! [`Fake::trace`] follows a new packet through nat (PREROUTING or OUTPUT), filter (INPUT,
//! FORWARD or OUTPUT) and nat POSTROUTING, treating `-m statistic` and `-m recent --rcheck` /
//! `--update` as "either way", runs `-m bpf` programs on the packet's IP header, and returns every
//! possible [`Verdict`].

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use sluice_proxy::model::Protocol;

use crate::render::words;

/// Errors of the fake.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FakeError {
    /// The restore text is malformed or not understood.
    #[error("line {line}: {message}")]
    Parse {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// The transaction is well-formed but invalid.
    #[error("table {table}: {message}")]
    Invalid {
        /// Table name.
        table: String,
        /// What is wrong.
        message: String,
    },
    /// The tracer found a loop or an over-deep chain nesting.
    #[error("trace: {0}")]
    Trace(String),
}

/// A rule's target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Jump to a user chain.
    Jump(String),
    /// `ACCEPT`.
    Accept,
    /// `DROP`.
    Drop,
    /// `REJECT` (any `--reject-with`).
    Reject,
    /// `RETURN`.
    Return,
    /// `DNAT --to-destination`.
    Dnat(SocketAddr),
    /// `MASQUERADE`.
    Masquerade,
    /// `MARK --or-mark`.
    OrMark(u32),
    /// `MARK --xor-mark`.
    XorMark(u32),
}

/// A parsed rule: the matches the tracer understands plus its target.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rule {
    /// Original text after `-A CHAIN`.
    pub text: String,
    /// `[!] -s`.
    pub src: Option<(bool, IpNet)>,
    /// `[!] -d`.
    pub dst: Option<(bool, IpNet)>,
    /// `-p`.
    pub proto: Option<Protocol>,
    /// `--dport`.
    pub dport: Option<u16>,
    /// `-m addrtype --src-type LOCAL` (negated?).
    pub src_local: Option<bool>,
    /// `-m addrtype --dst-type LOCAL` (negated?).
    pub dst_local: Option<bool>,
    /// `-m statistic` or `-m recent --rcheck`/`--update`: may or may not match.
    pub maybe: bool,
    /// `-m bpf --bytecode`: a classic BPF program run on the IP header.
    pub bpf: Option<Vec<BpfInsn>>,
    /// `-m mark [!] --mark value/mask`.
    pub mark: Option<(bool, u32, u32)>,
    /// `-m conntrack --ctstate` (matches a new packet if it lists `NEW`, or `DNAT` once the
    /// packet was DNATed).
    pub ctstate: Option<Vec<String>>,
    /// `-m comment --comment`.
    pub comment: Option<String>,
    /// Target, if any.
    pub target: Option<Target>,
}

impl Rule {
    /// The chain this rule jumps to, if any.
    pub fn jump(&self) -> Option<&str> {
        match &self.target {
            Some(Target::Jump(c)) => Some(c),
            _ => None,
        }
    }
}

/// One table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Table {
    builtin: BTreeSet<String>,
    chains: BTreeMap<String, Vec<Rule>>,
}

impl Table {
    fn with_builtins(names: &[&str]) -> Self {
        let mut t = Table::default();
        for n in names {
            t.builtin.insert(n.to_string());
            t.chains.insert(n.to_string(), Vec::new());
        }
        t
    }
}

/// The in-memory iptables state (one IP family).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fake {
    tables: BTreeMap<String, Table>,
    /// Addresses of this node (for `-m addrtype LOCAL`).
    pub local_addrs: BTreeSet<IpAddr>,
}

impl Default for Fake {
    fn default() -> Self {
        Self::new()
    }
}

/// A new packet to trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Destination port.
    pub dport: u16,
    /// Protocol.
    pub proto: Protocol,
    /// Originated by a host process (nat OUTPUT) rather than arriving (nat PREROUTING).
    pub from_local: bool,
}

/// What happens to the packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Action {
    /// Delivered to this endpoint (DNATed).
    Dnat(SocketAddr),
    /// Rejected (ICMP).
    Reject,
    /// Dropped silently.
    Drop,
    /// Delivered to its original destination, untranslated.
    Accept,
}

/// One possible outcome of [`Fake::trace`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Verdict {
    /// What happens.
    pub action: Action,
    /// Source NAT (masquerade) applied on the way out.
    pub masquerade: bool,
}

fn parse_net(s: &str) -> Result<IpNet, String> {
    if let Ok(n) = s.parse::<IpNet>() {
        return Ok(n);
    }
    s.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("bad address {s:?}"))
}

fn parse_u32(s: &str) -> Result<u32, String> {
    let r = match s.strip_prefix("0x") {
        Some(h) => u32::from_str_radix(h, 16),
        None => s.parse(),
    };
    r.map_err(|_| format!("bad number {s:?}"))
}

/// Parses the words of a rule (after `-A CHAIN`).
pub fn parse_rule(ws: &[String]) -> Result<Rule, String> {
    let mut r = Rule {
        text: crate::render::restore_words(ws),
        ..Rule::default()
    };
    let mut i = 0;
    let mut neg = false;
    let next = |i: &mut usize| -> Result<&String, String> {
        *i += 1;
        ws.get(*i)
            .ok_or_else(|| format!("missing value after {}", ws[*i - 1]))
    };
    while i < ws.len() {
        let w = ws[i].as_str();
        match w {
            "!" => {
                neg = true;
                i += 1;
                continue;
            }
            "-s" => r.src = Some((neg, parse_net(next(&mut i)?)?)),
            "-d" => r.dst = Some((neg, parse_net(next(&mut i)?)?)),
            "-p" => {
                r.proto = Some(match next(&mut i)?.as_str() {
                    "tcp" => Protocol::Tcp,
                    "udp" => Protocol::Udp,
                    "sctp" => Protocol::Sctp,
                    p => return Err(format!("unknown protocol {p}")),
                })
            }
            "-m" => match next(&mut i)?.as_str() {
                "tcp" | "udp" | "sctp" | "comment" | "addrtype" | "mark" | "conntrack" | "bpf" => {}
                "statistic" | "recent" => {}
                m => return Err(format!("unknown match {m}")),
            },
            "--dport" => {
                let v = next(&mut i)?;
                r.dport = Some(v.parse().map_err(|_| format!("bad port {v}"))?);
            }
            "--comment" => r.comment = Some(next(&mut i)?.clone()),
            "--dst-type" | "--src-type" => {
                if next(&mut i)? != "LOCAL" {
                    return Err("only addrtype LOCAL is modelled".into());
                }
                if w == "--dst-type" {
                    r.dst_local = Some(neg);
                } else {
                    r.src_local = Some(neg);
                }
            }
            "--mode" => {
                if next(&mut i)? != "random" {
                    return Err("only statistic --mode random is modelled".into());
                }
            }
            "--probability" => {
                let v = next(&mut i)?;
                let p: f64 = v.parse().map_err(|_| format!("bad probability {v}"))?;
                if !(0.0..=1.0).contains(&p) {
                    return Err(format!("probability {v} out of range"));
                }
                r.maybe = true;
            }
            "--rcheck" | "--update" => r.maybe = true,
            "--bytecode" => r.bpf = Some(parse_bpf(next(&mut i)?)?),
            "--name" | "--seconds" => {
                next(&mut i)?;
            }
            "--reap" | "--set" | "--random-fully" => {}
            "--mark" => {
                let v = next(&mut i)?;
                let (val, mask) = match v.split_once('/') {
                    Some((a, b)) => (parse_u32(a)?, parse_u32(b)?),
                    None => (parse_u32(v)?, u32::MAX),
                };
                r.mark = Some((neg, val, mask));
            }
            "--ctstate" => {
                r.ctstate = Some(next(&mut i)?.split(',').map(str::to_string).collect());
            }
            "-j" => {
                let t = next(&mut i)?.clone();
                r.target = Some(match t.as_str() {
                    "ACCEPT" => Target::Accept,
                    "DROP" => Target::Drop,
                    "RETURN" => Target::Return,
                    "MASQUERADE" => Target::Masquerade,
                    "REJECT" => Target::Reject,
                    "DNAT" => {
                        if next(&mut i)? != "--to-destination" {
                            return Err("DNAT needs --to-destination".into());
                        }
                        let v = next(&mut i)?;
                        Target::Dnat(v.parse().map_err(|_| format!("bad DNAT target {v}"))?)
                    }
                    "MARK" => {
                        let op = next(&mut i)?.clone();
                        let v = parse_u32(next(&mut i)?)?;
                        match op.as_str() {
                            "--or-mark" => Target::OrMark(v),
                            "--xor-mark" => Target::XorMark(v),
                            o => return Err(format!("unknown MARK option {o}")),
                        }
                    }
                    c if c.chars().all(|c| {
                        c.is_ascii_uppercase() || c.is_ascii_digit() || c == '-' || c == '_'
                    }) =>
                    {
                        Target::Jump(c.to_string())
                    }
                    c => return Err(format!("bad target {c}")),
                });
            }
            "--reject-with" => {
                next(&mut i)?;
            }
            o => return Err(format!("unknown option {o}")),
        }
        if neg && !matches!(w, "-s" | "-d" | "--mark" | "--dst-type" | "--src-type") {
            return Err(format!("negation not supported for {w}"));
        }
        neg = false;
        i += 1;
    }
    Ok(r)
}

impl Fake {
    /// Empty `filter` and `nat` tables with their built-in chains.
    pub fn new() -> Self {
        let mut tables = BTreeMap::new();
        tables.insert(
            "filter".into(),
            Table::with_builtins(&["INPUT", "FORWARD", "OUTPUT"]),
        );
        tables.insert(
            "nat".into(),
            Table::with_builtins(&["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"]),
        );
        Self {
            tables,
            local_addrs: BTreeSet::new(),
        }
    }

    /// Applies `iptables-restore --noflush` text atomically.
    pub fn restore(&mut self, text: &str) -> Result<(), FakeError> {
        let mut staged = self.tables.clone();
        let mut current: Option<(String, Table, BTreeSet<String>, BTreeSet<String>)> = None;
        for (n, line) in text.lines().enumerate() {
            let n = n + 1;
            let perr = |m: String| FakeError::Parse {
                line: n,
                message: m,
            };
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(t) = line.strip_prefix('*') {
                if current.is_some() {
                    return Err(perr("table started before COMMIT".into()));
                }
                let table = staged
                    .get(t)
                    .ok_or_else(|| perr(format!("unknown table {t}")))?;
                current = Some((
                    t.to_string(),
                    table.clone(),
                    BTreeSet::new(),
                    BTreeSet::new(),
                ));
                continue;
            }
            let Some((tname, table, declared, deleted)) = current.as_mut() else {
                return Err(perr("rule outside a table".into()));
            };
            if line == "COMMIT" {
                validate(tname, table, deleted)?;
                staged.insert(tname.clone(), std::mem::take(table));
                current = None;
                continue;
            }
            if let Some(decl) = line.strip_prefix(':') {
                let name = decl.split_whitespace().next().unwrap_or("");
                if name.is_empty() {
                    return Err(perr("empty chain declaration".into()));
                }
                if !declared.insert(name.to_string()) {
                    return Err(perr(format!("chain {name} declared twice")));
                }
                // Declaring flushes (noflush only spares undeclared chains).
                table.chains.insert(name.to_string(), Vec::new());
                continue;
            }
            let ws = words(line).map_err(perr)?;
            match ws.first().map(String::as_str) {
                Some("-A") => {
                    let chain = ws.get(1).ok_or_else(|| perr("-A needs a chain".into()))?;
                    let rule = parse_rule(&ws[2..]).map_err(perr)?;
                    table
                        .chains
                        .get_mut(chain)
                        .ok_or_else(|| perr(format!("-A to missing chain {chain}")))?
                        .push(rule);
                }
                Some("-D") => {
                    let chain = ws.get(1).ok_or_else(|| perr("-D needs a chain".into()))?;
                    let rule = parse_rule(&ws[2..]).map_err(perr)?;
                    let rules = table
                        .chains
                        .get_mut(chain)
                        .ok_or_else(|| perr(format!("-D in missing chain {chain}")))?;
                    let pos = rules
                        .iter()
                        .position(|r| r == &rule)
                        .ok_or_else(|| perr(format!("-D of missing rule in {chain}")))?;
                    rules.remove(pos);
                }
                Some("-F") => {
                    let chain = ws.get(1).ok_or_else(|| perr("-F needs a chain".into()))?;
                    table
                        .chains
                        .get_mut(chain)
                        .ok_or_else(|| perr(format!("-F of missing chain {chain}")))?
                        .clear();
                }
                Some("-X") => {
                    let chain = ws.get(1).ok_or_else(|| perr("-X needs a chain".into()))?;
                    if table.builtin.contains(chain) {
                        return Err(perr(format!("-X of built-in chain {chain}")));
                    }
                    if table.chains.remove(chain).is_none() {
                        return Err(perr(format!("-X of missing chain {chain}")));
                    }
                    deleted.insert(chain.clone());
                }
                _ => return Err(perr(format!("unsupported line {line:?}"))),
            }
        }
        if current.is_some() {
            return Err(FakeError::Parse {
                line: 0,
                message: "missing COMMIT".into(),
            });
        }
        self.tables = staged;
        Ok(())
    }

    /// `iptables-save`-style dump of every table.
    pub fn save(&self) -> String {
        let mut out = String::new();
        for (name, t) in &self.tables {
            out.push_str(&format!("*{name}\n"));
            for c in t.chains.keys() {
                let policy = if t.builtin.contains(c) { "ACCEPT" } else { "-" };
                out.push_str(&format!(":{c} {policy} [0:0]\n"));
            }
            for (c, rules) in &t.chains {
                for r in rules {
                    out.push_str(&format!("-A {c} {}\n", r.text));
                }
            }
            out.push_str("COMMIT\n");
        }
        out
    }

    /// Chains of `table` (built-in included).
    pub fn chains(&self, table: &str) -> BTreeSet<String> {
        self.tables
            .get(table)
            .map(|t| t.chains.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Rules of `table`/`chain`.
    pub fn rules(&self, table: &str, chain: &str) -> Option<&[Rule]> {
        self.tables.get(table)?.chains.get(chain).map(Vec::as_slice)
    }

    /// Every possible outcome for a new packet.
    pub fn trace(&self, pkt: &Packet) -> Result<BTreeSet<Verdict>, FakeError> {
        let mut verdicts = BTreeSet::new();
        let start = St {
            dst: pkt.dst,
            dport: pkt.dport,
            mark: 0,
            dnat: None,
            masq: false,
        };
        let nat_hook = if pkt.from_local {
            "OUTPUT"
        } else {
            "PREROUTING"
        };
        for (st, end) in self.walk("nat", nat_hook, pkt, start, 0)? {
            // Terminal verdicts in nat other than DNAT/ACCEPT/RETURN are not used by us.
            match end {
                End::Return | End::Accept | End::Dnat | End::Masquerade => {}
                End::Drop => {
                    verdicts.insert(Verdict {
                        action: Action::Drop,
                        masquerade: false,
                    });
                    continue;
                }
                End::Reject => {
                    verdicts.insert(Verdict {
                        action: Action::Reject,
                        masquerade: false,
                    });
                    continue;
                }
            }
            let to_local = self.local_addrs.contains(&st.dst);
            let filter_hook = if pkt.from_local {
                "OUTPUT"
            } else if to_local {
                "INPUT"
            } else {
                "FORWARD"
            };
            let mut outs = Vec::new();
            for (fst, fend) in self.walk("filter", filter_hook, pkt, st, 0)? {
                let action = match fend {
                    End::Drop => Some(Action::Drop),
                    End::Reject => Some(Action::Reject),
                    _ => None,
                };
                outs.push((fst, action));
            }
            for (fst, action) in outs {
                if let Some(a) = action {
                    verdicts.insert(Verdict {
                        action: a,
                        masquerade: false,
                    });
                    continue;
                }
                let delivered = match fst.dnat {
                    Some(a) => Action::Dnat(a),
                    None => Action::Accept,
                };
                if filter_hook == "INPUT" {
                    verdicts.insert(Verdict {
                        action: delivered,
                        masquerade: false,
                    });
                    continue;
                }
                for (pst, _) in self.walk("nat", "POSTROUTING", pkt, fst, 0)? {
                    verdicts.insert(Verdict {
                        action: delivered,
                        masquerade: pst.masq,
                    });
                }
            }
        }
        Ok(verdicts)
    }

    fn walk(
        &self,
        table: &str,
        chain: &str,
        pkt: &Packet,
        st: St,
        depth: usize,
    ) -> Result<Vec<(St, End)>, FakeError> {
        if depth > 32 {
            return Err(FakeError::Trace(format!(
                "chain nesting too deep at {table}/{chain}"
            )));
        }
        let rules = self
            .rules(table, chain)
            .ok_or_else(|| FakeError::Trace(format!("missing chain {table}/{chain}")))?;
        let mut live = vec![st];
        let mut done = Vec::new();
        for rule in rules {
            let mut next_live = Vec::new();
            for st in live {
                if !self.matches(rule, pkt, &st) {
                    next_live.push(st);
                    continue;
                }
                if rule.maybe {
                    next_live.push(st);
                }
                let mut st = st;
                match &rule.target {
                    None => next_live.push(st),
                    Some(Target::Jump(c)) => {
                        for (s, e) in self.walk(table, c, pkt, st, depth + 1)? {
                            if e == End::Return {
                                next_live.push(s);
                            } else {
                                done.push((s, e));
                            }
                        }
                    }
                    Some(Target::OrMark(m)) => {
                        st.mark |= m;
                        next_live.push(st);
                    }
                    Some(Target::XorMark(m)) => {
                        st.mark ^= m;
                        next_live.push(st);
                    }
                    Some(Target::Return) => done.push((st, End::Return)),
                    Some(Target::Accept) => done.push((st, End::Accept)),
                    Some(Target::Drop) => done.push((st, End::Drop)),
                    Some(Target::Reject) => done.push((st, End::Reject)),
                    Some(Target::Dnat(a)) => {
                        st.dnat = Some(*a);
                        st.dst = a.ip();
                        st.dport = a.port();
                        done.push((st, End::Dnat));
                    }
                    Some(Target::Masquerade) => {
                        st.masq = true;
                        done.push((st, End::Masquerade));
                    }
                }
            }
            live = next_live;
        }
        // Falling off a user chain returns; off a built-in chain applies its policy (ACCEPT).
        done.extend(live.into_iter().map(|s| (s, End::Return)));
        Ok(done)
    }

    fn matches(&self, r: &Rule, pkt: &Packet, st: &St) -> bool {
        let net = |m: &Option<(bool, IpNet)>, ip: IpAddr| match m {
            None => true,
            Some((neg, n)) => n.contains(&ip) != *neg,
        };
        let src_local = pkt.from_local || self.local_addrs.contains(&pkt.src);
        net(&r.src, pkt.src)
            && net(&r.dst, st.dst)
            && r.proto.is_none_or(|p| p == pkt.proto)
            && r.dport.is_none_or(|p| p == st.dport)
            && r.src_local.is_none_or(|neg| src_local != neg)
            && r.dst_local
                .is_none_or(|neg| self.local_addrs.contains(&st.dst) != neg)
            && r.mark.is_none_or(|(neg, v, m)| (st.mark & m == v) != neg)
            && r.ctstate.as_ref().is_none_or(|s| {
                s.iter()
                    .any(|s| s == "NEW" || (s == "DNAT" && st.dnat.is_some()))
            })
            && r.bpf
                .as_ref()
                .is_none_or(|p| run_bpf(p, &ip_header(pkt.src, st.dst)))
    }
}

/// One classic BPF instruction (`code jt jf k`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BpfInsn {
    /// Opcode.
    pub code: u16,
    /// Jump offset if true.
    pub jt: u8,
    /// Jump offset if false.
    pub jf: u8,
    /// Constant.
    pub k: u32,
}

/// xt_bpf's `--bytecode` text: `N,code jt jf k,…` with exactly N instructions, each of an
/// opcode the tracer can run.
fn parse_bpf(text: &str) -> Result<Vec<BpfInsn>, String> {
    let mut parts = text.split(',');
    let n: usize = parts
        .next()
        .and_then(|n| n.trim().parse().ok())
        .ok_or_else(|| format!("bad bytecode {text}"))?;
    let prog = parts
        .map(|p| {
            let f: Vec<&str> = p.split_whitespace().collect();
            let [code, jt, jf, k] = f[..] else {
                return Err(format!("bad instruction {p:?}"));
            };
            let bad = |_| format!("bad instruction {p:?}");
            let insn = BpfInsn {
                code: code.parse().map_err(bad)?,
                jt: jt.parse().map_err(bad)?,
                jf: jf.parse().map_err(bad)?,
                k: k.parse().map_err(bad)?,
            };
            if !matches!(
                insn.code,
                BPF_LD_W_ABS | BPF_TAX | BPF_JEQ_X | BPF_JEQ_K | BPF_RET_K
            ) {
                return Err(format!("bpf opcode {} is not modelled", insn.code));
            }
            Ok(insn)
        })
        .collect::<Result<Vec<_>, _>>()?;
    if prog.len() != n || n == 0 {
        return Err(format!(
            "bytecode {text}: {} instructions, header says {n}",
            prog.len()
        ));
    }
    Ok(prog)
}

const BPF_LD_W_ABS: u16 = 0x20;
const BPF_TAX: u16 = 0x07;
const BPF_JEQ_K: u16 = 0x15;
const BPF_JEQ_X: u16 = 0x1d;
const BPF_RET_K: u16 = 0x06;

/// The address fields of an IP header (everything else zero).
fn ip_header(src: IpAddr, dst: IpAddr) -> Vec<u8> {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut h = vec![0u8; 20];
            h[0] = 0x45;
            h[12..16].copy_from_slice(&s.octets());
            h[16..20].copy_from_slice(&d.octets());
            h
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let mut h = vec![0u8; 40];
            h[0] = 0x60;
            h[8..24].copy_from_slice(&s.octets());
            h[24..40].copy_from_slice(&d.octets());
            h
        }
        _ => Vec::new(),
    }
}

/// Runs a program as the kernel would for xt_bpf: a non-zero return matches; a load past the
/// end of the packet or falling off the program does not.
fn run_bpf(prog: &[BpfInsn], pkt: &[u8]) -> bool {
    let (mut a, mut x, mut pc) = (0u32, 0u32, 0usize);
    while let Some(i) = prog.get(pc) {
        pc += 1;
        match i.code {
            BPF_LD_W_ABS => {
                let at = i.k as usize;
                let Some(w) = pkt.get(at..at + 4) else {
                    return false;
                };
                a = u32::from_be_bytes([w[0], w[1], w[2], w[3]]);
            }
            BPF_TAX => x = a,
            BPF_JEQ_X | BPF_JEQ_K => {
                let v = if i.code == BPF_JEQ_X { x } else { i.k };
                pc += usize::from(if a == v { i.jt } else { i.jf });
            }
            BPF_RET_K => return i.k != 0,
            _ => return false,
        }
    }
    false
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct St {
    dst: IpAddr,
    dport: u16,
    mark: u32,
    dnat: Option<SocketAddr>,
    masq: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Return,
    Accept,
    Drop,
    Reject,
    Dnat,
    Masquerade,
}

fn validate(table: &str, t: &Table, deleted: &BTreeSet<String>) -> Result<(), FakeError> {
    for (chain, rules) in &t.chains {
        for r in rules {
            if let Some(j) = r.jump() {
                if !t.chains.contains_key(j) || t.builtin.contains(j) {
                    let what = if deleted.contains(j) {
                        "deleted"
                    } else {
                        "missing"
                    };
                    return Err(FakeError::Invalid {
                        table: table.into(),
                        message: format!("{chain}: jump to {what} chain {j}"),
                    });
                }
            }
            let ok = match &r.target {
                Some(Target::Dnat(_) | Target::Masquerade) => table == "nat",
                // The kernel refuses DROP in nat ("not intended for filtering").
                Some(Target::Reject | Target::Drop) => table == "filter",
                _ => true,
            };
            if !ok {
                return Err(FakeError::Invalid {
                    table: table.into(),
                    message: format!("{chain}: target not allowed in this table: {}", r.text),
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::hairpin_bytecode;
    use sluice_proxy::model::IpFamily;

    #[test]
    fn hairpin_program_matches_only_equal_source_and_destination() {
        let v4 = parse_bpf(&hairpin_bytecode(IpFamily::V4)).unwrap();
        let v6 = parse_bpf(&hairpin_bytecode(IpFamily::V6)).unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let run = |p: &[BpfInsn], s: &str, d: &str| run_bpf(p, &ip_header(ip(s), ip(d)));
        assert!(run(&v4, "10.244.1.5", "10.244.1.5"));
        assert!(!run(&v4, "10.244.1.5", "10.244.1.6"));
        assert!(run(&v6, "fd00::1:5", "fd00::1:5"));
        // Each of the four words differing on its own is a mismatch.
        for d in ["fd01::1:5", "fd00:0:1::1:5", "fd00::1:0:0:1:5", "fd00::1:6"] {
            assert!(!run(&v6, "fd00::1:5", d), "{d}");
        }
        // A load past the end of the packet never matches.
        assert!(!run_bpf(&v4, &[0u8; 8]));
        assert!(parse_bpf("2,6 0 0 1").is_err(), "count mismatch");
        assert!(parse_bpf("1,48 0 0 0").is_err(), "unmodelled opcode");
    }
}
