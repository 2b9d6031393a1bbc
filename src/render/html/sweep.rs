//! The page of `ntv sweep`: each candidate's p_final along the first knob (one plot per value
//! of a second knob), the kept-token count and the entropy.

use maud::{Markup, html};

use super::parts::{Series, facts, fmt_num, json_name, line_plot};
use crate::record::SweepDoc;

/// Candidates drawn as lines (the most probable by p_base).
const LINES: usize = 8;
/// Plots drawn for a second knob's values.
const PANELS: usize = 12;

const CLASSES: [&str; LINES] = ["s0", "s1", "s2", "s3", "s4", "s5", "s6", "s7"];

/// The page.
pub fn page(d: &SweepDoc) -> Markup {
    let Some(first) = d.axes.first() else {
        return super::page("sweep", "ntv sweep", None, html! { p { "no axis" } });
    };
    let n1 = first.values.len().max(1);
    let panels: Vec<(Option<f64>, &[crate::record::SweepPoint])> = match d.axes.get(1) {
        Some(second) => d
            .points
            .chunks(n1)
            .zip(&second.values)
            .take(PANELS)
            .map(|(pts, v)| (Some(*v), pts))
            .collect(),
        None => vec![(None, &d.points[..])],
    };
    let knob = json_name(&first.knob);
    let names: Vec<String> = d
        .candidates
        .iter()
        .take(LINES)
        .map(|c| format!("{} ({})", c.token.display, fmt_num(c.p_base)))
        .collect();
    let body = html! {
        (facts(&[
            ("model", d.model.model_id.clone()),
            ("branch", d.branch.clone()),
            ("position", d.position.to_string()),
            ("knobs", d.axes.iter().map(|a| json_name(&a.knob)).collect::<Vec<_>>().join(" × ")),
            ("candidates", d.candidates.len().to_string()),
        ]))
        @for (at, pts) in &panels {
            @let title = match (at, d.axes.get(1)) {
                (Some(v), Some(a)) => format!("p_final by {knob} at {} = {}", json_name(&a.knob), fmt_num(*v)),
                _ => format!("p_final by {knob}"),
            };
            @let series: Vec<Series> = d.candidates.iter().take(LINES).enumerate().map(|(i, _)| Series {
                name: &names[i],
                points: pts.iter().zip(&first.values).map(|(p, x)| (*x, p.cells.get(i).map_or(0.0, |c| c.p_final))).collect(),
                class: CLASSES[i],
            }).collect();
            (line_plot(&title, "p_final", &series, &[]))
            (line_plot(
                &format!("kept tokens by {knob}"),
                "kept",
                &[Series { name: "kept", points: pts.iter().zip(&first.values).map(|(p, x)| (*x, p.kept_token_count as f64)).collect(), class: "s0" }],
                &[],
            ))
            (line_plot(
                &format!("entropy of p_final by {knob} (bits)"),
                "bits",
                &[Series { name: "entropy", points: pts.iter().zip(&first.values).map(|(p, x)| (*x, p.entropy_final)).collect(), class: "s1" }],
                &[],
            ))
        }
    };
    super::page("sweep", "ntv sweep", None, body)
}
