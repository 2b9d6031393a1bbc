//! Attribution for people: the context as a heatmap (each token shaded by its score, the
//! target highlighted, a legend with the range), the top contributors as a table, and for
//! several targets a triangular targets × context matrix.
//!
//! Without colour the shading is spelled out: every token is followed by a block glyph
//! (`▁`…`█`, `·` for 0) whose height is the score's share of the largest magnitude, and
//! negative scores carry a `-` before the glyph.

use std::io::{self, Write};

use tabled::builder::Builder;
use tabled::settings::{Alignment, Style, object::Columns};
use unicode_width::UnicodeWidthStr;

use super::Palette;
use super::text::{bar, pct};
use crate::record::{AttributeDoc, AttributionRecord, ScoredToken};

const GLYPHS: [char; 9] = ['·', '▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

/// The block glyph for a level in [0, 1] (`·` for 0, `▁` for any non-zero level).
pub fn glyph(level: f64) -> char {
    if !level.is_finite() || level <= 0.0 {
        return GLYPHS[0];
    }
    let i = (level.clamp(0.0, 1.0) * 8.0).ceil() as usize;
    GLYPHS[i.clamp(1, 8)]
}

/// Largest |score| (0 when all are 0 or there are none).
pub(crate) fn max_abs(scores: &[ScoredToken]) -> f64 {
    scores
        .iter()
        .map(|s| s.score.abs())
        .filter(|x| x.is_finite())
        .fold(0.0, f64::max)
}

fn level(score: f64, max: f64) -> f64 {
    if max > 0.0 { score.abs() / max } else { 0.0 }
}

/// A score with sensible precision.
pub fn score_text(x: f64) -> String {
    if x == 0.0 {
        "0".into()
    } else if x.abs() >= 0.01 {
        format!("{x:.4}")
    } else {
        format!("{x:.2e}")
    }
}

/// Everything `ntv attribute` prints as a table: one target in full, or several as a matrix
/// followed by each target's top contributors.
pub fn attribute(
    w: &mut dyn Write,
    doc: &AttributeDoc,
    top: usize,
    width: usize,
    pal: &Palette,
) -> io::Result<()> {
    match doc.targets.as_slice() {
        [] => writeln!(w, "{}", pal.muted("(no targets)")),
        [one] => record(w, one, top, width, pal),
        many => {
            header(w, &many[0], pal)?;
            matrix(w, many, width, pal)?;
            writeln!(w)?;
            top_per_target(w, many, top.min(3), pal)
        }
    }
}

fn header(w: &mut dyn Write, r: &AttributionRecord, pal: &Palette) -> io::Result<()> {
    let mut parts = vec![
        pal.heading(r.method.name()),
        format!("agg {}", enum_name(&r.aggregation)),
    ];
    if let Some(f) = &r.target_fn {
        parts.push(format!("target-fn {}", enum_name(f)));
    }
    parts.push(format!("engine {}", enum_name(&r.engine)));
    if let Some(steps) = r.steps {
        parts.push(format!("{steps} steps"));
    }
    if let Some(window) = r.window {
        parts.push(format!("window {window}"));
    }
    writeln!(w, "{}", parts.join(&pal.muted(" · ")))
}

fn enum_name<T: serde::Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}

fn target_label(r: &AttributionRecord) -> String {
    match r.target.index {
        Some(i) => format!("completion token #{i}"),
        None => "candidate next token".into(),
    }
}

/// One target: header, heatmap of the context, legend, top contributors.
pub fn record(
    w: &mut dyn Write,
    r: &AttributionRecord,
    top: usize,
    width: usize,
    pal: &Palette,
) -> io::Result<()> {
    header(w, r, pal)?;
    let t = &r.target;
    let shown = if t.special {
        pal.special(&t.display)
    } else {
        t.display.clone()
    };
    writeln!(
        w,
        "target: {} {} (id {}), p = {} ({}){}",
        target_label(r),
        pal.chosen(&format!("[{shown}]")),
        t.id,
        pct(t.prob),
        enum_name(&r.engine),
        r.completeness_error
            .map(|e| format!(", completeness error {}", score_text(e)))
            .unwrap_or_default()
    )?;
    writeln!(w)?;
    heat_text(w, r, width, pal)?;
    writeln!(w)?;
    legend(w, r, pal)?;
    writeln!(w)?;
    contributors(w, r, top, pal)
}

