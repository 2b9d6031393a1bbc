//! JSON writers: one pretty document, or one compact record per line. Never coloured.

use std::io::Write;

/// Write `value` as one JSON document (pretty) or one JSONL line.
pub fn write<T: serde::Serialize>(
    out: &mut dyn Write,
    value: &T,
    pretty: bool,
) -> std::io::Result<()> {
    if pretty {
        serde_json::to_writer_pretty(&mut *out, value)?;
    } else {
        serde_json::to_writer(&mut *out, value)?;
    }
    out.write_all(b"\n")
}

#[cfg(test)]
mod tests {
    #[test]
    fn jsonl_is_one_line() {
        let mut buf = Vec::new();
        super::write(
            &mut buf,
            &serde_json::json!({"a": [1, 2], "b": "x\ny"}),
            false,
        )
        .unwrap();
        let s = String::from_utf8(buf).unwrap();
        assert_eq!(s.lines().count(), 1);
        assert!(s.ends_with('\n'));
    }
}
