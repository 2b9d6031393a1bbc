//! Constraints on the real model's vocabulary (49,152 tokens), driven without the CLI: masks,
//! walks over allowed tokens, exhaustive enumeration of small languages, rejections and
//! rollback. (The cost of a mask is section 7 of `cargo bench --bench ntv_bench`.)

use std::collections::BTreeSet;
use std::sync::OnceLock;

use ntv::constraint::{Constraint, ConstraintError, ConstraintKind};
use ntv::engine::{LoadOptions, Model};

use crate::util::model;

/// The model, loaded once for these tests; its token environment is built with it.
fn m() -> &'static Model {
    static MODEL: OnceLock<Model> = OnceLock::new();
    MODEL.get_or_init(|| {
        let model = Model::load(model(), &LoadOptions::default()).expect("model loads");
        let _ = model.tok_env();
        model
    })
}

fn build(kind: ConstraintKind, source: &str) -> Constraint {
    Constraint::new(&m().tok_env(), kind, source)
        .unwrap_or_else(|e| panic!("{kind} {source:?} does not build: {e}"))
}

fn text(ids: &[u32]) -> String {
    let ids: Vec<i32> = ids.iter().map(|&i| i as i32).collect();
    String::from_utf8(m().detokenize(&ids)).expect("utf-8 completion")
}

fn ids_of(s: &str) -> Vec<u32> {
    m().tokenize(s, false, false)
        .into_iter()
        .map(|i| i as u32)
        .collect()
}

/// Walk until the constraint is complete, taking at each step the allowed non-EOG token chosen
/// by `pick` from the ascending allowed ids. Returns the ids.
fn walk(c: &mut Constraint, pick: fn(&[u32]) -> u32, max_steps: usize) -> Vec<u32> {
    let mut ids = Vec::new();
    while !c.is_complete().unwrap() {
        assert!(
            ids.len() < max_steps,
            "no completion after {max_steps} steps"
        );
        let allowed: Vec<u32> = c
            .mask()
            .unwrap()
            .allowed_ids()
            .into_iter()
            .filter(|&i| !m().is_eog(i as i32))
            .collect();
        assert!(!allowed.is_empty(), "only EOG allowed but not complete");
        let id = pick(&allowed);
        c.consume(id).unwrap();
        ids.push(id);
    }
    ids
}

fn lowest(a: &[u32]) -> u32 {
    a[0]
}

fn highest(a: &[u32]) -> u32 {
    a[a.len() - 1]
}

