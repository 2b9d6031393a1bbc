//! Tables and coloured text for people. They must read correctly without colour: every
//! state that colour shows is also spelled out (status column, markers, brackets).

use std::io::{self, Write};

use tabled::builder::Builder;
use tabled::settings::{Alignment, Style, object::Columns};

use super::Palette;
use super::text::{bar, pct};
use crate::record::{
    BranchDiffDoc, BranchListDoc, BranchShowDoc, Candidate, Dist, GenerateSummary, LoadDoc,
    PreviewDoc, StepDoc, StepRecord, TokenPill,
};
use crate::sampling::{CutStage, SamplerOrder, SamplingParams};

/// Most candidates a table shows.
pub const MAX_TABLE_ROWS: usize = 50;
const BAR: usize = 10;

fn cut_name(c: CutStage) -> &'static str {
    c.name()
}

/// A token as a pill: `[text]`, special tokens styled.
pub fn pill(p: &TokenPill, pal: &Palette) -> String {
    if p.special {
        pal.special(&p.display)
    } else {
        p.display.clone()
    }
}

fn pills(tokens: &[TokenPill], pal: &Palette) -> String {
    let sep = pal.muted("│");
    tokens
        .iter()
        .map(|t| pill(t, pal))
        .collect::<Vec<_>>()
        .join(&sep)
}

/// One line describing the parameters.
pub fn params_line(p: &SamplingParams) -> String {
    let mut line = base_params_line(p);
    for part in chain_params(p) {
        line.push_str(" · ");
        line.push_str(&part);
    }
    line
}

/// The llama.cpp stages beyond the basic ones, as they are set (nothing when off).
fn chain_params(p: &SamplingParams) -> Vec<String> {
    use crate::sampling::chain;
    let mut out = Vec::new();
    if let Some(list) = &p.samplers {
        out.push(format!(
            "samplers {}",
            list.iter().map(|s| s.letter()).collect::<String>()
        ));
    }
    if !p.logit_bias.is_empty() {
        out.push(format!("logit-bias {}", p.logit_bias.len()));
    }
    if chain::dry_on(p) {
        out.push(format!(
            "dry ×{} base {} allowed {} last-n {}",
            p.dry_multiplier,
            p.dry_base,
            p.dry_allowed_length,
            match p.dry_penalty_last_n {
                -1 => "all".to_string(),
                n => n.to_string(),
            }
        ));
    }
    if p.top_n_sigma > 0.0 {
        out.push(format!("top-nσ {}", p.top_n_sigma));
    }
    if p.typical_p < 1.0 {
        out.push(format!("typical {}", p.typical_p));
    }
    if chain::xtc_on(p) {
        out.push(format!("xtc {} ≥{}", p.xtc_probability, p.xtc_threshold));
    }
    if p.dynatemp_range > 0.0 {
        out.push(format!(
            "dynatemp ±{} exp {}",
            p.dynatemp_range, p.dynatemp_exponent
        ));
    }
    if p.mirostat != 0 {
        out.push(format!(
            "mirostat {} τ {} η {}",
            p.mirostat, p.mirostat_ent, p.mirostat_lr
        ));
    }
    if p.min_keep > 0 {
        out.push(format!("min-keep {}", p.min_keep));
    }
    out
}

fn base_params_line(p: &SamplingParams) -> String {
    let off = |v: f64, none: f64| {
        if v == none {
            "off".to_string()
        } else {
            format!("{v}")
        }
    };
    let mode = if p.greedy || p.temperature == 0.0 {
        "greedy".to_string()
    } else {
        format!("T {}", p.temperature)
    };
    format!(
        "{mode} · top-p {} · top-k {} · min-p {} · repeat {} · presence {} · frequency {} · last-n {} · order {}",
        off(p.top_p, 1.0),
        if p.top_k == 0 {
            "off".into()
        } else {
            p.top_k.to_string()
        },
        off(p.min_p, 0.0),
        off(p.repetition_penalty, 1.0),
        p.presence_penalty,
        p.frequency_penalty,
        match p.penalty_last_n {
            -1 => "all".to_string(),
            n => n.to_string(),
        },
        match p.sampler_order {
            SamplerOrder::Hf => "hf",
            SamplerOrder::Llama => "llama",
        }
    )
}

