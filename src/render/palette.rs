//! Colour, decided once (`--color`, then `NO_COLOR`, `CLICOLOR_FORCE`, then is-a-terminal) and
//! passed down as a palette whose methods are named by meaning.

use owo_colors::{OwoColorize, Style};

/// Styles by meaning; all identity when colour is off.
#[derive(Debug, Clone, Copy)]
pub struct Palette {
    on: bool,
}

impl Palette {
    /// A palette that colours (`true`) or not.
    pub fn new(on: bool) -> Self {
        Self { on }
    }

    /// Whether colour is on.
    pub fn enabled(&self) -> bool {
        self.on
    }

    fn paint(&self, s: &str, style: Style) -> String {
        if self.on {
            s.style(style).to_string()
        } else {
            s.to_string()
        }
    }

    /// A candidate that survived every stage.
    pub fn kept(&self, s: &str) -> String {
        self.paint(s, Style::new().green())
    }

    /// A candidate a stage removed.
    pub fn cut(&self, s: &str) -> String {
        self.paint(s, Style::new().dimmed())
    }

    /// A candidate the constraint forbids.
    pub fn invalid(&self, s: &str) -> String {
        self.paint(s, Style::new().dimmed().strikethrough())
    }

    /// The selected token.
    pub fn chosen(&self, s: &str) -> String {
        self.paint(s, Style::new().bold().yellow())
    }

    /// Special/control tokens.
    pub fn special(&self, s: &str) -> String {
        self.paint(s, Style::new().magenta())
    }

    /// Headings and labels.
    pub fn heading(&self, s: &str) -> String {
        self.paint(s, Style::new().bold())
    }

    /// Secondary information.
    pub fn muted(&self, s: &str) -> String {
        self.paint(s, Style::new().dimmed())
    }

    /// Warnings.
    pub fn warn(&self, s: &str) -> String {
        self.paint(s, Style::new().yellow())
    }

    /// Text coloured by a probability: red (unlikely) through yellow to green (likely).
    pub fn by_prob(&self, s: &str, p: f64) -> String {
        if !self.on {
            return s.to_string();
        }
        let style = match p {
            p if p >= 0.8 => Style::new().green(),
            p if p >= 0.5 => Style::new().bright_green(),
            p if p >= 0.2 => Style::new().yellow(),
            p if p >= 0.05 => Style::new().bright_red(),
            _ => Style::new().red(),
        };
        s.style(style).to_string()
    }

    /// Background heat by surprisal in bits (0 = expected, 10+ = very surprising).
    pub fn by_surprisal(&self, s: &str, bits: f64) -> String {
        if !self.on {
            return s.to_string();
        }
        let style = match bits {
            b if b < 1.0 => Style::new().green(),
            b if b < 3.0 => Style::new().bright_green(),
            b if b < 6.0 => Style::new().yellow(),
            b if b < 10.0 => Style::new().bright_red(),
            _ => Style::new().red().bold(),
        };
        s.style(style).to_string()
    }
}

/// Background ramps for attribution heatmaps (xterm 256 colours), weakest first.
const HEAT_POS: [u8; 8] = [236, 52, 88, 124, 160, 196, 202, 214];
const HEAT_NEG: [u8; 8] = [236, 17, 18, 19, 20, 21, 27, 33];

impl Palette {
    /// Text on a background shaded by `level` in [0, 1] (share of the largest magnitude):
    /// warm for positive scores, cold for negative ones. Identity without colour.
    pub fn heat(&self, s: &str, level: f64, negative: bool) -> String {
        if !self.on {
            return s.to_string();
        }
        let (bg, fg) = heat_colours(level, negative);
        s.style(
            Style::new()
                .on_color(owo_colors::XtermColors::from(bg))
                .color(owo_colors::XtermColors::from(fg)),
        )
        .to_string()
    }
}

/// The (background, foreground) xterm colours of a heatmap cell at `level` in [0, 1]: one
/// ramp for the tables and the explorer alike.
pub fn heat_colours(level: f64, negative: bool) -> (u8, u8) {
    let ramp = if negative { &HEAT_NEG } else { &HEAT_POS };
    let l = if level.is_finite() {
        level.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let i = ((l * (ramp.len() - 1) as f64).round() as usize).min(ramp.len() - 1);
    (ramp[i], if i >= 6 { 16 } else { 255 })
}
#[cfg(test)]
mod tests {
    use super::*;

    /// Every styled form of `s` a palette can produce.
    fn all_styles(p: &Palette, s: &str) -> Vec<String> {
        let mut out = vec![
            p.kept(s),
            p.cut(s),
            p.invalid(s),
            p.chosen(s),
            p.special(s),
            p.heading(s),
            p.muted(s),
            p.warn(s),
        ];
        for prob in [0.0, 0.01, 0.1, 0.3, 0.6, 0.9, 1.0] {
            out.push(p.by_prob(s, prob));
        }
        for bits in [0.0, 2.0, 4.0, 8.0, 12.0] {
            out.push(p.by_surprisal(s, bits));
        }
        for level in [0.0, 0.5, 1.0, 2.0, f64::NAN] {
            out.push(p.heat(s, level, false));
            out.push(p.heat(s, level, true));
        }
        out
    }

    #[test]
    fn a_disabled_palette_emits_no_escapes() {
        let p = Palette::new(false);
        assert!(!p.enabled());
        for s in ["Paris", "␠capital", "<|im_end|>", ""] {
            for styled in all_styles(&p, s) {
                assert_eq!(styled, s, "a disabled palette changes nothing");
            }
        }
    }

    #[test]
    fn an_enabled_palette_wraps_the_text_in_escapes() {
        let p = Palette::new(true);
        assert!(p.enabled());
        for styled in all_styles(&p, "Paris") {
            assert!(styled.starts_with("\x1b["), "{styled:?}");
            assert!(styled.ends_with("\x1b[0m"), "{styled:?}");
            assert!(styled.contains("Paris"), "{styled:?}");
        }
        // Heat: 256-colour backgrounds, warm for positive and cold for negative scores.
        assert!(p.heat("x", 1.0, false).contains("48;5;214"));
        assert!(p.heat("x", 1.0, true).contains("48;5;33"));
        assert!(p.heat("x", 0.0, false).contains("48;5;236"));
    }
}
