//! Label and field selectors, parsed from the `labelSelector` and `fieldSelector` query
//! parameters of list, watch and deletecollection requests.
//!
//! Both parsers follow the behaviour of Kubernetes' apimachinery (`labels.Parse` and
//! `fields.ParseSelector`), since a selector that one server reads more loosely than another
//! selects more objects than its author meant, and a deletecollection then deletes them.
//!
//! Label selectors are tokenised and parsed by recursive descent:
//!
//! ```text
//! selector    := "" | requirement ("," requirement)*
//! requirement := "!" KEY
//!              | KEY
//!              | KEY ("=" | "==" | "!=") VALUE?
//!              | KEY (">" | "<") INTEGER
//!              | KEY ("in" | "notin") "(" values ")"
//! values      := a comma separated list of possibly empty VALUEs
//! ```
//!
//! Whitespace (space, tab, CR, LF) separates tokens and is otherwise ignored; `in` and `notin`
//! are keywords only where an operator is expected. Keys must be qualified names (an optional
//! DNS subdomain prefix and `/`, then at most 63 characters) and values valid label values;
//! `>`/`<` take a decimal integer. Requirements are kept sorted by key (stably), values of
//! `in`/`notin` sorted and de-duplicated, and [`LabelSelector`]'s `Display` is the canonical
//! string apimachinery's `String()` gives.
//!
//! Field selectors are comma separated `field=value`, `field==value` or `field!=value` terms,
//! where `\` escapes `\`, `,` and `=` in values; fields must be among those the kind allows.
//!
//! One deliberate difference: apimachinery's lexer stops at a NUL byte, so `x=a \0junk` reads
//! as `x=a` and `\0junk` as the empty selector (everything). Here NUL is an ordinary character,
//! which no key or value accepts, so such selectors are rejected.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::Value;

use crate::resources::Resource;

#[cfg(test)]
mod tests;

/// One label requirement; a [`LabelSelector`] ANDs them.
///
/// The variants keep the operator as written (`=`, `==` and `in` with one value select the
/// same objects but print differently), as apimachinery's requirements do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelReq {
    /// `key in (values)`: the key is present with one of the values.
    In(String, Vec<String>),
    /// `key notin (values)`: the key is absent, or present with none of the values.
    NotIn(String, Vec<String>),
    /// `key=value`: the key is present with that value.
    Equals(String, String),
    /// `key==value`: the same as `key=value`.
    DoubleEquals(String, String),
    /// `key!=value`: the key is absent, or present with another value.
    NotEquals(String, String),
    /// `key`: the key is present.
    Exists(String),
    /// `!key`: the key is absent.
    NotExists(String),
    /// `key>n`: the key's value is an integer greater than `n`.
    Gt(String, i64),
    /// `key<n`: the key's value is an integer less than `n`.
    Lt(String, i64),
}

impl LabelReq {
    /// The label key the requirement is about.
    pub fn key(&self) -> &str {
        match self {
            LabelReq::In(k, _)
            | LabelReq::NotIn(k, _)
            | LabelReq::Equals(k, _)
            | LabelReq::DoubleEquals(k, _)
            | LabelReq::NotEquals(k, _)
            | LabelReq::Exists(k)
            | LabelReq::NotExists(k)
            | LabelReq::Gt(k, _)
            | LabelReq::Lt(k, _) => k,
        }
    }

    /// Whether a label map satisfies the requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match self {
            LabelReq::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            LabelReq::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
            LabelReq::Equals(k, want) | LabelReq::DoubleEquals(k, want) => {
                labels.get(k) == Some(want)
            }
            LabelReq::NotEquals(k, want) => labels.get(k) != Some(want),
            LabelReq::Exists(k) => labels.contains_key(k),
            LabelReq::NotExists(k) => !labels.contains_key(k),
            LabelReq::Gt(k, n) => label_int(labels, k).is_some_and(|v| v > *n),
            LabelReq::Lt(k, n) => label_int(labels, k).is_some_and(|v| v < *n),
        }
    }
}