fn status(c: &Candidate) -> String {
    let mut s = match (c.kept, c.cut_by) {
        (true, _) => "kept".to_string(),
        (false, Some(stage)) => format!("cut: {}", cut_name(stage)),
        (false, None) => "cut".into(),
    };
    // Why the token moved: each stage that reshaped its logit, with the amount.
    for a in &c.logit_adjust {
        let name = match a.stage {
            crate::record::AdjustStage::LogitBias => "bias",
            crate::record::AdjustStage::Penalties => "penalty",
            crate::record::AdjustStage::Dry => "dry",
        };
        s.push_str(&format!(" · {name} {:+.2}", a.amount));
    }
    s
}

/// The candidates table, with the selected token marked `▶`.
pub fn candidates(
    w: &mut dyn Write,
    dist: &Dist,
    selected: Option<&Candidate>,
    pal: &Palette,
) -> io::Result<()> {
    let mut b = Builder::default();
    b.push_record([
        "", "#", "token", "id", "p_base", "", "p_final", "", "logprob", "status",
    ]);
    let sel_id = selected.map(|s| s.id);
    let mut rows: Vec<&Candidate> = dist.tokens.iter().take(MAX_TABLE_ROWS).collect();
    let extra = selected.filter(|s| !rows.iter().any(|c| c.id == s.id));
    if let Some(s) = extra {
        rows.push(s);
    }
    for c in rows {
        let chosen = Some(c.id) == sel_id;
        let token = if c.special {
            pal.special(&c.display)
        } else {
            c.display.clone()
        };
        let token = if chosen { pal.chosen(&token) } else { token };
        let st = status(c);
        let st = match c.cut_by {
            None if c.kept => pal.kept(&st),
            Some(CutStage::Constraint) => pal.invalid(&st),
            _ => pal.cut(&st),
        };
        let paint = |s: String| if c.kept { s } else { pal.cut(&s) };
        b.push_record([
            if chosen {
                pal.chosen("▶")
            } else {
                String::new()
            },
            c.rank.to_string(),
            token,
            c.id.to_string(),
            paint(bar(c.p_base, BAR)),
            pct(c.p_base),
            paint(bar(c.p_final, BAR)),
            pct(c.p_final),
            format!("{:.2}", c.logprob_base),
            st,
        ]);
    }
    b.push_record([
        String::new(),
        String::new(),
        pal.muted("(others)"),
        String::new(),
        pal.muted(&bar(dist.other_p_base, BAR)),
        pct(dist.other_p_base),
        pal.muted(&bar(dist.other_p_final, BAR)),
        pct(dist.other_p_final),
        String::new(),
        String::new(),
    ]);
    let mut t = b.build();
    t.with(Style::blank());
    t.modify(Columns::new(1..2), Alignment::right());
    t.modify(Columns::new(3..4), Alignment::right());
    t.modify(Columns::new(5..6), Alignment::right());
    t.modify(Columns::new(7..9), Alignment::right());
    writeln!(w, "{t}")
}

fn dist_summary(
    w: &mut dyn Write,
    dist: &Dist,
    n_vocab: Option<usize>,
    pal: &Palette,
) -> io::Result<()> {
    let shown = dist.tokens.len().min(MAX_TABLE_ROWS);
    let of = n_vocab.map(|n| format!(" of {n}")).unwrap_or_default();
    let valid = dist
        .valid_token_count
        .map(|v| format!(" · valid {v}"))
        .unwrap_or_default();
    writeln!(
        w,
        "{} {shown} shown{of} · kept {}{valid} · entropy {:.2} → {:.2} bits",
        pal.heading("next token:"),
        dist.kept_token_count,
        dist.entropy_base,
        dist.entropy_final
    )?;
    if let Some(c) = &dist.chain {
        let mut parts = Vec::new();
        if !c.stages.is_empty() {
            parts.push(crate::sampling::Stage::format_list(&c.stages).replace(';', " → "));
        } else if c.mirostat_mu.is_some() {
            parts.push("temperature → mirostat".to_string());
        }
        parts.push(format!("T used {:.3}", c.temperature_used));
        if let Some(x) = c.xtc {
            parts.push(if x.removed > 0 {
                format!("xtc coin {:.3}: removed {}", x.coin, x.removed)
            } else {
                format!("xtc coin {:.3}: removed nothing", x.coin)
            });
        }
        if let Some(mu) = c.mirostat_mu {
            parts.push(format!("mirostat μ {mu:.3}"));
        }
        writeln!(w, "{} {}", pal.heading("chain:"), parts.join(" · "))?;
    }
    Ok(())
}

