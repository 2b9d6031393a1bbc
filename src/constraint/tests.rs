//! Unit tests: the GBNF converter, source checks, and the matcher driven over a small
//! hand-made vocabulary built like llama-cpp-2's (non-canonical, special tokens with the 0xFF
//! marker, two end-of-generation tokens, one empty token).

use std::sync::{Arc, OnceLock};

use llguidance::toktrie::{ApproximateTokEnv, TokEnv, TokRxInfo, TokTrie};

use super::*;

/// Multi-byte words after the 256 single bytes.
const WORDS: &[&str] = &[
    "Yes", "Yes,", " but", "No", "Maybe", "12", "-", "{", " {", "{\"", "ab", "bc",
];

/// Ids: 0..=255 the bytes, then WORDS, then `<|im_end|>` (EOS), `<|endoftext|>` (EOG),
/// `<|im_start|>` (special, not EOG), and an empty token.
fn env() -> TokEnv {
    static ENV: OnceLock<TokEnv> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut words: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
        words.extend(WORDS.iter().map(|w| w.as_bytes().to_vec()));
        for s in ["<|im_end|>", "<|endoftext|>", "<|im_start|>"] {
            let mut w = vec![0xFF];
            w.extend_from_slice(s.as_bytes());
            words.push(w);
        }
        words.push(Vec::new());
        let info = TokRxInfo::new(words.len() as u32, im_end());
        let trie = TokTrie::from(&info, &words).with_eos_tokens(&[im_end(), endoftext()]);
        Arc::new(ApproximateTokEnv::new(trie)) as TokEnv
    })
    .clone()
}

fn word(w: &str) -> u32 {
    256 + WORDS.iter().position(|x| *x == w).expect("a test word") as u32
}
fn im_end() -> u32 {
    256 + WORDS.len() as u32
}
fn endoftext() -> u32 {
    im_end() + 1
}
fn im_start() -> u32 {
    im_end() + 2
}
fn empty_token() -> u32 {
    im_end() + 3
}

fn new(kind: ConstraintKind, source: &str) -> Constraint {
    Constraint::new(&env(), kind, source)
        .unwrap_or_else(|e| panic!("{kind} {source:?} does not build: {e}"))
}

/// Feed `text` byte by byte; true when every byte is allowed and the end is accepting.
fn accepts(c: &Constraint, text: &str) -> bool {
    let mut c = c.deep_clone();
    text.bytes().all(|b| c.consume(u32::from(b)).is_ok()) && c.is_accepting()
}

fn gbnf(source: &str) -> Constraint {
    new(ConstraintKind::Gbnf, source)
}

fn gbnf_err(source: &str) -> GbnfError {
    gbnf_to_lark(source).expect_err("malformed GBNF")
}

// --- kinds --------------------------------------------------------------------------------

#[test]
fn kind_names_round_trip() {
    for k in ConstraintKind::ALL {
        assert_eq!(ConstraintKind::parse(k.as_str()), Some(k));
        assert_eq!(
            serde_json::to_value(k).unwrap(),
            serde_json::Value::from(k.as_str())
        );
        assert_eq!(k.to_string(), k.as_str());
    }
    assert_eq!(
        ConstraintKind::parse("json-schema"),
        Some(ConstraintKind::JsonSchema)
    );
    assert_eq!(ConstraintKind::parse("cfg"), None);
}

// --- GBNF → Lark ---------------------------------------------------------------------------

#[test]
fn gbnf_arithmetic() {
    let src = r#"
# simple arithmetic
root   ::= expr
expr   ::= term (("+" | "-") term)*
term   ::= factor (("*" | "/") factor)*
factor ::= number | "(" expr ")"
number ::= [0-9]+
"#;
    let lark = gbnf_to_lark(src).unwrap();
    assert!(lark.starts_with("start: g_root\n"), "{lark}");
    assert!(lark.contains("g_number: /[0-9]/+\n"), "{lark}");
    let c = gbnf(src);
    for ok in ["1", "12+3", "1+2*(3-4)/5", "((7))"] {
        assert!(accepts(&c, ok), "{ok:?} should match");
    }
    for bad in ["", "1+", "(1", "1++2", "a", "1 + 2"] {
        assert!(!accepts(&c, bad), "{bad:?} should not match");
    }
}

