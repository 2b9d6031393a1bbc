//! Property tests of everything that reads untrusted text: session and trace files, batch
//! lines, GBNF grammars. Each reader gets valid documents mutated at random (a field replaced
//! by any JSON value, truncation, flipped bytes) and arbitrary text, and must answer with a
//! value or a typed error — never a panic — and whatever it accepts must hold its invariants.
//!
//! The cases per property default to proptest's 256 (seconds in all). The longer fuzz run is
//! the same tests with more cases: `PROPTEST_CASES=20000 cargo test --release --lib fuzz`.

use proptest::prelude::*;
use serde_json::Value;

/// Any JSON value, a few levels deep.
pub(crate) fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        Just(Value::from(u64::MAX)),
        Just(Value::from(-1)),
        Just(Value::from(1u64 << 62)),
        ".{0,12}".prop_map(Value::String),
        Just(Value::String("\u{1b}[2J\u{7}".into())),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(".{0,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Every path (object keys and array indices) of `v`, parents before children.
fn paths(v: &Value, at: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    out.push(at.clone());
    match v {
        Value::Object(m) => {
            for (k, c) in m {
                at.push(k.clone());
                paths(c, at, out);
                at.pop();
            }
        }
        Value::Array(a) => {
            for (i, c) in a.iter().enumerate() {
                at.push(i.to_string());
                paths(c, at, out);
                at.pop();
            }
        }
        _ => {}
    }
}

fn replace_at(v: &mut Value, path: &[String], new: Value) {
    let Some((first, rest)) = path.split_first() else {
        *v = new;
        return;
    };
    let child = match v {
        Value::Object(m) => m.get_mut(first),
        Value::Array(a) => first.parse::<usize>().ok().and_then(|i| a.get_mut(i)),
        _ => None,
    };
    if let Some(c) = child {
        replace_at(c, rest, new);
    }
}

/// The bytes of `valid` mutated one of three ways: a value somewhere replaced by any JSON, the
/// text cut short, or bytes flipped.
pub(crate) fn mutated(valid: Value) -> impl Strategy<Value = Vec<u8>> {
    let mut all = Vec::new();
    paths(&valid, &mut Vec::new(), &mut all);
    let text = serde_json::to_vec(&valid).expect("JSON");
    let n_paths = all.len();
    let len = text.len();
    let (v1, t2, t3) = (valid, text.clone(), text);
    prop_oneof![
        (0..n_paths, any_json()).prop_map(move |(i, new)| {
            let mut v = v1.clone();
            replace_at(&mut v, &all[i], new);
            serde_json::to_vec(&v).expect("JSON")
        }),
        (0..len).prop_map(move |cut| t2[..cut].to_vec()),
        prop::collection::vec((0..len, any::<u8>()), 1..4).prop_map(move |flips| {
            let mut b = t3.clone();
            for (i, x) in flips {
                b[i] = x;
            }
            b
        }),
    ]
}
