//! The limits ntv holds every input to, checked where the value enters (flags, files, session
//! and trace fields) and before anything is allocated for it. Each is documented in README
//! ("Limits") and in the man pages; none of them binds a sensible use.

use std::io::Read;
use std::path::Path;

use crate::error::{Result, input_err};

/// Prompt text (`-p`, `-p -`, `-f`), one batch line, a constraint file: 4 MiB. No model's
/// context holds more text than that (a 128k-token context is ~0.5 MiB of English).
pub const MAX_TEXT_BYTES: u64 = 4 << 20;
/// A whole batch file (`--batch`): 256 MiB.
pub const MAX_BATCH_FILE_BYTES: u64 = 256 << 20;
/// Integrated gradients' quadrature nodes (`--steps`): Inseq uses 50; more only lowers the
/// completeness error, which every record reports.
pub const MAX_IG_STEPS: usize = 1000;
/// Options of a `--choice`/`--choices` constraint (llguidance refuses grammars with rows over
/// 2,000 items).
pub const MAX_CHOICES: usize = 1000;

/// The most logit biases one parameter set may carry (`--logit-bias`, `--params`).
pub const MAX_LOGIT_BIASES: usize = 100_000;
/// Tokens any context may hold (completion lengths and fork positions in a session): 16 Mi,
/// far beyond every model's context; a session claiming more is corrupt.
pub const MAX_CONTEXT_TOKENS: usize = 1 << 24;
/// Threads: at most the machine's logical cores (more only makes ggml's threads wait for each
/// other; `-t 16` on 2 cores is 50× slower). More is clamped, with a warning.
pub fn max_threads() -> i32 {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(i32::MAX as usize) as i32)
}

/// `requested` threads held to [1, cores]: 0 and negatives are refused, more than the cores
/// clamped with the warning returned. `what` names the value (`-t`, a trace's `threads`).
pub fn threads(requested: i64, what: &str) -> Result<(i32, Option<String>)> {
    if requested < 1 {
        return Err(input_err(
            format!("{what} {requested} is not a thread count"),
            "pass a number of threads >= 1",
        ));
    }
    let max = max_threads();
    if requested > i64::from(max) {
        return Ok((
            max,
            Some(format!(
                "warning: {what} {requested} is more than the {max} cores here; using {max}"
            )),
        ));
    }
    Ok((requested as i32, None))
}

/// Read at most `limit` bytes of text from `reader`; more is refused before it is stored (so
/// `/dev/zero` or a runaway pipe costs nothing). `what` names the source in the error.
pub fn read_text(reader: impl Read, limit: u64, what: &str, hint: &str) -> Result<String> {
    let mut bytes = Vec::new();
    reader
        .take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| input_err(format!("cannot read {what}: {e}"), hint))?;
    if bytes.len() as u64 > limit {
        return Err(input_err(
            format!("{what} is larger than ntv's limit of {}", size(limit)),
            format!("no model's context holds that much; {hint} (limits: README, \"Limits\")"),
        ));
    }
    String::from_utf8(bytes).map_err(|e| {
        input_err(
            format!(
                "{what} is not UTF-8 text (invalid byte at offset {})",
                e.utf8_error().valid_up_to()
            ),
            hint,
        )
    })
}

/// Read the text file at `path` within `limit` bytes.
pub fn read_file(path: &Path, limit: u64, what: &str, hint: &str) -> Result<String> {
    let what = format!("{what} {}", path.display());
    let file = std::fs::File::open(path)
        .map_err(|e| input_err(format!("cannot read {what}: {e}"), hint))?;
    read_text(file, limit, &what, hint)
}

/// A byte count for people.
pub fn size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{} KiB", b >> 10),
        b => format!("{b} bytes"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_within_the_limit_is_read_and_more_is_refused_without_reading_it_all() {
        assert_eq!(read_text(&b"abc"[..], 3, "x", "h").unwrap(), "abc");
        let err = read_text(&b"abcd"[..], 3, "prompt", "h").unwrap_err();
        assert!(err.is_input());
        assert!(err.message().contains("larger than ntv's limit of 3 bytes"));
        // An endless source: only limit + 1 bytes are taken.
        let err = read_text(std::io::repeat(0), 1 << 20, "stdin", "h").unwrap_err();
        assert!(err.message().contains("1 MiB"), "{}", err.message());
        let err = read_text(&[0xff, 0xfe][..], 10, "f", "h").unwrap_err();
        assert!(err.message().contains("not UTF-8"));
    }

    #[test]
    fn thread_counts_are_held_to_the_cores() {
        let max = max_threads();
        assert_eq!(threads(1, "-t").unwrap(), (1, None));
        assert!(threads(0, "-t").unwrap_err().is_input());
        assert!(threads(-3, "threads").unwrap_err().is_input());
        let (n, warning) = threads(100_000, "-t").unwrap();
        assert_eq!(n, max);
        assert!(warning.unwrap().contains("more than the"));
        assert_eq!(threads(i64::from(max), "-t").unwrap(), (max, None));
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(size(MAX_TEXT_BYTES), "4 MiB");
        assert_eq!(size(2048), "2 KiB");
        assert_eq!(size(1000), "1000 bytes");
    }
}
