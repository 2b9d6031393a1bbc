//! Pieces every page draws: token pills, colour scales, the distribution table, a heatmap
//! grid, an inline SVG line plot, fact lists.

use maud::{Markup, html};
use serde::Serialize;

use super::round6;
use crate::record::{Candidate, Dist};

/// A token as a pill: its visible-whitespace text, special tokens marked, the exact text and
/// id on hover.
pub fn pill(id: i32, text: &str, display: &str, special: bool) -> Markup {
    html! {
        span.tok.special[special] title=(format!("id {id} · {text:?}")) { (display) }
    }
}

/// Background for a probability: red (unlikely) through yellow to green (likely).
pub fn prob_colour(p: f64) -> String {
    let p = if p.is_finite() {
        p.clamp(0.0, 1.0)
    } else {
        0.0
    };
    format!("background:hsl({:.0} 75% 80%)", p * 120.0)
}

/// Background for an attribution score on a scale up to `max` (its largest magnitude):
/// signed scores red (positive) and blue (negative), others orange. The page's script draws
/// the same colours (`scoreColour` in page.js).
pub fn score_colour(score: f64, max: f64, signed: bool) -> String {
    let a = if max > 0.0 && score.is_finite() {
        (score.abs() / max).clamp(0.0, 1.0)
    } else {
        0.0
    };
    let (r, g, b) = match (signed, score < 0.0) {
        (true, true) => (38, 110, 220),
        (true, false) => (220, 50, 47),
        (false, _) => (230, 120, 20),
    };
    format!("background:rgba({r},{g},{b},{a:.3})")
}

/// The legend of a score scale.
pub fn score_legend(max: f64, signed: bool) -> Markup {
    html! {
        div.legend {
            @if signed {
                span { (fmt_num(-max)) }
                span.scale.signed {}
                span { (fmt_num(max)) }
            } @else {
                span { "0" }
                span.scale {}
                span { (fmt_num(max)) }
            }
        }
    }
}

/// A number for people: 4 significant digits, scientific when tiny.
pub fn fmt_num(x: f64) -> String {
    if x == 0.0 {
        "0".into()
    } else if x.abs() < 1e-3 {
        format!("{x:.2e}")
    } else {
        format!("{x:.4}")
    }
}

/// An axis tick: at most 4 decimals, trailing zeros dropped.
pub fn fmt_tick(x: f64) -> String {
    if x != 0.0 && x.abs() < 1e-3 {
        return format!("{x:.1e}");
    }
    let s = format!("{x:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" { "0".into() } else { s.to_string() }
}

/// A list of labelled facts.
pub fn facts(items: &[(&str, String)]) -> Markup {
    html! {
        dl.facts {
            @for (k, v) in items {
                div { dt { (k) } dd { (v) } }
            }
        }
    }
}

/// A candidate as the page's script reads it: display, p_base, p_final, cut stage, valid,
/// special, id.
#[derive(Debug, Serialize)]
pub struct Cand(
    String,
    f64,
    f64,
    Option<crate::sampling::CutStage>,
    bool,
    bool,
    i32,
);

impl From<&Candidate> for Cand {
    fn from(c: &Candidate) -> Self {
        Self(
            c.display.clone(),
            round6(c.p_base),
            round6(c.p_final),
            c.cut_by,
            c.valid,
            c.special,
            c.id,
        )
    }
}

/// A recorded distribution as the page's script reads it.
#[derive(Debug, Serialize)]
pub struct DistData {
    /// The shown candidates (the selected one last when it was not among them).
    pub c: Vec<Cand>,
    /// Selected id, if any.
    pub sel: Option<i32>,
    /// How it was selected.
    pub by: Option<crate::record::SelectedBy>,
    /// Rest of the p_base and p_final mass.
    pub ob: f64,
    pub of: f64,
    /// Kept tokens; valid tokens (constrained steps).
    pub kept: usize,
    pub valid: Option<usize>,
    /// Entropies in bits.
    pub hb: f64,
    pub hf: f64,
    /// Constraint kind, when active.
    pub con: Option<String>,
}

impl DistData {
    pub fn new(
        d: &Dist,
        selected: Option<&Candidate>,
        by: Option<crate::record::SelectedBy>,
    ) -> Self {
        let mut c: Vec<Cand> = d.tokens.iter().map(Cand::from).collect();
        if let Some(s) = selected
            && !d.tokens.iter().any(|t| t.id == s.id)
        {
            c.push(Cand::from(s));
        }
        Self {
            c,
            sel: selected.map(|s| s.id),
            by,
            ob: round6(d.other_p_base),
            of: round6(d.other_p_final),
            kept: d.kept_token_count,
            valid: d.valid_token_count,
            hb: round6(d.entropy_base),
            hf: round6(d.entropy_final),
            con: d.constraint_active.then(|| match &d.constraint_type {
                Some(k) => json_name(k),
                None => "constraint".into(),
            }),
        }
    }
}

/// A value's name as in the JSON output (enums serialise as strings).
pub fn json_name<T: Serialize>(x: &T) -> String {
    match serde_json::to_value(x) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(serde_json::Value::Null) | Err(_) => String::new(),
        Ok(v) => v.to_string(),
    }
}