/// A label's value read as a decimal integer (an optional sign, then digits), if it is one.
fn label_int(labels: &BTreeMap<String, String>, key: &str) -> Option<i64> {
    labels.get(key).and_then(|v| v.parse().ok())
}

impl fmt::Display for LabelReq {
    /// The canonical form: no spaces but around `in`/`notin`, set values sorted.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let set = |f: &mut fmt::Formatter<'_>, k: &str, op: &str, vs: &[String]| {
            let mut sorted: Vec<&str> = vs.iter().map(String::as_str).collect();
            sorted.sort_unstable();
            write!(f, "{k} {op} ({})", sorted.join(","))
        };
        match self {
            LabelReq::In(k, vs) => set(f, k, "in", vs),
            LabelReq::NotIn(k, vs) => set(f, k, "notin", vs),
            LabelReq::Equals(k, v) => write!(f, "{k}={v}"),
            LabelReq::DoubleEquals(k, v) => write!(f, "{k}=={v}"),
            LabelReq::NotEquals(k, v) => write!(f, "{k}!={v}"),
            LabelReq::Exists(k) => write!(f, "{k}"),
            LabelReq::NotExists(k) => write!(f, "!{k}"),
            LabelReq::Gt(k, n) => write!(f, "{k}>{n}"),
            LabelReq::Lt(k, n) => write!(f, "{k}<{n}"),
        }
    }
}

/// A parsed label selector: all requirements must hold. Empty selects everything.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LabelSelector(pub Vec<LabelReq>);

impl fmt::Display for LabelSelector {
    /// The canonical string (requirements joined by `,`), which parses back to `self`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

impl LabelSelector {
    /// Parses a `labelSelector`; the error says what was found where and what was expected.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut reqs = Parser::new(s).selector()?;
        reqs.sort_by(|a, b| a.key().cmp(b.key()));
        Ok(LabelSelector(reqs))
    }

    /// The selector a Service's `selector` or a `matchLabels` map stands for: `key=value` for
    /// each entry (not validated, as apimachinery's `SelectorFromSet`).
    pub fn from_map(m: &BTreeMap<String, String>) -> Self {
        LabelSelector(
            m.iter()
                .map(|(k, v)| LabelReq::Equals(k.clone(), v.clone()))
                .collect(),
        )
    }

    /// True when the selector has no requirement (matches everything).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether a label map satisfies every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|r| r.matches(labels))
    }
}

/// Labels of a JSON object (`metadata.labels`; non-string values are skipped).
pub fn labels_of(obj: &Value) -> BTreeMap<String, String> {
    obj.pointer("/metadata/labels")
        .and_then(|l| l.as_object())
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// A token of the label selector language.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tok {
    /// End of the input (its text is empty).
    End,
    /// A key or value: a run of bytes that are neither whitespace nor special.
    Ident,
    /// The word `in`.
    In,
    /// The word `notin`.
    NotIn,
    /// `(`
    Open,
    /// `)`
    Close,
    /// `,`
    Comma,
    /// `!`
    Not,
    /// `=`
    Eq,
    /// `==`
    DoubleEq,
    /// `!=`
    NotEq,
    /// `>`
    Gt,
    /// `<`
    Lt,
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

fn is_special(b: u8) -> bool {
    matches!(b, b'=' | b'!' | b'(' | b')' | b',' | b'>' | b'<')
}

/// Splits a label selector into tokens, always ending with [`Tok::End`]. Never fails: text
/// that is not special is an identifier, left to key and value validation.
fn lex(s: &str) -> Vec<(Tok, &str)> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    loop {
        while i < b.len() && is_space(b[i]) {
            i += 1;
        }
        if i == b.len() {
            out.push((Tok::End, ""));
            return out;
        }
        let start = i;
        let tok = if is_special(b[i]) {
            // The longest operator: `!=` and `==` are the only two-byte ones.
            let two = b.get(i + 1) == Some(&b'=') && matches!(b[i], b'!' | b'=');
            i += if two { 2 } else { 1 };
            match &b[start..i] {
                b"!=" => Tok::NotEq,
                b"==" => Tok::DoubleEq,
                b"=" => Tok::Eq,
                b"!" => Tok::Not,
                b"(" => Tok::Open,
                b")" => Tok::Close,
                b"," => Tok::Comma,
                b">" => Tok::Gt,
                _ => Tok::Lt,
            }
        } else {
            while i < b.len() && !is_space(b[i]) && !is_special(b[i]) {
                i += 1;
            }
            match &s[start..i] {
                "in" => Tok::In,
                "notin" => Tok::NotIn,
                _ => Tok::Ident,
            }
        };
        // Token boundaries are ASCII bytes, so slicing stays on character boundaries.
        out.push((tok, &s[start..i]));
    }
}