/// The context as wrapped, shaded text, ending with the highlighted target.
fn heat_text(
    w: &mut dyn Write,
    r: &AttributionRecord,
    width: usize,
    pal: &Palette,
) -> io::Result<()> {
    let max = max_abs(&r.scores);
    let width = width.max(20);
    let mut col = 0usize;
    let mut line = String::new();
    let flush = |line: &mut String, col: &mut usize, w: &mut dyn Write| -> io::Result<()> {
        writeln!(w, "{line}")?;
        line.clear();
        *col = 0;
        Ok(())
    };
    for s in &r.scores {
        let lv = level(s.score, max);
        let neg = s.score < 0.0;
        let plain = if pal.enabled() {
            s.display.clone()
        } else {
            format!("{}{}{}", s.display, if neg { "-" } else { "" }, glyph(lv))
        };
        let cells = UnicodeWidthStr::width(plain.as_str());
        if col > 0 && col + cells > width {
            flush(&mut line, &mut col, w)?;
        }
        line.push_str(&pal.heat(&plain, lv, neg));
        col += cells;
        if s.text.contains('\n') {
            flush(&mut line, &mut col, w)?;
        }
    }
    let t = &r.target;
    let tail = format!(" → [{}]", t.display);
    if col > 0 && col + UnicodeWidthStr::width(tail.as_str()) > width {
        flush(&mut line, &mut col, w)?;
    }
    line.push_str(&pal.chosen(&tail));
    writeln!(w, "{line}")
}

fn legend(w: &mut dyn Write, r: &AttributionRecord, pal: &Palette) -> io::Result<()> {
    let max = max_abs(&r.scores);
    let min = r
        .scores
        .iter()
        .map(|s| s.score)
        .filter(|x| x.is_finite())
        .fold(f64::INFINITY, f64::min);
    let ramp: String = (1..=8)
        .map(|i| {
            let lv = i as f64 / 8.0;
            pal.heat(&glyph(lv).to_string(), lv, false)
        })
        .collect();
    let sum: f64 = r.scores.iter().map(|s| s.score).sum();
    writeln!(
        w,
        "{} 0 {ramp} {}   (min {}, max {}, sum {}, {} tokens{})",
        pal.muted("legend:"),
        score_text(max),
        score_text(if min.is_finite() { min } else { 0.0 }),
        score_text(
            r.scores
                .iter()
                .map(|s| s.score)
                .fold(f64::NEG_INFINITY, f64::max)
        ),
        score_text(sum),
        r.scores.len(),
        if min < 0.0 {
            "; negative scores shaded blue, `-` without colour"
        } else {
            ""
        }
    )
}

/// Indices of the `top` largest scores by magnitude (ties: earlier token first).
fn top_indices(scores: &[ScoredToken], top: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| {
        scores[b]
            .score
            .abs()
            .total_cmp(&scores[a].score.abs())
            .then(a.cmp(&b))
    });
    idx.truncate(top);
    idx
}

fn contributors(
    w: &mut dyn Write,
    r: &AttributionRecord,
    top: usize,
    pal: &Palette,
) -> io::Result<()> {
    if top == 0 {
        return Ok(());
    }
    let max = max_abs(&r.scores);
    let mut b = Builder::default();
    b.push_record(["rank", "index", "token", "id", "where", "score", ""]);
    for (rank, &i) in top_indices(&r.scores, top).iter().enumerate() {
        let s = &r.scores[i];
        let token = if s.special {
            pal.special(&s.display)
        } else {
            s.display.clone()
        };
        b.push_record([
            (rank + 1).to_string(),
            s.index.to_string(),
            token,
            s.id.to_string(),
            if s.completion {
                "completion".into()
            } else {
                "prompt".into()
            },
            score_text(s.score),
            bar(level(s.score, max), 10),
        ]);
    }
    let mut t = b.build();
    t.with(Style::blank());
    t.modify(Columns::new(0..2), Alignment::right());
    t.modify(Columns::new(3..4), Alignment::right());
    t.modify(Columns::new(5..6), Alignment::right());
    writeln!(w, "{}", pal.heading("top contributors"))?;
    writeln!(w, "{t}")
}

