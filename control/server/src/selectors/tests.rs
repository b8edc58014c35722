//! Tests of the selector parsers: apimachinery's own cases (labels and fields), regressions
//! for selectors an older parser here accepted, and property tests.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use crate::resources::by_kind;

fn l(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn s(x: &str) -> String {
    x.to_string()
}

fn vs(xs: &[&str]) -> Vec<String> {
    xs.iter().map(|x| x.to_string()).collect()
}

// ---------------------------------------------------------------------------------------------
// apimachinery's label selector cases
// ---------------------------------------------------------------------------------------------

/// Accepted label selectors and their canonical strings (apimachinery's `String()`).
const LABEL_ACCEPTED: &[(&str, &str)] = &[
    // TestSelectorParse (good): the canonical string is the input without spaces.
    ("x=a,y=b,z=c", "x=a,y=b,z=c"),
    ("", ""),
    ("x!=a,y=b", "x!=a,y=b"),
    ("x=", "x="),
    ("x= ", "x="),
    ("x=,z= ", "x=,z="),
    ("x= ,z= ", "x=,z="),
    ("!x", "!x"),
    ("x>1", "x>1"),
    ("x>1,z<5", "x>1,z<5"),
    // TestDeterministicParse: requirements sorted by key.
    ("x=a,a=x", "a=x,x=a"),
    ("a=x,x=a", "a=x,x=a"),
    // TestSetSelectorParser (valid).
    ("\rx", "x"),
    (
        "this-is-a-dns.domain.com/key-with-dash",
        "this-is-a-dns.domain.com/key-with-dash",
    ),
    (
        "this-is-another-dns.domain.com/key-with-dash in (so,what)",
        "this-is-another-dns.domain.com/key-with-dash in (so,what)",
    ),
    (
        "0.1.2.domain/99 notin (10.10.100.1, tick.tack.clock)",
        "0.1.2.domain/99 notin (10.10.100.1,tick.tack.clock)",
    ),
    ("foo  in\t (abc)", "foo in (abc)"),
    ("x notin\n (abc)", "x notin (abc)"),
    ("x  notin\t\t\t(abc,def)", "x notin (abc,def)"),
    ("x in (abc,def)", "x in (abc,def)"),
    ("x in (abc,)", "x in (,abc)"),
    ("x in (abc,abc)", "x in (abc)"),
    ("x in ()", "x in ()"),
    ("x in (a,,)", "x in (,a)"),
    ("x in (a,,,)", "x in (,a)"),
    ("x in (a,,,,,,)", "x in (,a)"),
    ("x in (a,,a,,a,,a,,)", "x in (,a)"),
    (
        "x notin (abc,,def),bar,z in (),w",
        "bar,w,x notin (,abc,def),z in ()",
    ),
    ("x,y in (a)", "x,y in (a)"),
    ("x=a", "x=a"),
    ("x<7", "x<7"),
    ("x=a,y!=b", "x=a,y!=b"),
    ("x=a,y!=b,z in (h,i,j)", "x=a,y!=b,z in (h,i,j)"),
    ("x notin ( )", "x notin ()"),
    ("x notin (, a)", "x notin (,a)"),
    ("a ", "a"),
    ("a in (x,y,notin, z,in)", "a in (in,notin,x,y,z)"),
    // TestSelectorMatches: `in` and `notin` as key and value of an exact match.
    ("notin=in", "notin=in"),
    // TestMatchesNothing: selectors that parse (conflicting ones too).
    ("a", "a"),
    ("!a", "!a"),
    ("a=b", "a=b"),
    ("a!=b", "a!=b"),
    ("a in (b)", "a in (b)"),
    ("a notin (b)", "a notin (b)"),
    ("a,!a", "a,!a"),
    ("a=b,a!=b", "a=b,a!=b"),
    ("a in (b),a notin (b)", "a in (b),a notin (b)"),
    // TestLexerSequence / TestParserLookahead inputs that are selectors.
    ("key in ( value )", "key in (value)"),
    ("key notin ( value )", "key notin (value)"),
    ("key in ( value1, value2 )", "key in (value1,value2)"),
    ("key", "key"),
    ("!key", "!key"),
    ("x in (),y", "x in (),y"),
    ("key>2", "key>2"),
    ("key<1", "key<1"),
];

/// Rejected label selectors and a part of the error each gives.
const LABEL_REJECTED: &[(&str, &str)] = &[
    // TestSelectorParse (bad).
    ("x=a||y=b", "invalid label value \"a||y\" for key \"x\""),
    ("x==a==b", "found '==', expected: ',' or 'end of string'"),
    ("!x=a", "found '=', expected: ',' or 'end of string'"),
    (
        "x<a",
        "for 'Gt', 'Lt' operators, the value must be an integer",
    ),
    // TestSetSelectorParser (invalid).
    ("x,,y", "found ',', expected: identifier after ','"),
    (
        ",x,y",
        "found ',', expected: !, identifier, or 'end of string'",
    ),
    (
        "x nott in (y)",
        "unable to parse requirement: found 'nott', expected: in, notin, =, ==, !=, gt, lt",
    ),
    ("a in (xyz),", "found '', expected: identifier after ','"),
    (
        "a in (xyz)b notin ()",
        "found 'b', expected: ',' or 'end of string'",
    ),
    ("a in (xyz abc)", "found 'abc', expected: ',' or ')'"),
    ("a notin(", "found '', expected: ',', ')' or identifier"),
    ("a (", "found '(', expected: in, notin, =, ==, !=, gt, lt"),
    (
        "(",
        "found '(', expected: !, identifier, or 'end of string'",
    ),
    // TestLexerSequence / TestParserLookahead inputs that are not selectors.
    (
        "()",
        "found '(', expected: !, identifier, or 'end of string'",
    ),
    (
        "== != (), = notin",
        "found '==', expected: !, identifier, or 'end of string'",
    ),
];

#[test]
fn apimachinery_accepted_label_selectors() {
    for (input, canonical) in LABEL_ACCEPTED {
        let sel = LabelSelector::parse(input).unwrap_or_else(|e| panic!("{input:?}: {e}"));
        assert_eq!(sel.to_string(), *canonical, "{input:?}");
        assert_eq!(LabelSelector::parse(canonical), Ok(sel), "{input:?}");
    }
}

#[test]
fn apimachinery_rejected_label_selectors() {
    for (input, want) in LABEL_REJECTED {
        let err = LabelSelector::parse(input).expect_err(input);
        assert!(err.contains(want), "{input:?}: {err:?} lacks {want:?}");
    }
}

#[test]
fn parsed_requirements() {
    // TestSetSelectorParser's expected requirements, where the operator matters.
    let cases: &[(&str, Vec<LabelReq>)] = &[
        ("", vec![]),
        ("\rx", vec![LabelReq::Exists(s("x"))]),
        (
            "x notin (abc,,def),bar,z in (),w",
            vec![
                LabelReq::Exists(s("bar")),
                LabelReq::Exists(s("w")),
                LabelReq::NotIn(s("x"), vs(&["", "abc", "def"])),
                LabelReq::In(s("z"), vs(&[""])),
            ],
        ),
        (
            "x,y in (a)",
            vec![LabelReq::Exists(s("x")), LabelReq::In(s("y"), vs(&["a"]))],
        ),
        ("x=a", vec![LabelReq::Equals(s("x"), s("a"))]),
        ("x==a", vec![LabelReq::DoubleEquals(s("x"), s("a"))]),
        ("x>1", vec![LabelReq::Gt(s("x"), 1)]),
        ("x<7", vec![LabelReq::Lt(s("x"), 7)]),
        (
            "x=a,y!=b,z in (h,i,j)",
            vec![
                LabelReq::Equals(s("x"), s("a")),
                LabelReq::NotEquals(s("y"), s("b")),
                LabelReq::In(s("z"), vs(&["h", "i", "j"])),
            ],
        ),
        (
            "a in (x,y,notin, z,in)",
            vec![LabelReq::In(s("a"), vs(&["in", "notin", "x", "y", "z"]))],
        ),
        // Stable sort: requirements of one key keep their order.
        (
            "z,y,z!=a",
            vec![
                LabelReq::Exists(s("y")),
                LabelReq::Exists(s("z")),
                LabelReq::NotEquals(s("z"), s("a")),
            ],
        ),
    ];
    for (input, want) in cases {
        assert_eq!(
            LabelSelector::parse(input),
            Ok(LabelSelector(want.clone())),
            "{input:?}"
        );
    }
}

#[test]
fn apimachinery_matches() {
    // TestSelectorMatches.
    let yes: &[(&str, &[(&str, &str)])] = &[
        ("", &[("x", "y")]),
        ("x=y", &[("x", "y")]),
        ("x=y,z=w", &[("x", "y"), ("z", "w")]),
        ("x!=y,z!=w", &[("x", "z"), ("z", "a")]),
        ("notin=in", &[("notin", "in")]),
        ("x", &[("x", "z")]),
        ("!x", &[("y", "z")]),
        ("x>1", &[("x", "2")]),
        ("x<1", &[("x", "0")]),
        ("foo=bar", &[("foo", "bar"), ("baz", "blah")]),
        ("baz=blah", &[("foo", "bar"), ("baz", "blah")]),
        ("foo=bar,baz=blah", &[("foo", "bar"), ("baz", "blah")]),
    ];
    let no: &[(&str, &[(&str, &str)])] = &[
        ("x=z", &[]),
        ("x=y", &[("x", "z")]),
        ("x=y,z=w", &[("x", "w"), ("z", "w")]),
        ("x!=y,z!=w", &[("x", "z"), ("z", "w")]),
        ("x", &[("y", "z")]),
        ("!x", &[("x", "z")]),
        ("x>1", &[("x", "0")]),
        ("x<1", &[("x", "2")]),
        ("foo=blah", &[("foo", "bar"), ("baz", "blah")]),
        ("baz=bar", &[("foo", "bar"), ("baz", "blah")]),
        (
            "foo=bar,foobar=bar,baz=blah",
            &[("foo", "bar"), ("baz", "blah")],
        ),
    ];
    for (sel, labels) in yes {
        assert!(
            LabelSelector::parse(sel).unwrap().matches(&l(labels)),
            "{sel}"
        );
    }
    for (sel, labels) in no {
        assert!(
            !LabelSelector::parse(sel).unwrap().matches(&l(labels)),
            "{sel}"
        );
    }
    // TestRequirementSelectorMatching.
    let xfoo_ybaz = l(&[("x", "foo"), ("y", "baz")]);
    let y_empty = l(&[("y", "")]);
    let cases: &[(&BTreeMap<String, String>, Vec<LabelReq>, bool)] = &[
        (
            &xfoo_ybaz,
            vec![
                LabelReq::In(s("x"), vs(&["foo"])),
                LabelReq::NotIn(s("y"), vs(&["alpha"])),
            ],
            true,
        ),
        (
            &xfoo_ybaz,
            vec![
                LabelReq::In(s("x"), vs(&["foo"])),
                LabelReq::In(s("y"), vs(&["alpha"])),
            ],
            false,
        ),
        (
            &y_empty,
            vec![LabelReq::NotIn(s("x"), vs(&[""])), LabelReq::Exists(s("y"))],
            true,
        ),
        (
            &y_empty,
            vec![LabelReq::NotExists(s("x")), LabelReq::Exists(s("y"))],
            true,
        ),
        (
            &y_empty,
            vec![
                LabelReq::NotIn(s("x"), vs(&[""])),
                LabelReq::NotExists(s("y")),
            ],
            false,
        ),
        (
            &l(&[("y", "baz")]),
            vec![LabelReq::In(s("x"), vs(&[""]))],
            false,
        ),
        (&l(&[("z", "2")]), vec![LabelReq::Gt(s("z"), 1)], true),
        (&l(&[("z", "v2")]), vec![LabelReq::Gt(s("z"), 1)], false),
    ];
    for (labels, reqs, want) in cases {
        let sel = LabelSelector(reqs.clone());
        assert_eq!(sel.matches(labels), *want, "{sel} on {labels:?}");
    }
}

#[test]
fn apimachinery_lexer() {
    // TestLexer: the first token and its text.
    let single: &[(&str, Tok)] = &[
        ("", Tok::End),
        (",", Tok::Comma),
        ("notin", Tok::NotIn),
        ("in", Tok::In),
        ("=", Tok::Eq),
        ("==", Tok::DoubleEq),
        (">", Tok::Gt),
        ("<", Tok::Lt),
        ("!", Tok::Not),
        ("!=", Tok::NotEq),
        ("(", Tok::Open),
        (")", Tok::Close),
        ("~", Tok::Ident),
        ("||", Tok::Ident),
    ];
    for (input, tok) in single {
        assert_eq!(lex(input)[0], (*tok, *input), "{input:?}");
    }
    // TestLexerSequence and TestParserLookahead: whole token sequences.
    use Tok::*;
    let seqs: &[(&str, &[Tok])] = &[
        ("key in ( value )", &[Ident, In, Open, Ident, Close, End]),
        (
            "key notin ( value )",
            &[Ident, NotIn, Open, Ident, Close, End],
        ),
        (
            "key in ( value1, value2 )",
            &[Ident, In, Open, Ident, Comma, Ident, Close, End],
        ),
        ("key", &[Ident, End]),
        ("!key", &[Not, Ident, End]),
        ("()", &[Open, Close, End]),
        ("", &[End]),
        ("x in (),y", &[Ident, In, Open, Close, Comma, Ident, End]),
        (
            "== != (), = notin",
            &[DoubleEq, NotEq, Open, Close, Comma, Eq, NotIn, End],
        ),
        ("key>2", &[Ident, Gt, Ident, End]),
        ("key<1", &[Ident, Lt, Ident, End]),
    ];
    for (input, want) in seqs {
        let got: Vec<Tok> = lex(input).into_iter().map(|(t, _)| t).collect();
        assert_eq!(got, *want, "{input:?}");
    }
    // Longest operator first, and no more than two bytes of it.
    let got: Vec<Tok> = lex("!==(=>=<=").into_iter().map(|(t, _)| t).collect();
    assert_eq!(got, [NotEq, Eq, Open, Eq, Gt, Eq, Lt, Eq, End]);
    // Reading past the end keeps answering the end.
    let mut p = Parser::new("a");
    assert_eq!(p.next(), (Ident, "a"));
    assert_eq!(p.next(), (End, ""));
    assert_eq!(p.next(), (End, ""));
    assert_eq!(p.next_raw(), (End, ""));
}

#[test]
fn apimachinery_parse_operator() {
    // TestParseOperator.
    let ok: &[(&str, Op)] = &[
        ("in", Op::In),
        ("=", Op::Equals),
        ("==", Op::DoubleEquals),
        (">", Op::Gt),
        ("<", Op::Lt),
        ("notin", Op::NotIn),
        ("!=", Op::NotEquals),
    ];
    for (input, op) in ok {
        assert_eq!(Parser::new(input).operator(), Ok(*op), "{input:?}");
    }
    for (input, found) in [("!", "!"), ("exists", "exists"), ("(", "(")] {
        assert_eq!(
            Parser::new(input).operator(),
            Err(format!(
                "found '{found}', expected: in, notin, =, ==, !=, gt, lt"
            ))
        );
    }
}

#[test]
fn apimachinery_requirement_constructor() {
    // TestRequirementConstructor (its unsupported-operator case cannot be written here: the
    // operator type is closed) and TestValidatedSelectorFromSet.
    let long = "a".repeat(254);
    let cases: &[(&str, Op, &[&str], Option<&str>)] = &[
        ("x1", Op::In, &[], Some("values set can't be empty")),
        ("x2", Op::NotIn, &[], Some("values set can't be empty")),
        ("x3", Op::In, &["foo"], None),
        ("x4", Op::NotIn, &["foo"], None),
        (
            "x5",
            Op::Equals,
            &["bar", "foo"],
            Some("exact-match compatibility requires one single value"),
        ),
        ("x6", Op::Exists, &[], None),
        ("x7", Op::DoesNotExist, &[], None),
        (
            "x8",
            Op::Exists,
            &["foo"],
            Some("values set must be empty for exists and does not exist"),
        ),
        ("x9", Op::In, &["bar"], None),
        ("x10", Op::In, &["bar"], None),
        ("x11", Op::Gt, &["1"], None),
        ("x12", Op::Lt, &["6"], None),
        ("x13", Op::Gt, &[], Some("exactly one value is required")),
        (
            "x14",
            Op::Gt,
            &["bar"],
            Some("the value must be an integer"),
        ),
        (
            "x15",
            Op::Lt,
            &["bar"],
            Some("the value must be an integer"),
        ),
        (long.as_str(), Op::Exists, &[], Some("invalid label key")),
        (
            "x16",
            Op::Equals,
            &[long.as_str()],
            Some("invalid label value"),
        ),
        (
            "x17",
            Op::Equals,
            &["a b"],
            Some("invalid label value \"a b\""),
        ),
        ("key", Op::Equals, &["val"], None),
        (
            "Key",
            Op::Equals,
            &["axahm2EJ8Phiephe2eixohbee9eGeiyees1thuozi1xoh0GiuH3diewi8iem7Nui"],
            Some("must be no more than 63 characters"),
        ),
    ];
    for (key, op, values, err) in cases {
        let got = requirement(key, *op, vs(values));
        match err {
            None => assert!(got.is_ok(), "{key} {op:?} {values:?}: {got:?}"),
            Some(want) => {
                let e = got.expect_err(key);
                assert!(e.contains(want), "{key}: {e:?} lacks {want:?}");
            }
        }
    }
}

#[test]
fn apimachinery_to_string() {
    // TestToString (but its invalid zero-value requirement) and value sorting on output.
    let cases: &[(Vec<LabelReq>, &str)] = &[
        (
            vec![
                LabelReq::In(s("x"), vs(&["abc", "def"])),
                LabelReq::NotIn(s("y"), vs(&["jkl"])),
                LabelReq::Exists(s("z")),
            ],
            "x in (abc,def),y notin (jkl),z",
        ),
        (
            vec![
                LabelReq::NotIn(s("x"), vs(&["abc", "def"])),
                LabelReq::NotEquals(s("y"), s("jkl")),
                LabelReq::NotExists(s("z")),
            ],
            "x notin (abc,def),y!=jkl,!z",
        ),
        (
            vec![
                LabelReq::NotIn(s("x"), vs(&["abc"])),
                LabelReq::In(s("y"), vs(&["jkl", "mno"])),
                LabelReq::NotIn(s("z"), vs(&[""])),
            ],
            "x notin (abc),y in (jkl,mno),z notin ()",
        ),
        (
            vec![
                LabelReq::Equals(s("x"), s("abc")),
                LabelReq::DoubleEquals(s("y"), s("jkl")),
                LabelReq::NotEquals(s("z"), s("a")),
                LabelReq::Exists(s("z")),
            ],
            "x=abc,y==jkl,z!=a,z",
        ),
        (
            vec![
                LabelReq::Gt(s("x"), 2),
                LabelReq::Lt(s("y"), 8),
                LabelReq::Exists(s("z")),
            ],
            "x>2,y<8,z",
        ),
        (
            vec![LabelReq::In(s("x"), vs(&["foo", "bar", "foo"]))],
            "x in (bar,foo,foo)",
        ),
    ];
    for (reqs, want) in cases {
        assert_eq!(LabelSelector(reqs.clone()).to_string(), *want);
    }
    // TestSetSelectorString: a map's selector.
    for (m, want) in [
        (l(&[]), ""),
        (l(&[("app", "foo")]), "app=foo"),
        (l(&[("app", "foo"), ("a", "b")]), "a=b,app=foo"),
    ] {
        assert_eq!(LabelSelector::from_map(&m).to_string(), want);
    }
}

// ---------------------------------------------------------------------------------------------
// Regressions: selectors the first parser here accepted (or misread).
// ---------------------------------------------------------------------------------------------

#[test]
fn negation_takes_no_operator() {
    // The security report: read as "no label `app=web`", it matched (and deleted) everything.
    for sel in [
        "!app=web",
        "!app==web",
        "!app!=web",
        "!app in (web)",
        "!app notin (web)",
        "!app>1",
        "!app<1",
        "! app = web",
        "tier=db,!app=web",
        "!app=web,tier=db",
    ] {
        let err = LabelSelector::parse(sel).expect_err(sel);
        assert!(
            err.contains("expected: ',' or 'end of string'"),
            "{sel}: {err}"
        );
    }
    let sel = LabelSelector::parse("!app").unwrap();
    assert_eq!(sel, LabelSelector(vec![LabelReq::NotExists(s("app"))]));
    assert!(sel.matches(&l(&[("tier", "db")])));
    assert!(!sel.matches(&l(&[("app", "web")])));
    assert!(!sel.matches(&l(&[("app", "")])));
    assert_eq!(
        LabelSelector::parse("! app , x"),
        Ok(LabelSelector(vec![
            LabelReq::NotExists(s("app")),
            LabelReq::Exists(s("x"))
        ]))
    );
}

#[test]
fn malformed_label_selectors() {
    let long_name = "a".repeat(64);
    let long_prefix = format!("{}/x", "a".repeat(254));
    let cases: Vec<(String, &str)> = vec![
        (s("app=web,"), "found '', expected: identifier after ','"),
        (s("a b c"), "found 'b', expected: in, notin"),
        (s("x in (a"), "found '', expected: ',' or ')'"),
        (s("x in a"), "found 'a' expected: '('"),
        (s("x in"), "found '' expected: '('"),
        (
            s("x in (a))"),
            "found ')', expected: ',' or 'end of string'",
        ),
        (s("x in (a,=)"), "found '=', expected: ',', or identifier"),
        (
            s("x in ((a)"),
            "found '(', expected: ',', ')' or identifier",
        ),
        (s("=foo"), "found '=', expected: !, identifier"),
        (s("key==="), "found '=', expected: identifier"),
        (s("x>=1"), "found '=', expected: identifier"),
        (s("x=(a)"), "found '(', expected: identifier"),
        (s("!"), "found '', expected: identifier"),
        (s("!!x"), "found '!', expected: identifier"),
        (s(","), "found ',', expected: !, identifier"),
        (s("x=a,,y=b"), "identifier after ','"),
        (s("x=a y=b"), "found 'y', expected: ',' or 'end of string'"),
        // Keys.
        (s("ke$y=1"), "invalid label key \"ke$y\""),
        (s("-app=web"), "invalid label key"),
        (s("app-=web"), "invalid label key"),
        (s("a/b/c"), "invalid label key"),
        (s("/a"), "invalid label key"),
        (s("a/"), "invalid label key"),
        (s("Example.com/a"), "invalid label key"),
        (s("é=1"), "invalid label key"),
        (format!("{long_name}=1"), "invalid label key"),
        (long_prefix, "invalid label key"),
        (s("in in in"), "found 'in' expected: '('"),
        // Values.
        (s("app=w@b"), "invalid label value \"w@b\""),
        (s("app=-web"), "invalid label value"),
        (s("app=web-"), "invalid label value"),
        (s("app in (web,x/y)"), "invalid label value \"x/y\""),
        (s("app=é"), "invalid label value"),
        (
            format!("app={long_name}"),
            "must be no more than 63 characters",
        ),
        (format!("app in (a,{long_name})"), "invalid label value"),
        // Integers.
        (s("x>"), "must be an integer"),
        (s("x>a"), "must be an integer"),
        (s("x>1.5"), "must be an integer"),
        (s("x>-1"), "invalid label value \"-1\""),
        (s("x>99999999999999999999"), "must be an integer"),
        // NUL is no end of input here (see the module doc).
        (s("\0"), "invalid label key"),
        (s("x=a \0junk"), "expected: ',' or 'end of string'"),
        (s("x=a\0"), "invalid label value"),
    ];
    for (sel, want) in cases {
        let err = LabelSelector::parse(&sel).expect_err(&sel);
        assert!(err.contains(want), "{sel:?}: {err:?} lacks {want:?}");
    }
}

#[test]
fn edge_cases_apimachinery_accepts() {
    let cases: &[(&str, Vec<LabelReq>)] = &[
        // An exact match with nothing after the operator is on the empty value.
        ("key==", vec![LabelReq::DoubleEquals(s("key"), s(""))]),
        ("key!=", vec![LabelReq::NotEquals(s("key"), s(""))]),
        // Keywords are keys and values everywhere but the operator position.
        ("in", vec![LabelReq::Exists(s("in"))]),
        ("in in (in)", vec![LabelReq::In(s("in"), vs(&["in"]))]),
        ("!notin", vec![LabelReq::NotExists(s("notin"))]),
        ("x=in", vec![LabelReq::Equals(s("x"), s("in"))]),
        // Integers: leading zeros, the widest i64.
        ("x>007", vec![LabelReq::Gt(s("x"), 7)]),
        (
            "x<9223372036854775807",
            vec![LabelReq::Lt(s("x"), i64::MAX)],
        ),
        // Whitespace of any of the four kinds, anywhere between tokens.
        (
            " \t\r\nx\n!=\ty\r,\n!\tz ",
            vec![
                LabelReq::NotEquals(s("x"), s("y")),
                LabelReq::NotExists(s("z")),
            ],
        ),
        (
            "example.com/app=Web_1.x",
            vec![LabelReq::Equals(s("example.com/app"), s("Web_1.x"))],
        ),
    ];
    for (input, want) in cases {
        assert_eq!(
            LabelSelector::parse(input),
            Ok(LabelSelector(want.clone())),
            "{input:?}"
        );
    }
    // 63 characters of name and value, 253 of prefix: the longest allowed.
    let key = format!("{}/{}", "a".repeat(253), "b".repeat(63));
    let sel = format!("{key}={}", "c".repeat(63));
    assert!(LabelSelector::parse(&sel).is_ok());
}

#[test]
fn integer_comparisons() {
    let gt = LabelSelector::parse("x>5").unwrap();
    let lt = LabelSelector::parse("x<5").unwrap();
    for (v, above, below) in [
        ("6", true, false),
        ("5", false, false),
        ("4", false, true),
        ("05", false, false),
        ("+7", true, false),
        ("-7", false, true),
        ("", false, false),
        ("5.0", false, false),
        ("five", false, false),
        ("99999999999999999999", false, false),
    ] {
        let labels = l(&[("x", v)]);
        assert_eq!(gt.matches(&labels), above, "{v:?} > 5");
        assert_eq!(lt.matches(&labels), below, "{v:?} < 5");
    }
    assert!(!gt.matches(&l(&[])));
    assert!(!lt.matches(&l(&[])));
}

#[test]
fn label_selectors() {
    let s = LabelSelector::parse("app=web,tier!=db,env in (prod, dev),!legacy,team").unwrap();
    assert!(s.matches(&l(&[("app", "web"), ("env", "dev"), ("team", "x")])));
    assert!(!s.matches(&l(&[("app", "web"), ("env", "qa"), ("team", "x")])));
    assert!(!s.matches(&l(&[
        ("app", "web"),
        ("env", "dev"),
        ("team", "x"),
        ("legacy", "1")
    ])));
    assert!(!s.matches(&l(&[
        ("app", "web"),
        ("env", "dev"),
        ("team", "x"),
        ("tier", "db")
    ])));
    assert!(!s.matches(&l(&[("app", "web"), ("env", "dev")])));
    let n = LabelSelector::parse("env notin (a,b)").unwrap();
    assert!(n.matches(&l(&[])));
    assert!(!n.matches(&l(&[("env", "a")])));
    assert!(LabelSelector::parse("").unwrap().is_empty());
    assert!(LabelSelector::parse(" \t").unwrap().is_empty());
    assert!(LabelSelector::parse("a b c").is_err());
}

// ---------------------------------------------------------------------------------------------
// apimachinery's field selector cases
// ---------------------------------------------------------------------------------------------

#[test]
fn apimachinery_split_terms() {
    // TestSplitTerms.
    let cases: &[(&str, &[&str])] = &[
        (r"a", &[r"a"]),
        (r"a=avalue", &[r"a=avalue"]),
        (r"a=avalue,b=bvalue", &[r"a=avalue", r"b=bvalue"]),
        (
            r"a=avalue,b==bvalue,c!=cvalue",
            &[r"a=avalue", r"b==bvalue", r"c!=cvalue"],
        ),
        (r"", &[]),
        (r"a=a,", &[r"a=a", r""]),
        (r",a=a", &[r"", r"a=a"]),
        (r"k=\,,k2=v2", &[r"k=\,", r"k2=v2"]),
        (r"k=\\,k2=v2", &[r"k=\\", r"k2=v2"]),
        (r"k=\\\,,k2=v2", &[r"k=\\\,", r"k2=v2"]),
        (r"k=\a\b\", &[r"k=\a\b\"]),
        (r"k=\", &[r"k=\"]),
        ("함=수,목=록", &["함=수", "목=록"]),
    ];
    for (input, want) in cases {
        assert_eq!(split_terms(input), *want, "{input:?}");
    }
}

#[test]
fn apimachinery_split_term() {
    // TestSplitTerm.
    type Split = Option<(&'static str, &'static str, &'static str)>;
    let cases: &[(&str, Split)] = &[
        (r"a=value", Some((r"a", "=", r"value"))),
        (r"b==value", Some((r"b", "==", r"value"))),
        (r"c!=value", Some((r"c", "!=", r"value"))),
        (r"", None),
        (r"a", None),
        (r"k=\,", Some((r"k", "=", r"\,"))),
        (r"k=\=", Some((r"k", "=", r"\="))),
        (r"k=\\\a\b\=\,\", Some((r"k", "=", r"\\\a\b\=\,\"))),
        ("함=수", Some(("함", "=", "수"))),
    ];
    for (input, want) in cases {
        assert_eq!(split_term(input), *want, "{input:?}");
    }
}

#[test]
fn apimachinery_escape_value() {
    // TestEscapeValue: round trips, then invalid escapes.
    for (raw, escaped) in [
        (r"", r""),
        (r"a", r"a"),
        (r"=", r"\="),
        (r",", r"\,"),
        (r"\", r"\\"),
        (r"\=\,\", r"\\\=\\\,\\"),
    ] {
        assert_eq!(escape_value(raw), escaped);
        assert_eq!(unescape_value(escaped).as_deref(), Ok(raw));
    }
    for bad in [r"\", r"\\\", r"\a"] {
        let e = unescape_value(bad).expect_err(bad);
        assert!(e.contains("invalid escape sequence"), "{bad}: {e}");
    }
    for bad in ["a=b", "="] {
        let e = unescape_value(bad).expect_err(bad);
        assert!(
            e.contains("unescaped character in value: '='"),
            "{bad}: {e}"
        );
    }
}

#[test]
fn apimachinery_field_selector_parse() {
    // TestSelectorParse: good ones print back as given, bad ones fail.
    for good in ["x=a,y=b,z=c", "", "x!=a,y=b", r"x=a||y\=b", r"x=a\=\=b"] {
        let reqs = parse_terms(good).unwrap_or_else(|e| panic!("{good}: {e}"));
        assert_eq!(FieldSelector(reqs).to_string(), good);
    }
    for bad in [
        "x=a||y=b",
        "x==a==b",
        "x=a,b",
        "x in (a)",
        "x in (a,b,c)",
        "x",
    ] {
        assert!(parse_terms(bad).is_err(), "{bad}");
    }
    // TestDeterministicParse.
    let a = FieldSelector(parse_terms("x=a,a=x").unwrap()).to_string();
    let b = FieldSelector(parse_terms("a=x,x=a").unwrap()).to_string();
    assert_eq!(a, b);
    assert_eq!(a, "a=x,x=a");
    assert_eq!(
        parse_terms("x in (a)").unwrap_err(),
        "invalid selector: 'x in (a)'; can't understand 'x in (a)'"
    );
}

#[test]
fn apimachinery_field_matches() {
    // TestSelectorMatches.
    let set = |pairs: &[(&str, &str)]| l(pairs);
    let yes: &[(&str, BTreeMap<String, String>)] = &[
        ("", set(&[("x", "y")])),
        ("x=y", set(&[("x", "y")])),
        ("x=y,z=w", set(&[("x", "y"), ("z", "w")])),
        ("x!=y,z!=w", set(&[("x", "z"), ("z", "a")])),
        ("notin=in", set(&[("notin", "in")])),
    ];
    let no: &[(&str, BTreeMap<String, String>)] = &[
        ("x=y", set(&[("x", "z")])),
        ("x=y,z=w", set(&[("x", "w"), ("z", "w")])),
        ("x!=y,z!=w", set(&[("x", "z"), ("z", "w")])),
    ];
    let fields = set(&[("foo", "bar"), ("baz", "blah"), ("complex", r"=value\,\")]);
    let with_fields_yes = [
        "foo=bar",
        "baz=blah",
        "foo=bar,baz=blah",
        r"foo=bar,baz=blah,complex=\=value\\\,\\",
    ];
    let with_fields_no = ["foo=blah", "baz=bar", "foo=bar,foobar=bar,baz=blah"];
    let matches = |sel: &str, m: &BTreeMap<String, String>| {
        FieldSelector(parse_terms(sel).unwrap())
            .matches_by(|f| m.get(f).cloned().unwrap_or_default())
    };
    for (sel, m) in yes {
        assert!(matches(sel, m), "{sel}");
    }
    for (sel, m) in no {
        assert!(!matches(sel, m), "{sel}");
    }
    for sel in with_fields_yes {
        assert!(matches(sel, &fields), "{sel}");
    }
    for sel in with_fields_no {
        assert!(!matches(sel, &fields), "{sel}");
    }
}

#[test]
fn field_selectors() {
    let f = FieldSelector::parse(by_kind("Pod"), "metadata.name=web,spec.nodeName!=n2").unwrap();
    let pod = serde_json::json!({"spec": {"nodeName": "n1"}});
    assert!(f.matches(Some("default"), "web", Some(&pod)));
    assert!(!f.matches(Some("default"), "api", Some(&pod)));
    let on_n2 = serde_json::json!({"spec": {"nodeName": "n2"}});
    assert!(!f.matches(Some("default"), "web", Some(&on_n2)));
    assert!(!f.only_identity());
    assert!(FieldSelector::parse(by_kind("Pod"), "metadata.name==x")
        .unwrap()
        .only_identity());
    assert_eq!(
        FieldSelector::parse(by_kind("Service"), "spec.nodeName=x").unwrap_err(),
        "field label not supported: spec.nodeName"
    );
    // Unscheduled pods have an empty nodeName.
    let f = FieldSelector::parse(by_kind("Pod"), "spec.nodeName=").unwrap();
    assert!(f.matches(None, "p", Some(&serde_json::json!({"spec": {}}))));
    // Booleans compare as their JSON text.
    let f = FieldSelector::parse(by_kind("Pod"), "spec.hostNetwork=true").unwrap();
    assert!(f.matches(
        None,
        "p",
        Some(&serde_json::json!({"spec": {"hostNetwork": true}}))
    ));
    assert!(!f.matches(None, "p", Some(&serde_json::json!({"spec": {}}))));
}

#[test]
fn malformed_field_selectors() {
    for (sel, want) in [
        ("metadata.name", "can't understand 'metadata.name'"),
        ("=x", "the field name is empty"),
        ("!=x", "the field name is empty"),
        ("metadata.name=a=b", "unescaped character in value: '='"),
        (r"metadata.name=a\", r"invalid escape sequence: \"),
        (r"metadata.name=a\b", r"invalid escape sequence: \b"),
        ("metadata.name=a,spec", "can't understand 'spec'"),
        // Unsupported fields, spaces being part of the field name as upstream.
        ("status.podIP=1", "field label not supported: status.podIP"),
        (
            " metadata.name=x",
            "field label not supported:  metadata.name",
        ),
        (
            "metadata.name =x",
            "field label not supported: metadata.name ",
        ),
    ] {
        let err = FieldSelector::parse(by_kind("Node"), sel).expect_err(sel);
        assert!(err.contains(want), "{sel:?}: {err:?} lacks {want:?}");
    }
    // Escaped separators are data; empty terms are skipped.
    let f = FieldSelector::parse(by_kind("Pod"), r",metadata.name=a\,b\=c\\,,").unwrap();
    assert_eq!(f.0, [(s("metadata.name"), true, s(r"a,b=c\"))]);
    assert!(f.matches(None, r"a,b=c\", None));
    // Spaces in values are kept.
    let f = FieldSelector::parse(by_kind("Pod"), "metadata.name= x").unwrap();
    assert!(f.matches(None, " x", None));
    assert!(!f.matches(None, "x", None));
    assert!(FieldSelector::parse(by_kind("Pod"), ",")
        .unwrap()
        .is_empty());
}

// ---------------------------------------------------------------------------------------------
// Property tests
// ---------------------------------------------------------------------------------------------

/// Pieces random label selectors are made of: single characters of the selector alphabet,
/// whitespace, some unicode, NUL, the keywords.
const LABEL_PIECES: &[&str] = &[
    "a", "b", "x", "Z", "0", "1", "9", "!", "=", "(", ")", ",", "<", ">", ".", "/", "-", "_", " ",
    "\\", "\t", "\n", "\r", "é", "日", "\u{a0}", "\0", "in", "notin", "==", "!=", "app", "web",
];

/// Pieces random field selectors are made of.
const FIELD_PIECES: &[&str] = &[
    "metadata.name",
    "spec.nodeName",
    "x",
    "a",
    "=",
    "==",
    "!=",
    "!",
    ",",
    "\\",
    "\\,",
    "\\=",
    "\\\\",
    " ",
    "(",
    ")",
    "é",
    "日",
    "\0",
];

fn from_pieces(pieces: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(pieces), 0..24).prop_map(|v| v.concat())
}

/// Applies `(position, kind, piece)` edits: insert the piece, delete a character, or replace
/// one by the piece, at a character boundary chosen by `position`.
fn mutate(mut text: String, edits: &[(usize, usize, &'static str)]) -> String {
    for (pos, kind, piece) in edits {
        let bounds: Vec<usize> = text
            .char_indices()
            .map(|(i, _)| i)
            .chain([text.len()])
            .collect();
        let at = bounds[pos % bounds.len()];
        let next = bounds.iter().copied().find(|b| *b > at).unwrap_or(at);
        match kind % 3 {
            0 => text.insert_str(at, piece),
            1 => text.replace_range(at..next, ""),
            _ => text.replace_range(at..next, piece),
        }
    }
    text
}

/// Selector-ish strings: random pieces, or a valid selector with a few random edits (which
/// lands near the boundary of the language, where acceptance bugs live).
fn label_selectorish() -> impl Strategy<Value = String> {
    let edited = (
        model_selector(),
        prop::collection::vec(0usize..100, 1..16),
        prop::collection::vec(
            (0usize..1000, 0usize..3, prop::sample::select(LABEL_PIECES)),
            0..3,
        ),
    )
        .prop_map(|(model, picks, edits)| mutate(render(&model, &picks), &edits));
    prop_oneof![from_pieces(LABEL_PIECES), edited]
}

/// An operator of the model in [`model_selector`].
#[derive(Debug, Clone, Copy)]
enum MOp {
    In,
    NotIn,
    Eq,
    DoubleEq,
    NotEq,
    Exists,
    NotExists,
    Gt,
    Lt,
}

const MOPS: [MOp; 9] = [
    MOp::In,
    MOp::NotIn,
    MOp::Eq,
    MOp::DoubleEq,
    MOp::NotEq,
    MOp::Exists,
    MOp::NotExists,
    MOp::Gt,
    MOp::Lt,
];

/// One requirement of a generated selector, kept apart from the parser's types.
#[derive(Debug, Clone)]
struct MReq {
    key: String,
    op: MOp,
    values: Vec<String>,
    int: i64,
    /// Leading zeros written before `int`.
    zeros: usize,
}

fn key_strategy() -> impl Strategy<Value = String> {
    let name = "[A-Za-z0-9]([-A-Za-z0-9_.]{0,8}[A-Za-z0-9])?";
    let prefix = "[a-z0-9]([-a-z0-9]{0,5}[a-z0-9])?(\\.[a-z0-9]{1,4}){0,2}";
    prop_oneof![
        4 => name,
        2 => (prefix, name).prop_map(|(p, n)| format!("{p}/{n}")),
        1 => Just(s("in")),
        1 => Just(s("notin")),
        2 => prop::sample::select(vec!["a", "b", "app"]).prop_map(s),
    ]
}

fn value_strategy() -> impl Strategy<Value = String> {
    prop_oneof![
        1 => Just(String::new()),
        4 => "[A-Za-z0-9]([-A-Za-z0-9_.]{0,6}[A-Za-z0-9])?",
        1 => Just(s("in")),
        1 => Just(s("notin")),
        2 => "[0-9]{1,3}",
    ]
}

fn model_selector() -> impl Strategy<Value = Vec<MReq>> {
    let req = (
        key_strategy(),
        prop::sample::select(MOPS.to_vec()),
        prop::collection::vec(value_strategy(), 1..4),
        0i64..1000,
        0usize..3,
    )
        .prop_map(|(key, op, values, int, zeros)| MReq {
            key,
            op,
            values,
            int,
            zeros,
        });
    prop::collection::vec(req, 0..5)
}

/// Whitespace (possibly none) to put between tokens.
fn ws(pick: &mut impl Iterator<Item = usize>) -> &'static str {
    ["", "", " ", "\t", "  ", "\n", "\r\n"][pick.next().unwrap_or(0) % 7]
}

/// Writes the model as a selector, with whitespace drawn from `picks` between tokens.
fn render(model: &[MReq], picks: &[usize]) -> String {
    let mut pick = picks.iter().copied().cycle();
    let mut out = String::new();
    for (i, r) in model.iter().enumerate() {
        if i > 0 {
            out += ws(&mut pick);
            out += ",";
        }
        out += ws(&mut pick);
        let k = &r.key;
        let w1 = ws(&mut pick);
        let w2 = ws(&mut pick);
        let v0 = &r.values[0];
        let int = format!("{}{}", "0".repeat(r.zeros), r.int);
        match r.op {
            MOp::In | MOp::NotIn => {
                let word = if matches!(r.op, MOp::In) {
                    "in"
                } else {
                    "notin"
                };
                let mut list = String::new();
                for (j, v) in r.values.iter().enumerate() {
                    if j > 0 {
                        list += ws(&mut pick);
                        list += ",";
                    }
                    list += ws(&mut pick);
                    list += v;
                }
                out += &format!("{k} {w1}{word}{w2}({list}{})", ws(&mut pick));
            }
            MOp::Eq => out += &format!("{k}{w1}={w2}{v0}"),
            MOp::DoubleEq => out += &format!("{k}{w1}=={w2}{v0}"),
            MOp::NotEq => out += &format!("{k}{w1}!={w2}{v0}"),
            MOp::Exists => out += k,
            MOp::NotExists => out += &format!("!{w1}{k}"),
            MOp::Gt => out += &format!("{k}{w1}>{w2}{int}"),
            MOp::Lt => out += &format!("{k}{w1}<{w2}{int}"),
        }
        out += ws(&mut pick);
    }
    out
}

/// The parsed form the model should have.
fn expected(model: &[MReq]) -> LabelSelector {
    let mut reqs: Vec<LabelReq> = model
        .iter()
        .map(|r| {
            let k = r.key.clone();
            let v0 = r.values[0].clone();
            match r.op {
                MOp::In | MOp::NotIn => {
                    let set: std::collections::BTreeSet<String> =
                        r.values.iter().cloned().collect();
                    let set: Vec<String> = set.into_iter().collect();
                    if matches!(r.op, MOp::In) {
                        LabelReq::In(k, set)
                    } else {
                        LabelReq::NotIn(k, set)
                    }
                }
                MOp::Eq => LabelReq::Equals(k, v0),
                MOp::DoubleEq => LabelReq::DoubleEquals(k, v0),
                MOp::NotEq => LabelReq::NotEquals(k, v0),
                MOp::Exists => LabelReq::Exists(k),
                MOp::NotExists => LabelReq::NotExists(k),
                MOp::Gt => LabelReq::Gt(k, r.int),
                MOp::Lt => LabelReq::Lt(k, r.int),
            }
        })
        .collect();
    reqs.sort_by(|a, b| a.key().cmp(b.key()));
    LabelSelector(reqs)
}

/// The model's meaning, evaluated directly: every requirement holds.
fn eval(model: &[MReq], labels: &BTreeMap<String, String>) -> bool {
    model.iter().all(|r| {
        let got = labels.get(&r.key).map(String::as_str);
        let listed = got.is_some_and(|g| r.values.iter().any(|v| v == g));
        let int = got
            .and_then(|g| g.parse::<i128>().ok())
            .filter(|n| i64::try_from(*n).is_ok());
        match r.op {
            MOp::In => listed,
            MOp::NotIn => !listed,
            MOp::Eq | MOp::DoubleEq => got == Some(r.values[0].as_str()),
            MOp::NotEq => got != Some(r.values[0].as_str()),
            MOp::Exists => got.is_some(),
            MOp::NotExists => got.is_none(),
            MOp::Gt => int.is_some_and(|n| n > i128::from(r.int)),
            MOp::Lt => int.is_some_and(|n| n < i128::from(r.int)),
        }
    })
}

/// For an accepted selector: every `!` starts a requirement of a key alone.
fn negations_stand_alone(input: &str) {
    let toks = lex(input);
    for (i, (t, _)) in toks.iter().enumerate() {
        if *t == Tok::Not {
            assert!(
                matches!(toks[i + 1].0, Tok::Ident | Tok::In | Tok::NotIn),
                "{input:?}"
            );
            assert!(
                matches!(toks[i + 2].0, Tok::Comma | Tok::End),
                "{input:?}: `!key` followed by {:?}",
                toks[i + 2]
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// (a) Any string: no panic; what is accepted is well-formed and prints back to itself.
    #[test]
    fn arbitrary_label_selectors(input in label_selectorish()) {
        if let Ok(sel) = LabelSelector::parse(&input) {
            prop_assert_eq!(LabelSelector::parse(&sel.to_string()), Ok(sel.clone()));
            for r in &sel.0 {
                prop_assert!(sluice_validation::is_qualified_name(r.key()).is_empty());
                let values: Vec<&String> = match r {
                    LabelReq::In(_, v) | LabelReq::NotIn(_, v) => v.iter().collect(),
                    LabelReq::Equals(_, v)
                    | LabelReq::DoubleEquals(_, v)
                    | LabelReq::NotEquals(_, v) => vec![v],
                    _ => vec![],
                };
                for v in values {
                    prop_assert!(sluice_validation::is_valid_label_value(v).is_empty());
                }
            }
            negations_stand_alone(&input);
        }
    }

    /// (a) Any string as a field selector: no panic; accepted ones print back to themselves.
    #[test]
    fn arbitrary_field_selectors(input in from_pieces(FIELD_PIECES)) {
        let _ = FieldSelector::parse(by_kind("Pod"), &input);
        if let Ok(reqs) = parse_terms(&input) {
            let printed = FieldSelector(reqs.clone()).to_string();
            let mut again = parse_terms(&printed).unwrap();
            let mut reqs = reqs;
            reqs.sort();
            again.sort();
            prop_assert_eq!(again, reqs);
        }
    }

    /// (b) A valid selector parses to what it says, its canonical string parses back to it,
    /// and it matches exactly the label maps a direct evaluation of its meaning accepts.
    #[test]
    fn generated_label_selectors(
        model in model_selector(),
        picks in prop::collection::vec(0usize..100, 1..16),
        maps in prop::collection::vec(
            prop::collection::vec((0usize..100, 0usize..100), 0..6),
            1..8,
        ),
    ) {
        let input = render(&model, &picks);
        let sel = LabelSelector::parse(&input);
        prop_assert_eq!(&sel, &Ok(expected(&model)), "{:?}", input);
        let sel = sel.unwrap();
        prop_assert_eq!(LabelSelector::parse(&sel.to_string()), Ok(sel.clone()));
        let mut keys: Vec<String> = model.iter().map(|r| r.key.clone()).collect();
        keys.push(s("other"));
        let mut values: Vec<String> =
            model.iter().flat_map(|r| r.values.iter().cloned()).collect();
        values.extend(model.iter().map(|r| r.int.to_string()));
        values.extend(["", "0", "999", "1000", "-3", "+7", "v2", "in"].map(s));
        for entries in maps {
            let labels: BTreeMap<String, String> = entries
                .iter()
                .map(|(k, v)| (keys[k % keys.len()].clone(), values[v % values.len()].clone()))
                .collect();
            prop_assert_eq!(sel.matches(&labels), eval(&model, &labels), "{} on {:?}", sel, labels);
        }
    }

    /// (c) `!key` followed by any operator is rejected, whatever surrounds it.
    #[test]
    fn negation_with_operator_is_rejected(
        before in model_selector(),
        picks in prop::collection::vec(0usize..100, 1..8),
        key in key_strategy(),
        op in prop::sample::select(vec!["=", "==", "!=", "in", "notin", ">", "<"]),
        gap in prop::sample::select(vec![" ", "\t", "\n", "  "]),
        rest in from_pieces(LABEL_PIECES),
    ) {
        let mut input = render(&before, &picks);
        if !before.is_empty() {
            input.push(',');
        }
        input += &format!("!{}{key}{gap}{op}{rest}", ws(&mut picks.iter().copied()));
        let err = LabelSelector::parse(&input);
        prop_assert!(err.is_err(), "{:?} accepted: {:?}", input, err);
        let err = err.unwrap_err();
        prop_assert!(
            err.contains("expected: ',' or 'end of string'"),
            "{:?}: {}",
            input,
            err
        );
    }
}
