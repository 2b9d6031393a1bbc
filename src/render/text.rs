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

/// [`display`] of a token's raw bytes: a piece that is not whole UTF-8 (part of a multi-byte
/// character split over tokens) shows its stray bytes as `<0xEF>`, never as `�`.
pub fn display_bytes(bytes: &[u8]) -> String {
    if let Ok(s) = std::str::from_utf8(bytes) {
        return display(s);
    }
    let mut out = String::new();
    let mut text = String::new();
    for chunk in bytes.utf8_chunks() {
        text.push_str(chunk.valid());
        if !chunk.invalid().is_empty() {
            if !text.is_empty() {
                out.push_str(&display(&text));
                text.clear();
            }
            for b in chunk.invalid() {
                out.push_str(&format!("<0x{b:02X}>"));
            }
        }
    }
    if !text.is_empty() {
        out.push_str(&display(&text));
    }
    out
}

/// Streams token bytes as text without ever printing part of a character: bytes of an
/// incomplete UTF-8 sequence wait for the token that completes it; bytes that can never be
/// completed come out as U+FFFD.
#[derive(Debug, Default)]
pub struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    /// The text that `bytes` completes (possibly empty).
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        let mut keep = 0;
        let pending = std::mem::take(&mut self.pending);
        let mut chunks = pending.utf8_chunks().peekable();
        while let Some(chunk) = chunks.next() {
            out.push_str(chunk.valid());
            let bad = chunk.invalid();
            if bad.is_empty() {
                continue;
            }
            let last = chunks.peek().is_none();
            // An invalid tail that is a prefix of a valid sequence may still be completed.
            if last && bad.len() < 4 && incomplete_prefix(bad) {
                keep = bad.len();
            } else {
                out.push('\u{FFFD}');
            }
        }
        self.pending = pending[pending.len() - keep..].to_vec();
        out
    }

    /// What is left at the end of the stream.
    pub fn finish(&mut self) -> String {
        let rest = std::mem::take(&mut self.pending);
        String::from_utf8_lossy(&rest).into_owned()
    }
}

/// Whether `b` is the start of a valid multi-byte UTF-8 sequence that lacks bytes.
fn incomplete_prefix(b: &[u8]) -> bool {
    let need = match b[0] {
        0xC2..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF4 => 4,
        _ => return false,
    };
    b.len() < need && b[1..].iter().all(|&c| (0x80..=0xBF).contains(&c))
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
    fn partial_utf8_pieces_show_their_bytes() {
        let full = "｜".as_bytes();
        assert_eq!(display_bytes(&full[..2]), "<0xEF><0xBD>");
        assert_eq!(display_bytes(&[b' ', b'a', full[0]]), "␠a<0xEF>");
        assert_eq!(display_bytes(full), "｜");
    }

    #[test]
    fn a_stream_never_splits_a_character() {
        let emoji = "🙂".as_bytes();
        let mut s = Utf8Stream::default();
        assert_eq!(s.push(b"Hi "), "Hi ");
        assert_eq!(s.push(&emoji[..2]), "");
        assert_eq!(s.push(&emoji[2..]), "🙂");
        assert_eq!(s.push(&[0xFF, b'x']), "\u{FFFD}x");
        assert_eq!(s.push(&emoji[..1]), "");
        assert_eq!(s.finish(), "\u{FFFD}");
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
