//! The attribution page: for each target the heatmap over its context (hover or click a
//! target to switch), with several targets the targets × context matrix, method, aggregation
//! and a legend; a batch is one page with an index of its requests.

use maud::{Markup, html};
use serde::Serialize;

use super::parts::{
    Grid, Label, facts, fmt_num, heatmap_grid, json_name, pill, score_colour, score_legend,
};
use super::round6;
use crate::record::{AttributeDoc, AttributionLine, AttributionRecord};

#[derive(Serialize)]
struct TargetData {
    /// One score per context position.
    s: Vec<f64>,
}

#[derive(Serialize)]
struct GroupData {
    targets: Vec<TargetData>,
    max: f64,
    signed: bool,
}

/// One request's records: the target strip, the context heatmap, the matrix.
fn group(gi: usize, records: &[&AttributionRecord], data: &mut Vec<GroupData>) -> Markup {
    let signed = records
        .iter()
        .flat_map(|r| &r.scores)
        .any(|s| s.score < 0.0);
    let max = records
        .iter()
        .flat_map(|r| &r.scores)
        .map(|s| s.score.abs())
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max);
    data.push(GroupData {
        targets: records
            .iter()
            .map(|r| TargetData {
                s: r.scores.iter().map(|s| round6(s.score)).collect(),
            })
            .collect(),
        max,
        signed,
    });
    let Some(first) = records.first() else {
        return html! {};
    };
    let context = records
        .iter()
        .max_by_key(|r| r.scores.len())
        .map(|r| &r.scores[..])
        .unwrap_or_default();
    let mut f: Vec<(&str, String)> = vec![
        ("method", json_name(&first.method)),
        ("aggregation", json_name(&first.aggregation)),
        ("engine", json_name(&first.engine)),
    ];
    if let Some(t) = &first.target_fn {
        f.push(("target function", json_name(t)));
    }
    if let Some(s) = first.steps {
        f.push(("steps", s.to_string()));
    }
    if let Some(b) = &first.baseline {
        f.push(("baseline", json_name(b)));
    }
    if let Some(w) = first.window {
        f.push(("window", w.to_string()));
    }
    if let Some(e) = first.completeness_error {
        f.push(("completeness error", fmt_num(e)));
    }
    f.push(("targets", records.len().to_string()));
    let grid = (records.len() > 1).then(|| Grid {
        caption: "targets × context",
        corner: "target \\ context",
        rows: records
            .iter()
            .map(|r| Label {
                text: r.target.display.clone(),
                title: format!(
                    "id {} · {:?} · p {} ({})",
                    r.target.id,
                    r.target.text,
                    fmt_num(r.target.prob),
                    json_name(&r.engine)
                ),
                special: r.target.special,
            })
            .collect(),
        cols: context
            .iter()
            .map(|s| Label {
                text: s.display.clone(),
                title: format!("position {} · id {} · {:?}", s.index, s.id, s.text),
                special: s.special,
            })
            .collect(),
        values: records
            .iter()
            .map(|r| {
                (0..context.len())
                    .map(|i| r.scores.get(i).map(|s| s.score))
                    .collect()
            })
            .collect(),
        signed,
        row_attr: "grid-target",
    });
    html! {
        section.attr data-group=(gi) {
            (facts(&f))
            h3 { "Targets" }
            div.pills.targets {
                @for (ti, r) in records.iter().enumerate() {
                    span.tok.target.special[r.target.special].active[ti == 0] data-target=(ti) tabindex="0"
                        title=(format!("id {} · {:?} · p {} ({})", r.target.id, r.target.text, fmt_num(r.target.prob), json_name(&r.engine))) {
                        (r.target.display)
                    }
                }
            }
            h3 { "Context " span.muted.which { "(scores for target " (first.target.display) ")" } }
            div.pills.ctx {
                @for (ci, s) in context.iter().enumerate() {
                    @let score = first.scores.get(ci).map(|s| s.score);
                    span.tok.special[s.special].completion[s.completion].none[score.is_none()]
                        data-pos=(ci)
                        style=(score.map(|v| score_colour(v, max, signed)).unwrap_or_default())
                        title=(format!("position {} · id {} · {:?} · score {}", s.index, s.id, s.text, score.map(fmt_num).unwrap_or_else(|| "-".into()))) {
                        (s.display)
                    }
                }
            }
            (score_legend(max, signed))
            @if let Some(g) = &grid { (heatmap_grid(g)) }
        }
    }
}

/// `ntv attribute`'s page.
pub fn page(doc: &AttributeDoc) -> Markup {
    let mut data = Vec::new();
    let records: Vec<&AttributionRecord> = doc.targets.iter().collect();
    let body = html! {
        (facts(&[
            ("model", doc.model.model_id.clone()),
            ("branch", doc.branch.clone()),
            ("prompt tokens", doc.prompt_tokens.len().to_string()),
            ("completion tokens", doc.completion_tokens.len().to_string()),
        ]))
        h2 { "Prompt" }
        div.pills.plain {
            @for p in &doc.prompt_tokens { (pill(p.id, &p.text, &p.display, p.special)) }
            @for p in &doc.completion_tokens { span.completion { (pill(p.id, &p.text, &p.display, p.special)) } }
        }
        (group(0, &records, &mut data))
    };
    super::page(
        "attribute",
        "ntv attribute",
        Some(super::data_block(&data)),
        body,
    )
}

/// A request of a batch: its line, its id, its records or its error.
type Section<'a> = (
    usize,
    Option<&'a serde_json::Value>,
    Result<Vec<&'a AttributionRecord>, &'a str>,
);

/// `ntv attribute --batch`'s page: an index, then one section per request (its line), with
/// failed lines listed in place.
pub fn batch_page(lines: &[AttributionLine]) -> Markup {
    // Records of one request are consecutive and share the line number.
    let mut sections: Vec<Section<'_>> = Vec::new();
    for l in lines {
        match l {
            AttributionLine::Ok(r) => {
                let line = r.line.unwrap_or(0);
                match sections.last_mut() {
                    Some((n, _, Ok(rs))) if *n == line => rs.push(r),
                    _ => sections.push((line, r.id.as_ref(), Ok(vec![r]))),
                }
            }
            AttributionLine::Failed(f) => sections.push((f.line, f.id.as_ref(), Err(&f.error))),
        }
    }
    let name = |line: usize, id: Option<&serde_json::Value>| match id {
        Some(serde_json::Value::String(s)) => format!("{s} (line {line})"),
        Some(v) => format!("{v} (line {line})"),
        None => format!("line {line}"),
    };
    let mut data = Vec::new();
    let mut gi = 0;
    let body = html! {
        nav.index {
            h2 { "Requests" }
            ol {
                @for (line, id, res) in &sections {
                    li {
                        a href=(format!("#req-{line}")) { (name(*line, *id)) }
                        @match res {
                            Ok(rs) => { " · " (rs.len()) " target(s) · " (rs.first().map(|r| json_name(&r.method)).unwrap_or_default()) }
                            Err(_) => { " · " span.fail { "failed" } }
                        }
                    }
                }
            }
        }
        @for (line, id, res) in &sections {
            article.request id=(format!("req-{line}")) {
                h2 { (name(*line, *id)) }
                @match res {
                    Ok(rs) => {
                        @let g = { let g = gi; gi += 1; g };
                        (group(g, rs, &mut data))
                    }
                    Err(e) => { p.fail { "error: " (e) } }
                }
            }
        }
    };
    super::page(
        "attribute",
        "ntv attribute --batch",
        Some(super::data_block(&data)),
        body,
    )
}