/// A cut stage's name as in the JSON output.
pub fn cut_name(c: Option<crate::sampling::CutStage>) -> String {
    json_name(&c)
}

/// The distribution table drawn without the script (the page's script draws the same rows
/// for the step under the pointer: `distTable` in page.js).
pub fn dist_table(d: &Dist, selected: Option<&Candidate>) -> Markup {
    let mut rows: Vec<&Candidate> = d.tokens.iter().collect();
    if let Some(s) = selected
        && !d.tokens.iter().any(|t| t.id == s.id)
    {
        rows.push(s);
    }
    let sel = selected.map(|s| s.id);
    html! {
        table.dist {
            thead { tr { th { "token" } th { "p_base" } th { "p_final" } th { "" } th { "cut" } } }
            tbody {
                @for c in rows {
                    tr.sel[Some(c.id) == sel].cut[!c.kept].invalid[!c.valid] {
                        td { span.tok.special[c.special] title=(format!("id {}", c.id)) { (c.display) } }
                        td.num { (fmt_num(c.p_base)) }
                        td.num { (fmt_num(c.p_final)) }
                        td.bars {
                            span.bar.base style=(format!("width:{:.1}%", 100.0 * c.p_base.clamp(0.0, 1.0))) {}
                            span.bar.fin style=(format!("width:{:.1}%", 100.0 * c.p_final.clamp(0.0, 1.0))) {}
                        }
                        td { @if !c.valid { "invalid " } (cut_name(c.cut_by)) }
                    }
                }
            }
        }
        p.muted {
            "rest: p_base " (fmt_num(d.other_p_base)) ", p_final " (fmt_num(d.other_p_final))
            " · kept " (d.kept_token_count)
            @if let Some(v) = d.valid_token_count { " · valid " (v) }
            " · entropy " (format!("{:.2}", d.entropy_base)) " → " (format!("{:.2}", d.entropy_final)) " bits"
        }
    }
}

/// A label of a heatmap row or column.
#[derive(Debug, Clone)]
pub struct Label {
    pub text: String,
    pub title: String,
    pub special: bool,
}

/// A grid of scores (rows × columns; `None`: no value) drawn as a coloured table. Used for
/// the attribution matrix (targets × context) and meant for any other grid (positions ×
/// layers of a lens).
pub struct Grid<'a> {
    pub caption: &'a str,
    pub corner: &'a str,
    pub rows: Vec<Label>,
    pub cols: Vec<Label>,
    pub values: Vec<Vec<Option<f64>>>,
    /// Red/blue around zero (true) or one-sided.
    pub signed: bool,
    /// Attributes of each row (`data-row`), so a script can react to it.
    pub row_attr: &'a str,
}

impl Grid<'_> {
    /// The largest magnitude in the grid.
    pub fn max_abs(&self) -> f64 {
        self.values
            .iter()
            .flatten()
            .flatten()
            .filter(|v| v.is_finite())
            .fold(0.0, |m: f64, v| m.max(v.abs()))
    }
}

/// Draw a [`Grid`] with its legend.
pub fn heatmap_grid(g: &Grid<'_>) -> Markup {
    let max = g.max_abs();
    html! {
        figure.grid {
            figcaption { (g.caption) }
            div.gridwrap {
                table.heat {
                    thead {
                        tr {
                            th.corner { (g.corner) }
                            @for c in &g.cols {
                                th.col { span.tok.special[c.special] title=(c.title) { (c.text) } }
                            }
                        }
                    }
                    tbody {
                        @for (i, (r, vals)) in g.rows.iter().zip(&g.values).enumerate() {
                            tr data-row=(i) {
                                th.row { span.tok.special[r.special] title=(r.title) data-target=(i) data-role=(g.row_attr) { (r.text) } }
                                @for v in vals {
                                    @match v {
                                        Some(v) => td style=(score_colour(*v, max, g.signed)) title=(fmt_num(*v)) {},
                                        None => td.none {},
                                    }
                                }
                            }
                        }
                    }
                }
            }
            (score_legend(max, g.signed))
        }
    }
}