/// A requirement's operator, before its values are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    In,
    NotIn,
    Equals,
    DoubleEquals,
    NotEquals,
    Exists,
    DoesNotExist,
    Gt,
    Lt,
}

/// What a misplaced operator is compared against in errors (apimachinery's spelling).
const BINARY_OPERATORS: &str = "in, notin, =, ==, !=, gt, lt";

/// Recursive-descent parser over the tokens of one label selector.
struct Parser<'a> {
    toks: Vec<(Tok, &'a str)>,
    pos: usize,
}

impl<'a> Parser<'a> {
    fn new(s: &'a str) -> Self {
        Parser {
            toks: lex(s),
            pos: 0,
        }
    }

    /// The next token, unconsumed, with `in`/`notin` read as identifiers: everywhere but the
    /// operator position they are keys or values.
    fn peek(&self) -> (Tok, &'a str) {
        let (tok, lit) = self.toks[self.pos];
        match tok {
            Tok::In | Tok::NotIn => (Tok::Ident, lit),
            _ => (tok, lit),
        }
    }

    /// Consumes the next token as [`Parser::peek`] reads it (the end is never passed).
    fn next(&mut self) -> (Tok, &'a str) {
        let t = self.peek();
        if self.pos + 1 < self.toks.len() {
            self.pos += 1;
        }
        t
    }

    /// Consumes the next token as it was lexed (`in`/`notin` as keywords).
    fn next_raw(&mut self) -> (Tok, &'a str) {
        let t = self.toks[self.pos];
        if self.pos + 1 < self.toks.len() {
            self.pos += 1;
        }
        t
    }

    /// The whole selector: requirements separated by single commas, nothing after the last.
    fn selector(&mut self) -> Result<Vec<LabelReq>, String> {
        let mut reqs = Vec::new();
        loop {
            match self.peek() {
                (Tok::Ident | Tok::Not, _) => {
                    let r = self
                        .requirement()
                        .map_err(|e| format!("unable to parse requirement: {e}"))?;
                    reqs.push(r);
                    match self.next() {
                        (Tok::End, _) => return Ok(reqs),
                        (Tok::Comma, _) => match self.peek() {
                            (Tok::Ident | Tok::Not, _) => {}
                            (_, lit) => {
                                return Err(format!(
                                    "found '{lit}', expected: identifier after ','"
                                ))
                            }
                        },
                        (_, lit) => {
                            return Err(format!("found '{lit}', expected: ',' or 'end of string'"))
                        }
                    }
                }
                (Tok::End, _) => return Ok(reqs),
                (_, lit) => {
                    return Err(format!(
                        "found '{lit}', expected: !, identifier, or 'end of string'"
                    ))
                }
            }
        }
    }