/// The header line naming the active constraint.
pub fn constraint_line(
    w: &mut dyn Write,
    c: &crate::session::ConstraintSpec,
    pal: &Palette,
) -> io::Result<()> {
    let mut source: String = c.source.chars().take(60).collect();
    if c.source.chars().count() > 60 {
        source.push('…');
    }
    writeln!(
        w,
        "{} {}: {}",
        pal.heading("constraint"),
        c.kind,
        super::text::display(&source.replace('\n', " "))
    )
}

/// `ntv load`.
pub fn load(w: &mut dyn Write, doc: &LoadDoc, pal: &Palette) -> io::Result<()> {
    let m = &doc.model;
    let rows: Vec<(&str, String)> = vec![
        ("model", m.model_id.clone()),
        ("path", m.path.clone()),
        ("architecture", m.architecture.clone()),
        ("parameters", format!("{:.1} M", m.n_params as f64 / 1e6)),
        ("quantisation", m.dtype.clone()),
        ("file size", format!("{:.1} MB", m.file_size as f64 / 1e6)),
        ("vocabulary", format!("{} ({})", m.vocab_size, m.vocab_type)),
        ("context (train)", m.n_ctx_train.to_string()),
        (
            "layers / heads / kv heads / embd",
            format!(
                "{} / {} / {} / {}",
                m.n_layer, m.n_head, m.n_head_kv, m.n_embd
            ),
        ),
        (
            "chat template",
            if m.has_chat_template { "yes" } else { "no" }.into(),
        ),
        (
            "bos / eos",
            format!(
                "{} / {}",
                m.bos_token_id.map_or("none".into(), |t| t.to_string()),
                m.eos_token_id.map_or("none".into(), |t| t.to_string())
            ),
        ),
        (
            "end-of-generation ids",
            m.eog_token_ids
                .iter()
                .map(|t| t.to_string())
                .collect::<Vec<_>>()
                .join(", "),
        ),
        (
            "device",
            format!("{} ({} layers offloaded)", m.device, m.gpu_layers_offloaded),
        ),
        ("load time", format!("{:.0} ms", doc.load_seconds * 1000.0)),
        ("fingerprint", doc.fingerprint.clone()),
        (
            "session",
            doc.session.clone().unwrap_or_else(|| "(none)".into()),
        ),
    ];
    let mut b = Builder::default();
    for (k, v) in rows {
        b.push_record([pal.heading(k), v]);
    }
    let mut t = b.build();
    t.with(Style::blank());
    writeln!(w, "{t}")
}

/// `ntv preview`.
pub fn preview(w: &mut dyn Write, doc: &PreviewDoc, pal: &Palette) -> io::Result<()> {
    let m = &doc.model;
    writeln!(
        w,
        "{} {} · {} · {} · {} tokens · {}",
        pal.heading("model"),
        m.model_id,
        m.architecture,
        m.dtype,
        m.vocab_size,
        m.device
    )?;
    writeln!(
        w,
        "{} {} tokens ({})",
        pal.heading("prompt"),
        doc.prompt_tokens.len(),
        if doc.chat_template {
            "chat template"
        } else {
            "plain text"
        }
    )?;
    writeln!(w, "  {}", pills(&doc.prompt_tokens, pal))?;
    if !doc.completion_tokens.is_empty() {
        writeln!(
            w,
            "{} {} tokens on branch {}",
            pal.heading("completion"),
            doc.completion_tokens.len(),
            doc.branch
        )?;
        writeln!(w, "  {}", pills(&doc.completion_tokens, pal))?;
    }
    if let Some(lps) = &doc.prompt_logprobs {
        writeln!(
            w,
            "{} (surprisal in bits after each token; first token has no prefix)",
            pal.heading("prompt log-probabilities")
        )?;
        let line: Vec<String> = lps
            .iter()
            .map(|l| {
                let tok = pal.by_surprisal(&l.display, l.surprisal_bits);
                format!("{tok}{}", pal.muted(&format!("·{:.1}", l.surprisal_bits)))
            })
            .collect();
        writeln!(w, "  {}", line.join(" "))?;
        let total: f64 = lps.iter().map(|l| l.logprob).sum();
        writeln!(
            w,
            "  total log-prob {total:.2} · mean surprisal {:.2} bits/token",
            if lps.is_empty() {
                0.0
            } else {
                lps.iter().map(|l| l.surprisal_bits).sum::<f64>() / lps.len() as f64
            }
        )?;
    }
    let preset = doc
        .preset
        .map(|p| format!("{p:?}").to_lowercase() + ": ")
        .unwrap_or_default();
    writeln!(
        w,
        "{} {preset}{}",
        pal.heading("params"),
        params_line(&doc.params)
    )?;
    dist_summary(w, &doc.dist, Some(m.vocab_size), pal)?;
    candidates(w, &doc.dist, None, pal)
}