/// One line of a plot.
pub struct Series<'a> {
    pub name: &'a str,
    pub points: Vec<(f64, f64)>,
    /// CSS class of the line (its colour).
    pub class: &'a str,
}

/// A small SVG line plot; `marks` are x positions drawn as vertical lines (e.g. the first
/// divergence).
pub fn line_plot(title: &str, y_label: &str, series: &[Series<'_>], marks: &[f64]) -> Markup {
    const W: f64 = 640.0;
    const H: f64 = 170.0;
    const L: f64 = 48.0;
    const B: f64 = 22.0;
    let pts = series.iter().flat_map(|s| s.points.iter());
    let (mut x0, mut x1, mut y1) = (f64::INFINITY, f64::NEG_INFINITY, 0.0f64);
    let mut y0 = 0.0f64;
    for &(x, y) in pts.filter(|(x, y)| x.is_finite() && y.is_finite()) {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if !x0.is_finite() {
        (x0, x1) = (0.0, 1.0);
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    if y1 <= y0 {
        y1 = y0 + 1.0;
    }
    let sx = |x: f64| L + (x - x0) / (x1 - x0) * (W - L - 8.0);
    let sy = |y: f64| 8.0 + (1.0 - (y - y0) / (y1 - y0)) * (H - B - 8.0);
    html! {
        figure.plot {
            figcaption { (title) }
            svg viewBox=(format!("0 0 {W} {H}")) role="img" aria-label=(title) {
                line.axis x1=(L) y1=(sy(y0)) x2=(W - 8.0) y2=(sy(y0)) {}
                line.axis x1=(L) y1=(sy(y0)) x2=(L) y2=(sy(y1)) {}
                text.tick x=(L - 4.0) y=(sy(y1) + 4.0) text-anchor="end" { (fmt_tick(y1)) }
                text.tick x=(L - 4.0) y=(sy(y0)) text-anchor="end" { (fmt_tick(y0)) }
                text.tick x=(L) y=(H - 6.0) { (fmt_tick(x0)) }
                text.tick x=(W - 8.0) y=(H - 6.0) text-anchor="end" { (fmt_tick(x1)) }
                text.tick x=(12) y=(H / 2.0) transform=(format!("rotate(-90 12 {})", H / 2.0)) text-anchor="middle" { (y_label) }
                @for m in marks {
                    line.mark x1=(sx(*m)) y1=(sy(y1)) x2=(sx(*m)) y2=(sy(y0)) {}
                }
                @for s in series {
                    @let pts: Vec<String> = s.points.iter().filter(|(x, y)| x.is_finite() && y.is_finite()).map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y))).collect();
                    polyline class=(format!("series {}", s.class)) points=(pts.join(" ")) { title { (s.name) } }
                    @if s.points.len() == 1 {
                        circle class=(format!("series {}", s.class)) cx=(sx(s.points[0].0)) cy=(sy(s.points[0].1)) r="3" {}
                    }
                }
            }
            @if series.len() > 1 {
                div.keys { @for s in series { span class=(format!("key {}", s.class)) { (s.name) } } }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_drop_trailing_zeros() {
        assert_eq!(fmt_tick(839.0), "839");
        assert_eq!(fmt_tick(0.2), "0.2");
        assert_eq!(fmt_tick(0.0), "0");
        assert_eq!(fmt_tick(1.5e-5), "1.5e-5");
    }

    #[test]
    fn score_colours_follow_sign_and_magnitude() {
        assert_eq!(
            score_colour(0.5, 1.0, false),
            "background:rgba(230,120,20,0.500)"
        );
        assert_eq!(
            score_colour(-1.0, 1.0, true),
            "background:rgba(38,110,220,1.000)"
        );
        assert_eq!(
            score_colour(2.0, 1.0, true),
            "background:rgba(220,50,47,1.000)"
        );
        assert_eq!(
            score_colour(1.0, 0.0, false),
            "background:rgba(230,120,20,0.000)"
        );
    }

    #[test]
    fn pills_escape_token_text() {
        let p = pill(7, "<script>\"&", "<script>\"&", false).0;
        assert!(p.contains("&lt;script&gt;&quot;&amp;"), "{p}");
        assert!(!p.contains("<script>"), "{p}");
    }
}