/// Targets × context as a lower-triangular matrix of shaded cells, one row per target (each row
/// scaled to its own largest magnitude). Wide contexts keep their last columns.
pub fn matrix(
    w: &mut dyn Write,
    records: &[AttributionRecord],
    width: usize,
    pal: &Palette,
) -> io::Result<()> {
    let n = records.iter().map(|r| r.scores.len()).max().unwrap_or(0);
    let labels: Vec<String> = records
        .iter()
        .map(|r| {
            let i = r.target.index.map(|i| format!("#{i}")).unwrap_or_default();
            let mut d = r.target.display.clone();
            if UnicodeWidthStr::width(d.as_str()) > 12 {
                d = d.chars().take(11).collect::<String>() + "…";
            }
            format!("{i} {d}")
        })
        .collect();
    let lw = labels
        .iter()
        .map(|l| UnicodeWidthStr::width(l.as_str()))
        .max()
        .unwrap_or(0);
    let room = width.saturating_sub(lw + 3).max(10);
    let first = n.saturating_sub(room);
    writeln!(
        w,
        "{}",
        pal.muted(&format!(
            "targets × context ({} targets, {n} context positions{}); each row scaled to its largest |score|",
            records.len(),
            if first > 0 {
                format!(", positions before {first} not shown: use --format json")
            } else {
                String::new()
            }
        ))
    )?;
    // Ruler: a mark every 10 positions.
    let mut ruler = String::new();
    let mut p = first;
    while p < n {
        if p % 10 == 0 {
            let mark = p.to_string();
            ruler.push_str(&mark);
            p += mark.len();
        } else {
            ruler.push(' ');
            p += 1;
        }
    }
    writeln!(w, "{:lw$} │{}", "", pal.muted(&ruler))?;
    for (r, label) in records.iter().zip(&labels) {
        let max = max_abs(&r.scores);
        let mut row = String::new();
        for p in first..n {
            match r.scores.get(p) {
                Some(s) => {
                    let lv = level(s.score, max);
                    row.push_str(&pal.heat(&glyph(lv).to_string(), lv, s.score < 0.0));
                }
                None => row.push(' '),
            }
        }
        let pad = lw - UnicodeWidthStr::width(label.as_str());
        writeln!(w, "{label}{} │{row}", " ".repeat(pad))?;
    }
    Ok(())
}