fn selection_line(r: &StepRecord, pal: &Palette) -> String {
    let m = &r.appended_meta;
    let how = match (m.forced_by, m.draw) {
        (Some(by), _) => format!("forced ({by:?})").to_lowercase(),
        (None, Some(u)) => format!("sampled (u = {u:.4})"),
        (None, None) => "greedy".into(),
    };
    let tok = pal.chosen(&r.selected.display);
    let stop = r
        .stop_reason
        .map(|s| format!(" · done: {}", s.as_str()))
        .unwrap_or_default();
    format!(
        "{} {} {tok} (id {}) · p_final {} · {how}{stop}",
        pal.heading("step"),
        r.index,
        r.selected.id,
        pct(r.selected.p_final)
    )
}

/// `ntv step`.
pub fn step(w: &mut dyn Write, doc: &StepDoc, pal: &Palette) -> io::Result<()> {
    if let Some(b) = &doc.created_branch {
        writeln!(
            w,
            "{} {b} (rewound; the old branch is kept)",
            pal.heading("new branch")
        )?;
    }
    if doc.action == crate::record::StepAction::Undo {
        writeln!(
            w,
            "{} removed {} token(s) from branch {}",
            pal.heading("undo"),
            doc.removed_ids.len(),
            doc.branch
        )?;
    }
    if let Some(c) = &doc.constraint {
        constraint_line(w, c, pal)?;
    }
    for r in &doc.steps {
        writeln!(w, "{}", selection_line(r, pal))?;
        candidates(w, &r.appended_meta.dist, Some(&r.selected), pal)?;
    }
    writeln!(
        w,
        "{} [{}] {} tokens: {}",
        pal.heading("completion"),
        doc.branch,
        doc.completion_ids.len(),
        pills(&doc.completion_tokens, pal)
    )?;
    if let Some(seed) = doc.seed {
        writeln!(w, "{}", pal.muted(&format!("seed {seed}")))?;
    }
    Ok(())
}

/// Legend printed before a streamed generation.
pub fn generate_header(w: &mut dyn Write, pal: &Palette) -> io::Result<()> {
    if pal.enabled() {
        writeln!(
            w,
            "{} {} {} {} {} {}",
            pal.muted("p_final:"),
            pal.by_prob("≥80%", 0.9),
            pal.by_prob("≥50%", 0.6),
            pal.by_prob("≥20%", 0.3),
            pal.by_prob("≥5%", 0.1),
            pal.by_prob("<5%", 0.01)
        )
    } else {
        Ok(())
    }
}

thread_local! {
    /// Bytes of a character that a streamed token began and the next one completes (one
    /// stream per thread: a generation streams from the thread that runs it).
    static STREAM: std::cell::RefCell<crate::render::text::Utf8Stream> = Default::default();
}

