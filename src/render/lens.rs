//! The logit lens for people: one position as a table of layers (the tracked token's lens
//! probability as a bar, its rank, the entropy and the top tokens, the first layer where it is
//! top-1 marked), and several positions (`--all`) as the grid of positions × layers, each cell
//! a block glyph as high as the tracked token's lens probability (coloured by it when colour
//! is on), so that it reads the same without colour.

use std::io::{self, Write};

use tabled::builder::Builder;
use tabled::settings::{Alignment, Style, object::Columns};
use unicode_width::UnicodeWidthStr;

use super::heatmap::glyph;
use super::table::pill;
use super::text::{bar, pct};
use super::{Document, Palette, TableCtx};
use crate::record::{LensDoc, LensPosition, LensTracked, TokenPill};

const BAR: usize = 10;
/// Columns of a token shown in a table cell.
const TOKEN_WIDTH: usize = 14;
/// Grid cells below this probability show the empty glyph.
const FAINT: f64 = 0.01;

impl Document for LensDoc {
    fn table(&self, w: &mut dyn Write, ctx: &TableCtx) -> io::Result<()> {
        let pal = &ctx.palette;
        let m = &self.model;
        writeln!(
            w,
            "{} {} · {} · {} · {} layers (embedding + {} blocks) · {} context tokens",
            pal.heading("model"),
            m.model_id,
            m.architecture,
            m.dtype,
            self.n_layers,
            self.n_layers.saturating_sub(1),
            self.context_tokens.len()
        )?;
        match self.positions.as_slice() {
            [one] => position(w, self, one, pal),
            many => grid(w, self, many, pal),
        }
    }
    fn html(&self, w: &mut dyn Write) -> io::Result<()> {
        super::html::write(w, &super::html::lens::page(self))
    }
}

/// A token clipped to `TOKEN_WIDTH` columns.
fn short(t: &TokenPill, pal: &Palette) -> String {
    let mut s = String::new();
    for c in t.display.chars() {
        if UnicodeWidthStr::width(s.as_str()) + UnicodeWidthStr::width(c.to_string().as_str())
            > TOKEN_WIDTH
        {
            s.push('…');
            break;
        }
        s.push(c);
    }
    let clipped = TokenPill {
        display: s,
        ..t.clone()
    };
    pill(&clipped, pal)
}

fn tracked_line(p: &LensPosition, pal: &Palette) -> String {
    let what = match p.tracked_is {
        LensTracked::FinalTop1 => "the model's prediction",
        LensTracked::Token => "--token",
    };
    let first = match p.first_top1_layer {
        Some(l) => format!("first top-1 at layer {l} (▶)"),
        None => "never top-1".into(),
    };
    format!(
        "{} position {} {} → {} {} ({what}) · {first}",
        pal.heading("lens"),
        p.position,
        pill(&p.input, pal),
        pal.chosen(&pill(&p.tracked, pal)),
        p.tracked.id,
    )
}

/// One position: a row per layer.
fn position(w: &mut dyn Write, doc: &LensDoc, p: &LensPosition, pal: &Palette) -> io::Result<()> {
    writeln!(w, "{}", tracked_line(p, pal))?;
    let mut b = Builder::default();
    b.push_record([
        "".to_string(),
        "layer".into(),
        format!("p({})", short(&p.tracked, pal)),
        String::new(),
        "rank".into(),
        "entropy".into(),
        "top tokens".into(),
    ]);
    for l in &p.layers {
        let first = p.first_top1_layer == Some(l.layer);
        let top: Vec<String> = l
            .top
            .iter()
            .map(|t| {
                let s = format!("{} {}", short(&t.token, pal), pct(t.p));
                if t.token.id == p.tracked.id {
                    pal.chosen(&s)
                } else {
                    s
                }
            })
            .collect();
        b.push_record([
            if first {
                pal.chosen("▶")
            } else {
                String::new()
            },
            if l.layer + 1 == doc.n_layers {
                format!("{} out", l.layer)
            } else {
                l.layer.to_string()
            },
            pal.by_prob(&bar(l.p, BAR), l.p),
            pct(l.p),
            l.rank.to_string(),
            format!("{:.2} b", l.entropy_bits),
            top.join("  "),
        ]);
    }
    let mut t = b.build();
    t.with(Style::blank());
    t.modify(Columns::new(1..2), Alignment::right());
    t.modify(Columns::new(3..6), Alignment::right());
    writeln!(w, "{t}")
}