    fn requirement(&mut self) -> Result<LabelReq, String> {
        let (key, op) = self.key_and_inferred_op()?;
        if let Some(op) = op {
            return requirement(key, op, Vec::new());
        }
        let op = self.operator()?;
        let values = match op {
            Op::In | Op::NotIn => self.set_values()?,
            _ => vec![self.exact_value()?],
        };
        requirement(key, op, values)
    }

    /// `!key` (does not exist: whatever follows is left to the caller, which then wants a
    /// comma or the end), `key` before a comma or the end (exists), or a key before an
    /// operator (`None`).
    fn key_and_inferred_op(&mut self) -> Result<(&'a str, Option<Op>), String> {
        let mut tok = self.next();
        let negated = tok.0 == Tok::Not;
        if negated {
            tok = self.next();
        }
        let (Tok::Ident, key) = tok else {
            return Err(format!("found '{}', expected: identifier", tok.1));
        };
        check_key(key)?;
        if negated {
            return Ok((key, Some(Op::DoesNotExist)));
        }
        match self.peek().0 {
            Tok::End | Tok::Comma => Ok((key, Some(Op::Exists))),
            _ => Ok((key, None)),
        }
    }

    fn operator(&mut self) -> Result<Op, String> {
        Ok(match self.next_raw() {
            (Tok::In, _) => Op::In,
            (Tok::NotIn, _) => Op::NotIn,
            (Tok::Eq, _) => Op::Equals,
            (Tok::DoubleEq, _) => Op::DoubleEquals,
            (Tok::NotEq, _) => Op::NotEquals,
            (Tok::Gt, _) => Op::Gt,
            (Tok::Lt, _) => Op::Lt,
            (_, lit) => return Err(format!("found '{lit}', expected: {BINARY_OPERATORS}")),
        })
    }

    /// `( values )`. Empty entries are the empty value: `()` is `{""}`, `(a,)` is `{a, ""}`.
    fn set_values(&mut self) -> Result<Vec<String>, String> {
        let (tok, lit) = self.next();
        if tok != Tok::Open {
            return Err(format!("found '{lit}' expected: '('"));
        }
        match self.peek() {
            (Tok::Ident | Tok::Comma, _) => self.value_list(),
            (Tok::Close, _) => {
                self.next();
                Ok(vec![String::new()])
            }
            (_, lit) => Err(format!("found '{lit}', expected: ',', ')' or identifier")),
        }
    }

    /// The inside of `( … )` up to and including the `)`.
    fn value_list(&mut self) -> Result<Vec<String>, String> {
        let mut values: Vec<String> = Vec::new();
        loop {
            match self.next() {
                (Tok::Ident, v) => {
                    values.push(v.to_string());
                    match self.peek() {
                        (Tok::Comma, _) => {}
                        (Tok::Close, _) => {
                            self.next();
                            return Ok(values);
                        }
                        (_, lit) => return Err(format!("found '{lit}', expected: ',' or ')'")),
                    }
                }
                (Tok::Comma, _) => {
                    // A comma first, before another comma or before `)` stands next to an
                    // empty value.
                    if values.is_empty() {
                        values.push(String::new());
                    }
                    match self.peek().0 {
                        Tok::Close => {
                            self.next();
                            values.push(String::new());
                            return Ok(values);
                        }
                        Tok::Comma => values.push(String::new()),
                        _ => {}
                    }
                }
                (_, lit) => return Err(format!("found '{lit}', expected: ',', or identifier")),
            }
        }
    }

    /// The value after `=`, `==`, `!=`, `>` or `<`: empty when a comma or the end follows.
    fn exact_value(&mut self) -> Result<String, String> {
        match self.peek().0 {
            Tok::End | Tok::Comma => Ok(String::new()),
            _ => match self.next() {
                (Tok::Ident, v) => Ok(v.to_string()),
                (_, lit) => Err(format!("found '{lit}', expected: identifier")),
            },
        }
    }
}