/// One streamed token, coloured by its p_final. A token that holds only part of a multi-byte
/// character prints nothing; the token that completes it prints the whole character.
pub fn generate_token(w: &mut dyn Write, r: &StepRecord, pal: &Palette) -> io::Result<()> {
    let bytes = if r.selected.bytes.is_empty() {
        r.selected.text.as_bytes()
    } else {
        &r.selected.bytes
    };
    if r.selected.special {
        let rest = STREAM.with(|s| s.borrow_mut().finish());
        return write!(w, "{rest}{}", pal.special(&r.selected.text));
    }
    let text = STREAM.with(|s| s.borrow_mut().push(bytes));
    if text.is_empty() {
        return Ok(());
    }
    write!(w, "{}", pal.by_prob(&text, r.selected.p_final))
}

/// Print what a stream left incomplete (as U+FFFD) before the summary.
pub fn end_stream(w: &mut dyn Write) -> io::Result<()> {
    let rest = STREAM.with(|s| s.borrow_mut().finish());
    write!(w, "{rest}")
}

/// Summary after a streamed generation.
pub fn generate_summary(w: &mut dyn Write, s: &GenerateSummary, pal: &Palette) -> io::Result<()> {
    end_stream(w)?;
    let stop = match &s.stop_sequence {
        Some(seq) => format!("{} ({seq:?})", s.stop_reason.as_str()),
        None => s.stop_reason.as_str().to_string(),
    };
    writeln!(w)?;
    writeln!(
        w,
        "{}",
        pal.muted(&format!(
            "── {} tokens · stop: {stop} · {:.1} tokens/s · seed {} · branch {}",
            s.n_tokens,
            s.tokens_per_second,
            s.seed.map_or("none".into(), |x| x.to_string()),
            s.branch
        ))
    )
}

/// `ntv branch list`.
pub fn branch_list(w: &mut dyn Write, doc: &BranchListDoc, pal: &Palette) -> io::Result<()> {
    let mut b = Builder::default();
    b.push_record(["", "branch", "parent", "fork at", "length", "stop", "seed"]);
    for r in &doc.branches {
        b.push_record([
            if r.active {
                pal.chosen("*")
            } else {
                String::new()
            },
            if r.active {
                pal.heading(&r.name)
            } else {
                r.name.clone()
            },
            r.parent.clone().unwrap_or_else(|| "-".into()),
            r.fork_position.map_or("-".into(), |p| p.to_string()),
            r.length.to_string(),
            r.stop_reason.map_or_else(|| "-".into(), |s| s.to_string()),
            r.seed.map_or("-".into(), |s| s.to_string()),
        ]);
    }
    let mut t = b.build();
    t.with(Style::blank());
    writeln!(w, "{t}")
}

/// `ntv branch show`.
pub fn branch_show(w: &mut dyn Write, doc: &BranchShowDoc, pal: &Palette) -> io::Result<()> {
    let r = &doc.branch;
    writeln!(
        w,
        "{} {}{} · {} tokens{}",
        pal.heading("branch"),
        r.name,
        r.parent
            .as_ref()
            .map(|p| format!(" (from {p} at {})", r.fork_position.unwrap_or(0)))
            .unwrap_or_default(),
        r.length,
        r.stop_reason
            .as_ref()
            .map(|s| format!(" · stopped: {s}"))
            .unwrap_or_default()
    )?;
    let mut line = String::new();
    for t in &doc.tokens {
        if r.fork_position == Some(t.index) && r.parent.is_some() {
            line.push_str(&pal.warn("┃"));
        }
        let shown = if t.special {
            pal.special(&t.display)
        } else {
            pal.by_prob(&t.display, t.p_final.unwrap_or(0.0))
        };
        line.push_str(&shown);
        if !pal.enabled() {
            line.push_str(&format!("·{}", t.p_final.map_or("?".into(), pct)));
        }
        line.push(' ');
    }
    writeln!(w, "  {}", line.trim_end())?;
    writeln!(w, "{} {}", pal.heading("text"), doc.completion_text)
}

