//! Token text for display: visible whitespace, bars, number formats.

/// Visible-whitespace rendering of a token piece (sampling.md): `␠` for each leading space,
/// `⏎` for newlines, `⇥` for tabs, `␍` for carriage returns, `∅` for an empty piece.
pub fn display(text: &str) -> String {
    if text.is_empty() {
        return "∅".into();
    }
    let mut out = String::with_capacity(text.len() + 4);
    let mut leading = true;
    for c in text.chars() {
        match c {
            ' ' if leading => out.push('␠'),
            '\n' => out.push('⏎'),
            '\t' => out.push('⇥'),
            '\r' => out.push('␍'),
            _ => {
                leading = false;
                out.push(c);
            }
        }
        if c != ' ' {
            leading = false;
        }
    }
    out
}

/// A horizontal bar of `width` cells for a value in [0, 1], with eighth-cell resolution.
pub fn bar(p: f64, width: usize) -> String {
    const PARTS: [char; 8] = ['▏', '▎', '▍', '▌', '▋', '▊', '▉', '█'];
    let p = if p.is_finite() {
        p.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let eighths = (p * (width * 8) as f64).round() as usize;
    let mut s = String::with_capacity(width * 3);
    s.extend(std::iter::repeat_n('█', eighths / 8));
    if !eighths.is_multiple_of(8) {
        s.push(PARTS[eighths % 8 - 1]);
    }
    let used = s.chars().count();
    s.extend(std::iter::repeat_n(' ', width.saturating_sub(used)));
    s
}

/// A probability as a percentage with sensible precision.
pub fn pct(p: f64) -> String {
    if p <= 0.0 {
        "0".into()
    } else if p >= 0.1 {
        format!("{:.1}%", p * 100.0)
    } else if p >= 0.001 {
        format!("{:.2}%", p * 100.0)
    } else {
        format!("{:.1e}", p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visible_whitespace() {
        assert_eq!(display(" Paris"), "␠Paris");
        assert_eq!(display("  a b"), "␠␠a b");
        assert_eq!(display("\n"), "⏎");
        assert_eq!(display("\tx"), "⇥x");
        assert_eq!(display(""), "∅");
        assert_eq!(display("a\n b"), "a⏎ b");
    }

    #[test]
    fn bars_scale() {
        assert_eq!(bar(1.0, 4), "████");
        assert_eq!(bar(0.0, 4), "    ");
        assert_eq!(bar(0.5, 4), "██  ");
        assert_eq!(bar(1.0 / 32.0, 4).chars().next(), Some('▏'));
        assert_eq!(bar(f64::NAN, 2), "  ");
    }

    #[test]
    fn percentages() {
        assert_eq!(pct(0.5), "50.0%");
        assert_eq!(pct(0.01234), "1.23%");
        assert_eq!(pct(0.0), "0");
        assert_eq!(pct(0.00001), "1.0e-5");
    }
}
