//! An in-memory model of Sluice's table that applies rendered scripts, for unit tests.
//!
//! It understands exactly the commands [`crate::render`] writes (one per line; element lists
//! span lines between `{` and `}`) and is stricter than the kernel where that catches render
//! bugs: adding an element whose key exists, deleting a missing element, chain or set, deleting
//! a chain or set something still references, a rule or verdict naming a missing chain or set.
//! A failed script leaves the model unchanged, as a failed nft transaction does.

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Errors of [`Table::apply`]: the failing line and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}: {text}")]
pub struct ModelError {
    /// 1-based line of the command.
    pub line: usize,
    /// The command.
    pub text: String,
    /// What is wrong.
    pub message: String,
}

/// One set or map.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct SetState {
    decl: String,
    elements: BTreeMap<String, Option<String>>,
}

/// The model of one table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Table {
    exists: bool,
    chains: BTreeMap<String, Vec<String>>,
    sets: BTreeMap<String, SetState>,
}

/// Names a rule or verdict refers to: `jump X`/`goto X` chains and `@X` sets.
fn references(text: &str) -> (Vec<&str>, Vec<&str>) {
    let words: Vec<&str> = text
        .split(|c: char| c.is_whitespace() || c == ',' || c == '{' || c == '}')
        .filter(|w| !w.is_empty())
        .collect();
    let mut chains = Vec::new();
    let mut sets = Vec::new();
    for (i, w) in words.iter().enumerate() {
        if (*w == "jump" || *w == "goto") && i + 1 < words.len() {
            chains.push(words[i + 1]);
        }
        if let Some(s) = w.strip_prefix('@') {
            sets.push(s);
        }
    }
    (chains, sets)
}

impl Table {
    /// An empty model (no table).
    pub fn new() -> Self {
        Self::default()
    }

    /// Chain names.
    pub fn chains(&self) -> impl Iterator<Item = &str> {
        self.chains.keys().map(String::as_str)
    }

    /// Rules of `chain`.
    pub fn rules(&self, chain: &str) -> Option<&[String]> {
        self.chains.get(chain).map(Vec::as_slice)
    }

    /// Elements (`key` or `key : value`) of set or map `name`.
    pub fn elements(&self, name: &str) -> Option<Vec<String>> {
        self.sets.get(name).map(|s| {
            s.elements
                .iter()
                .map(|(k, v)| match v {
                    Some(v) => format!("{k} : {v}"),
                    None => k.clone(),
                })
                .collect()
        })
    }

    /// Value of `key` in map `name`.
    pub fn lookup(&self, name: &str, key: &str) -> Option<&str> {
        self.sets.get(name)?.elements.get(key)?.as_deref()
    }

    /// Set and map names.
    pub fn sets(&self) -> impl Iterator<Item = &str> {
        self.sets.keys().map(String::as_str)
    }

    /// A terse listing: chains (with rules), then sets (without elements) — what
    /// [`crate::render::Existing::parse`] reads from `nft -t list table`.
    pub fn terse_listing(&self) -> String {
        let mut out = String::from("table ip sluice {\n");
        for (c, rules) in &self.chains {
            let _ = writeln!(out, "\tchain {c} {{");
            for r in rules {
                let _ = writeln!(out, "\t\t{r}");
            }
            out.push_str("\t}\n");
        }
        for (name, s) in &self.sets {
            let what = if s.decl.contains(" : ") { "map" } else { "set" };
            let _ = writeln!(out, "\t{what} {name} {{\n\t}}");
        }
        out.push_str("}\n");
        out
    }

    /// Everything, deterministically: for comparing two models.
    pub fn dump(&self) -> String {
        let mut out = String::new();
        for (c, rules) in &self.chains {
            let _ = writeln!(out, "chain {c}");
            for r in rules {
                let _ = writeln!(out, "  {r}");
            }
        }
        for (name, s) in &self.sets {
            let _ = writeln!(out, "set {name} {}", s.decl);
            for (k, v) in &s.elements {
                match v {
                    Some(v) => {
                        let _ = writeln!(out, "  {k} : {v}");
                    }
                    None => {
                        let _ = writeln!(out, "  {k}");
                    }
                }
            }
        }
        out
    }

    /// Applies a script atomically: on error nothing changes.
    pub fn apply(&mut self, script: &str) -> Result<(), ModelError> {
        let mut next = self.clone();
        for (line, text) in commands(script) {
            next.command(&text).map_err(|message| ModelError {
                line,
                text: text.clone(),
                message,
            })?;
        }
        *self = next;
        Ok(())
    }

    fn referenced_chain(&self, name: &str) -> bool {
        let in_rules = self
            .chains
            .values()
            .flatten()
            .any(|r| references(r).0.contains(&name));
        let in_maps = self
            .sets
            .values()
            .flat_map(|s| s.elements.values().flatten())
            .any(|v| references(v).0.contains(&name));
        in_rules || in_maps
    }

    fn referenced_set(&self, name: &str) -> bool {
        self.chains
            .values()
            .flatten()
            .any(|r| references(r).1.contains(&name))
    }

    fn check_refs(&self, text: &str) -> Result<(), String> {
        let (chains, sets) = references(text);
        if let Some(c) = chains.iter().find(|c| !self.chains.contains_key(**c)) {
            return Err(format!("no chain {c}"));
        }
        if let Some(s) = sets.iter().find(|s| !self.sets.contains_key(**s)) {
            return Err(format!("no set {s}"));
        }
        Ok(())
    }