/// A label key must be a qualified name.
fn check_key(key: &str) -> Result<(), String> {
    let errs = sluice_validation::is_qualified_name(key);
    if errs.is_empty() {
        Ok(())
    } else {
        Err(format!("invalid label key \"{key}\": {}", errs.join("; ")))
    }
}

/// Builds a requirement from its parts after the checks apimachinery's `NewRequirement`
/// makes: a valid key, as many values as the operator takes, valid label values, integers
/// for `>`/`<`. Values of `in`/`notin` are sorted and de-duplicated.
fn requirement(key: &str, op: Op, mut values: Vec<String>) -> Result<LabelReq, String> {
    check_key(key)?;
    let count = |ok: bool, why: &str| {
        if ok {
            Ok(())
        } else {
            Err(format!(
                "invalid values {values:?} for key \"{key}\": {why}"
            ))
        }
    };
    match op {
        Op::In | Op::NotIn => count(
            !values.is_empty(),
            "for 'in', 'notin' operators, values set can't be empty",
        )?,
        Op::Equals | Op::DoubleEquals | Op::NotEquals => count(
            values.len() == 1,
            "exact-match compatibility requires one single value",
        )?,
        Op::Exists | Op::DoesNotExist => count(
            values.is_empty(),
            "values set must be empty for exists and does not exist",
        )?,
        Op::Gt | Op::Lt => count(
            values.len() == 1,
            "for 'Gt', 'Lt' operators, exactly one value is required",
        )?,
    }
    let mut int = None;
    if matches!(op, Op::Gt | Op::Lt) {
        let v = &values[0];
        int = Some(v.parse::<i64>().map_err(|_| {
            format!(
                "invalid value \"{v}\" for key \"{key}\": for 'Gt', 'Lt' operators, the value must be an integer"
            )
        })?);
    }
    for v in &values {
        let errs = sluice_validation::is_valid_label_value(v);
        if !errs.is_empty() {
            return Err(format!(
                "invalid label value \"{v}\" for key \"{key}\": {}",
                errs.join("; ")
            ));
        }
    }
    let key = key.to_string();
    let one = |values: &mut Vec<String>| values.pop().unwrap_or_default();
    Ok(match op {
        Op::In | Op::NotIn => {
            values.sort_unstable();
            values.dedup();
            if op == Op::In {
                LabelReq::In(key, values)
            } else {
                LabelReq::NotIn(key, values)
            }
        }
        Op::Equals => LabelReq::Equals(key, one(&mut values)),
        Op::DoubleEquals => LabelReq::DoubleEquals(key, one(&mut values)),
        Op::NotEquals => LabelReq::NotEquals(key, one(&mut values)),
        Op::Exists => LabelReq::Exists(key),
        Op::DoesNotExist => LabelReq::NotExists(key),
        Op::Gt => LabelReq::Gt(key, int.unwrap_or_default()),
        Op::Lt => LabelReq::Lt(key, int.unwrap_or_default()),
    })
}

/// A parsed field selector: all `(field, equal, value)` requirements must hold, `equal` being
/// true for `=`/`==` and false for `!=`. Empty selects everything.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FieldSelector(pub Vec<(String, bool, String)>);

/// Fields the apiserver lets clients select on: name and namespace, and what the kind's
/// strategy lists.
fn selectable(res: &Resource, field: &str) -> bool {
    matches!(field, "metadata.name" | "metadata.namespace")
        || res.strategy.selectable_fields().contains(&field)
}

/// Splits a field selector on the commas no backslash escapes; escapes stay in the terms.
fn split_terms(s: &str) -> Vec<&str> {
    if s.is_empty() {
        return Vec::new();
    }
    let mut terms = Vec::new();
    let (mut start, mut escaped) = (0, false);
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == ',' {
            terms.push(&s[start..i]);
            start = i + 1;
        }
    }
    terms.push(&s[start..]);
    terms
}