fn top_per_target(
    w: &mut dyn Write,
    records: &[AttributionRecord],
    top: usize,
    pal: &Palette,
) -> io::Result<()> {
    let mut b = Builder::default();
    // p under the records' engine (one per call: one method).
    let p = records
        .first()
        .map_or("p".to_string(), |r| format!("p ({})", enum_name(&r.engine)));
    let mut head = vec!["target".to_string(), p];
    head.extend((1..=top).map(|i| format!("top {i}")));
    b.push_record(head);
    for r in records {
        let mut row = vec![
            format!(
                "{} {}",
                r.target.index.map(|i| format!("#{i}")).unwrap_or_default(),
                r.target.display
            ),
            pct(r.target.prob),
        ];
        for i in top_indices(&r.scores, top) {
            let s = &r.scores[i];
            row.push(format!("{}@{} {}", s.display, s.index, score_text(s.score)));
        }
        while row.len() < top + 2 {
            row.push(String::new());
        }
        b.push_record(row);
    }
    let mut t = b.build();
    t.with(Style::blank());
    t.modify(Columns::new(1..2), Alignment::right());
    writeln!(w, "{}", pal.heading("top contributors per target"))?;
    writeln!(w, "{t}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attribution::{Agg, Engine, Method, TargetFn};
    use crate::record::AttributionTarget;

    fn tok(index: usize, text: &str, score: f64) -> ScoredToken {
        ScoredToken {
            index,
            id: index as i32 + 100,
            text: text.into(),
            bytes: text.as_bytes().to_vec(),
            display: crate::render::text::display(text),
            special: false,
            completion: index >= 2,
            score,
        }
    }

    fn rec(scores: Vec<ScoredToken>, index: Option<usize>) -> AttributionRecord {
        AttributionRecord {
            kind: "attribution".into(),
            id: None,
            line: None,
            shard: None,
            method: Method::Saliency,
            aggregation: Agg::Sum,
            target_fn: Some(TargetFn::Prob),
            engine: Engine::Autograd,
            target: AttributionTarget {
                kind: crate::record::TargetKind::Completion,
                index,
                id: 7,
                text: " Paris".into(),
                bytes: b" Paris".to_vec(),
                display: "␠Paris".into(),
                special: false,
                prob: 0.5,
            },
            context_len: scores.len(),
            scores,
            steps: None,
            baseline: None,
            window: None,
            completeness_error: None,
            attention: None,
            elapsed_ms: 1.0,
        }
    }

    #[test]
    fn glyphs_scale_with_level() {
        assert_eq!(glyph(0.0), '·');
        assert_eq!(glyph(0.01), '▁');
        assert_eq!(glyph(0.5), '▄');
        assert_eq!(glyph(1.0), '█');
        assert_eq!(glyph(f64::NAN), '·');
    }

    #[test]
    fn plain_heatmap_spells_out_levels_signs_and_the_target() {
        let r = rec(
            vec![
                tok(0, "The", 0.5),
                tok(1, " cat", -0.25),
                tok(2, " sat", 0.0),
            ],
            Some(3),
        );
        let mut out = Vec::new();
        record(&mut out, &r, 2, 80, &Palette::new(false)).unwrap();
        let s = String::from_utf8(out).unwrap();
        assert!(s.contains("The█␠cat-▄␠sat· → [␠Paris]"), "{s}");
        assert!(s.contains("completion token #3"), "{s}");
        assert!(s.contains("negative scores"), "{s}");
        // Top 2 by magnitude: The, then cat; sat is not listed.
        let top = &s[s.find("top contributors").unwrap()..];
        assert!(
            top.find("The").unwrap() < top.find("␠cat").unwrap(),
            "{top}"
        );
        assert!(!top.contains("␠sat"), "{top}");
        assert!(!s.contains('\u{1b}'), "no escape codes without colour");
    }

    #[test]
    fn colour_shades_backgrounds() {
        let r = rec(vec![tok(0, "a", 1.0), tok(1, "b", 0.1)], None);
        let mut out = Vec::new();
        record(&mut out, &r, 1, 80, &Palette::new(true)).unwrap();
        let s = String::from_utf8(out).unwrap();
        assert!(s.contains("48;5;214m"), "strongest shade present: {s:?}");
        assert!(s.contains("candidate next token"));
    }

    #[test]
    fn wraps_to_the_width() {
        let scores: Vec<_> = (0..40).map(|i| tok(i, " word", 1.0 / 40.0)).collect();
        let r = rec(scores, Some(40));
        let mut out = Vec::new();
        heat_text(&mut out, &r, 30, &Palette::new(false)).unwrap();
        let s = String::from_utf8(out).unwrap();
        assert!(s.lines().count() > 5);
        assert!(s.lines().all(|l| UnicodeWidthStr::width(l) <= 30), "{s}");
    }

    #[test]
    fn matrix_is_lower_triangular() {
        let recs: Vec<_> = (1..=3)
            .map(|n| {
                rec(
                    (0..n).map(|i| tok(i, "x", 1.0 / n as f64)).collect(),
                    Some(n - 1),
                )
            })
            .collect();
        let mut out = Vec::new();
        matrix(&mut out, &recs, 80, &Palette::new(false)).unwrap();
        let s = String::from_utf8(out).unwrap();
        let rows: Vec<&str> = s.lines().skip(2).collect();
        assert_eq!(rows.len(), 3);
        assert!(rows[0].ends_with("│█  "), "{s}");
        assert!(rows[1].ends_with("│██ "), "{s}");
        assert!(rows[2].ends_with("│███"), "{s}");
    }

    #[test]
    fn matrix_keeps_the_last_columns_when_too_wide() {
        let recs = vec![rec((0..200).map(|i| tok(i, "x", 0.005)).collect(), Some(0))];
        let mut out = Vec::new();
        matrix(&mut out, &recs, 60, &Palette::new(false)).unwrap();
        let s = String::from_utf8(out).unwrap();
        assert!(s.contains("not shown"), "{s}");
        assert!(
            s.lines().skip(1).all(|l| UnicodeWidthStr::width(l) <= 60),
            "{s}"
        );
    }
}