#[test]
fn gbnf_json_like_list_spanning_lines() {
    let src = r#"
root ::= "[" ws (
    item
    ("," ws item)*
  )? ws "]"
item ::= string | num
string ::= "\"" ( [^"\\] | "\\" ["\\nt] )* "\""
num ::= "-"? [0-9]{1,3}
ws ::= [ \t\n]*
"#;
    let c = gbnf(src);
    for ok in [
        "[]",
        "[ ]",
        "[1]",
        "[1, -22,\"a b\"]",
        "[\"q\\\"\", 999]",
        "[\"é\"]",
    ] {
        assert!(accepts(&c, ok), "{ok:?} should match");
    }
    for bad in ["[", "[1,]", "[1234]", "[\"a]", "[--1]"] {
        assert!(!accepts(&c, bad), "{bad:?} should not match");
    }
}

#[test]
fn gbnf_alternatives_on_new_lines_and_names() {
    // A leading `|` continues the rule; names may have dashes, digits and capitals.
    let src = "root ::= My-Rule2\n  | \"z\"\nMy-Rule2 ::= \"x\" my-rule2?\nmy-rule2 ::= \"y\"\n";
    let lark = gbnf_to_lark(src).unwrap();
    assert!(lark.contains("g__my-_rule2: "), "{lark}");
    assert!(lark.contains("g_my-rule2: "), "{lark}");
    let c = gbnf(src);
    for ok in ["x", "xy", "z"] {
        assert!(accepts(&c, ok), "{ok:?}");
    }
    assert!(!accepts(&c, "zy"));
}

