//! The prefix cache on the real model: a KV state saved by one context and restored into a fresh
//! one gives the same logits while decoding only what follows it; entries that do not match in
//! every respect are ignored.

use std::fs;
use std::path::Path;

use ntv::engine::{ContextOptions, Decoder, LoadOptions, Model};
use ntv::kvcache::KvCache;

use crate::util::{KNOWN_IDS, model};

const FP: &str = "test-model";

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

/// The known prompt plus a few completion tokens, decoded as `ntv step` would: prompt in one
/// batch, then one token at a time.
fn stepped(m: &Model) -> (Decoder<'_>, Vec<i32>) {
    let mut dec = Decoder::new(m, &opts()).unwrap();
    let mut ids = known();
    dec.eval(&ids).unwrap();
    for t in [504, 3575, 282] {
        dec.push(t).unwrap();
        ids.push(t);
    }
    assert_eq!(dec.cached(), &ids[..]);
    (dec, ids)
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn entries(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "ntvkv"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn restored_state_decodes_only_the_new_token_with_the_same_logits() {
    let m = load();
    let (mut a, ids) = stepped(&m);
    let state = a.save_prefix().unwrap();
    assert!(!state.is_empty());

    // A fresh context in the same process, as a new `ntv step` would make.
    let mut b = Decoder::new(&m, &opts()).unwrap();
    assert_eq!(a.kv_params_key(), b.kv_params_key());
    b.restore_prefix(&ids, &state).unwrap();
    assert_eq!(b.cached(), &ids[..]);
    assert_eq!(b.decoded_total(), 0);

    let mut next = ids.clone();
    next.push(4649);
    let restored = b.eval(&next).unwrap().to_vec();
    assert_eq!(b.decoded_total(), 1, "only the new token is decoded");

    // Same decode history (the original context, continued): bit-identical.
    let continued = a.eval(&next).unwrap().to_vec();
    assert_eq!(
        restored, continued,
        "restored and continued contexts give bit-identical logits"
    );

    // Against a context that decodes everything at once: equal up to batching noise.
    let mut fresh = Decoder::new(&m, &opts()).unwrap();
    let uncached = fresh.eval(&next).unwrap().to_vec();
    let d = max_abs_diff(&restored, &uncached);
    eprintln!("restored vs uncached single-batch decode: max |Δlogit| = {d:e}");
    assert!(d < 1e-4, "restored vs uncached: {d}");

    // Asking for exactly the restored tokens decodes the last one again (no logits in a state).
    let mut c = Decoder::new(&m, &opts()).unwrap();
    c.restore_prefix(&ids, &state).unwrap();
    let again = c.eval(&ids).unwrap().to_vec();
    assert_eq!(c.decoded_total(), 1);
    let mut a2 = stepped(&m).0;
    let reference = a2.eval(&ids).unwrap().to_vec();
    let d = max_abs_diff(&again, &reference);
    eprintln!("restored + last token re-decoded vs original: max |Δlogit| = {d:e}");
    assert!(d < 1e-4, "{d}");
}

#[test]
fn a_state_restores_a_shorter_prefix_and_bad_states_leave_an_empty_cache() {
    let m = load();
    let (a, ids) = stepped(&m);
    let state = a.save_prefix().unwrap();

    // Only the first 20 tokens of the saved 28: the rest is dropped from the KV cache.
    let mut b = Decoder::new(&m, &opts()).unwrap();
    b.restore_prefix(&ids[..20], &state).unwrap();
    let mut branch = ids[..20].to_vec();
    branch.push(198);
    let got = b.eval(&branch).unwrap().to_vec();
    assert_eq!(b.decoded_total(), 1);
    let mut fresh = Decoder::new(&m, &opts()).unwrap();
    let want = fresh.eval(&branch).unwrap().to_vec();
    assert!(max_abs_diff(&got, &want) < 1e-4);

    // More tokens than the state holds, garbage, a truncated state: errors, empty cache, and
    // the decoder still works.
    let mut longer = ids.clone();
    longer.push(504);
    let reference = Decoder::new(&m, &opts())
        .unwrap()
        .eval(&ids)
        .unwrap()
        .to_vec();
    for (what, bytes, toks) in [
        ("too many tokens", state.clone(), &longer[..]),
        ("garbage", vec![7u8; 4096], &ids[..]),
        ("truncated", state[..state.len() / 2].to_vec(), &ids[..]),
    ] {
        let mut c = Decoder::new(&m, &opts()).unwrap();
        assert!(c.restore_prefix(toks, &bytes).is_err(), "{what}");
        assert!(c.cached().is_empty(), "{what}");
        let logits = c.eval(&ids).unwrap().to_vec();
        assert_eq!(c.decoded_total(), ids.len(), "{what}");
        assert_eq!(logits, reference, "{what}");
    }

    // A context of another length has another key.
    let other = Decoder::new(
        &m,
        &ContextOptions {
            n_ctx: 1024,
            ..opts()
        },
    )
    .unwrap();
    assert_ne!(a.kv_params_key(), other.kv_params_key());
    assert!(b.restore_prefix(&[], &state).is_err());
}

#[test]
fn the_cache_round_trip_through_files() {
    let m = load();
    let (a, ids) = stepped(&m);
    let tmp = tempfile::tempdir().unwrap();
    let cache = KvCache::open(&tmp.path().join("kv"), 1 << 30).unwrap();

    // Nothing yet.
    let mut b = Decoder::new(&m, &opts()).unwrap();
    assert_eq!(cache.restore_into(&mut b, FP, &ids), 0);

    assert!(cache.save_from(&a, FP).unwrap());
    assert!(
        !cache.save_from(&a, FP).unwrap(),
        "same tokens: not written again"
    );
    let mut next = ids.clone();
    next.push(4649);
    assert_eq!(cache.restore_into(&mut b, FP, &next), ids.len());
    let got = b.eval(&next).unwrap().to_vec();
    assert_eq!(b.decoded_total(), 1);
    let mut fresh = Decoder::new(&m, &opts()).unwrap();
    let want = fresh.eval(&next).unwrap().to_vec();
    assert!(max_abs_diff(&got, &want) < 1e-4);

    // The next step stores the longer context and supersedes the shorter entry.
    assert!(cache.save_from(&b, FP).unwrap());
    let files = entries(cache.dir());
    assert_eq!(files.len(), 1);
    assert!(
        files[0]
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .contains(&format!("-{}-", next.len()))
    );

    // A rewind to the prompt restores from the longer entry.
    let mut rewind = known();
    rewind.push(9531);
    let mut c = Decoder::new(&m, &opts()).unwrap();
    assert_eq!(cache.restore_into(&mut c, FP, &rewind), known().len());
    let got = c.eval(&rewind).unwrap().to_vec();
    assert_eq!(c.decoded_total(), 1);
    let mut fresh = Decoder::new(&m, &opts()).unwrap();
    let want = fresh.eval(&rewind).unwrap().to_vec();
    assert!(max_abs_diff(&got, &want) < 1e-4);

    // Another model fingerprint, or another context size: not found.
    let mut d = Decoder::new(&m, &opts()).unwrap();
    assert_eq!(cache.restore_into(&mut d, "another model", &next), 0);
    let mut e = Decoder::new(
        &m,
        &ContextOptions {
            n_ctx: 1024,
            ..opts()
        },
    )
    .unwrap();
    assert_eq!(cache.restore_into(&mut e, FP, &next), 0);
    assert_eq!(
        entries(cache.dir()).len(),
        1,
        "other models' lookups delete nothing"
    );

    cache.clear().unwrap();
    assert!(!cache.dir().exists());
}

#[test]
fn corrupt_stale_and_unfinished_entries_are_never_used() {
    let m = load();
    let (a, ids) = stepped(&m);
    let state = a.save_prefix().unwrap();
    let key = a.kv_params_key();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("kv");
    let cache = KvCache::open(&dir, 1 << 30).unwrap();
    let mut next = ids.clone();
    next.push(4649);

    type Spoil = fn(&Path, &[u8]) -> Vec<u8>;
    let cases: [(&str, Spoil); 4] = [
        ("a flipped byte in the state", |_, b| {
            let mut b = b.to_vec();
            let at = b.len() - 1000;
            b[at] ^= 0x40;
            b
        }),
        ("a truncated file", |_, b| b[..b.len() - 4096].to_vec()),
        ("a changed token in the header", |_, b| {
            let mut b = b.to_vec();
            // magic, version, then the length-prefixed fingerprint and KV key, then n.
            let fp = u32::from_le_bytes(b[12..16].try_into().unwrap()) as usize;
            let kv_at = 16 + fp;
            let kv = u32::from_le_bytes(b[kv_at..kv_at + 4].try_into().unwrap()) as usize;
            let tok = kv_at + 4 + kv + 4 + 4 * 5;
            b[tok] ^= 1;
            b
        }),
        ("an empty file", |_, _| Vec::new()),
    ];
    for (what, spoil) in cases {
        cache.store(FP, &key, &ids, &state).unwrap();
        let files = entries(&dir);
        assert_eq!(files.len(), 1, "{what}");
        let bytes = fs::read(&files[0]).unwrap();
        fs::write(&files[0], spoil(&files[0], &bytes)).unwrap();
        assert_eq!(cache.lookup(FP, &key, &next), None, "{what}");
        assert!(!files[0].exists(), "{what}: deleted");
        // The decoder falls back to a full decode.
        let mut b = Decoder::new(&m, &opts()).unwrap();
        assert_eq!(cache.restore_into(&mut b, FP, &next), 0, "{what}");
        assert!(b.cached().is_empty());
    }

    // Another model's entry renamed to our name (stale after a model change): ignored.
    cache.store("another model", &key, &ids, &state).unwrap();
    let theirs = entries(&dir).pop().unwrap();
    cache.store(FP, &key, &ids, &state).unwrap();
    let ours: Vec<_> = entries(&dir).into_iter().filter(|p| *p != theirs).collect();
    fs::rename(&theirs, &ours[0]).unwrap();
    assert_eq!(cache.lookup(FP, &key, &next), None);
    assert!(entries(&dir).is_empty());

    // A complete entry left under its temp name (the process died before the rename): never
    // found.
    cache.store(FP, &key, &ids, &state).unwrap();
    let done = entries(&dir).pop().unwrap();
    let unfinished = dir.join(format!(
        ".{}.tmp",
        done.file_stem().unwrap().to_str().unwrap()
    ));
    fs::rename(&done, &unfinished).unwrap();
    assert_eq!(cache.lookup(FP, &key, &next), None);
    assert!(
        unfinished.exists(),
        "a recent temp file may be someone's write in progress"
    );
}

#[test]
fn eviction_keeps_the_cache_under_its_bound() {
    let m = load();
    let (a, ids) = stepped(&m);
    let state = a.save_prefix().unwrap();
    let key = a.kv_params_key();
    let tmp = tempfile::tempdir().unwrap();
    let probe = KvCache::open(&tmp.path().join("probe"), u64::MAX).unwrap();
    probe.store(FP, &key, &ids, &state).unwrap();
    let one = probe.usage().1;

    // Room for two entries of this size.
    let cache = KvCache::open(&tmp.path().join("kv"), 2 * one + one / 2).unwrap();
    let branch = |t: i32| {
        let mut v = ids.clone();
        v[ids.len() - 1] = t;
        v
    };
    for t in [10, 11, 12, 13] {
        cache.store(FP, &key, &branch(t), &state).unwrap();
        let (n, bytes) = cache.usage();
        assert!(
            bytes <= cache.max_bytes(),
            "{bytes} > {}",
            cache.max_bytes()
        );
        assert!(n <= 2);
        if t == 11 {
            // Use the first one: the second becomes the least recently used.
            assert!(cache.lookup(FP, &key, &branch(10)).is_some());
        }
    }
    assert!(cache.contains(FP, &key, &branch(13)));
    assert!(cache.contains(FP, &key, &branch(12)));
    assert!(!cache.contains(FP, &key, &branch(11)));
    assert!(
        !cache.contains(FP, &key, &branch(10)),
        "evicted once 13 came"
    );
}
