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