/// Several positions: the grid of positions × layers.
fn grid(
    w: &mut dyn Write,
    doc: &LensDoc,
    positions: &[LensPosition],
    pal: &Palette,
) -> io::Result<()> {
    let tracked_all_final = positions
        .iter()
        .all(|p| p.tracked_is == LensTracked::FinalTop1);
    writeln!(
        w,
        "{} each cell is p(tracked) at one layer, as its height: {} below 1%, {} up to 12.5% … {} 1; ▶ marks the first top-1 layer; tracked: {}",
        pal.heading("lens grid"),
        glyph(0.0),
        glyph(0.1),
        glyph(1.0),
        if tracked_all_final {
            "each position's final prediction".to_string()
        } else {
            "--token".to_string()
        }
    )?;
    let label_w = positions
        .iter()
        .map(|p| UnicodeWidthStr::width(short(&p.input, &Palette::new(false)).as_str()))
        .max()
        .unwrap_or(0)
        .max(5);
    // Layer ruler: a tick every 5 layers.
    let mut ruler = String::new();
    let mut l = 0;
    while l < doc.n_layers {
        let tick = l.to_string();
        if l % 5 == 0 && l + tick.len() <= doc.n_layers {
            ruler.push_str(&tick);
            l += tick.len();
        } else {
            ruler.push(' ');
            l += 1;
        }
    }
    writeln!(
        w,
        "{:>5}  {:<label_w$}  {}  {}",
        "pos",
        "token",
        ruler,
        pal.muted("final p  → tracked")
    )?;
    for p in positions {
        let cells: String = p
            .layers
            .iter()
            .map(|l| {
                let g = if p.first_top1_layer == Some(l.layer) {
                    '▶'
                } else if l.p < FAINT {
                    glyph(0.0)
                } else {
                    glyph(l.p)
                };
                pal.heat(&g.to_string(), l.p, false)
            })
            .collect();
        let label = short(&p.input, pal);
        let pad = label_w.saturating_sub(UnicodeWidthStr::width(
            short(&p.input, &Palette::new(false)).as_str(),
        ));
        let last = p.layers.last().map_or(0.0, |l| l.p);
        writeln!(
            w,
            "{:>5}  {label}{}  {cells}  {:>7}  → {}",
            p.position,
            " ".repeat(pad),
            pct(last),
            short(&p.tracked, pal)
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tok(id: i32, text: &str) -> serde_json::Value {
        json!({"id": id, "text": text, "bytes": text.as_bytes(), "display": text, "special": false})
    }

    /// Two positions × three layers; the tracked token becomes top-1 at layer 1 at position 0
    /// and only at the last layer at position 1.
    fn doc(positions: usize) -> LensDoc {
        let layer = |l: usize, p: f64, rank: u32| {
            let mut top = tok(
                if rank == 1 { 7 } else { 8 },
                if rank == 1 { "Paris" } else { "the" },
            );
            top["p"] = json!(p.max(0.5));
            json!({"layer": l, "top": [top], "p": p, "rank": rank, "entropy_bits": 1.5})
        };
        let pos = |k: usize, ps: [(f64, u32); 3]| {
            json!({
                "position": k, "input": tok(k as i32, "is"), "next": null,
                "completion_index": null, "tracked": tok(7, "Paris"), "tracked_is": "final_top1",
                "first_top1_layer": ps.iter().position(|x| x.1 == 1),
                "layers": ps.iter().enumerate().map(|(l, &(p, r))| layer(l, p, r)).collect::<Vec<_>>(),
            })
        };
        let all = [
            pos(0, [(0.001, 900), (0.6, 1), (0.9, 1)]),
            pos(1, [(0.001, 900), (0.2, 2), (0.7, 1)]),
        ];
        serde_json::from_value(json!({
            "schema": "ntv.lens/1",
            "model": {"model_id": "m", "path": "m.gguf", "architecture": "llama", "n_params": 1,
                "dtype": "Q4_1", "file_size": 1, "vocab_size": 10, "vocab_type": "gpt2",
                "n_ctx_train": 8, "n_layer": 2, "n_head": 1, "n_head_kv": 1, "n_embd": 4,
                "has_chat_template": false, "bos_token_id": null, "eos_token_id": null,
                "eog_token_ids": [], "add_bos": false, "device": "CPU", "gpu_layers_offloaded": 0},
            "prompt_text": "is is", "context_tokens": [tok(0, "is"), tok(1, "is")],
            "n_layers": 3, "norm_eps": 1e-5, "softcap": null,
            "positions": all[all.len() - positions..],
            "timings": {"load_ms": 0.0, "capture_ms": 0.0, "head_ms": 0.0},
        }))
        .expect("a lens document")
    }

    fn render(d: &LensDoc) -> String {
        let mut out = Vec::new();
        let ctx = TableCtx {
            palette: Palette::new(false),
            width: 100,
        };
        d.table(&mut out, &ctx).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn one_position_marks_the_first_top1_layer_and_the_output_layer() {
        let s = render(&doc(1));
        let rows: Vec<&str> = s.lines().skip(3).collect();
        assert_eq!(rows.len(), 3, "{s}");
        assert!(
            rows[2].starts_with(" ▶") && rows[2].contains("2 out"),
            "{s}"
        );
        assert!(!rows[1].contains('▶'), "{s}");
        assert!(s.contains("first top-1 at layer 2"), "{s}");
    }

    #[test]
    fn the_grid_has_a_cell_per_layer_shaped_by_probability() {
        let s = render(&doc(2));
        let rows: Vec<&str> = s.lines().skip(3).collect();
        assert_eq!(rows.len(), 2, "{s}");
        // Position 0: below 1% (·), top-1 from layer 1 (▶), then 0.9 (above 7/8: █).
        assert!(rows[0].contains("·▶█"), "{s}");
        // Position 1: ·, 0.2 (▂), then the first top-1 at the last layer.
        assert!(rows[1].contains("·▂▶"), "{s}");
        assert!(
            rows[1].contains("70.0%") && rows[1].ends_with("→ Paris"),
            "{s}"
        );
    }
}