    fn command(&mut self, text: &str) -> Result<(), String> {
        let words: Vec<&str> = text.split_whitespace().collect();
        let (verb, what) = match words.as_slice() {
            [v, w, ..] => (*v, *w),
            _ => return Err("not a command".into()),
        };
        if what == "table" {
            return match verb {
                "add" => {
                    self.exists = true;
                    Ok(())
                }
                "delete" if self.exists => {
                    *self = Table::default();
                    Ok(())
                }
                _ => Err("bad table command".into()),
            };
        }
        if !self.exists {
            return Err("no table".into());
        }
        // `<verb> <what> <family> sluice <name> …`
        let name = words.get(4).copied().ok_or("no object name")?;
        let rest = words.get(5..).map(|w| w.join(" ")).unwrap_or_default();
        match (verb, what) {
            ("add", "chain") => {
                self.chains.entry(name.to_string()).or_default();
            }
            ("flush", "chain") => {
                self.chains
                    .get_mut(name)
                    .ok_or_else(|| format!("no chain {name}"))?
                    .clear();
            }
            ("delete", "chain") => {
                if !self.chains.contains_key(name) {
                    return Err(format!("no chain {name}"));
                }
                let rules = self.chains.remove(name).unwrap_or_default();
                if self.referenced_chain(name) {
                    return Err(format!("chain {name} is referenced"));
                }
                if !rules.is_empty() {
                    return Err(format!("chain {name} still has rules"));
                }
            }
            ("add", "rule") => {
                self.check_refs(&rest)?;
                self.chains
                    .get_mut(name)
                    .ok_or_else(|| format!("no chain {name}"))?
                    .push(rest);
            }
            ("add", "set" | "map") => {
                let s = self.sets.entry(name.to_string()).or_default();
                if s.decl.is_empty() {
                    s.decl = rest;
                } else if s.decl != rest {
                    return Err(format!("{name} redeclared differently"));
                }
            }
            ("flush", "set" | "map") => {
                self.sets
                    .get_mut(name)
                    .ok_or_else(|| format!("no set {name}"))?
                    .elements
                    .clear();
            }
            ("delete", "set" | "map") => {
                if self.sets.remove(name).is_none() {
                    return Err(format!("no set {name}"));
                }
                if self.referenced_set(name) {
                    return Err(format!("set {name} is referenced"));
                }
            }
            ("add" | "delete", "element") => {
                let body = rest
                    .strip_prefix('{')
                    .and_then(|r| r.strip_suffix('}'))
                    .ok_or("element list not in braces")?;
                for item in body.split(',').map(str::trim).filter(|i| !i.is_empty()) {
                    let (key, value) = match item.split_once(" : ") {
                        Some((k, v)) => (k.trim().to_string(), Some(v.trim().to_string())),
                        None => (item.to_string(), None),
                    };
                    if let Some(v) = &value {
                        self.check_refs(v)?;
                    }
                    let set = self
                        .sets
                        .get_mut(name)
                        .ok_or_else(|| format!("no set {name}"))?;
                    if verb == "add" {
                        if set.elements.contains_key(&key) {
                            return Err(format!("{name}: element {key} exists"));
                        }
                        set.elements.insert(key, value);
                    } else if set.elements.remove(&key).is_none() {
                        return Err(format!("{name}: no element {key}"));
                    }
                }
            }
            _ => return Err("unknown command".into()),
        }
        Ok(())
    }
}

/// The script's commands with their first line number; an element list spanning lines is
/// joined into one command.
fn commands(script: &str) -> Vec<(usize, String)> {
    let mut out: Vec<(usize, String)> = Vec::new();
    let mut open: Option<(usize, String)> = None;
    for (i, line) in script.lines().enumerate() {
        let line = line.trim();
        if let Some((n, mut acc)) = open.take() {
            acc.push(' ');
            acc.push_str(line);
            if line.ends_with('}') {
                out.push((n, acc));
            } else {
                open = Some((n, acc));
            }
            continue;
        }
        if line.is_empty() {
            continue;
        }
        if line.ends_with('{') {
            open = Some((i + 1, line.to_string()));
        } else {
            out.push((i + 1, line.to_string()));
        }
    }
    out.extend(open);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn applies_atomically_and_checks_references() {
        let mut t = Table::new();
        t.apply("add table ip sluice\nadd chain ip sluice a\nadd map ip sluice m { type x : verdict ; }\n")
            .unwrap();
        let before = t.clone();
        let err = t
            .apply("add chain ip sluice b\nadd rule ip sluice a jump c\n")
            .unwrap_err();
        assert_eq!(err.line, 2);
        assert_eq!(t, before, "a failed script changes nothing");
        t.apply("add element ip sluice m {\n\t1 : goto a,\n\t2 : drop\n}\n")
            .unwrap();
        assert_eq!(t.lookup("m", "1"), Some("goto a"));
        assert!(t.apply("delete chain ip sluice a").is_err(), "referenced");
        assert!(
            t.apply("add element ip sluice m { 2 : drop }").is_err(),
            "exists"
        );
        assert!(
            t.apply("delete element ip sluice m { 3 }").is_err(),
            "missing"
        );
        t.apply("delete element ip sluice m { 1 }\ndelete chain ip sluice a")
            .unwrap();
        assert_eq!(t.elements("m").unwrap(), vec!["2 : drop".to_string()]);
    }
}
