"""Inseq baseline for ntv's attribution benchmark (BENCHMARKS.md §12, issue 21), run side by side.

What it measures: the wall time of Inseq's attribution of one target token, on the same model
weights and the same token sequences as `benches/ntv_bench.rs` section 12
(`fn attribution_at_scale`):

- 12a, the mixed batch: the five chat prompts there × attention, saliency, input_x_gradient and
  integrated_gradients (50 steps, Inseq's default baseline), each attributing ntv's default
  target for that prompt (the most probable next token). One untimed warm-up per method, then
  every request is timed `--repeats` times (default 3) and its median kept. Reported: the sum of
  the per-target medians (per method and in all), and the wall time from the Python imports to
  the end of the first timed round (imports, model load, warm-ups, 20 targets: the analogue of
  ntv's one `--batch` process), and the whole script's wall.
- 12b, the short context: "The capital of France is" under the chat template (25 tokens),
  target id 504 (" The"): each method's median over `--short-runs` (default 3) timed runs after
  one warm-up.

Per target, the timed work is `model.attribute(...)` then `.aggregate()` (one score per context
token, as the original demo did and as ntv's `elapsed_ms` includes), one request per call, no
step scores (p(target) is computed outside the timing by a plain forward pass; `--with-probability`
adds Inseq's `probability` step score, one more forward pass, to the timed gradient calls).

Same weights: the GGUF is loaded by transformers with `gguf_file=` and dequantised to f32
("Hugging Face f32 on the same weights"); the tokenizer comes from the same GGUF. Same tokens:
ntv itself gives the context ids and the target of every request: one `ntv attribute --batch`
process attributing each prompt with attention (llama.cpp picks the default target and reports
its p) and saliency (ntv's f32 autograd forward on the dequantised weights reports its p);
`--print-batch` prints that batch and `--ntv-output` reads what ntv wrote for it instead of
running ntv. Inseq takes text, so each context is decoded to text and the script fails (exit 1)
unless Inseq's own tokenisation of it gives back exactly ntv's ids, the context plus the target
gives exactly one more token (the target), Inseq's output attributes exactly one step whose token
is the target, and transformers' p(target) agrees with ntv's autograd p(target) to within
`--p-tolerance` (default 0.002; they agree to ~1e-4). llama.cpp's p, from the quantised weights,
differs by up to ~0.03 and is reported alongside.

Attention: transformers 5's default `sdpa` attention returns no attention weights, so the
attention requests switch the model to `eager` (what transformers 4 fell back to by itself when
Inseq asked for weights) and the gradient methods run on `sdpa`.

Known Inseq behaviour, not a failure: Inseq's output leaves out context tokens equal to the
tokenizer's pad id (`<|im_end|>` for the test model), so its score lists are shorter than
`context_len`; the model still reads every token (with `--with-probability`, Inseq's probability
step score equals the full-sequence p(target) computed here). Integrated gradients runs its 50
interpolated inputs as one batch (Captum's default): the process peaks at ~5.4 GB.

Prerequisites: Python 3.10+ with torch (CPU), inseq 0.7 (0.7.1 needs transformers >= 4.53; run
with 5.24), accelerate and gguf (transformers needs both to read a GGUF); the model file
(`~/.cache/ntv/models/SmolLM2-135M-Instruct.Q4_1.gguf`); an ntv binary (`cargo build --release`).
No network: nothing is downloaded (HF_HUB_OFFLINE is set).

Run (2 threads, as §12; hold the benchmark lock so it does not overlap another benchmark):

    flock /tmp/ntv-bench.lock python benches/inseq_baseline.py \
        --model ~/.cache/ntv/models/SmolLM2-135M-Instruct.Q4_1.gguf \
        --ntv target/release/ntv -t 2 > inseq-baseline.json

stdout: one JSON document (per request: prompt index, method, context_len, target, elapsed_ms,
every run's ms, p(target)); stderr: progress and a short summary. `--prompts`, `--methods`,
`--repeats`, `--short-runs` and `--steps` make smaller runs while developing.
"""

import time

T0 = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

# benches/ntv_bench.rs, fn attribution_at_scale, 12a and 12b.
MIXED_PROMPTS = [
    "What is the capital of France? Answer in one word.",
    "Write a haiku about the sea at night, with the moon in it.",
    "Explain in two sentences why the sky is blue during the day.",
    "List three fruits that are red and one that is yellow, please.",
    "My cat knocked a glass off the table again. What should I do to stop her from doing that?",
]
METHODS = ["attention", "saliency", "input_x_gradient", "integrated_gradients"]
SHORT_PROMPT = "The capital of France is"
SHORT_TOKEN = 504