/// Splits a term at the first operator (`!=`, then `==`, then `=` tried at each position):
/// the field part has no escapes. Returns (field, operator, raw value).
fn split_term(term: &str) -> Option<(&str, &'static str, &str)> {
    term.char_indices().find_map(|(i, _)| {
        let rest = &term[i..];
        ["!=", "==", "="]
            .into_iter()
            .find(|op| rest.starts_with(op))
            .map(|op| (&term[..i], op, &rest[op.len()..]))
    })
}

/// Escapes `\`, `,` and `=` in a field selector value.
fn escape_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        if matches!(c, '\\' | ',' | '=') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Reverses [`escape_value`]; other escapes, a trailing `\` and a bare `,` or `=` are errors.
fn unescape_value(raw: &str) -> Result<String, String> {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(e @ ('\\' | ',' | '=')) => out.push(e),
                Some(e) => {
                    return Err(format!(
                        "invalid field selector: invalid escape sequence: \\{e}"
                    ))
                }
                None => return Err("invalid field selector: invalid escape sequence: \\".into()),
            },
            ',' | '=' => {
                return Err(format!(
                    "invalid field selector: unescaped character in value: '{c}'"
                ))
            }
            c => out.push(c),
        }
    }
    Ok(out)
}

/// The syntax of a field selector, for any field: terms in sorted order, empty terms skipped.
fn parse_terms(s: &str) -> Result<Vec<(String, bool, String)>, String> {
    let mut parts = split_terms(s);
    parts.sort_unstable();
    let mut reqs = Vec::new();
    for part in parts.into_iter().filter(|p| !p.is_empty()) {
        let can_t = |why: &str| format!("invalid selector: '{s}'; can't understand '{part}'{why}");
        let (field, op, raw) = split_term(part).ok_or_else(|| can_t(""))?;
        if field.is_empty() {
            return Err(can_t(": the field name is empty"));
        }
        reqs.push((field.to_string(), op != "!=", unescape_value(raw)?));
    }
    Ok(reqs)
}

impl fmt::Display for FieldSelector {
    /// The canonical string: `field=value` or `field!=value`, values escaped, joined by `,`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (field, eq, v)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            let op = if *eq { "=" } else { "!=" };
            write!(f, "{field}{op}{}", escape_value(v))?;
        }
        Ok(())
    }
}

impl FieldSelector {
    /// Parses a `fieldSelector` for a kind; syntax errors and fields the kind does not allow
    /// (`field label not supported: …`) are errors (400), as on the apiserver.
    pub fn parse(res: &Resource, s: &str) -> Result<Self, String> {
        let reqs = parse_terms(s)?;
        if let Some((field, _, _)) = reqs.iter().find(|(f, _, _)| !selectable(res, f)) {
            return Err(format!("field label not supported: {field}"));
        }
        Ok(FieldSelector(reqs))
    }

    /// True when the selector has no requirement (matches everything).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// True when every requirement can be answered from the object's namespace and name.
    pub fn only_identity(&self) -> bool {
        self.0
            .iter()
            .all(|(k, _, _)| k == "metadata.name" || k == "metadata.namespace")
    }

    /// Matches using the object's identity and, when needed, its JSON (a missing or null
    /// field reads as the empty string, booleans and numbers as their JSON text).
    pub fn matches(&self, ns: Option<&str>, name: &str, obj: Option<&Value>) -> bool {
        self.matches_by(|field| match field {
            "metadata.name" => name.to_string(),
            "metadata.namespace" => ns.unwrap_or("").to_string(),
            path => {
                let ptr = format!("/{}", path.replace('.', "/"));
                match obj.and_then(|o| o.pointer(&ptr)) {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Null) | None => String::new(),
                    Some(other) => other.to_string(),
                }
            }
        })
    }

    /// Matches against whatever `get` says each field's value is.
    fn matches_by(&self, get: impl Fn(&str) -> String) -> bool {
        self.0
            .iter()
            .all(|(field, eq, want)| (get(field) == *want) == *eq)
    }
}
