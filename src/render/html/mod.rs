//! Self-contained HTML pages (`--format html`): one file with its CSS and script inline and
//! no external reference, that opens offline and prints. Markup comes from `maud`, which
//! escapes every interpolated value (token texts can be `<script>`); the data the script
//! needs travels as JSON in a `<script type="application/json">` block ([`data_block`]).
//!
//! Pages: [`tokens`] (preview, step, branch show, generate), [`attribute`] (one request or a
//! batch), [`compare`] (check, diff), [`sweep`]. [`parts`] holds the shared pieces, among
//! them a generic heatmap grid (rows × columns of scores) that a positions × layers page can
//! reuse.

pub mod attribute;
pub mod compare;
pub mod lens;
pub mod parts;
pub mod sweep;
pub mod tokens;

use std::io::{self, Write};

use maud::{DOCTYPE, Markup, PreEscaped, html};
use serde::Serialize;

const CSS: &str = include_str!("page.css");
const JS: &str = include_str!("page.js");

/// Write a page.
pub fn write(w: &mut dyn Write, page: &Markup) -> io::Result<()> {
    w.write_all(page.0.as_bytes())?;
    w.write_all(b"\n")
}

/// A whole page: `kind` names it for the script (`data-page`), `data` is what the script
/// reads (hover, click), `body` what is drawn without it (and printed).
pub fn page(kind: &str, title: &str, data: Option<String>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="generator" content=(concat!("ntv ", env!("CARGO_PKG_VERSION")));
                title { (title) }
                // First, so that errors of the page's own script are collected too.
                script { (PreEscaped("window.ntvErrors=[];window.addEventListener('error',function(e){window.ntvErrors.push(String(e.message))});")) }
                style { (PreEscaped(CSS)) }
            }
            body data-page=(kind) {
                header.top {
                    h1 { (title) }
                }
                main { (body) }
                footer { "ntv " (env!("CARGO_PKG_VERSION")) " · self-contained page, no network" }
                @if let Some(d) = data {
                    script type="application/json" id="ntv-data" { (PreEscaped(d)) }
                }
                script { (PreEscaped(JS)) }
            }
        }
    }
}

/// `value` as JSON that can sit inside `<script type="application/json">`: `<`, `>` and `&`
/// become `\u003c`, `\u003e`, `\u0026` (valid only inside JSON strings, where they mean the
/// same), so no `</script>` or `<!--` can end or bend the element.
pub fn data_block<T: Serialize + ?Sized>(value: &T) -> String {
    let json = serde_json::to_string(value).expect("page data serialises");
    let mut out = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out
}

/// A probability rounded for the page's data (six decimals are more than a bar can show, and
/// keep a 2,000-step page small).
pub fn round6(p: f64) -> f64 {
    if p.is_finite() {
        (p * 1e6).round() / 1e6
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_block_cannot_close_its_element() {
        let v = serde_json::json!({"t": "</script><!-- & -->", "u": "\u{2028}"});
        let s = data_block(&v);
        assert!(
            !s.contains('<') && !s.contains('>') && !s.contains('&'),
            "{s}"
        );
        let back: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(back, v);
    }

    #[test]
    fn page_escapes_its_title_and_has_no_external_reference() {
        let p = page("t", "<script>alert(1)</script>", None, html! { p { "x" } });
        assert!(p.0.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(!p.0.contains("<script>alert"));
        for bad in ["http://", "https://", "@import", "url("] {
            assert!(!p.0.contains(bad), "{bad}");
        }
    }
}