#[test]
fn gbnf_char_classes_and_escapes() {
    let c = gbnf(r#"root ::= [a-cx_] [^a-z\n] "\x41\u00e9\t" [\]\-] ."#);
    assert!(accepts(&c, "bZAé\t]\n"));
    assert!(accepts(&c, "_1Aé\t-日"));
    assert!(!accepts(&c, "dZAé\t]x"), "d is outside [a-cx_]");
    assert!(!accepts(&c, "aqAé\t]x"), "q is in a-z");
    assert!(!accepts(&c, "a\nAé\t]x"), "newline is excluded");
    assert!(!accepts(&c, "aZAé\t]"), "`.` needs a character");
    // `.` and `[^]` take any one character, multi-byte ones included.
    let any = gbnf("root ::= . [^]");
    assert!(accepts(&any, "\n€"));
    assert!(!accepts(&any, "abc"));
}

#[test]
fn gbnf_repeats() {
    let c = gbnf(r#"root ::= "a"{2} "b"{1,} "c"{0,2} ("d" "e"){1,2} "f"?"#);
    assert!(accepts(&c, "aabde"));
    assert!(accepts(&c, "aabbbccdedef"));
    assert!(!accepts(&c, "abde"));
    assert!(!accepts(&c, "aade"));
    assert!(!accepts(&c, "aabcccde"));
    assert!(!accepts(&c, "aabdedede"));
    let zero = gbnf(r#"root ::= "x" "y"{0} "z"{0,0} "w"{,1}"#);
    assert!(accepts(&zero, "x") && accepts(&zero, "xw") && !accepts(&zero, "xy"));
}

#[test]
fn gbnf_keeps_character_level_meaning() {
    // A greedy "ab" lexeme would refuse "abc" here; GBNF accepts it as "a" + "bc".
    let c = gbnf(r#"root ::= ("a" | "ab") "bc""#);
    assert!(accepts(&c, "abc") && accepts(&c, "abbc"));
    // A greedy /[0-9]+/ lexeme would leave nothing for the last digit.
    let d = gbnf("root ::= [0-9]+ [0-9]");
    assert!(accepts(&d, "12") && !accepts(&d, "1"));
    let e = gbnf(r#"root ::= [a-z]* "ing""#);
    assert!(accepts(&e, "singing") && accepts(&e, "ingaing") && !accepts(&e, "sing_"));
}

#[test]
fn gbnf_comments_and_empty_alternatives() {
    let src = "# header\nroot ::= \"a\" opt # trailing\nopt ::= \"b\" | # nothing\n";
    let c = gbnf(src);
    assert!(accepts(&c, "a") && accepts(&c, "ab") && !accepts(&c, "abb"));
    let lark = gbnf_to_lark(src).unwrap();
    assert!(!lark.contains('#'), "{lark}");
}

#[test]
fn gbnf_lark_text_is_escaped() {
    let lark = gbnf_to_lark(r#"root ::= "\"\\/" [/"]"#).unwrap();
    assert_eq!(
        lark,
        "start: g_root\ng_root: \"\\\"\" \"\\\\\" \"/\" /[\\x{2F}\\x{22}]/\n"
    );
    assert!(accepts(&gbnf(r#"root ::= "\"\\/" [/"]"#), "\"\\//"));
}

#[test]
fn gbnf_errors_have_positions() {
    let cases: &[(&str, (usize, usize), &str)] = &[
        ("root ::= \"abc", (1, 10), "unterminated string"),
        ("root ::= [a-", (1, 10), "unterminated character class"),
        ("root ::= x\n", (1, 10), "undefined rule 'x'"),
        ("root := \"a\"", (1, 6), "expected '::='"),
        (
            "root \"a\"",
            (1, 6),
            "expected '::=' after rule name 'root'",
        ),
        ("root ::= (\"a\"\n", (2, 1), "expected ')'"),
        ("root ::= \"a\" )", (1, 14), "unmatched ')'"),
        ("root ::= \"\\q\"", (1, 11), "unknown escape"),
        ("root ::= [z-a]", (1, 11), "out of order"),
        ("root ::= \"a\"{3,1}", (1, 13), "below the minimum"),
        ("root ::= * \"a\"", (1, 10), "no expression before it"),
        ("root ::= \"a\"\nroot ::= \"b\"", (2, 1), "defined twice"),
        ("root ::= \"a\" ; ", (1, 14), "unexpected character ';'"),
        ("root ::= \"\\x4\"", (1, 11), "2 hexadecimal digits"),
        ("root ::= []", (1, 10), "empty character class"),
    ];
    for (src, at, msg) in cases {
        let e = gbnf_err(src);
        assert_eq!(e.at, Some(*at), "{src:?}: {e}");
        assert!(e.message.contains(msg), "{src:?}: {e}");
        assert!(
            e.to_string()
                .starts_with(&format!("line {}, column {}: ", at.0, at.1))
        );
    }
    let e = gbnf_err("start ::= \"a\"");
    assert_eq!(e.at, None);
    assert!(e.message.contains("'root'"), "{e}");
    // Through `grammar`: Malformed, an input error with a hint.
    let e = grammar(ConstraintKind::Gbnf, "root ::= \"abc").unwrap_err();
    assert!(matches!(
        e,
        ConstraintError::Malformed {
            kind: ConstraintKind::Gbnf,
            ..
        }
    ));
    assert!(e.is_input() && e.hint().is_some());
    assert!(
        e.to_string()
            .starts_with("malformed GBNF grammar: line 1, column 10:"),
        "{e}"
    );
}

// --- sources -------------------------------------------------------------------------------

#[test]
fn choices_are_deduplicated_in_order() {
    assert_eq!(
        parse_choices(r#"["No", "Yes", "", "No", "Maybe", "Yes"]"#).unwrap(),
        ["No", "Yes", "Maybe"]
    );
    for empty in ["[]", r#"["", ""]"#] {
        let e = parse_choices(empty).unwrap_err();
        assert!(matches!(e, ConstraintError::EmptyChoice), "{e}");
        assert!(e.is_input() && e.hint().is_some());
    }
    let e = parse_choices("Yes/No").unwrap_err();
    assert!(matches!(
        e,
        ConstraintError::Malformed {
            kind: ConstraintKind::Choice,
            ..
        }
    ));
    assert!(e.to_string().contains("JSON list of strings"), "{e}");
    assert!(grammar(ConstraintKind::Choice, r#"["", ""]"#).is_err());
    assert_eq!(
        choice_source(&["a\"b".into(), "a\"b".into(), "c".into()]).unwrap(),
        r#"["a\"b","c"]"#
    );
    assert_eq!(choices_from_file_text("Yes\r\nNo\n\n"), ["Yes", "No", ""]);
    assert_eq!(choices_from_file_text(r#" ["a", "b"] "#), ["a", "b"]);
}

#[test]
fn malformed_sources_carry_the_parser_message() {
    let cases: &[(ConstraintKind, &str, &str)] = &[
        (ConstraintKind::Regex, "[0-9", "unclosed character class"),
        (ConstraintKind::Regex, "a{2,1}", "invalid repetition"),
        (ConstraintKind::Regex, "", "empty"),
        (ConstraintKind::Lark, "start: foo", "foo"),
        (ConstraintKind::Lark, "start: \"a\" |||| (", ""),
        (ConstraintKind::Lark, "", "empty"),
        (ConstraintKind::JsonSchema, "{\"type\": ", "not valid JSON"),
        (
            ConstraintKind::JsonSchema,
            "[1, 2]",
            "JSON schema is an object",
        ),
        (
            ConstraintKind::JsonSchema,
            "{\"type\": \"frobnicate\"}",
            "frobnicate",
        ),
    ];
    for (kind, src, msg) in cases {
        let e = grammar(*kind, src).unwrap_err();
        let ConstraintError::Malformed { kind: k, message } = &e else {
            panic!("{kind} {src:?}: {e:?}");
        };
        assert_eq!(k, kind);
        assert!(!message.is_empty());
        assert!(
            message.to_lowercase().contains(&msg.to_lowercase()),
            "{kind} {src:?}: {message}"
        );
        assert!(e.is_input() && e.hint().is_some());
        // The same error when building on a vocabulary.
        let e2 = Constraint::new(&env(), *kind, src).unwrap_err();
        assert!(matches!(e2, ConstraintError::Malformed { .. }), "{e2}");
    }
    for (kind, src) in [
        (ConstraintKind::Regex, "[0-9]{3}-[0-9]{4}"),
        (ConstraintKind::Lark, "start: (\"a\"|\"b\") (\"c\"|\"d\")"),
        (
            ConstraintKind::JsonSchema,
            r#"{"type":"object","properties":{"a":{"type":"integer"}},"required":["a"]}"#,
        ),
        (ConstraintKind::Choice, r#"["Yes","No"]"#),
        (ConstraintKind::Gbnf, "root ::= \"a\""),
        // Special tokens are checked only against a vocabulary.
        (ConstraintKind::Lark, "start: \"a\" <|im_end|>"),
    ] {
        assert!(grammar(kind, src).is_ok(), "{kind} {src:?}");
    }
}

// --- the matcher ---------------------------------------------------------------------------

#[test]
fn choice_with_shared_prefixes() {
    let mut c = new(ConstraintKind::Choice, r#"["Yes", "Yes, but", "No"]"#);
    assert_eq!(c.kind(), ConstraintKind::Choice);
    let m = c.mask().unwrap();
    assert!(m.is_allowed(word("Yes") as usize) && m.is_allowed(word("Yes,") as usize));
    assert!(m.is_allowed(word("No") as usize) && m.is_allowed(b'Y' as usize));
    assert!(!m.is_allowed(word("Maybe") as usize) && !m.is_allowed(im_end() as usize));
    assert!(!c.is_accepting() && !c.is_complete().unwrap());
    c.consume(word("Yes")).unwrap();
    let m = c.mask().unwrap();
    assert!(c.is_accepting() && !c.is_complete().unwrap());
    assert!(m.is_allowed(im_end() as usize) && m.is_allowed(endoftext() as usize));
    assert!(m.is_allowed(b',' as usize) && !m.is_allowed(word(" but") as usize));
    assert_eq!(m.count(), 3);
    c.consume(u32::from(b',')).unwrap();
    assert!(!c.is_accepting());
    c.consume(word(" but")).unwrap();
    assert!(c.is_complete().unwrap());
    assert_eq!(c.mask().unwrap().allowed_ids(), vec![im_end(), endoftext()]);
    // End of generation after completion: accepted, counted, and rolled back.
    c.consume(endoftext()).unwrap();
    assert_eq!(c.position(), 4);
    assert!(c.is_complete().unwrap());
    let e = c.consume(u32::from(b'x')).unwrap_err();
    assert!(
        matches!(e, ConstraintError::Rejected { position: 4, .. }),
        "{e}"
    );
    c.rollback(3).unwrap();
    assert_eq!(c.position(), 1);
    assert!(c.mask().unwrap().is_allowed(b',' as usize));
}

#[test]
fn eog_only_at_accepting_states_and_specials_never() {
    let mut c = new(ConstraintKind::Regex, "[0-9]+");
    let m = c.mask().unwrap();
    assert!(!m.is_allowed(im_end() as usize) && !m.is_allowed(endoftext() as usize));
    assert!(!m.is_allowed(im_start() as usize) && !m.is_allowed(empty_token() as usize));
    assert!(m.is_allowed(word("12") as usize) && !m.is_allowed(word("-") as usize));
    assert_eq!(m.count(), 11);
    c.consume(word("12")).unwrap();
    let m = c.mask().unwrap();
    assert!(m.is_allowed(im_end() as usize) && m.is_allowed(endoftext() as usize));
    assert!(!m.is_allowed(im_start() as usize));
    assert!(c.is_accepting() && !c.is_complete().unwrap());
    // EOG ends it.
    c.consume(im_end()).unwrap();
    assert!(c.is_complete().unwrap());
    assert_eq!(c.mask().unwrap().allowed_ids(), vec![im_end(), endoftext()]);
    c.rollback(1).unwrap();
    assert!(!c.is_complete().unwrap());
    assert!(c.mask().unwrap().is_allowed(b'7' as usize));
}

#[test]
fn rejected_tokens_name_their_position_and_change_nothing() {
    let mut c = new(ConstraintKind::Regex, "[0-9]{3}-[0-9]{4}");
    c.consume(word("12")).unwrap();
    let before = c.mask().unwrap().allowed_ids();
    let e = c.consume(word("-")).unwrap_err();
    assert!(
        matches!(e, ConstraintError::Rejected { id, position: 1 } if id == word("-")),
        "{e}"
    );
    assert!(e.is_input() && e.hint().unwrap().contains("position 1"));
    assert_eq!(c.mask().unwrap().allowed_ids(), before);
    // Without a cached mask too, and out-of-vocabulary ids.
    let mut d = new(ConstraintKind::Regex, "[0-9]{3}-[0-9]{4}");
    assert!(d.consume(im_end()).is_err());
    assert!(matches!(
        d.consume(1_000_000).unwrap_err(),
        ConstraintError::Rejected { position: 0, .. }
    ));
    // Replay names the index in the list.
    let ids: Vec<u32> = "123-45a6".bytes().map(u32::from).collect();
    let e = d.replay(&ids).unwrap_err();
    assert!(
        matches!(e, ConstraintError::Rejected { position: 6, .. }),
        "{e}"
    );
    let ids: Vec<u32> = "123-4567".bytes().map(u32::from).collect();
    d.replay(&ids).unwrap();
    assert!(d.is_complete().unwrap());
    assert_eq!(d.position(), 8);
}

#[test]
fn rollback_restores_the_mask_and_clones_are_independent() {
    let mut c = new(ConstraintKind::Lark, r#"start: ("a"|"b") ("c"|"d")"#);
    let start = c.mask().unwrap().allowed_ids();
    // "bc" is one token that spans both choices; "ab" is not allowed.
    assert_eq!(start, vec![u32::from(b'a'), u32::from(b'b'), word("bc")]);
    let mut fork = c.deep_clone();
    c.consume(u32::from(b'a')).unwrap();
    assert_eq!(
        c.mask().unwrap().allowed_ids(),
        vec![u32::from(b'c'), u32::from(b'd')]
    );
    c.rollback(1).unwrap();
    assert_eq!(c.mask().unwrap().allowed_ids(), start);
    assert!(c.rollback(1).is_err());
    fork.consume(word("ab")).unwrap_err();
    fork.consume(word("bc")).unwrap();
    assert!(fork.is_complete().unwrap());
    assert_eq!(c.position(), 0);
    assert!(!c.is_accepting());
}

#[test]
fn json_schema_starts_with_a_brace() {
    let schema = r#"{"type":"object","properties":{"name":{"type":"string"},"age":{"type":"integer"}},"required":["name","age"]}"#;
    let mut c = new(ConstraintKind::JsonSchema, schema);
    let m = c.mask().unwrap();
    assert!(m.is_allowed(b'{' as usize) && m.is_allowed(word("{\"") as usize));
    assert!(!m.is_allowed(b'[' as usize) && !m.is_allowed(im_end() as usize));
    let text = r#"{"name": "Ann", "age": 42}"#;
    assert!(accepts(&c, text));
    assert!(!accepts(&c, r#"{"name": "Ann"}"#));
    assert!(!accepts(&c, r#"{"name": "Ann", "age": 4.5}"#));
}

#[test]
fn special_tokens_in_lark_use_the_vocabulary() {
    let mut c = new(ConstraintKind::Lark, "start: \"a\" <|im_start|>");
    c.consume(u32::from(b'a')).unwrap();
    assert_eq!(c.mask().unwrap().allowed_ids(), vec![im_start()]);
    c.consume(im_start()).unwrap();
    assert!(c.is_complete().unwrap());
    let e = Constraint::new(&env(), ConstraintKind::Lark, "start: <|nope|>").unwrap_err();
    assert!(e.to_string().contains("nope"), "{e}");
}

#[test]
fn a_grammar_of_the_empty_string_is_complete_at_once() {
    let mut c = new(ConstraintKind::Lark, "start: \"\"");
    assert!(c.is_accepting());
    assert!(c.is_complete().unwrap());
    assert_eq!(c.mask().unwrap().allowed_ids(), vec![im_end(), endoftext()]);
}

#[test]
fn constraints_can_move_between_threads() {
    fn send<T: Send>() {}
    send::<Constraint>();
    send::<Mask>();
    let c = new(ConstraintKind::Regex, "a+");
    std::thread::spawn(move || assert!(!c.deep_clone().is_accepting()))
        .join()
        .unwrap();
}
