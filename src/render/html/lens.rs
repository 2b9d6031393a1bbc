//! The page of `ntv lens`: the classic grid of positions × layers, each cell the lens
//! probability of the position's tracked token (the model's own prediction, or `--token`), and
//! per position the layer where it first becomes the top-1.

use maud::{Markup, html};

use super::parts::{Grid, Label, facts, fmt_num, heatmap_grid};
use crate::record::LensDoc;

/// The page.
pub fn page(d: &LensDoc) -> Markup {
    let layers = d.n_layers;
    let grid = Grid {
        caption: "lens probability of the tracked token: positions × layers (0 = embedding)",
        corner: "position \\ layer",
        rows: d
            .positions
            .iter()
            .map(|p| Label {
                text: format!("{} → {}", p.input.display, p.tracked.display),
                title: format!(
                    "position {} · input {:?} (id {}) · tracked {:?} (id {}) · first top-1 at {}",
                    p.position,
                    p.input.text,
                    p.input.id,
                    p.tracked.text,
                    p.tracked.id,
                    p.first_top1_layer
                        .map_or("no layer".to_string(), |l| format!("layer {l}"))
                ),
                special: p.input.special,
            })
            .collect(),
        cols: (0..layers)
            .map(|l| Label {
                text: l.to_string(),
                title: if l == 0 {
                    "layer 0: the input embedding".to_string()
                } else {
                    format!("layer {l}: the residual after block {}", l - 1)
                },
                special: false,
            })
            .collect(),
        values: d
            .positions
            .iter()
            .map(|p| (0..layers).map(|l| p.layers.get(l).map(|x| x.p)).collect())
            .collect(),
        signed: false,
        row_attr: "lens-position",
    };
    let body = html! {
        (facts(&[
            ("model", d.model.model_id.clone()),
            ("architecture", d.model.architecture.clone()),
            ("layers", format!("{layers} (embedding + {} blocks)", layers.saturating_sub(1))),
            ("positions", d.positions.len().to_string()),
            ("norm eps", fmt_num(d.norm_eps)),
        ]))
        (heatmap_grid(&grid))
        h3 { "Where each position settles" }
        table.worst {
            thead { tr { th { "position" } th { "input" } th { "tracked" } th { "first top-1 layer" } th { "last-layer p" } } }
            tbody {
                @for p in &d.positions {
                    tr {
                        td.num { (p.position) }
                        td { span.tok.special[p.input.special] { (p.input.display) } }
                        td { span.tok.special[p.tracked.special] { (p.tracked.display) } }
                        td.num { @match p.first_top1_layer { Some(l) => (l), None => "–" } }
                        td.num { (fmt_num(p.layers.last().map_or(0.0, |l| l.p))) }
                    }
                }
            }
        }
    };
    super::page("lens", "ntv lens", None, body)
}
