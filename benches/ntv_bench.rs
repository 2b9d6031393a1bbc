//! `cargo bench --bench ntv_bench`: ntv's per-step overhead against the bare engine, measured
//! side by side in one process on the test model, reported as ratios.
//!
//! Sections:
//! 1. distribution maths per step on the full vocabulary (µs/step);
//! 2. `ntv preview` wall time, split into load / tokenise / prefill / maths (from its JSON);
//! 3. generation with full per-step records vs a bare decode loop of the same engine;
//! 4. the constraint mask per step and generation with a JSON schema vs without;
//! 5. one-shot `ntv step` processes with and without the prefix cache, and peak RSS;
//! 6. attribution per target and method in batch mode (`ntv attribute --batch`, model loaded
//!    once) on a short and a 372-token context, next to the Inseq reference figures;
//! 7. the constraint mask of each constraint kind on the full vocabulary, taken at every
//!    position of a document fed token by token, then repeated after a rollback, and the
//!    replay of a long completion;
//! 8. `ntv sweep` against `ntv preview`;
//! 9. the explorer's costs in process;
//! 10. `ntv serve` through HTTP: preview and step latency on a 27- and a 372-token context
//!     (model warm; a new branch each time, and a branch whose KV state holds the context),
//!     next to the original demo server's figures, and requests per second with 8 clients;
//! 11. `ntv lens --all` (the logit lens at every position and layer) on a 32- and a 300-token
//!     context: wall time, its capture/head split, and the process's own peak RSS;
//! 12. attribution as users run it: a mixed batch with the model load and every warm-up
//!     included, one-shot saliency and integrated gradients against their warm in-batch
//!     times, and the gradient methods' peak RSS against file + 1.5 B/parameter + the
//!     activation budget, on the test model and on a synthetic 1.6 B-parameter Q4_0 llama
//!     the benchmark writes (`NTV_BENCH_SYNTH`: its path, default `target/tmp/`); with
//!     `NTV_BENCH_INSEQ_PYTHON` (a Python with Inseq), `benches/inseq_baseline.py` runs the
//!     same requests in Inseq right after, for ratios against a baseline run side by side
//!     (the short context in rounds alternating the two sides);
//! 13. the gradient engine's tiled weight products on one block's matrices of the test model
//!     and of the synthetic llama, at a saliency pass's rows and an integrated-gradients
//!     batch's, in GFLOP/s.
//!
//! Environment: NTV_BENCH_THREADS (default: available cores), NTV_BENCH_TOKENS (default 96),
//! NTV_BENCH_ROUNDS (default 9), NTV_TEST_MODEL (default: the cached default model),
//! NTV_BENCH_SECTIONS (default all, e.g. `5,6`).

use std::hint::black_box;
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use ntv::constraint::{Constraint, ConstraintKind};
use ntv::driver::{Choice, Driver, dist_record};
use ntv::engine::{ContextOptions, Decoder, LoadOptions, Model};
use ntv::sampling::{RngState, SamplingParams, StreamRng, Workspace};
use ntv::settings::{CacheSetting, ModelChoice, PromptSpec, RunSettings, SeedChoice};
use ntv::workbench::{Mode, SessionStore, Workbench};

