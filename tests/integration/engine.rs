//! The engine on the real model: facts, tokens, and KV-cache reuse (a prefix already in the
//! cache is never decoded again within one process).

use ntv::engine::{ContextOptions, Decoder, LoadOptions, Model};

use crate::util::{KNOWN_IDS, model};

fn load() -> Model {
    Model::load(model(), &LoadOptions::default()).expect("model loads")
}

fn opts() -> ContextOptions {
    ContextOptions {
        n_ctx: 512,
        n_threads: 1,
        n_batch: 64,
    }
}

fn known() -> Vec<i32> {
    KNOWN_IDS.iter().map(|&i| i as i32).collect()
}

/// The largest |a_i − b_i|. Rows of different lengths, empty rows and NaNs are never "close":
/// they panic or give infinity, so a comparison cannot pass by comparing nothing.
#[track_caller]
fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "rows of different lengths");
    assert!(!a.is_empty(), "empty rows");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(
            0.0,
            |m, d| if d.is_nan() { f32::INFINITY } else { m.max(d) },
        )
}

#[test]
fn facts_of_the_test_model() {
    let m = load();
    let i = m.info();
    assert_eq!(i.architecture, "llama");
    assert_eq!(i.n_vocab, 49152);
    assert_eq!(i.file_type, "Q4_1");
    assert_eq!(i.vocab_type, "gpt2");
    assert!(
        i.chat_template
            .as_deref()
            .is_some_and(|t| t.contains("<|im_start|>"))
    );
    assert_eq!(i.eos, Some(2));
    assert!(i.eog.contains(&2));
    assert!(m.is_eog(2) && m.is_special(1) && !m.is_special(504));
    assert_eq!(m.piece(504), "The");
    assert_eq!(m.piece(2), "<|im_end|>");
    // Special-token parsing on and off.
    assert_eq!(m.tokenize("<|im_end|>", false, true), vec![2]);
    assert_ne!(m.tokenize("<|im_end|>", false, false), vec![2]);
}

#[test]
fn kv_prefix_is_reused_not_redecoded() {
    let m = load();
    let ids = known();
    let mut dec = Decoder::new(&m, &opts()).unwrap();
    let first = dec.eval(&ids).unwrap().to_vec();
    assert_eq!(dec.decoded_total(), ids.len(), "the prompt is decoded once");

    // Same tokens again: nothing is decoded.
    let again = dec.eval(&ids).unwrap().to_vec();
    assert_eq!(dec.decoded_total(), ids.len());
    assert_eq!(first, again);

    // One more token: exactly one decode.
    let mut longer = ids.clone();
    longer.push(504);
    dec.eval(&longer).unwrap();
    assert_eq!(dec.decoded_total(), ids.len() + 1);
    dec.push(3575).unwrap();
    assert_eq!(dec.decoded_total(), ids.len() + 2);

    // Rewind to a prefix and take another branch: only the new suffix is decoded (the last
    // cached token is decoded again to get its logits back, since llama.cpp keeps none).
    let before = dec.decoded_total();
    let back = dec.eval(&ids).unwrap().to_vec();
    assert_eq!(dec.decoded_total(), before + 1);
    assert!(
        max_abs_diff(&back, &first) < 1e-3,
        "same context, same logits"
    );

    // A fresh context agrees with the reused one.
    let mut fresh = Decoder::new(&m, &opts()).unwrap();
    let mut branch = ids.clone();
    branch.push(504);
    branch.push(3575);
    let a = fresh.eval(&branch).unwrap().to_vec();
    let b = dec.eval(&branch).unwrap().to_vec();
    assert!(
        max_abs_diff(&a, &b) < 1e-3,
        "cached and fresh contexts disagree"
    );
}

#[test]
fn logits_at_every_position_match_incremental_decoding() {
    let m = load();
    let ids = known();
    let mut dec = Decoder::new(&m, &opts()).unwrap();
    let mut rows = Vec::new();
    dec.eval_all(&ids, &mut |pos, logits| rows.push((pos, logits.to_vec())))
        .unwrap();
    assert_eq!(rows.len(), ids.len());
    assert!(rows.iter().enumerate().all(|(i, (pos, _))| i == *pos));
    // Row 10 predicts token 11: compare with a context holding only the first 11 tokens.
    let mut other = Decoder::new(&m, &opts()).unwrap();
    let direct = other.eval(&ids[..11]).unwrap().to_vec();
    assert!(max_abs_diff(&rows[10].1, &direct) < 1e-3);
}

#[test]
fn context_limits_and_bad_ids_are_errors() {
    let m = load();
    let mut dec = Decoder::new(
        &m,
        &ContextOptions {
            n_ctx: 16,
            n_threads: 1,
            n_batch: 16,
        },
    )
    .unwrap();
    let err = dec.eval(&known()).unwrap_err();
    assert!(err.is_input(), "{err}");
    assert!(dec.eval(&[]).is_err());
    assert!(dec.eval(&[1, 49152]).unwrap_err().is_input());
}
