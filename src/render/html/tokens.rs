//! The token page of `preview`, `step`, `branch show` and `generate`: the context as pills,
//! completion tokens shaded by `p_final`; hovering or clicking a completion token shows the
//! distribution recorded at that step (p_base against p_final, cut reasons, validity).

use maud::{Markup, html};
use serde::Serialize;

use super::parts::{DistData, dist_table, facts, fmt_num, pill, prob_colour};
use crate::record::{AppendedMeta, Dist, TokenPill};

/// The prompt as the page shows it.
pub enum Prompt<'a> {
    /// Token pills (the model was loaded).
    Tokens(&'a [TokenPill]),
    /// Text only (`branch show` reads the session without the model).
    Text(&'a str),
}

/// What a token page shows.
pub struct Transcript<'a> {
    pub title: String,
    pub facts: Vec<(&'static str, String)>,
    pub prompt: Prompt<'a>,
    /// The branch's completion, one snapshot per token.
    pub completion: &'a [AppendedMeta],
    /// Completion tokens from this index on were added by this call (marked).
    pub new_from: usize,
    /// The next-token distribution (`preview`).
    pub next: Option<&'a Dist>,
}

#[derive(Serialize)]
struct Data {
    /// One per completion token.
    steps: Vec<DistData>,
    next: Option<DistData>,
}

/// The page.
pub fn page(t: &Transcript<'_>) -> Markup {
    let data = Data {
        steps: t
            .completion
            .iter()
            .map(|m| DistData::new(&m.dist, Some(&m.selected), Some(m.selected_by)))
            .collect(),
        next: t.next.map(|d| DistData::new(d, None, None)),
    };
    // Drawn without the script: the next-token distribution, else the last step's.
    let (shown, shown_label) = match (t.next, t.completion.last()) {
        (Some(d), _) => (Some((d, None)), "next token".to_string()),
        (None, Some(m)) => (
            Some((&m.dist, Some(&m.selected))),
            format!("step {}", t.completion.len() - 1),
        ),
        (None, None) => (None, String::new()),
    };
    let body = html! {
        (facts(&t.facts))
        div.layout {
            section.context {
                h2 { "Context" }
                div.pills {
                    @match &t.prompt {
                        Prompt::Tokens(ts) => {
                            @for p in *ts { (pill(p.id, &p.text, &p.display, p.special)) }
                        }
                        Prompt::Text(s) => pre.prompt { (s) },
                    }
                    @for (i, m) in t.completion.iter().enumerate() {
                        @let c = &m.selected;
                        span.tok.gen.special[c.special].new[i >= t.new_from].forced[m.forced]
                            data-step=(i) tabindex="0" style=(prob_colour(c.p_final))
                            title=(format!("step {i} · id {} · {:?} · p_final {}", c.id, c.text, fmt_num(c.p_final))) { (c.display) }
                    }
                    @if t.next.is_some() {
                        span.tok.next data-step="next" tabindex="0" title="the next token's distribution" { "▸ next" }
                    }
                }
                p.muted.hint { "Completion tokens are shaded by p_final (red unlikely, green likely); hover or click one for its distribution." }
            }
            aside #dist {
                h2 #dist-title { "Distribution" span.muted #dist-step { " " (shown_label) } }
                div #dist-body {
                    @if let Some((d, sel)) = shown { (dist_table(d, sel)) }
                    @else { p.muted { "no distribution recorded" } }
                }
            }
        }
    };
    super::page("tokens", &t.title, Some(super::data_block(&data)), body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Candidate, SelectedBy};
    use crate::sampling::{CutStage, SamplingParams};

    fn candidate(id: i32, rank: u32) -> Candidate {
        let text = format!(" word{id}");
        let p = 0.5f64.powi(rank as i32) * 0.987_654_321;
        Candidate {
            id,
            display: crate::render::text::display(&text),
            bytes: text.clone().into_bytes(),
            text,
            special: false,
            p_base: p,
            p_temp: p,
            p_final: if rank < 4 { p * 1.3 } else { 0.0 },
            logprob_base: p.ln(),
            kept: rank < 4,
            valid: true,
            cut_by: (rank >= 4).then_some(CutStage::TopP),
            rank,
            logit_adjust: Vec::new(),
        }
    }

    fn meta(step: i32) -> AppendedMeta {
        let tokens: Vec<Candidate> = (0..10)
            .map(|r| candidate(step * 10 + r, r as u32 + 1))
            .collect();
        AppendedMeta {
            dist: Dist {
                top_k: 10,
                other_p_base: 0.001_234_567,
                other_p_final: 0.0,
                kept_token_count: 3,
                valid_token_count: None,
                constraint_active: false,
                constraint_type: None,
                entropy_base: 1.234_567_89,
                entropy_final: 0.987_654_32,
                params: SamplingParams::default(),
                tokens: tokens.clone(),
                chain: None,
            },
            selected_id: tokens[0].id,
            selected: tokens[0].clone(),
            selected_by: SelectedBy::Sampled,
            forced: false,
            forced_by: None,
            draw: Some(0.5),
            rng_after: None,
            mirostat_mu_after: None,
        }
    }

    /// A 2,000-token generation with 10 candidates per step stays well under a few MB.
    #[test]
    fn a_long_generation_page_stays_small() {
        let metas: Vec<AppendedMeta> = (0..2000).map(meta).collect();
        let t = Transcript {
            title: "ntv generate".into(),
            facts: vec![],
            prompt: Prompt::Text("Hello"),
            completion: &metas,
            new_from: 0,
            next: None,
        };
        let page = page(&t).0;
        assert_eq!(page.matches("data-step=").count(), 2000);
        assert!(page.len() < 2_500_000, "{} bytes", page.len());
    }

    /// Every step's candidates reach the page's data, the selected one included when it was
    /// not shown.
    #[test]
    fn the_data_holds_each_steps_candidates() {
        let mut m = meta(0);
        m.selected = candidate(999, 50);
        m.selected_id = 999;
        let metas = [meta(1), m];
        let t = Transcript {
            title: "t".into(),
            facts: vec![],
            prompt: Prompt::Text("<p>"),
            completion: &metas,
            new_from: 1,
            next: None,
        };
        let html = page(&t).0;
        let start = html
            .find(r#"<script type="application/json" id="ntv-data">"#)
            .unwrap();
        let json = &html[start..];
        let json = &json[json.find('>').unwrap() + 1..json.find("</script>").unwrap()];
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(v["steps"][0]["c"].as_array().unwrap().len(), 10);
        assert_eq!(v["steps"][1]["c"].as_array().unwrap().len(), 11);
        assert_eq!(v["steps"][1]["sel"], 999);
        assert_eq!(v["steps"][1]["c"][10][6], 999);
        assert_eq!(v["steps"][0]["c"][5][3], "top_p");
        assert!(html.contains("&lt;p&gt;"));
        assert_eq!(html.matches("tok gen").count(), 2);
        assert_eq!(
            html.matches(" new\"").count() + html.matches(" new ").count(),
            1
        );
    }
}