fn env_num<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Rounds of the short-context comparison of 12b/12d (one Inseq run and ntv's warm batches
/// either side of it each).
const SHORT_ROUNDS: usize = 3;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// `NTV_TEST_MODEL` when set (it must exist: nothing is fetched then), else the default model.
fn model_path() -> PathBuf {
    match std::env::var_os("NTV_TEST_MODEL") {
        Some(p) => {
            let p = PathBuf::from(p);
            assert!(p.is_file(), "NTV_TEST_MODEL={} does not exist", p.display());
            p
        }
        None => ntv::models::ensure_default_model().expect("test model"),
    }
}

fn main() {
    let threads: i32 = env_num(
        "NTV_BENCH_THREADS",
        std::thread::available_parallelism().map_or(2, |n| n.get() as i32),
    );
    let n_tokens: usize = env_num("NTV_BENCH_TOKENS", 96);
    let rounds: usize = env_num("NTV_BENCH_ROUNDS", 9);
    let path = model_path();
    println!("# ntv benchmark");
    println!(
        "model {} · threads {threads} · {n_tokens} tokens × {rounds} rounds · cpus {}",
        path.display(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    let t = Instant::now();
    // Shared (`Arc`) because the explorer hands it to its attribution thread.
    let model = std::sync::Arc::new(Model::load(&path, &LoadOptions::default()).expect("load"));
    let load_ms = t.elapsed().as_secs_f64() * 1e3;
    let prompt = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nWrite a long story about a lighthouse keeper.<|im_end|>\n<|im_start|>assistant\n";
    let ids = model.tokenize(prompt, false, true);
    let opts = ContextOptions {
        n_ctx: 2048,
        n_threads: threads,
        n_batch: 512,
    };

    let sections = std::env::var("NTV_BENCH_SECTIONS").unwrap_or_default();
    let want = |n: u32| {
        sections.trim().is_empty() || sections.split(',').any(|s| s.trim() == n.to_string())
    };
    let exe = env!("CARGO_BIN_EXE_ntv");

    // 1. Distribution maths on real logits.
    if want(1) {
        let mut dec = Decoder::new(&model, &opts).expect("context");
        let logits = dec.eval(&ids).expect("decode").to_vec();
        let mut ws = Workspace::new();
        let cases = [
            (
                "defaults (T 0.7, top-p 0.8, rep 1.05)",
                SamplingParams::default(),
            ),
            (
                "top-p 1 (every token kept, full sort)",
                SamplingParams {
                    top_p: 1.0,
                    ..SamplingParams::default()
                },
            ),
            (
                "top-k 40, min-p 0.05",
                SamplingParams {
                    top_k: 40,
                    min_p: 0.05,
                    ..SamplingParams::default()
                },
            ),
        ];
        println!(
            "\n## 1. distribution maths per step ({} logits)",
            logits.len()
        );
        println!("| case | compute µs | + record (display 10) µs |");
        println!("|---|---:|---:|");
        for (name, params) in &cases {
            let iters = 300;
            let t = Instant::now();
            for _ in 0..iters {
                let d = ws.compute(&logits, &ids, params, None).expect("maths");
                black_box(d.greedy());
            }
            let compute_us = t.elapsed().as_secs_f64() * 1e6 / iters as f64;
            let t = Instant::now();
            for _ in 0..iters {
                let d = ws.compute(&logits, &ids, params, None).expect("maths");
                black_box(dist_record(&model, &d, 10, params));
            }
            let record_us = t.elapsed().as_secs_f64() * 1e6 / iters as f64;
            println!("| {name} | {compute_us:.0} | {record_us:.0} |");
        }

        // llama.cpp's chain, side by side with the basic pipeline on the same logits, over a
        // repetitive context (the prompt twice) so that DRY and the penalties have work.
        let ctx: Vec<i32> = ids.iter().chain(ids.iter()).copied().collect();
        let breakers = model.dry_breakers(&ntv::sampling::params::dry_sequence_breakers());
        let llama = |p: SamplingParams| SamplingParams {
            sampler_order: ntv::sampling::SamplerOrder::Llama,
            ..p
        };
        let chain_cases = [
            (
                "basic (defaults, hf order): baseline",
                SamplingParams::default(),
                None,
            ),
            (
                "llama-server defaults (top-k 40, top-p 0.95, min-p 0.05, T 0.8)",
                llama(SamplingParams {
                    temperature: 0.8,
                    top_k: 40,
                    top_p: 0.95,
                    min_p: 0.05,
                    repetition_penalty: 1.0,
                    ..SamplingParams::default()
                }),
                None,
            ),
            (
                "full chain: DRY 0.8 + top-n-sigma 1 + typical 0.9 + min-p 0.05 + XTC (acts)",
                llama(SamplingParams {
                    temperature: 1.0,
                    top_p: 1.0,
                    dry_multiplier: 0.8,
                    top_n_sigma: 1.0,
                    typical_p: 0.9,
                    min_p: 0.05,
                    xtc_probability: 0.5,
                    xtc_threshold: 0.1,
                    ..SamplingParams::default()
                }),
                Some(0.25),
            ),
            (
                "full chain without top-n-sigma (typical sorts the vocabulary)",
                llama(SamplingParams {
                    temperature: 1.0,
                    top_p: 1.0,
                    dry_multiplier: 0.8,
                    typical_p: 0.9,
                    min_p: 0.05,
                    xtc_probability: 0.5,
                    xtc_threshold: 0.1,
                    ..SamplingParams::default()
                }),
                Some(0.25),
            ),
        ];
        println!(
            "\n## 1b. llama.cpp's sampler chain per step ({} logits, {}-token context)",
            logits.len(),
            ctx.len()
        );
        println!("| case | compute µs | × baseline |");
        println!("|---|---:|---:|");
        let mut baseline = None;
        for (name, params, coin) in &chain_cases {
            let inputs = ntv::sampling::ChainInputs {
                dry_breakers: Some(&breakers),
                xtc_coin: *coin,
                mirostat_mu: None,
            };
            let iters = 300;
            let t = Instant::now();
            for _ in 0..iters {
                let d = ws
                    .compute_with(&logits, &ctx, params, None, &inputs)
                    .expect("maths");
                black_box(d.greedy());
            }
            let us = t.elapsed().as_secs_f64() * 1e6 / iters as f64;
            let base = *baseline.get_or_insert(us);
            println!("| {name} | {us:.0} | {:.2} |", us / base);
        }
        drop(dec);
    }

    // 2. preview as a process, split from its own timings.
    if want(2) {
        let mut rows = Vec::new();
        for _ in 0..rounds {
            let t = Instant::now();
            let out = Command::new(exe)
                .args([
                    "preview",
                    "--no-session",
                    "--json",
                    "-t",
                    &threads.to_string(),
                ])
                .arg("-m")
                .arg(&path)
                .arg("The capital of France is")
                .output()
                .expect("run ntv");
            let wall = t.elapsed().as_secs_f64() * 1e3;
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
            let tm = &v["timings"];
            let g = |k: &str| tm[k].as_f64().unwrap_or(0.0);
            rows.push([
                wall,
                g("load_ms"),
                g("tokenize_ms"),
                g("prefill_ms"),
                g("maths_ms"),
            ]);
        }
        let col = |i: usize| median(rows.iter().map(|r| r[i]).collect());
        println!("\n## 2. `ntv preview` (25-token chat prompt), median of {rounds} processes, ms");
        println!("| wall | load | tokenise | prefill | maths | rest (process start, output) |");
        println!("|---:|---:|---:|---:|---:|---:|");
        let (w, l, tk, p, m) = (col(0), col(1), col(2), col(3), col(4));
        println!(
            "| {w:.1} | {l:.1} | {tk:.2} | {p:.1} | {m:.2} | {:.1} |",
            w - l - tk - p - m
        );
    }

    let params = SamplingParams {
        temperature: 1.0,
        ..SamplingParams::default()
    };
    // 3. generate with full records vs the bare engine, interleaved rounds.
    if want(3) {
        let mut bare = Vec::new();
        let mut full = Vec::new();
        let mut core = Vec::new();
        for round in 0..rounds {
            // Bare: decode one token at a time, pick the argmax of the raw logits.
            let argmax = |logits: &[f32]| {
                logits
                    .iter()
                    .enumerate()
                    .max_by(|a, b| a.1.total_cmp(b.1))
                    .map(|(i, _)| i as i32)
                    .unwrap()
            };
            let mut dec = Decoder::new(&model, &opts).expect("context");
            let mut last = argmax(dec.eval(&ids).expect("prefill"));
            let t = Instant::now();
            for _ in 0..n_tokens {
                last = argmax(dec.push(last).expect("decode"));
            }
            bare.push(n_tokens as f64 / t.elapsed().as_secs_f64());
            drop(dec);

            // Full: ntv's step (penalties, temperature, truncation, sampling, a 10-candidate record
            // with texts and ranks, RNG state) for every token.
            let mut driver = Driver::new(&model, &opts, &ids).expect("context");
            driver.decoder().eval(&ids).expect("prefill");
            let mut rng = StreamRng::new(RngState {
                seed: 7 + round as u64,
                pos: 0,
            });
            let t = Instant::now();
            let mut records = Vec::with_capacity(n_tokens);
            for _ in 0..n_tokens {
                records.push(
                    driver
                        .step(&params, 10, Choice::Sample, &mut rng)
                        .expect("step"),
                );
            }
            full.push(n_tokens as f64 / t.elapsed().as_secs_f64());
            black_box(records);

            // Core: what `ntv generate` runs — the application core's one step loop, appending
            // to the session branch, building each step record and scanning for stops.
            let settings = RunSettings {
                prompt: Some(PromptSpec::text(
                    "Write a long story about a lighthouse keeper.",
                    "You are a helpful assistant.",
                )),
                params: params.clone(),
                preset: None,
                greedy: false,
                display_k: 10,
                context: opts.clone(),
                gpu_layers: None,
                constraint: None,
                model: ModelChoice::Default,
                cache: CacheSetting::Off,
                seed: SeedChoice {
                    seed: Some(7 + round as u64),
                    reset_rng: false,
                },
                stops: vec!["THE END".into()],
                max_tokens: Some(n_tokens as u32),
            };
            let mut wb = Workbench::open(
                &model,
                SessionStore::detached(),
                settings,
                Mode::Record { reset: false },
            )
            .expect("core");
            assert_eq!(
                wb.prompt_ids(),
                &ids[..],
                "the same prompt as the other loops"
            );
            wb.prefill().expect("prefill");
            let run = wb
                .generate(false, &mut |r| {
                    black_box(r);
                    Ok(())
                })
                .expect("generate");
            core.push(run.outcome.tokens_per_second());
        }
        let ratios: Vec<f64> = full.iter().zip(&bare).map(|(f, b)| f / b).collect();
        let core_ratios: Vec<f64> = core.iter().zip(&bare).map(|(c, b)| c / b).collect();
        let (b, f) = (median(bare.clone()), median(full.clone()));
        println!(
            "\n## 3. generation, {n_tokens} tokens after a {}-token prompt, median of {rounds} interleaved rounds",
            ids.len()
        );
        println!("| loop | tokens/s |");
        println!("|---|---:|");
        println!("| bare decode loop (argmax of raw logits) | {b:.1} |");
        println!("| ntv step with full records | {f:.1} |");
        println!(
            "| **ratio full / bare** (median of per-round ratios) | **{:.3}** |",
            median(ratios.clone())
        );
        println!(
            "| the core's generate loop (session branch, step records, stop scan) | {:.1} |",
            median(core.clone())
        );
        println!(
            "| **ratio core / bare** (median of per-round ratios) | **{:.3}** |",
            median(core_ratios)
        );
        println!(
            "\nper-round ratios: {}",
            ratios
                .iter()
                .map(|r| format!("{r:.3}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }

    // 4. Constraints: the mask per step and constrained vs free generation.
    if want(4) {
        let schema = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/person.schema.json"),
        )
        .expect("fixture");
        let t = Instant::now();
        let env = model.tok_env();
        let env_ms = t.elapsed().as_secs_f64() * 1e3;
        let json_prompt = model.tokenize(
            "<|im_start|>user\nDescribe a person as JSON.<|im_end|>\n<|im_start|>assistant\n",
            false,
            true,
        );
        let mut free_tps = Vec::new();
        let mut json_tps = Vec::new();
        let mut mask_us: Vec<f64> = Vec::new();
        for round in 0..rounds {
            for constrained in [false, true] {
                let mut driver = Driver::new(&model, &opts, &json_prompt).expect("context");
                if constrained {
                    let c =
                        Constraint::new(&env, ConstraintKind::JsonSchema, &schema).expect("schema");
                    driver.set_constraint(Some(c)).expect("constraint");
                }
                driver.decoder().eval(&json_prompt).expect("prefill");
                let mut rng = StreamRng::new(RngState {
                    seed: 11 + round as u64,
                    pos: 0,
                });
                let t = Instant::now();
                let mut n = 0usize;
                for _ in 0..n_tokens {
                    driver
                        .step(&params, 10, Choice::Sample, &mut rng)
                        .expect("step");
                    n += 1;
                    if constrained && driver.constraint_complete().expect("matcher") {
                        break;
                    }
                }
                let tps = n as f64 / t.elapsed().as_secs_f64();
                if constrained {
                    json_tps.push(tps);
                    // Mask cost alone, replaying the same completion in a fresh matcher.
                    let mut c =
                        Constraint::new(&env, ConstraintKind::JsonSchema, &schema).expect("schema");
                    for &id in driver.completion() {
                        let t = Instant::now();
                        black_box(c.mask().expect("mask").count());
                        mask_us.push(t.elapsed().as_secs_f64() * 1e6);
                        c.consume(id as u32).expect("consume");
                    }
                } else {
                    free_tps.push(tps);
                }
            }
        }
        let mask_max = mask_us.iter().copied().fold(0.0, f64::max);
        println!(
            "\n## 4. constraints (JSON schema fixtures/person.schema.json), median of {rounds} rounds"
        );
        println!("| measure | value |");
        println!("|---|---:|");
        println!("| token environment, built once per process | {env_ms:.1} ms |");
        println!(
            "| mask per step (49,152 tokens): median / max | {:.1} / {:.1} µs |",
            median(mask_us.clone()),
            mask_max
        );
        println!(
            "| generate, unconstrained | {:.1} tokens/s |",
            median(free_tps.clone())
        );
        println!(
            "| generate, JSON schema | {:.1} tokens/s |",
            median(json_tps.clone())
        );
        println!(
            "| ratio constrained / free | {:.3} |",
            median(json_tps) / median(free_tps)
        );
    }

    // 5. One-shot `ntv step` processes on long contexts, with and without the prefix cache.
    // (Measured first: RUSAGE_CHILDREN is the maximum over every child so far, and so far the
    // children were `ntv preview` runs only.)
    if want(5) {
        let rss = peak_rss_kb(exe, &path, threads);
        step_processes(exe, &path, threads);
        let file_mb = std::fs::metadata(&path).map_or(0.0, |m| m.len() as f64 / 1e6);
        println!(
            "\npeak RSS of `ntv preview`: {:.0} MB (model file {file_mb:.0} MB; target ≤ file + 150 MB = {:.0} MB)",
            rss as f64 / 1e3,
            file_mb + 150.0
        );
    }
    // 6. Attribution in batch mode.
    if want(6) {
        attribution(exe, &path, &model, threads);
    }
    // 7. The mask of every constraint kind.
    if want(7) {
        constraint_masks(&model);
    }
    // 9. The explorer.
    if want(9) {
        tui_costs(&model, threads);
    }
    // 8. A sweep against a preview.
    if want(8) {
        sweep_vs_preview(exe, &path, threads, rounds);
    }
    // 10. The HTTP server.
    if want(10) {
        serve_latency(exe, &path, &model, threads, rounds);
    }
    // 11. The logit lens.
    if want(11) {
        lens_all(exe, &path, &model, threads, rounds.min(5));
    }
    // 12. Attribution at scale.
    if want(12) {
        attribution_at_scale(exe, &path, threads);
    }
    // 13. The gradient engine's weight products, per matrix of a block.
    if want(13) {
        weight_products(&path, threads);
    }
    println!("\nmodel load in-process: {load_ms:.0} ms");
}

/// Section 9: the explorer's costs in process: a knob change (set the parameter, recompute
/// the distribution from the logits in memory, draw 120×40), a step with its draw next to a
/// bare one-token decode, and the time from a loaded model to the first frame.
fn tui_costs(model: &std::sync::Arc<Model>, threads: i32) {
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;
    use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
    let settings = RunSettings {
        prompt: Some(PromptSpec::text(
            "The capital of France is",
            "You are a helpful assistant.",
        )),
        params: SamplingParams::default(),
        preset: None,
        greedy: false,
        display_k: 30,
        context: ContextOptions {
            n_ctx: 2048,
            n_threads: threads,
            n_batch: 512,
        },
        gpu_layers: None,
        constraint: None,
        model: ModelChoice::Default,
        cache: CacheSetting::Off,
        seed: SeedChoice {
            seed: Some(7),
            reset_rng: false,
        },
        stops: Vec::new(),
        max_tokens: None,
    };
    let mut term = Terminal::new(TestBackend::new(120, 40)).expect("terminal");
    let t = Instant::now();
    let wb = Workbench::open(
        model,
        SessionStore::detached(),
        settings,
        Mode::Record { reset: false },
    )
    .expect("core");
    let mut app = ntv::tui::App::open(wb, std::sync::Arc::clone(model));
    term.draw(|f| ntv::tui::view::draw(f, &app)).expect("draw");
    let first_frame = t.elapsed().as_secs_f64() * 1e3;
    app.ready().expect("prefill");
    let key = |c: char| KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE);
    let mut knob = Vec::new();
    for i in 0..60 {
        let t = Instant::now();
        app.key(key(if i % 2 == 0 { 'T' } else { 't' }))
            .expect("key");
        term.draw(|f| ntv::tui::view::draw(f, &app)).expect("draw");
        knob.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let mut step = Vec::new();
    for _ in 0..40 {
        let t = Instant::now();
        app.key(key('g')).expect("key");
        term.draw(|f| ntv::tui::view::draw(f, &app)).expect("draw");
        step.push(t.elapsed().as_secs_f64() * 1e3);
    }
    // The bare engine: one decode of one token after a context of the same length.
    let ids = app.workbench().prompt_ids().to_vec();
    let mut dec = Decoder::new(
        model,
        &ContextOptions {
            n_ctx: 2048,
            n_threads: threads,
            n_batch: 512,
        },
    )
    .expect("context");
    dec.eval(&ids).expect("prefill");
    let mut bare = Vec::new();
    for _ in 0..40 {
        let t = Instant::now();
        dec.push(504).expect("decode");
        bare.push(t.elapsed().as_secs_f64() * 1e3);
    }
    println!("\n## 9. `ntv tui` in process (120×40 frame, display 30), ms (median)");
    println!("| measure | ms |");
    println!("|---|---:|");
    println!(
        "| knob change: recompute + draw (target ≤ 16) | {:.2} |",
        median(knob)
    );
    let (s, b) = (median(step), median(bare));
    println!("| greedy step + draw | {s:.2} |");
    println!("| bare one-token decode | {b:.2} |");
    println!(
        "| **step + draw − decode** (target ≤ 2) | **{:.2}** |",
        s - b
    );
    println!(
        "| loaded model → first frame, the context shown while it decodes (target ≤ 50) | {first_frame:.1} |"
    );
}

/// Section 8: a 100-value temperature sweep against one preview of the same prompt, as
/// processes run interleaved (what a user pays for each), with the sweep's own split.
fn sweep_vs_preview(exe: &str, model: &std::path::Path, threads: i32, rounds: usize) {
    let dir = tempfile::tempdir().expect("temp dir");
    let m = model.to_str().expect("utf-8 path");
    let common = [
        "--no-session",
        "-m",
        m,
        "-p",
        "The capital of France is",
        "--json",
    ];
    let (mut preview, mut sweep, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        let p = time_process(
            exe,
            &[&["preview"], &common[..]].concat(),
            dir.path(),
            threads,
        );
        let s = time_process(
            exe,
            &[&["sweep", "temp=0.02:2:0.02"], &common[..]].concat(),
            dir.path(),
            threads,
        );
        preview.push(p);
        sweep.push(s);
        ratios.push(s / p);
    }
    println!(
        "\n## 8. `ntv sweep temp=0.02:2:0.02` (100 values) vs one `ntv preview`, median of {rounds} interleaved processes"
    );
    println!("| process | ms |");
    println!("|---|---:|");
    println!("| preview | {:.1} |", median(preview));
    println!("| sweep, 100 temperatures | {:.1} |", median(sweep));
    println!(
        "| **ratio sweep / preview** (median of per-round ratios) | **{:.3}** |",
        median(ratios)
    );
}

fn time_process(exe: &str, args: &[&str], dir: &std::path::Path, threads: i32) -> f64 {
    let t = Instant::now();
    let out = Command::new(exe)
        .args(args)
        .args(["-t", &threads.to_string()])
        .current_dir(dir)
        .output()
        .expect("run ntv");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    t.elapsed().as_secs_f64() * 1e3
}

fn step_processes(exe: &str, model: &std::path::Path, threads: i32) {
    let m = model.to_str().expect("utf-8 path");
    let base_dir = tempfile::tempdir().expect("temp dir");
    // Baseline: a process that loads the model and decodes one token.
    let baseline = median(
        (0..5)
            .map(|_| {
                time_process(
                    exe,
                    &[
                        "preview",
                        "--no-session",
                        "--no-chat-template",
                        "-m",
                        m,
                        "-p",
                        "x",
                    ],
                    base_dir.path(),
                    threads,
                )
            })
            .collect(),
    );
    println!(
        "\n## 5. `ntv step` as a fresh process, ms (median); baseline = load + one decode as a process: {baseline:.0} ms"
    );
    println!(
        "| context tokens | first call (prefill) | cached step | uncached step | cached / baseline | uncached / cached |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    let sentence = "The lighthouse keeper watched the sea and wrote in his log every night. ";
    for (target, repeats, cached_runs) in
        [(32usize, 1usize, 10usize), (300, 20, 10), (2000, 140, 20)]
    {
        let dir = tempfile::tempdir().expect("temp dir");
        let prompt = format!("Summarise: {}", sentence.repeat(repeats));
        let first = time_process(
            exe,
            &[
                "step",
                "-m",
                m,
                "-p",
                &prompt,
                "-c",
                "4096",
                "--greedy",
                "--no-chat-template",
            ],
            dir.path(),
            threads,
        );
        let cached: Vec<f64> = (0..cached_runs)
            .map(|_| {
                time_process(
                    exe,
                    &["step", "--greedy", "-c", "4096"],
                    dir.path(),
                    threads,
                )
            })
            .collect();
        let uncached: Vec<f64> = (0..3)
            .map(|_| {
                time_process(
                    exe,
                    &["step", "--greedy", "-c", "4096", "--no-cache"],
                    dir.path(),
                    threads,
                )
            })
            .collect();
        let (c, u) = (median(cached.clone()), median(uncached));
        let worst = cached.iter().copied().fold(0.0, f64::max);
        println!(
            "| ~{target} | {first:.0} | {c:.0} (worst of {cached_runs}: {worst:.0}) | {u:.0} | {:.2} | {:.1} |",
            c / baseline,
            u / c
        );
    }
}

/// Peak resident set of an `ntv preview` child process, in KB.
fn peak_rss_kb(exe: &str, model: &std::path::Path, threads: i32) -> i64 {
    let dir = tempfile::tempdir().expect("temp dir");
    let status = Command::new(exe)
        .args([
            "preview",
            "--no-session",
            "The capital of France is",
            "-t",
            &threads.to_string(),
        ])
        .arg("-m")
        .arg(model)
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .status()
        .expect("run ntv");
    assert!(status.success());
    // SAFETY: getrusage writes into the zeroed struct we pass; RUSAGE_CHILDREN covers the
    // waited-for children of this process (every ntv run above, so this is their maximum).
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    usage.ru_maxrss
}

/// The user prompt that makes a chat context of about `n` tokens (SmolLM2's ChatML template with
/// the default system prompt), with its token count.
fn prompt_of_about(model: &Model, n: usize) -> (String, usize) {
    let sentence = "The lighthouse keeper watched the sea and wrote in his log every night. ";
    let count = |user: &str| {
        model
            .tokenize(
                &format!(
                    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
                ),
                false,
                true,
            )
            .len()
    };
    let mut best = (String::new(), 0usize);
    for k in 1..200 {
        let user = format!("Summarise: {}", sentence.repeat(k));
        let c = count(&user);
        if best.1.abs_diff(n) > c.abs_diff(n) {
            best = (user, c);
        }
        if c > n {
            break;
        }
    }
    best
}

/// Run one `ntv attribute --batch` child over `lines`; the per-target milliseconds of the
/// records whose id is "timed", grouped by method, in input order.
fn attribute_batch(
    exe: &str,
    model: &std::path::Path,
    threads: i32,
    lines: &[serde_json::Value],
) -> Vec<(String, f64, usize)> {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("batch.jsonl");
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(&file, text).expect("write batch");
    let out = Command::new(exe)
        .args([
            "attribute",
            "--no-session",
            "-t",
            &threads.to_string(),
            "--batch",
        ])
        .arg(&file)
        .arg("-m")
        .arg(model)
        .current_dir(dir.path())
        .output()
        .expect("run ntv attribute");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("JSONL"))
        .filter(|r| r["id"] == "timed")
        .map(|r| {
            (
                r["method"].as_str().unwrap_or_default().to_string(),
                r["elapsed_ms"].as_f64().unwrap_or(f64::NAN),
                r["context_len"].as_u64().unwrap_or(0) as usize,
            )
        })
        .collect()
}

/// Section 6: time per target for each method, batch mode, short and 372-token contexts.
fn attribution(exe: &str, path: &std::path::Path, model: &Model, threads: i32) {
    use serde_json::json;
    // Inseq 0.7 on PyTorch f32, 2 idle cores (issue #5): lower end of the 25–65-token range and
    // of the 372-token range, seconds per target.
    let inseq = |method: &str, long: bool| -> Option<f64> {
        match (method, long) {
            ("attention", false) => Some(0.14),
            ("saliency", false) => Some(0.28),
            ("input_x_gradient", false) => Some(0.28),
            ("integrated_gradients", false) => Some(5.1),
            ("attention", true) => Some(0.92),
            ("saliency", true) => Some(1.82),
            ("input_x_gradient", true) => Some(1.83),
            _ => None,
        }
    };
    let short_prompt = "The capital of France is".to_string();
    let (long_prompt, long_n) = prompt_of_about(model, 372);
    println!(
        "\n## 6. attribution per target, batch mode (`ntv attribute --batch`, model loaded once; engine start-up excluded), median ms"
    );
    println!("| method | context tokens | ntv | Inseq (lower end) | ntv / Inseq |");
    println!("|---|---:|---:|---:|---:|");
    let methods = [
        ("attention", 5, 3),
        ("saliency", 5, 2),
        ("input_x_gradient", 5, 2),
        ("integrated_gradients", 3, 1),
        ("occlusion", 3, 1),
    ];
    for (long, prompt) in [(false, &short_prompt), (true, &long_prompt)] {
        let mut lines = Vec::new();
        for (method, short_runs, long_runs) in methods {
            // One warm-up per method (engine creation, first touch of the weights and of the
            // activation memory) on the same context; integrated gradients with 2 nodes, and
            // occlusion (quadratic) on a short prompt.
            let warm_prompt = if method == "occlusion" {
                "Hi"
            } else {
                prompt.as_str()
            };
            lines.push(json!({
                "id": "warm", "prompt": warm_prompt, "token": 504, "method": method, "steps": 2
            }));
            for _ in 0..if long { long_runs } else { short_runs } {
                lines
                    .push(json!({"id": "timed", "prompt": prompt, "token": 504, "method": method}));
            }
        }
        let before = peak_children_kb();
        let t = Instant::now();
        let records = attribute_batch(exe, path, threads, &lines);
        let wall = t.elapsed().as_secs_f64();
        for (method, ..) in methods {
            let times: Vec<f64> = records
                .iter()
                .filter(|r| r.0 == method)
                .map(|r| r.1)
                .collect();
            let n = records.iter().find(|r| r.0 == method).map_or(0, |r| r.2);
            let ms = median(times);
            let (reference, ratio) = match inseq(method, long) {
                Some(s) => (format!("{:.0}", s * 1e3), format!("{:.2}", ms / (s * 1e3))),
                None if method == "occlusion" => ("–".into(), "–".into()),
                None => ("killed (> 24 GB)".into(), "–".into()),
            };
            println!("| {method} | {n} | {ms:.0} | {reference} | {ratio} |");
        }
        let peak = peak_children_kb();
        println!(
            "\n{} context ({}): batch wall {wall:.1} s; peak RSS of attribution processes so far {:.2} GB{}",
            if long { "long" } else { "short" },
            if long { long_n } else { 25 },
            peak as f64 / 1e6,
            if peak > before {
                ""
            } else {
                " (an earlier child was larger)"
            }
        );
    }
}

/// Largest peak RSS over every waited-for child so far, in KB.
fn peak_children_kb() -> i64 {
    // SAFETY: getrusage writes into the zeroed struct we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    usage.ru_maxrss
}

/// Section 7: the cost of a mask on the full vocabulary for each constraint kind. Each mask is
/// taken at a new position (llguidance caches nothing across positions then), along a document
/// fed token by token; then the last mask again after a rollback (warm caches); then the replay
/// of a long completion (single-token checks, no masks).
fn constraint_masks(model: &Model) {
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
    let ids_of = |s: &str| -> Vec<u32> {
        model
            .tokenize(s, false, false)
            .into_iter()
            .map(|i| i as u32)
            .collect()
    };
    let t = Instant::now();
    let env = model.tok_env();
    let env_ms = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    black_box(Constraint::new(&env, ConstraintKind::Regex, "[0-9]+").expect("regex"));
    let first_ms = t.elapsed().as_secs_f64() * 1e3;
    let json_list_gbnf = concat!(
        "root ::= \"[\" ws item (\",\" ws item)* \"]\"\n",
        "item ::= \"\\\"\" [^\"\\\\]* \"\\\"\"\n",
        "ws ::= [ ]?\n",
    );
    let cases: &[(ConstraintKind, &str, &str)] = &[
        (ConstraintKind::Regex, "[0-9]{3}-[0-9]{4}", "123-4567"),
        (ConstraintKind::Choice, r#"["Yes","No","Maybe"]"#, "Maybe"),
        (
            ConstraintKind::JsonSchema,
            SCHEMA,
            r#"{"name": "A long name with spaces and words", "age": 42, "color": "red"}"#,
        ),
        (
            ConstraintKind::Lark,
            r#"start: "The answer is " /[0-9]+/ "." | %json{"type": "array", "items": {"type": "string"}}"#,
            r#"["free text inside a string", "and another one"]"#,
        ),
        (
            ConstraintKind::Gbnf,
            json_list_gbnf,
            r#"["free text inside a string", "and another one"]"#,
        ),
    ];
    println!("\n## 7. constraint masks ({} tokens), µs", model.n_vocab());
    println!(
        "token environment {env_ms:.1} ms (0 when an earlier section built it); first constraint (parser factory + grammar) {first_ms:.1} ms"
    );
    println!(
        "| kind | build | positions | mask median | mask max | allowed | mask after rollback |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (kind, src, doc) in cases {
        let t = Instant::now();
        let mut c = Constraint::new(&env, *kind, src).expect("constraint builds");
        let built = t.elapsed().as_secs_f64() * 1e6;
        let (mut masks, mut counts) = (Vec::new(), Vec::new());
        for id in ids_of(doc) {
            let t = Instant::now();
            let mask = c.mask().expect("mask");
            masks.push(t.elapsed().as_secs_f64() * 1e6);
            counts.push(mask.count());
            c.consume(id).expect("the document matches");
        }
        assert!(c.is_accepting(), "{kind}: {doc:?}");
        c.rollback(1).expect("rollback");
        let t = Instant::now();
        black_box(c.mask().expect("mask"));
        let again = t.elapsed().as_secs_f64() * 1e6;
        let max = masks.iter().copied().fold(0.0, f64::max);
        println!(
            "| {kind} | {built:.0} | {} | {:.1} | {max:.1} | {}..{} | {again:.1} |",
            masks.len(),
            median(masks.clone()),
            counts.iter().min().expect("positions"),
            counts.iter().max().expect("positions"),
        );
    }
    let doc = format!(
        r#"{{"name":"{}","age":42,"color":"red"}}"#,
        "word ".repeat(60)
    );
    let ids = ids_of(&doc);
    let mut c = Constraint::new(&env, ConstraintKind::JsonSchema, SCHEMA).expect("schema");
    let t = Instant::now();
    c.replay(&ids).expect("replay");
    println!(
        "\nreplay of a {}-token JSON completion: {:.2} ms",
        ids.len(),
        t.elapsed().as_secs_f64() * 1e3
    );
}

/// A running `ntv serve` child (killed when dropped) and an HTTP agent for it.
struct Served {
    child: std::process::Child,
    base: String,
    agent: ureq::Agent,
}

impl Served {
    fn start(exe: &str, model: &std::path::Path, threads: i32) -> Self {
        use std::io::BufRead;
        let mut child = Command::new(exe)
            .args(["serve", "--port", "0", "-c", "1024", "--max-branches", "8"])
            .args(["-t", &threads.to_string()])
            .arg("-m")
            .arg(model)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("ntv serve");
        let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let base = loop {
            let line = lines
                .next()
                .expect("ntv serve says where it listens")
                .unwrap();
            if let Some(addr) = line.strip_prefix("ntv serve: listening on ") {
                break addr.to_string();
            }
        };
        // Keep reading the request log so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(std::time::Duration::from_secs(120)))
            .build()
            .into();
        let s = Self { child, base, agent };
        loop {
            let st: serde_json::Value = s
                .agent
                .get(format!("{}/api/model/status", s.base))
                .call()
                .expect("status")
                .body_mut()
                .read_json()
                .expect("json");
            if st["ready"] == true {
                return s;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// POST and return the answer and the round trip in ms.
    fn post(&self, path: &str, body: &serde_json::Value) -> (serde_json::Value, f64) {
        let t = Instant::now();
        let v: serde_json::Value = self
            .agent
            .post(format!("{}{path}", self.base))
            .send_json(body)
            .expect("answered")
            .body_mut()
            .read_json()
            .expect("json");
        (v, t.elapsed().as_secs_f64() * 1e3)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Section 10: `ntv serve` through HTTP (loopback, keep-alive), model loaded, medians.
fn serve_latency(exe: &str, path: &std::path::Path, model: &Model, threads: i32, rounds: usize) {
    use serde_json::json;
    let s = Served::start(exe, path, threads);
    // The original demo's server on this machine kind (issue #13), ms: 27 / 372 tokens.
    let demo = |what: &str, long: bool| match (what, long) {
        ("preview", false) => 162.0,
        ("preview", true) => 768.0,
        ("step", false) => 144.0,
        (_, _) => 822.0,
    };
    let req = |branch: &str, system: &str, prompt: &str, completion: &[i64]| {
        json!({"branch_id": branch, "prompt": prompt, "system_prompt": system,
            "completion_ids": completion, "params": {"seed": 7}})
    };
    let count = |system: &str, user: &str| {
        model
            .tokenize(
                &format!(
                    "<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
                ),
                false,
                true,
            )
            .len()
    };
    let system = "You are a helpful assistant.";
    // The short context: the README's prompt and a word or two (27 tokens with the template).
    let short = [
        "The capital of France is a",
        "The capital of France is a city",
        "The capital of France is",
    ]
    .into_iter()
    .min_by_key(|p| count(system, p).abs_diff(27))
    .unwrap()
    .to_string();
    // A new branch each time, with a system prompt as long as the default one (in tokens: digits
    // here, one token each) that differs from its first token on: the demo recomputes every
    // request, and so does this column (only the template's first 3 tokens are shared with
    // earlier contexts).
    let width = count(system, "x") - count("", "x");
    let variants: Vec<String> = (0..200)
        .map(|i| {
            let digits: String = (0..width)
                .map(|k| char::from(b'0' + ((i * 7 + k * 3 + i / 9) % 10) as u8))
                .collect();
            format!("{}{}", 1 + i % 9, &digits[1..])
        })
        .collect();
    println!(
        "\n## 10. `ntv serve` through HTTP, median of {rounds} requests, ms (demo server: issue 13)"
    );
    println!(
        "| context | request | demo | ntv, new context each time (full prefill) | ratio | ntv, the branch holds the context | ratio |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|");
    let mut n = 0;
    for long in [false, true] {
        let prompt = if long {
            prompt_of_about(model, 372).0
        } else {
            short.clone()
        };
        let base = count(system, &prompt);
        let base_fresh = base;
        let systems: Vec<&String> = variants
            .iter()
            .filter(|s| count(s, &prompt) == base_fresh)
            .collect();
        assert!(
            systems.len() >= 2 * rounds,
            "too few system prompts of the same length"
        );
        let mut fresh = systems.iter();
        for what in ["preview", "step"] {
            let path = format!("/api/{what}");
            let mut cold = Vec::new();
            let mut warm = Vec::new();
            // Warm branch: its KV state holds the context (a preview repeated; a step that
            // extends the completion the previous step returned, as the page sends it).
            let branch = format!("warm-{what}-{base}");
            let mut completion: Vec<i64> = Vec::new();
            let _ = s.post(&path, &req(&branch, system, &prompt, &completion));
            for _ in 0..rounds {
                n += 1;
                let sys = fresh.next().unwrap();
                let (v, ms) = s.post(&path, &req(&format!("cold-{n}"), sys, &prompt, &[]));
                let len = base_fresh + usize::from(what == "step");
                assert_eq!(v["context_token_count"].as_u64(), Some(len as u64), "{v}");
                cold.push(ms);
                let (v, ms) = s.post(&path, &req(&branch, system, &prompt, &completion));
                warm.push(ms);
                if what == "step" {
                    completion = v["new_completion_ids"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|x| x.as_i64().unwrap())
                        .collect();
                }
            }
            let d = demo(what, long);
            let (c, w) = (median(cold), median(warm));
            println!(
                "| {base} tokens | {what} | {d:.0} | {c:.1} | {:.3} | {w:.1} | {:.3} |",
                c / d,
                w / d
            );
        }
    }
    // Throughput: 8 clients, each stepping its own branch (27-token context), as fast as the
    // answers come.
    let prompt = short;
    let steps = 24;
    let s = std::sync::Arc::new(s);
    let t = Instant::now();
    let clients: Vec<_> = (0..8)
        .map(|i| {
            let s = s.clone();
            let prompt = prompt.clone();
            std::thread::spawn(move || {
                let mut completion: Vec<i64> = Vec::new();
                for _ in 0..steps {
                    let (v, _) = s.post(
                        "/api/step",
                        &json!({"branch_id": format!("rps-{i}"), "prompt": prompt,
                            "completion_ids": completion}),
                    );
                    completion = v["new_completion_ids"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|x| x.as_i64().unwrap())
                        .collect();
                }
            })
        })
        .collect();
    for c in clients {
        c.join().expect("client");
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "\n8 concurrent clients × {steps} steps (each on its own branch, 27-token context): {:.1} requests/s ({:.1} ms per request)",
        8.0 * steps as f64 / secs,
        secs * 1e3 / (8.0 * steps as f64)
    );
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", s.child.id())).unwrap_or_default();
    let kb = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    println!(
        "server memory after the section: RSS {:.0} MB, peak {:.0} MB (8 branches of 1024 tokens at most)",
        kb("VmRSS:") / 1e3,
        kb("VmHWM:") / 1e3
    );
}

/// Run `ntv ARGS` in `dir` and wait for it alone: (wall ms, its own peak RSS in KB, stdout).
fn run_with_rusage(exe: &str, args: &[&str], dir: &std::path::Path) -> (f64, i64, Vec<u8>) {
    let (ms, usage, out) = run_usage(exe, args, dir);
    (ms, usage.ru_maxrss, out)
}

/// Run `exe args` in `dir` and wait for it alone: wall ms, the child's own resource usage,
/// its stdout.
// The child is reaped by `wait4` (which also returns its own rusage), not by `Child::wait`.
#[allow(clippy::zombie_processes)]
fn run_usage(exe: &str, args: &[&str], dir: &std::path::Path) -> (f64, libc::rusage, Vec<u8>) {
    use std::io::Read;
    let t = Instant::now();
    let mut child = Command::new(exe)
        .args(args)
        .current_dir(dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run ntv");
    let mut out = Vec::new();
    child
        .stdout
        .take()
        .expect("piped stdout")
        .read_to_end(&mut out)
        .expect("read stdout");
    let mut status = 0;
    // SAFETY: wait4 on our own child's pid (not yet reaped: std never waited for it) writes
    // its exit status and resource usage into the locals passed.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert!(
        pid > 0 && libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "ntv {args:?} failed"
    );
    (t.elapsed().as_secs_f64() * 1e3, usage, out)
}

/// Section 11: `ntv lens --all` on a short and a long chat context (every position × every
/// layer through the model's own head), next to the one-position lens on the same context.
fn lens_all(exe: &str, path: &std::path::Path, model: &Model, threads: i32, rounds: usize) {
    let m = path.to_str().expect("utf-8 path");
    let t = threads.to_string();
    let n_layers = model.info().n_layer as usize + 1;
    println!("\n## 11. `ntv lens --all` (the logit lens at every position and layer)");
    println!(
        "| context | lens rows (positions × {n_layers} layers) | wall ms | capture ms | head ms | peak RSS MB | one position: wall ms |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let dir = tempfile::tempdir().expect("temp dir");
    for target in [32, 300] {
        // Plain text (no chat template) of `target` tokens: words of the log sentence.
        let words: Vec<&str> =
            "The lighthouse keeper watched the sea and wrote in his log every night."
                .split(' ')
                .collect();
        let mut user = String::new();
        let mut k = 0;
        while model.tokenize(&user, model.info().add_bos, false).len() < target {
            if !user.is_empty() {
                user.push(' ');
            }
            user.push_str(words[k % words.len()]);
            k += 1;
        }
        let n = model.tokenize(&user, model.info().add_bos, false).len();
        let args = |all: bool| {
            let mut a = vec![
                "lens",
                "--no-session",
                "--no-chat-template",
                "-m",
                m,
                "-p",
                &user,
                "-t",
                &t,
                "--json",
            ];
            if all {
                a.push("--all");
            }
            a
        };
        let (mut wall, mut cap, mut head, mut rss, mut one) = (vec![], vec![], vec![], 0, vec![]);
        for _ in 0..rounds {
            let (w, kb, out) = run_with_rusage(exe, &args(true), dir.path());
            let doc: serde_json::Value = serde_json::from_slice(&out).expect("lens JSON");
            assert_eq!(doc["positions"].as_array().map(Vec::len), Some(n));
            wall.push(w);
            cap.push(doc["timings"]["capture_ms"].as_f64().unwrap());
            head.push(doc["timings"]["head_ms"].as_f64().unwrap());
            rss = rss.max(kb);
            one.push(run_with_rusage(exe, &args(false), dir.path()).0);
        }
        println!(
            "| {n} tokens | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} |",
            n * n_layers,
            median(wall),
            median(cap),
            median(head),
            rss as f64 / 1e3,
            median(one)
        );
    }
}

/// Section 12: attribution as users run it (issue 21).
fn attribution_at_scale(exe: &str, path: &std::path::Path, threads: i32) {
    use serde_json::json;
    let t = threads.to_string();
    let m = path.to_str().expect("utf-8 path");
    let dir = tempfile::tempdir().expect("temp dir");
    let secs = |u: &libc::timeval| u.tv_sec as f64 + u.tv_usec as f64 / 1e6;
    let budget = 512u64 << 20; // the default activation budget
    let records = |out: &[u8]| -> Vec<serde_json::Value> {
        String::from_utf8_lossy(out)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    };

    // `ntv attribute` on the test model with these arguments after the common ones.
    let attribute = |extra: &[&str]| {
        let args = [&["attribute", "--no-session", "-t", &t, "-m", m][..], extra].concat();
        run_usage(exe, &args, dir.path())
    };

    // 12a. The mixed batch: five chat contexts of 30–49 tokens × four methods, one process.
    let prompts = [
        "What is the capital of France? Answer in one word.",
        "Write a haiku about the sea at night, with the moon in it.",
        "Explain in two sentences why the sky is blue during the day.",
        "List three fruits that are red and one that is yellow, please.",
        "My cat knocked a glass off the table again. What should I do to stop her from doing that?",
    ];
    let methods = [
        "attention",
        "saliency",
        "input_x_gradient",
        "integrated_gradients",
    ];
    let file = dir.path().join("mixed.jsonl");
    let text: String = prompts
        .iter()
        .flat_map(|p| methods.map(|me| format!("{}\n", json!({"prompt": p, "method": me}))))
        .collect();
    std::fs::write(&file, text).expect("write batch");
    let f = file.to_str().expect("utf-8");
    let (wall, u, out) = attribute(&["--batch", f]);
    let recs = records(&out);
    let lens: Vec<u64> = recs
        .iter()
        .filter(|r| r["method"] == "attention")
        .map(|r| r["context_len"].as_u64().unwrap_or(0))
        .collect();
    println!(
        "\n## 12. attribution as users run it (model load and warm-ups included; {threads} threads)"
    );
    println!(
        "\n12a. mixed batch, {} requests (contexts of {lens:?} tokens × {methods:?}), one process:",
        recs.len()
    );
    let method_sum = |me: &str| -> f64 {
        recs.iter()
            .filter(|r| r["method"] == me)
            .filter_map(|r| r["elapsed_ms"].as_f64())
            .sum()
    };
    println!("| method | sum of per-target ms |");
    println!("|---|---:|");
    for me in methods {
        println!("| {me} | {:.0} |", method_sum(me));
    }
    println!(
        "\nprocess wall {:.1} s (user {:.1} s, sys {:.1} s), peak RSS {:.0} MB, {} minor page faults; Inseq's per-target medians on the same kind of batch sum to 48 s (issue 21's figure): ratio {:.2}",
        wall / 1e3,
        secs(&u.ru_utime),
        secs(&u.ru_stime),
        u.ru_maxrss as f64 / 1e3,
        u.ru_minflt,
        wall / 48e3
    );

    // 12b. One-shot processes against their warm in-batch times (the 25-token context).
    let prompt = "The capital of France is";
    let warm_file = dir.path().join("warm.jsonl");
    let mut lines = String::new();
    // The timed requests are other sequences of the same length: a repeated sequence would
    // reuse the kept forward pass (saliency) and time only a backward pass.
    let timed = [
        "The capital of Spain is",
        "The capital of Italy is",
        "The capital of Japan is",
        "The capital of China is",
        "The capital of Egypt is",
    ];
    for me in ["saliency", "integrated_gradients"] {
        let requests = std::iter::once(("warm", prompt)).chain(timed.map(|p| ("timed", p)));
        for (id, p) in requests {
            lines.push_str(&format!(
                "{}\n",
                json!({"id": id, "prompt": p, "token": 504, "method": me})
            ));
        }
    }
    std::fs::write(&warm_file, lines).expect("write batch");
    let wf = warm_file.to_str().expect("utf-8");
    // One process of warm requests; run again in 12d between Inseq's runs, so that a drift in
    // the machine's speed over the minutes between the two sides favours neither.
    let warm_batch = || {
        let (_, _, out) = attribute(&["--batch", wf]);
        let recs = records(&out);
        assert_eq!(
            recs.len(),
            2 * (1 + timed.len()),
            "every warm request answered"
        );
        recs
    };
    let warm_recs = warm_batch();
    let warm_ms = |recs: &[serde_json::Value], me: &str| -> Vec<f64> {
        recs.iter()
            .filter(|r| r["method"] == me && r["id"] == "timed")
            .filter_map(|r| r["elapsed_ms"].as_f64())
            .collect()
    };
    let file_bytes = std::fs::metadata(path).map_or(0, |x| x.len());
    let n_params = {
        let model = Model::load(path, &LoadOptions::default()).expect("load");
        model.info().n_params
    };
    let bound = |file: u64, params: u64| file as f64 + 1.5 * params as f64 + budget as f64;
    // The one-shot processes run between two warm batches, and their ratio is to the median of
    // both batches' requests (as the Inseq rounds of 12d, against the machine's drift).
    let shots: Vec<(f64, libc::rusage)> = ["saliency", "integrated_gradients"]
        .iter()
        .map(|me| {
            let mut walls = Vec::new();
            let mut last = None;
            for _ in 0..3 {
                let (w, u, _) = attribute(&[
                    "-p", prompt, "--token", "504", "--method", me, "--format", "json",
                ]);
                walls.push(w);
                last = Some(u);
            }
            (median(walls), last.expect("three runs"))
        })
        .collect();
    let after_shots = warm_batch();
    println!(
        "\n12b. one-shot processes (`ntv attribute -p {prompt:?} --token 504`), median of 3; warm: median of {} requests after a warm-up in each of two processes, one before the one-shots and one after:",
        timed.len()
    );
    println!(
        "| method | one-shot wall ms | warm in-batch ms | one-shot / warm | peak RSS MB | bound MB (file + 1.5 B/param + budget) | minor faults | sys s |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for (me, (w, u)) in ["saliency", "integrated_gradients"].into_iter().zip(&shots) {
        let mut around = warm_ms(&warm_recs, me);
        around.extend(warm_ms(&after_shots, me));
        let wm = median(around);
        println!(
            "| {me} | {w:.0} | {wm:.0} | {:.2} | {:.0} | {:.0} | {} | {:.2} |",
            w / wm,
            u.ru_maxrss as f64 / 1e3,
            bound(file_bytes, n_params) / 1e6,
            u.ru_minflt,
            secs(&u.ru_stime)
        );
    }

    // 12c. A synthetic 1.6 B-parameter Q4_0 llama: saliency on a 32-token context.
    let synth = std::env::var_os("NTV_BENCH_SYNTH").map_or_else(
        || {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("target/tmp/synthetic-llama-1.6b-q4_0.gguf")
        },
        PathBuf::from,
    );
    let (n_params, secs_written) = synthetic_llama(path, &synth);
    let file_bytes = std::fs::metadata(&synth).map_or(0, |x| x.len());
    let s = synth.to_str().expect("utf-8 path");
    let chat = "What is the capital of France? Answer in one word.";
    let (w, u, out) = run_usage(
        exe,
        &[
            "attribute",
            "--no-session",
            "-t",
            &t,
            "-m",
            s,
            "-p",
            chat,
            "--method",
            "saliency",
            "--format",
            "json",
        ],
        dir.path(),
    );
    let doc: serde_json::Value = serde_json::from_slice(&out).expect("JSON");
    let n = doc["targets"][0]["context_len"].as_u64().unwrap_or(0);
    println!(
        "\n12c. synthetic llama ({:.2} B parameters, Q4_0, {:.0} MB file{}): one-shot saliency on a {n}-token context: wall {:.1} s, peak RSS {:.0} MB (bound file + 1.5 B/param + budget = {:.0} MB; issue limit 6 GB), {} minor faults, sys {:.2} s",
        n_params as f64 / 1e9,
        file_bytes as f64 / 1e6,
        if secs_written > 0.0 {
            format!(", written in {secs_written:.0} s")
        } else {
            ", cached".to_string()
        },
        w / 1e3,
        u.ru_maxrss as f64 / 1e3,
        bound(file_bytes, n_params) / 1e6,
        u.ru_minflt,
        secs(&u.ru_stime)
    );

    // 12d. Inseq side by side (benches/inseq_baseline.py), when a Python with Inseq is given.
    let Some(python) = std::env::var_os("NTV_BENCH_INSEQ_PYTHON") else {
        println!(
            "\n12d. Inseq side by side: skipped (set NTV_BENCH_INSEQ_PYTHON to a Python with torch, inseq, transformers, accelerate and gguf)"
        );
        return;
    };
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/inseq_baseline.py");
    let inseq = |extra: &[&str]| -> serde_json::Value {
        let out = Command::new(&python)
            .arg(&script)
            .args(["--model", m, "--ntv", exe, "-t", &t, "--short-runs", "5"])
            .args(extra)
            .current_dir(dir.path())
            .output()
            .expect("run benches/inseq_baseline.py");
        assert!(
            out.status.success(),
            "inseq_baseline.py failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("baseline JSON")
    };
    let base = inseq(&[]);
    let inseq_sums = &base["mixed"]["sum_of_medians_ms"];
    println!(
        "\n12d. Inseq {} (torch {}, f32 on the same dequantised weights, same token ids), run after the above on this machine, {threads} threads:",
        base["versions"]["inseq"].as_str().unwrap_or("?"),
        base["versions"]["torch"].as_str().unwrap_or("?")
    );
    println!("| measure | ntv ms | Inseq ms | ntv / Inseq |");
    println!("|---|---:|---:|---:|");
    for me in methods {
        let ntv = method_sum(me);
        let inseq = inseq_sums[me].as_f64().unwrap_or(f64::NAN);
        println!(
            "| 12a {me}, per-target sum | {ntv:.0} | {inseq:.0} | {:.2} |",
            ntv / inseq
        );
    }
    let inseq_total = inseq_sums["total"].as_f64().unwrap_or(f64::NAN);
    println!(
        "| 12a whole ntv process (load and warm-ups included) vs Inseq's per-target medians | {wall:.0} | {inseq_total:.0} | **{:.2}** |",
        wall / inseq_total
    );
    // The short context in rounds that alternate the two sides: ntv's warm batch ran before
    // Inseq's first run and runs again after it; then Inseq's short runs alone (`--skip-mixed`)
    // and ntv's batch again, twice more. Each round compares one Inseq run with the median of
    // ntv's batches on either side of it: the machine's speed drifts by a quarter within
    // minutes, and a comparison of one side's slow spell with the other's fast one says nothing
    // about either.
    let mut ntv_runs = vec![after_shots, warm_batch()];
    let mut inseq_runs = vec![base["short"].clone()];
    for _ in 1..SHORT_ROUNDS {
        inseq_runs.push(inseq(&["--skip-mixed"])["short"].clone());
        ntv_runs.push(warm_batch());
    }
    let joined = |v: &[f64], decimals: usize| -> String {
        v.iter()
            .map(|x| format!("{x:.decimals$}"))
            .collect::<Vec<_>>()
            .join(" / ")
    };
    for me in ["saliency", "integrated_gradients"] {
        let (mut ntv, mut theirs, mut r) = (Vec::new(), Vec::new(), Vec::new());
        for (k, run) in inseq_runs.iter().enumerate() {
            let mut around = warm_ms(&ntv_runs[k], me);
            around.extend(warm_ms(&ntv_runs[k + 1], me));
            let (a, b) = (
                median(around),
                run["methods"][me]["median_ms"].as_f64().unwrap_or(f64::NAN),
            );
            ntv.push(a);
            theirs.push(b);
            r.push(a / b);
        }
        println!(
            "| 12b {me}, warm per target, 25 tokens, {} alternating rounds (ntv {} ms; Inseq {} ms) | {:.0} | {:.0} | **{}; median {:.2}** |",
            inseq_runs.len(),
            joined(&ntv, 0),
            joined(&theirs, 0),
            median(ntv.clone()),
            median(theirs.clone()),
            joined(&r, 2),
            median(r.clone())
        );
    }
}

/// Section 13: the tiled weight products of the gradient engine (`QMatrix::matmul_t`, the
/// forward, and `QMatrix::matmul`, the backward) on one block's matrices of the test model and
/// of the 1.6 B synthetic llama (written by 12c's code if absent), for the rows of a saliency
/// pass (32) and of an integrated-gradients batch (25 inputs × 25 positions): the fastest of
/// many runs, in ms and GFLOP/s (2·rows·rows_W·cols_W per product).
fn weight_products(path: &std::path::Path, threads: i32) {
    use ntv::engine::WeightFile;
    let synth = std::env::var_os("NTV_BENCH_SYNTH").map_or_else(
        || {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("target/tmp/synthetic-llama-1.6b-q4_0.gguf")
        },
        PathBuf::from,
    );
    synthetic_llama(path, &synth);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads.max(1) as usize)
        .build()
        .expect("thread pool");
    println!("\n## 13. weight products of one block (fastest run; {threads} threads)");
    println!("| model | rows | matrix | type | forward ms | GFLOP/s | backward ms | GFLOP/s |");
    println!("|---|---:|---|---|---:|---:|---:|---:|");
    for (label, file) in [("test model", path), ("synthetic 1.6 B", synth.as_path())] {
        pool.install(|| {
            let wf = WeightFile::open(file).expect("open GGUF");
            for m in [32usize, 625] {
                let (mut tf, mut tb, mut flops) = (0.0, 0.0, 0.0);
                for name in [
                    "attn_q",
                    "attn_k",
                    "attn_v",
                    "attn_output",
                    "ffn_gate",
                    "ffn_up",
                    "ffn_down",
                ] {
                    let name = format!("blk.3.{name}.weight");
                    let cols = wf.dims(&name).expect("a block matrix")[0];
                    let w = wf.matrix(&name, cols).expect("readable").expect("present");
                    let x: Vec<f32> = (0..m * cols)
                        .map(|i| (i % 97) as f32 / 97.0 - 0.5)
                        .collect();
                    let g: Vec<f32> = (0..m * w.rows())
                        .map(|i| (i % 89) as f32 / 89.0 - 0.5)
                        .collect();
                    let (mut y, mut out) = (vec![0f32; m * w.rows()], vec![0f32; m * cols]);
                    let reps = if m < 100 { 60 } else { 8 };
                    let fastest = |f: &mut dyn FnMut()| {
                        f();
                        (0..reps)
                            .map(|_| {
                                let t = Instant::now();
                                f();
                                t.elapsed().as_secs_f64()
                            })
                            .fold(f64::MAX, f64::min)
                    };
                    let f = fastest(&mut || w.matmul_t(&x, &mut y));
                    let b = fastest(&mut || w.matmul(&g, &mut out));
                    black_box((&y, &out));
                    let fl = 2.0 * (m * cols * w.rows()) as f64;
                    (tf, tb, flops) = (tf + f, tb + b, flops + fl);
                    println!(
                        "| {label} | {m} | {name} {}×{cols} | {} | {:.2} | {:.0} | {:.2} | {:.0} |",
                        w.rows(),
                        w.type_name(),
                        f * 1e3,
                        fl / f / 1e9,
                        b * 1e3,
                        fl / b / 1e9
                    );
                }
                println!(
                    "| {label} | {m} | **the block** | | {:.2} | **{:.0}** | {:.2} | **{:.0}** |",
                    tf * 1e3,
                    flops / tf / 1e9,
                    tb * 1e3,
                    flops / tb / 1e9
                );
            }
        });
    }
}

/// Write (once) a llama GGUF of about 1.6 B parameters with random Q4_0 weights and the test
/// model's tokenizer at `dst`: 24 blocks of width 2048 (16 heads of 128, 8 KV heads), FFN
/// 8192, tied embeddings. Returns its parameter count and the seconds spent writing (0 when
/// it was there already).
fn synthetic_llama(tokenizer_from: &std::path::Path, dst: &std::path::Path) -> (u64, f64) {
    use candle_core::quantized::gguf_file::{self, Value};
    use candle_core::quantized::{GgmlDType, QStorage, QTensor};
    use rand::{RngCore, SeedableRng};
    let (d, layers, heads, kv_heads, ffn) = (2048usize, 24usize, 16usize, 8usize, 8192usize);
    let head_dim = d / heads;
    let n_vocab = 49152usize;
    let kv = kv_heads * head_dim;
    let params = (n_vocab * d + d + layers * (2 * d * d + 2 * kv * d + 3 * d * ffn + 2 * d)) as u64;
    if dst.is_file() {
        return (params, 0.0);
    }
    let t = Instant::now();
    let mut reader = std::io::BufReader::new(std::fs::File::open(tokenizer_from).expect("open"));
    let content = gguf_file::Content::read(&mut reader).expect("read GGUF");
    let mut meta: Vec<(String, Value)> = content
        .metadata
        .iter()
        .filter(|(k, _)| k.starts_with("tokenizer."))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for (k, v) in [
        ("general.architecture", Value::String("llama".into())),
        (
            "general.name",
            Value::String("ntv synthetic llama 1.6B".into()),
        ),
        ("general.file_type", Value::U32(2)), // MOSTLY_Q4_0
        ("llama.context_length", Value::U32(2048)),
        ("llama.embedding_length", Value::U32(d as u32)),
        ("llama.block_count", Value::U32(layers as u32)),
        ("llama.feed_forward_length", Value::U32(ffn as u32)),
        ("llama.rope.dimension_count", Value::U32(head_dim as u32)),
        ("llama.attention.head_count", Value::U32(heads as u32)),
        ("llama.attention.head_count_kv", Value::U32(kv_heads as u32)),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
        ("llama.rope.freq_base", Value::F32(10000.0)),
    ] {
        meta.push((k.to_string(), v));
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(21);
    // Q4_0 blocks: scale 2^-8 (f16 0x1C00), random nibbles: weights of std ≈ 0.018.
    let mut q4 = |rows: usize, cols: usize| -> QTensor {
        let blocks = rows * cols / 32;
        let mut data = vec![0u8; blocks * 18];
        for b in data.chunks_exact_mut(18) {
            b[0] = 0x00;
            b[1] = 0x1C;
            rng.fill_bytes(&mut b[2..]);
        }
        let st = QStorage::from_data(
            std::borrow::Cow::Owned(data),
            &candle_core::Device::Cpu,
            GgmlDType::Q4_0,
        )
        .expect("Q4_0 storage");
        QTensor::new(st, (rows, cols)).expect("Q4_0 tensor")
    };
    let ones = |n: usize| -> QTensor {
        let data: Vec<u8> = (0..n).flat_map(|_| 1f32.to_le_bytes()).collect();
        let st = QStorage::from_data(
            std::borrow::Cow::Owned(data),
            &candle_core::Device::Cpu,
            GgmlDType::F32,
        )
        .expect("F32 storage");
        QTensor::new(st, (n,)).expect("F32 tensor")
    };
    let mut tensors: Vec<(String, QTensor)> = vec![
        ("token_embd.weight".into(), q4(n_vocab, d)),
        ("output_norm.weight".into(), ones(d)),
    ];
    for i in 0..layers {
        let p = |s: &str| format!("blk.{i}.{s}");
        tensors.push((p("attn_norm.weight"), ones(d)));
        tensors.push((p("attn_q.weight"), q4(d, d)));
        tensors.push((p("attn_k.weight"), q4(kv, d)));
        tensors.push((p("attn_v.weight"), q4(kv, d)));
        tensors.push((p("attn_output.weight"), q4(d, d)));
        tensors.push((p("ffn_norm.weight"), ones(d)));
        tensors.push((p("ffn_gate.weight"), q4(ffn, d)));
        tensors.push((p("ffn_up.weight"), q4(ffn, d)));
        tensors.push((p("ffn_down.weight"), q4(d, ffn)));
    }
    std::fs::create_dir_all(dst.parent().expect("a folder")).expect("mkdir");
    let tmp = dst.with_extension("gguf.tmp");
    let mut w = std::io::BufWriter::new(std::fs::File::create(&tmp).expect("create"));
    let meta_refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    gguf_file::write(&mut w, &meta_refs, &tensor_refs).expect("write GGUF");
    drop(w);
    std::fs::rename(&tmp, dst).expect("rename");
    (params, t.elapsed().as_secs_f64())
}