REPO = Path(__file__).resolve().parent.parent


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def fail(msg):
    print(f"error: {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


def parse_args():
    ap = argparse.ArgumentParser(
        description="Inseq baseline for ntv's attribution benchmark (BENCHMARKS.md §12)."
    )
    ap.add_argument(
        "-m",
        "--model",
        default=os.path.expanduser("~/.cache/ntv/models/SmolLM2-135M-Instruct.Q4_1.gguf"),
        help="the GGUF file (default: ntv's test model)",
    )
    default_ntv = REPO / "target" / "release" / "ntv"
    ap.add_argument(
        "--ntv",
        default=str(default_ntv) if default_ntv.exists() else (shutil.which("ntv") or "ntv"),
        help="the ntv binary that gives the token ids (default: target/release/ntv, else PATH)",
    )
    ap.add_argument(
        "--ntv-output",
        help="read the sequences from this file instead of running ntv: the JSONL that "
        "`ntv attribute --no-session -m MODEL --method attention --batch FILE` writes for the "
        "batch this script would write (print it with --print-batch)",
    )
    ap.add_argument("--print-batch", action="store_true", help="print that batch and exit")
    ap.add_argument("-t", "--threads", type=int, default=2, help="torch threads (default 2)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per mixed-batch request")
    ap.add_argument("--short-runs", type=int, default=3, help="timed runs per method, 12b")
    ap.add_argument("--prompts", type=int, default=len(MIXED_PROMPTS), help="first N prompts")
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated methods")
    ap.add_argument("--steps", type=int, default=50, help="integrated gradients' n_steps")
    ap.add_argument("--skip-mixed", action="store_true", help="leave out 12a")
    ap.add_argument("--skip-short", action="store_true", help="leave out 12b")
    ap.add_argument(
        "--with-probability",
        action="store_true",
        help="gradient methods: compute Inseq's probability step score inside the timed call",
    )
    ap.add_argument(
        "--p-tolerance",
        type=float,
        default=0.002,
        help="largest |p(target)| difference from ntv's autograd (same f32 weights) allowed",
    )
    args = ap.parse_args()
    args.methods = [m for m in args.methods.split(",") if m]
    bad = [m for m in args.methods if m not in METHODS]
    if bad:
        ap.error(f"unknown methods {bad}; known: {METHODS}")
    if not 1 <= args.prompts <= len(MIXED_PROMPTS):
        ap.error(f"--prompts must be 1..{len(MIXED_PROMPTS)}")
    if args.repeats < 1 or args.short_runs < 1:
        ap.error("--repeats and --short-runs must be at least 1")
    return args


def batch_lines():
    """The requests whose context ids and targets ntv gives: the mixed prompts (ntv's default
    target) and the short context with target 504, in this order, each twice: attention (p from
    llama.cpp's decode, which also picks the default target) and saliency (p from ntv's f32
    autograd forward on the dequantised weights, what transformers computes here)."""
    reqs = [{"prompt": p} for p in MIXED_PROMPTS]
    reqs.append({"prompt": SHORT_PROMPT, "token": SHORT_TOKEN})
    return [{**r, "method": me} for r in reqs for me in ("attention", "saliency")]


def ntv_sequences(args):
    """[(context ids, target id, llama.cpp's p, autograd's p)], one per prompt, from ntv."""
    lines = batch_lines()
    if args.ntv_output:
        text = Path(args.ntv_output).read_text()
    else:
        with tempfile.TemporaryDirectory() as d:
            f = Path(d) / "sequences.jsonl"
            f.write_text("".join(json.dumps(x) + "\n" for x in lines))
            cmd = [
                args.ntv,
                "attribute",
                "--no-session",
                "-t",
                str(args.threads),
                "-m",
                args.model,
                "--batch",
                str(f),
            ]
            log(f"token ids from ntv: {' '.join(cmd)}")
            try:
                r = subprocess.run(cmd, cwd=d, capture_output=True, text=True)
            except FileNotFoundError:
                fail(f"no ntv binary {args.ntv!r}: build it (cargo build --release) or pass --ntv")
            if r.returncode != 0:
                fail(f"ntv exited {r.returncode}:\n{r.stderr}")
            text = r.stdout
    recs = {}
    for line in text.splitlines():
        rec = json.loads(line)
        if rec.get("type") != "attribution":
            fail(f"ntv reported a failed request: {line}")
        recs[rec["line"]] = rec
    if sorted(recs) != list(range(1, len(lines) + 1)):
        fail(f"ntv's output has records for lines {sorted(recs)}, expected 1..{len(lines)}")
    out = []
    for i in range(1, len(lines) + 1, 2):
        att, sal = recs[i], recs[i + 1]
        if (att["method"], sal["method"]) != ("attention", "saliency"):
            fail(f"ntv lines {i}, {i + 1} are {att['method']}, {sal['method']}")
        ctx = [s["id"] for s in att["scores"]]
        if len(ctx) != att["context_len"] or [s["id"] for s in sal["scores"]] != ctx:
            fail(f"ntv lines {i}, {i + 1}: the contexts differ or do not match context_len")
        if att["target"]["id"] != sal["target"]["id"]:
            fail(f"ntv lines {i}, {i + 1}: targets {att['target']['id']}, {sal['target']['id']}")
        out.append((ctx, att["target"]["id"], att["target"]["prob"], sal["target"]["prob"]))
    if out[-1][1] != SHORT_TOKEN:
        fail(f"the short context's target is {out[-1][1]}, not {SHORT_TOKEN}")
    return out


def sequence_fields(s):
    """What a request's record says of its sequence: length, target and p(target) by engine."""
    return {
        "context_len": len(s["ids"]),
        "target_id": s["target"],
        "target_text": s["target_text"],
        "p_target": s["p_target"],
        "p_target_ntv": s["p_target_ntv"],
        "p_target_llama_cpp": s["p_target_llama_cpp"],
    }


def main():
    args = parse_args()
    if args.print_batch:
        for x in batch_lines():
            print(json.dumps(x))
        return
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TQDM_DISABLE", "1")  # transformers' GGUF conversion bar
    model_path = Path(args.model).expanduser().resolve()
    if not model_path.is_file():
        fail(f"no model file {model_path}")

    t = time.perf_counter()
    seqs = ntv_sequences(args)
    ntv_ids_s = time.perf_counter() - t

    # Everything from here is Inseq's side: imports, load, warm-ups, attributions.
    t_inseq = time.perf_counter()
    import inseq
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import_s = time.perf_counter() - t_inseq
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    tok = AutoTokenizer.from_pretrained(str(model_path.parent), gguf_file=model_path.name)
    hf = AutoModelForCausalLM.from_pretrained(
        str(model_path.parent), gguf_file=model_path.name, dtype=torch.float32
    )
    hf.eval()
    model = inseq.load_model(hf, "saliency", tokenizer=tok)
    load_s = time.perf_counter() - t_inseq
    log(f"imports {import_s:.1f} s, imports and model load {load_s:.1f} s ({args.threads} threads)")

    def p_next(ids):
        with torch.no_grad():
            logits = hf(torch.tensor([ids])).logits[0, -1].double()
        return torch.softmax(logits, -1)

    pad_id = tok.pad_token_id

    # Texts for Inseq, checked against ntv's ids, and p(target) against ntv's.
    prepared = []
    for k, (ctx, target, p_llama, p_ntv) in enumerate(seqs):
        context = tok.decode(ctx, skip_special_tokens=False)
        full = tok.decode(ctx + [target], skip_special_tokens=False)
        got = model.encode(context).input_ids[0].tolist()
        got_full = model.encode(full).input_ids[0].tolist()
        if got != ctx:
            fail(f"sequence {k}: Inseq tokenises the context as {got}, ntv has {ctx}")
        if got_full != ctx + [target]:
            fail(f"sequence {k}: context + target tokenise as {got_full[len(ctx) - 2 :]}...")
        probs = p_next(ctx)
        p_hf = float(probs[target])
        if abs(p_hf - p_ntv) > args.p_tolerance:
            fail(
                f"sequence {k}: p(target {target}) is {p_hf:.5f} in transformers, "
                f"{p_ntv:.5f} in ntv's autograd (tolerance {args.p_tolerance})"
            )
        prepared.append(
            {
                "context": context,
                "full": full,
                "ids": ctx,
                "target": target,
                "target_text": tok.decode([target]),
                "p_target": p_hf,
                "p_target_ntv": p_ntv,
                "p_target_llama_cpp": p_llama,
                "hf_top1": int(probs.argmax()),
            }
        )
        log(
            f"sequence {k}: {len(ctx)} tokens, target {target} {tok.decode([target])!r}: "
            f"p {p_hf:.5f} (ntv's autograd {p_ntv:.5f}, llama.cpp {p_llama:.4f})"
        )

    current_attn = [hf.config._attn_implementation]

    def attribute(seq, method):
        """One timed attribution of seq's target; returns ms."""
        want = "eager" if method == "attention" else "sdpa"
        if current_attn[0] != want:
            hf.set_attn_implementation(want)
            current_attn[0] = want
        kw = {}
        if method == "integrated_gradients":
            kw["n_steps"] = args.steps
        if args.with_probability and method != "attention":
            kw["step_scores"] = ["probability"]
        start = time.perf_counter()
        out = model.attribute(
            input_texts=seq["context"],
            generated_texts=seq["full"],
            method=method,
            attribute_target=False,
            show_progress=False,
            **kw,
        )
        agg = out.aggregate()
        ms = (time.perf_counter() - start) * 1e3
        sa = agg.sequence_attributions[0]
        got = [x.id for x in sa.target]
        want_ids = [i for i in seq["ids"] + [seq["target"]] if i != pad_id]
        scores = sa.target_attributions
        if got != want_ids or scores is None or scores.shape[1] != 1:
            fail(
                f"{method}: Inseq attributed {got} with scores of shape "
                f"{None if scores is None else tuple(scores.shape)}, expected the one target "
                f"{seq['target']} after the context"
            )
        if "step_scores" in kw:
            p_inseq = float(sa.step_scores["probability"][0])
            if abs(p_inseq - seq["p_target"]) > args.p_tolerance:
                fail(f"{method}: Inseq's p(target) {p_inseq:.5f}, {seq['p_target']:.5f} here")
        return ms

    doc = {
        "schema": "ntv-bench.inseq-baseline/1",
        "model": str(model_path),
        "threads": args.threads,
        "ig_steps": args.steps,
        "with_probability": args.with_probability,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "inseq": _version("inseq"),
            "captum": _version("captum"),
            "gguf": _version("gguf"),
        },
        "ntv": args.ntv_output or args.ntv,
        "ntv_ids_s": ntv_ids_s,
        "import_s": import_s,
        "load_s": load_s,
    }

    if not args.skip_mixed:
        mixed = prepared[: args.prompts]
        for me in args.methods:  # one untimed warm-up per method
            ms = attribute(mixed[0], me)
            log(f"warm-up {me}: {ms:.0f} ms")
        requests = [
            {
                "prompt_index": i,
                "prompt": MIXED_PROMPTS[i],
                "method": me,
                **sequence_fields(s),
                "runs_ms": [],
            }
            for i, s in enumerate(mixed)
            for me in args.methods
        ]
        first_round_s = None
        for r in range(args.repeats):
            for req in requests:
                ms = attribute(mixed[req["prompt_index"]], req["method"])
                req["runs_ms"].append(ms)
                log(f"round {r + 1}: prompt {req['prompt_index']} {req['method']}: {ms:.0f} ms")
            if first_round_s is None:
                first_round_s = time.perf_counter() - t_inseq
        for req in requests:
            req["elapsed_ms"] = statistics.median(req["runs_ms"])
        sums = {
            me: sum(q["elapsed_ms"] for q in requests if q["method"] == me) for me in args.methods
        }
        doc["mixed"] = {
            "repeats": args.repeats,
            "requests": requests,
            "sum_of_medians_ms": {**sums, "total": sum(sums.values())},
            "first_round_wall_s": first_round_s,
        }

    if not args.skip_short:
        s = prepared[-1]
        short = {
            "prompt": SHORT_PROMPT,
            **sequence_fields(s),
            "runs": args.short_runs,
            "methods": {},
        }
        for me in args.methods:
            attribute(s, me)  # warm-up
            runs = [attribute(s, me) for _ in range(args.short_runs)]
            short["methods"][me] = {"median_ms": statistics.median(runs), "runs_ms": runs}
            log(f"25-token context {me}: {runs}")
        doc["short"] = short

    doc["wall_s"] = time.perf_counter() - T0
    doc["inseq_wall_s"] = time.perf_counter() - t_inseq
    json.dump(doc, sys.stdout, indent=2)
    print()

    log(
        f"\nInseq {doc['versions']['inseq']}, torch {torch.__version__}, transformers "
        f"{transformers.__version__}, {args.threads} threads"
    )
    if "mixed" in doc:
        m = doc["mixed"]
        lens = [len(x["ids"]) for x in prepared[: args.prompts]]
        log(
            f"12a mixed batch ({lens} tokens x {args.methods}), per-target medians of "
            f"{args.repeats}: "
            + ", ".join(f"{k} {v / 1e3:.2f} s" for k, v in m["sum_of_medians_ms"].items())
        )
        log(f"    wall from imports to the end of the first round: {m['first_round_wall_s']:.1f} s")
    if "short" in doc:
        sh = doc["short"]
        log(
            f"12b {sh['context_len']}-token context, target {sh['target_id']}, median of "
            f"{sh['runs']}: "
            + ", ".join(f"{k} {v['median_ms']:.0f} ms" for k, v in sh["methods"].items())
        )
    log(
        f"script wall {doc['wall_s']:.1f} s (ntv's token ids {ntv_ids_s:.1f} s, "
        f"Inseq's side {doc['inseq_wall_s']:.1f} s, of which imports and load {load_s:.1f} s, "
        f"imports alone {import_s:.1f} s)"
    )


def _version(name):
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


if __name__ == "__main__":
    main()
