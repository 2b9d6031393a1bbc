//! Batch files (JSONL, one request per line) for every command that takes `--batch`: one reader
//! with one behaviour. Blank lines are skipped; a line that is not a valid request is kept in
//! its place as a [`BadLine`] (the caller reports it and goes on, or stops with
//! `--fail-fast`); `--shard K/N` takes every N-th request from the K-th, so shards run side by
//! side concatenate to the whole.

use std::path::Path;

use serde::de::DeserializeOwned;

use crate::error::{Result, input_err};

/// `--shard K/N`: requests `K, K+N, K+2N, …` (0-based, blank lines not counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub k: usize,
    pub n: usize,
}

impl Shard {
    /// Parse `K/N` with `0 <= K < N`.
    pub fn parse(s: &str) -> Result<Self> {
        let bad = || {
            input_err(
                format!("--shard {s} is not K/N with 0 <= K < N"),
                "e.g. --shard 0/4 … --shard 3/4 split a batch over four processes",
            )
        };
        let (k, n) = s.split_once('/').ok_or_else(bad)?;
        let k: usize = k.trim().parse().map_err(|_| bad())?;
        let n: usize = n.trim().parse().map_err(|_| bad())?;
        if n == 0 || k >= n {
            return Err(bad());
        }
        Ok(Self { k, n })
    }
}

/// A request that carries the caller's `id` (echoed in its output and its error record).
pub trait Identified {
    fn id(&self) -> Option<&serde_json::Value>;
}

/// A line that is not a request: why, and its `id` when the line is JSON that has one.
#[derive(Debug, Clone, PartialEq)]
pub struct BadLine {
    pub message: String,
    pub id: Option<serde_json::Value>,
}

/// A batch line: its 1-based number and the request, or why it could not be read.
pub type Line<T> = (usize, std::result::Result<T, BadLine>);

pub(crate) fn parse<T: DeserializeOwned>(line: &str) -> std::result::Result<T, BadLine> {
    let value: serde_json::Value = serde_json::from_str(line).map_err(|e| BadLine {
        message: e.to_string(),
        id: None,
    })?;
    let id = value.get("id").cloned();
    T::deserialize(value).map_err(|e| BadLine {
        message: e.to_string(),
        id,
    })
}

/// Read the requests of `path` that fall in `shard`. `example` is a valid line, for the hint
/// of a file without any.
pub fn read<T: DeserializeOwned>(
    path: &Path,
    shard: Option<Shard>,
    example: &str,
) -> Result<Vec<Line<T>>> {
    let hint = format!("pass a JSONL file with one request object per line, e.g. {example}");
    let text = crate::limits::read_file(
        path,
        crate::limits::MAX_BATCH_FILE_BYTES,
        "batch file",
        &hint,
    )?;
    if let Some((i, _)) = text
        .lines()
        .enumerate()
        .find(|(_, l)| l.len() as u64 > crate::limits::MAX_TEXT_BYTES)
    {
        return Err(input_err(
            format!(
                "line {} of batch file {} is longer than ntv's limit of {}",
                i + 1,
                path.display(),
                crate::limits::size(crate::limits::MAX_TEXT_BYTES)
            ),
            "one request per line; no model's context holds that much text",
        ));
    }
    if text.lines().all(|l| l.trim().is_empty()) {
        return Err(input_err(
            format!("batch file {} has no requests", path.display()),
            format!("add one JSON object per line, e.g. {example}"),
        ));
    }
    let Shard { k, n } = shard.unwrap_or(Shard { k: 0, n: 1 });
    Ok(text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .enumerate()
        .filter(|(ordinal, _)| ordinal % n == k)
        .map(|(_, (i, l))| (i + 1, parse(l)))
        .collect())
}

/// The `id` of a batch line as text (strings as they are, other JSON as written).
pub fn id_text(id: Option<&serde_json::Value>) -> Option<String> {
    id.map(|v| match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Req {
        id: Option<u32>,
        prompt: Option<String>,
    }

    #[test]
    fn shards() {
        assert_eq!(Shard::parse("0/4").unwrap(), Shard { k: 0, n: 4 });
        assert_eq!(Shard::parse(" 3 / 4 ").unwrap(), Shard { k: 3, n: 4 });
        for bad in ["4/4", "1", "a/b", "0/0", "-1/2", ""] {
            assert!(Shard::parse(bad).unwrap_err().is_input(), "{bad}");
        }
    }

    #[test]
    fn bad_lines_stay_in_place_and_shards_partition_the_requests() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.jsonl");
        std::fs::write(
            &path,
            "{\"id\": 0}\n\n{\"id\": 1}\nnot json\n{\"id\": 3}\n{\"id\": 4, \"bogus\": 1}\n",
        )
        .unwrap();
        let all: Vec<Line<Req>> = read(&path, None, "{}").unwrap();
        assert_eq!(
            all.iter().map(|(l, _)| *l).collect::<Vec<_>>(),
            vec![1, 3, 4, 5, 6]
        );
        let bad = all[4].1.as_ref().unwrap_err();
        assert_eq!(
            bad.id,
            Some(serde_json::json!(4)),
            "the id of a bad line is kept"
        );
        assert!(bad.message.contains("bogus"));
        assert!(all[2].1.as_ref().unwrap_err().id.is_none());
        let mut seen: Vec<usize> = (0..3)
            .flat_map(|k| read::<Req>(&path, Some(Shard { k, n: 3 }), "{}").unwrap())
            .map(|(l, _)| l)
            .collect();
        seen.sort();
        assert_eq!(seen, vec![1, 3, 4, 5, 6]);
        let one: Vec<Line<Req>> = read(&path, Some(Shard { k: 1, n: 3 }), "{}").unwrap();
        assert_eq!(one.iter().map(|(l, _)| *l).collect::<Vec<_>>(), vec![3, 6]);
        std::fs::write(&path, "\n\n").unwrap();
        assert!(read::<Req>(&path, None, "{}").unwrap_err().is_input());
        assert!(
            read::<Req>(&dir.path().join("missing"), None, "{}")
                .unwrap_err()
                .is_input()
        );
    }

    #[test]
    fn ids_as_text() {
        assert_eq!(id_text(Some(&serde_json::json!("a"))).as_deref(), Some("a"));
        assert_eq!(id_text(Some(&serde_json::json!(7))).as_deref(), Some("7"));
        assert_eq!(id_text(None), None);
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any line — JSON or not, a valid request mutated or arbitrary text — is a request or a
        /// `BadLine`, for every kind of batch file.
        #[test]
        fn fuzz_any_batch_line_is_a_request_or_a_bad_line(
            line in prop_oneof![
                ".{0,80}",
                crate::fuzz::mutated(serde_json::json!({
                    "id": 1, "prompt": "Hi", "seed": 7, "max_tokens": 4, "temperature": 0.5,
                    "index": -1, "method": "saliency", "steps": 8, "completion_ids": [1, 2]
                }))
                .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
            ]
        ) {
            let _ = parse::<crate::workbench::cases::CaseLine>(&line);
            let _ = parse::<crate::attribution::request::Request>(&line);
        }
    }
}