/// `ntv branch diff`.
pub fn branch_diff(w: &mut dyn Write, doc: &BranchDiffDoc, pal: &Palette) -> io::Result<()> {
    writeln!(
        w,
        "{} {} vs {}: shared prefix {} tokens; {}",
        pal.heading("diff"),
        doc.a,
        doc.b,
        doc.shared_prefix,
        match doc.first_divergence {
            Some(i) => format!("first divergence at {i}"),
            None => "identical".into(),
        }
    )?;
    if doc.steps.is_empty() {
        return Ok(());
    }
    let mut b = Builder::default();
    b.push_record([
        "#".to_string(),
        format!("{} token", doc.a),
        "p_final".into(),
        format!("under {}", doc.b),
        format!("{} token", doc.b),
        "p_final".into(),
        format!("under {}", doc.a),
    ]);
    let p = |x: Option<f64>| x.map_or("-".into(), pct);
    for s in &doc.steps {
        b.push_record([
            s.index.to_string(),
            s.a.as_ref().map_or("-".into(), |t| t.display.clone()),
            p(s.a.as_ref().and_then(|t| t.p_final)),
            p(s.a_token_p_final_under_b),
            s.b.as_ref().map_or("-".into(), |t| t.display.clone()),
            p(s.b.as_ref().and_then(|t| t.p_final)),
            p(s.b_token_p_final_under_a),
        ]);
    }
    let mut t = b.build();
    t.with(Style::blank());
    writeln!(w, "{t}")
}

/// `ntv check`.
pub fn check(
    w: &mut dyn Write,
    report: &crate::trace::CheckReport,
    build_notes: &[String],
    piece: &dyn Fn(usize, Option<i32>) -> String,
    pal: &Palette,
) -> io::Result<()> {
    for note in build_notes {
        writeln!(
            w,
            "{}",
            pal.muted(&format!("recorded on another build: {note}"))
        )?;
    }
    let mut b = Builder::default();
    b.push_record(["case", "result", "steps", "max |Δp|", "first divergence"]);
    for c in &report.cases {
        let first = match &c.first_divergence {
            Some(d) => format!(
                "step {} ({}): expected {} p={} · got {} p={}{}",
                d.step,
                d.kind.as_str(),
                piece(c.case_index, d.expected_id),
                d.expected_p.map_or("-".into(), |p| format!("{p:.5}")),
                piece(c.case_index, d.actual_id),
                d.actual_p.map_or("-".into(), |p| format!("{p:.5}")),
                if d.near_tie { " · near tie" } else { "" }
            ),
            None => "-".into(),
        };
        b.push_record([
            c.id.clone().unwrap_or_else(|| c.case_index.to_string()),
            if c.passed {
                pal.kept("pass")
            } else {
                pal.warn("FAIL")
            },
            c.steps_compared.to_string(),
            format!("{:.2e}", c.max_abs_diff),
            first,
        ]);
    }
    let mut t = b.build();
    t.with(Style::blank());
    writeln!(w, "{t}")?;
    let failed = report.cases.iter().filter(|c| !c.passed).count();
    writeln!(
        w,
        "{} {} of {} case(s) passed (atol {:e}{})",
        pal.heading("check:"),
        report.cases.len() - failed,
        report.cases.len(),
        report.atol,
        if report.exact_tokens {
            ", exact tokens"
        } else {
            ", tie flips allowed"
        }
    )
}

/// `ntv diff`.
pub fn diff(w: &mut dyn Write, s: &crate::trace::DiffSummary, pal: &Palette) -> io::Result<()> {
    let mut b = Builder::default();
    b.push_record([
        "steps",
        "KL mean",
        "KL median",
        "KL p99",
        "KL max",
        "same top-1",
        "Δp mean",
        "Δp rms",
    ]);
    b.push_record([
        s.n_steps.to_string(),
        format!("{:.5}", s.kl_mean),
        format!("{:.5}", s.kl_median),
        format!("{:.5}", s.kl_p99),
        format!("{:.5}", s.kl_max),
        format!("{:.1}%", s.same_top1_pct),
        format!("{:+.4}", s.delta_p_mean),
        format!("{:.4}", s.delta_p_rms),
    ]);
    let mut t = b.build();
    t.with(Style::blank());
    writeln!(
        w,
        "{} (KL in nats, KL(p_a ‖ p_b) per step)",
        pal.heading("diff")
    )?;
    writeln!(w, "{t}")
}

/// Knob values shown as columns at most; a longer sweep turns the table (values as rows).
pub const SWEEP_COLUMNS: usize = 12;

fn knob_value(v: f64) -> String {
    let s = format!("{v:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s.is_empty() || s == "-" {
        "0".into()
    } else {
        s.to_string()
    }
}