/// Every string the constraint accepts, by depth-first search over all allowed tokens
/// (finite languages only). Also checks the EOG convention at every state: EOG is allowed
/// exactly when accepting, and no allowed token has an empty piece. Returns (strings, paths).
fn language(c: &mut Constraint) -> (BTreeSet<String>, usize) {
    fn dfs(c: &mut Constraint, path: &mut Vec<u32>, out: &mut BTreeSet<String>, n: &mut usize) {
        assert!(path.len() < 40, "language is not finite? {}", text(path));
        let mask = c.mask().unwrap();
        let accepting = c.is_accepting();
        for &e in &m().info().eog {
            assert_eq!(
                mask.is_allowed(e as usize),
                accepting,
                "EOG {e} after {:?}",
                text(path)
            );
        }
        if accepting {
            out.insert(text(path));
            *n += 1;
        }
        if c.is_complete().unwrap() {
            return;
        }
        for id in mask.allowed_ids() {
            if m().is_eog(id as i32) {
                continue;
            }
            assert!(!m().piece_bytes(id as i32).is_empty(), "empty token {id}");
            c.consume(id).unwrap();
            path.push(id);
            dfs(c, path, out, n);
            path.pop();
            c.rollback(1).unwrap();
        }
    }
    let (mut out, mut n) = (BTreeSet::new(), 0);
    dfs(c, &mut Vec::new(), &mut out, &mut n);
    (out, n)
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[test]
fn tok_env_is_built_once_and_registers_every_eog() {
    let env = m().tok_env();
    let again = m().tok_env();
    assert!(std::sync::Arc::ptr_eq(&env, &again));
    let trie = env.tok_trie();
    assert_eq!(trie.vocab_size(), m().n_vocab());
    let mut eos: Vec<i32> = trie.eos_tokens().iter().map(|&i| i as i32).collect();
    eos.sort_unstable();
    assert_eq!(eos, m().info().eog);
}

#[test]
fn choice_yields_exactly_one_option() {
    let src = r#"["Yes", "No", "Maybe", "No"]"#;
    for pick in [lowest as fn(&[u32]) -> u32, highest] {
        let mut c = build(ConstraintKind::Choice, src);
        let ids = walk(&mut c, pick, 10);
        let s = text(&ids);
        assert!(["Yes", "No", "Maybe"].contains(&s.as_str()), "{s:?}");
        // Complete: only EOG allowed now.
        let mask = c.mask().unwrap();
        assert_eq!(mask.count(), m().info().eog.len());
        assert!(mask.allowed_ids().iter().all(|&i| m().is_eog(i as i32)));
        // The EOG token is accepted and changes nothing.
        c.consume(m().info().eos.unwrap() as u32).unwrap();
        assert!(c.is_complete().unwrap());
    }
    let mut c = build(ConstraintKind::Choice, src);
    let (lang, paths) = language(&mut c);
    assert_eq!(lang, set(&["Yes", "No", "Maybe"]));
    eprintln!("choice Yes/No/Maybe: {paths} token paths");
    // Options that share a prefix.
    let mut c = build(ConstraintKind::Choice, r#"["Yes", "Yes, but"]"#);
    let (lang, _) = language(&mut c);
    assert_eq!(lang, set(&["Yes", "Yes, but"]));
}

#[test]
fn regex_walks_produce_full_matches() {
    let re = regex::Regex::new("^[0-9]{3}-[0-9]{4}$").unwrap();
    for pick in [lowest as fn(&[u32]) -> u32, highest] {
        let mut c = build(ConstraintKind::Regex, "[0-9]{3}-[0-9]{4}");
        assert!(!c.mask().unwrap().is_allowed(2), "no EOG at the start");
        let ids = walk(&mut c, pick, 20);
        let s = text(&ids);
        assert!(re.is_match(&s), "{s:?}");
        assert!(c.is_accepting());
    }
}

#[test]
fn lark_and_gbnf_give_exactly_their_language() {
    let cases: &[(ConstraintKind, &str, &[&str])] = &[
        (
            ConstraintKind::Lark,
            r#"start: ("a"|"b") ("c"|"d")"#,
            &["ac", "ad", "bc", "bd"],
        ),
        (
            ConstraintKind::Gbnf,
            r#"root ::= ("a" | "b") ("c" | "d")"#,
            &["ac", "ad", "bc", "bd"],
        ),
        (
            ConstraintKind::Gbnf,
            "# a bit more\nroot ::= [0-1]{2} tail?\ntail ::= \"x\" | \"yz\"\n",
            &[
                "00", "01", "10", "11", "00x", "01x", "10x", "11x", "00yz", "01yz", "10yz", "11yz",
            ],
        ),
        (
            ConstraintKind::Gbnf,
            r#"root ::= ("a" | "ab") "bc""#,
            &["abc", "abbc"],
        ),
    ];
    for (kind, src, want) in cases {
        let mut c = build(*kind, src);
        let (lang, paths) = language(&mut c);
        assert_eq!(lang, set(want), "{kind} {src:?}");
        eprintln!(
            "{kind} {src:?}: {} strings, {paths} token paths",
            lang.len()
        );
    }
}

const SCHEMA: &str = r#"{
  "type": "object",
  "properties": {
    "name": {"type": "string"},
    "age": {"type": "integer"},
    "color": {"enum": ["red", "green"]}
  },
  "required": ["name", "age", "color"],
  "additionalProperties": false
}"#;

#[test]
fn json_schema_masks_and_replay() {
    let mut c = build(ConstraintKind::JsonSchema, SCHEMA);
    let mask = c.mask().unwrap();
    assert!(mask.count() > 0);
    for id in mask.allowed_ids() {
        assert!(!m().is_eog(id as i32), "EOG {id} allowed at the start");
        let piece = m().piece(id as i32);
        let rest = piece.trim_start();
        assert!(
            rest.is_empty() || rest.starts_with('{'),
            "token {id} {piece:?} allowed at the start"
        );
    }
    assert!(mask.is_allowed(ids_of("{")[0] as usize));

    // A valid document is accepted, and ends in an accepting state.
    let doc = r#"{"name":"Ann","age":42,"color":"green"}"#;
    c.replay(&ids_of(doc)).unwrap();
    assert!(c.is_accepting());
    assert!(c.mask().unwrap().is_allowed(2));

    // A string where the integer belongs: rejected at that token's position.
    let prefix = ids_of(r#"{"name":"Ann","age":"#);
    let mut ids = prefix.clone();
    ids.extend(ids_of(r#""x"}"#));
    let e = c.replay(&ids).unwrap_err();
    assert!(
        matches!(e, ConstraintError::Rejected { position, .. } if position == prefix.len()),
        "{e}"
    );
    assert!(e.is_input() && e.hint().is_some());
    // An enum value outside the list.
    let mut ids = ids_of(r#"{"name":"Ann","age":42,"color":"#);
    let at = ids.len();
    ids.extend(ids_of(r#""blue"}"#));
    match c.replay(&ids).unwrap_err() {
        ConstraintError::Rejected { position, .. } => {
            assert!(position >= at, "{position} < {at}")
        }
        e => panic!("{e}"),
    }

    // Rollback restores the mask.
    c.replay(&prefix).unwrap();
    let before = c.mask().unwrap().allowed_ids();
    assert!(before.iter().all(|&i| !m().is_eog(i as i32)));
    let digit = ids_of("4")[0];
    c.consume(digit).unwrap();
    assert_ne!(c.mask().unwrap().allowed_ids(), before);
    c.rollback(1).unwrap();
    assert_eq!(c.mask().unwrap().allowed_ids(), before);
}

#[test]
fn single_token_checks_agree_with_the_mask() {
    // `consume` without a cached mask uses llguidance's single-token check; it must agree.
    let mut c = build(ConstraintKind::JsonSchema, SCHEMA);
    c.replay(&ids_of(r#"{"name":"A"#)).unwrap();
    for _ in 0..2 {
        let mask = c.mask().unwrap();
        let mut probe = c.deep_clone();
        probe.consume(mask.allowed_ids()[0]).unwrap();
        probe.rollback(1).unwrap(); // no cached mask now
        for id in (0..m().n_vocab() as u32).step_by(7) {
            assert_eq!(
                probe.allows(id).unwrap(),
                mask.is_allowed(id as usize),
                "{id}"
            );
        }
        c.replay(&ids_of(r#"{"name":"Ann","age":4"#)).unwrap();
    }
}