/// `ntv sweep`: per value of the second knob (if any), candidates × values of the first with
/// each cell's `p_final` (`·stage` where cut), then the kept count and entropy.
pub fn sweep(w: &mut dyn Write, doc: &crate::record::SweepDoc, pal: &Palette) -> io::Result<()> {
    let first = &doc.axes[0];
    let n = first.values.len();
    writeln!(
        w,
        "{} {} over {} values at completion position {} ({} context tokens)",
        pal.heading("sweep"),
        first.knob,
        n,
        doc.position,
        doc.context_token_count
    )?;
    writeln!(w, "{} {}", pal.heading("params"), params_line(&doc.params))?;
    let cell = |c: &crate::record::SweepCell| -> String {
        match (c.kept, c.cut_by) {
            (true, _) => pal.by_prob(&pct(c.p_final), c.p_final),
            (false, Some(stage)) => pal.cut(&format!("·{}", cut_name(stage))),
            (false, None) => pal.cut("·"),
        }
    };
    for slice in doc.points.chunks(n.max(1)) {
        if let (Some(second), Some(v)) = (doc.axes.get(1), slice[0].values.get(1)) {
            writeln!(
                w,
                "\n{} {} = {}",
                pal.heading("with"),
                second.knob,
                knob_value(*v)
            )?;
        }
        let mut b = Builder::default();
        if n <= SWEEP_COLUMNS {
            let mut head = vec!["token".to_string(), "id".into(), "p_base".into()];
            head.extend(
                slice
                    .iter()
                    .map(|p| format!("{} {}", first.knob, knob_value(p.values[0]))),
            );
            b.push_record(head);
            for (row, c) in doc.candidates.iter().enumerate() {
                let mut r = vec![pill(&c.token, pal), c.token.id.to_string(), pct(c.p_base)];
                r.extend(slice.iter().map(|p| cell(&p.cells[row])));
                b.push_record(r);
            }
            let mut kept = vec!["(kept)".to_string(), String::new(), String::new()];
            kept.extend(slice.iter().map(|p| p.kept_token_count.to_string()));
            b.push_record(kept);
            let mut ent = vec!["(entropy bits)".to_string(), String::new(), String::new()];
            ent.extend(slice.iter().map(|p| format!("{:.2}", p.entropy_final)));
            b.push_record(ent);
        } else {
            let mut head = vec![first.knob.to_string(), "kept".into(), "entropy".into()];
            head.extend(doc.candidates.iter().map(|c| pill(&c.token, pal)));
            b.push_record(head);
            for p in slice {
                let mut r = vec![
                    knob_value(p.values[0]),
                    p.kept_token_count.to_string(),
                    format!("{:.2}", p.entropy_final),
                ];
                r.extend(p.cells.iter().map(&cell));
                b.push_record(r);
            }
        }
        let mut t = b.build();
        t.with(Style::blank());
        t.modify(Columns::new(1..), Alignment::right());
        writeln!(w, "{t}")?;
    }
    Ok(())
}

/// `ntv model list`.
pub fn model_list(
    w: &mut dyn Write,
    doc: &crate::record::ModelListDoc,
    pal: &Palette,
) -> io::Result<()> {
    if doc.models.is_empty() {
        return writeln!(
            w,
            "no cached models (Hugging Face cache: {})",
            doc.hub_cache
        );
    }
    let mut b = Builder::default();
    b.push_record(["reference", "quant", "size", "source", "path"]);
    for m in &doc.models {
        let source = match (&m.repo, &m.revision) {
            (Some(repo), Some(rev)) => {
                let short: String = rev.chars().take(12).collect();
                let refs = if m.refs.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", m.refs.join(", "))
                };
                format!("{} {repo}@{short}{refs}", m.source)
            }
            _ => m.source.clone(),
        };
        let parts = if m.parts > 1 {
            format!(" in {} parts", m.parts)
        } else {
            String::new()
        };
        b.push_record([
            pal.heading(&m.reference),
            m.quant.clone().unwrap_or_else(|| "-".into()),
            format!("{}{parts}", indicatif::HumanBytes(m.size)),
            source,
            m.path.clone(),
        ]);
    }
    let mut t = b.build();
    t.with(Style::blank());
    writeln!(w, "{t}")
}
