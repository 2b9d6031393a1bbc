//! Batch files (JSONL, one request per line) for every command that takes `--batch`: one reader
//! with one behaviour. Blank lines are skipped; a line that is not a valid request is kept in
//! its place as a [`BadLine`] (the caller reports it and goes on, or stops with
//! `--fail-fast`); `--shard K/N` takes every N-th request from the K-th, so shards run side by
//! side concatenate to the whole. `--shard auto` takes K and N from the scheduler that started
//! the process (a Slurm job array or a Kubernetes Indexed Job, [`Shard::resolve`]), and
//! [`merge`] puts the parts that sharded runs wrote back in input order.

use std::collections::HashMap;
use std::path::Path;

use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use crate::error::{Result, input_err};
use crate::record::ShardPlace;

/// `--shard K/N`: requests `K, K+N, K+2N, …` (0-based, blank lines not counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub k: usize,
    pub n: usize,
}

/// The variables `--shard auto` reads: a Slurm job array's task.
pub const SLURM_VARS: [&str; 5] = [
    "SLURM_ARRAY_TASK_ID",
    "SLURM_ARRAY_TASK_MIN",
    "SLURM_ARRAY_TASK_MAX",
    "SLURM_ARRAY_TASK_STEP",
    "SLURM_ARRAY_TASK_COUNT",
];
/// The variable `--shard auto/N` reads: a Kubernetes Indexed Job's pod index.
pub const K8S_INDEX: &str = "JOB_COMPLETION_INDEX";

impl Shard {
    /// Parse `K/N` with `0 <= K < N`.
    pub fn parse(s: &str) -> Result<Self> {
        let bad = || {
            input_err(
                format!("--shard {s} is not K/N with 0 <= K < N, auto or auto/N"),
                "e.g. --shard 0/4 … --shard 3/4 split a batch over four processes; --shard auto \
                 takes K and N from a Slurm job array, --shard auto/4 K from a Kubernetes Indexed Job",
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

    /// `--shard` as given: `K/N`, or `auto` / `auto/N` resolved from the scheduler's variables
    /// (`var` looks one up: the process environment, or a map in tests). Returns the shard and,
    /// for `auto`, where it came from (for the stderr line).
    ///
    /// Slurm job arrays: `K = (SLURM_ARRAY_TASK_ID − SLURM_ARRAY_TASK_MIN) / SLURM_ARRAY_TASK_STEP`
    /// and `N = SLURM_ARRAY_TASK_COUNT`, so `--array=0-3`, `--array=1-4` and `--array=0-15:4` all
    /// give four shards; an array whose indices are not evenly spaced (`--array=1,2,9`) is
    /// refused. `auto/N` under Slurm must agree with the count. Kubernetes Indexed Jobs put only
    /// the pod's index in the environment (`JOB_COMPLETION_INDEX`), so the count is the `N` of
    /// `auto/N` (the Job's `completions`), which the pod's command line states anyway.
    pub fn resolve(
        arg: &str,
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<(Self, Option<String>)> {
        let arg = arg.trim();
        let given_n = match arg.strip_prefix("auto") {
            None => return Ok((Self::parse(arg)?, None)),
            Some("") => None,
            Some(rest) => {
                let n = rest
                    .strip_prefix('/')
                    .and_then(|n| n.trim().parse::<usize>().ok());
                match n {
                    Some(n) if n > 0 => Some(n),
                    _ => return Err(Self::parse(arg).unwrap_err()),
                }
            }
        };
        let get = |name: &str| {
            var(name)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let (shard, from) = match (get(SLURM_VARS[0]), get(K8S_INDEX)) {
            (Some(id), Some(index)) => {
                return Err(input_err(
                    format!(
                        "--shard auto: both SLURM_ARRAY_TASK_ID={id} (Slurm) and \
                         JOB_COMPLETION_INDEX={index} (Kubernetes) are set"
                    ),
                    "unset the one that does not belong to this task, or pass --shard K/N",
                ));
            }
            (Some(id), None) => slurm(&id, given_n, &get)?,
            (None, Some(index)) => indexed_job(&index, given_n)?,
            (None, None) => {
                let mut hint =
                    "run it as a task of a Slurm job array (sbatch --array=0-3 …) or of a \
                                Kubernetes Job with completionMode: Indexed (--shard auto/N, N = \
                                its completions), or pass --shard K/N"
                        .to_string();
                if get("SLURM_JOB_ID").is_some() {
                    hint = format!(
                        "this Slurm job is not an array: submit it with sbatch --array; {hint}"
                    );
                }
                return Err(input_err(
                    "--shard auto found neither SLURM_ARRAY_TASK_ID (a Slurm job array task) nor \
                     JOB_COMPLETION_INDEX (a Kubernetes Indexed Job pod)",
                    hint,
                ));
            }
        };
        Ok((shard, Some(from)))
    }
}

/// A scheduler variable as a whole number.
fn number(name: &str, value: &str) -> Result<usize> {
    value.parse().map_err(|_| {
        input_err(
            format!("--shard auto: {name}={value} is not a whole number"),
            "it is set by the scheduler; pass --shard K/N to choose the shard yourself",
        )
    })
}

/// `--shard auto` in a Slurm job array task.
fn slurm(
    id: &str,
    given_n: Option<usize>,
    get: &dyn Fn(&str) -> Option<String>,
) -> Result<(Shard, String)> {
    let id = number("SLURM_ARRAY_TASK_ID", id)?;
    let required = |name: &str| -> Result<usize> {
        let value = get(name).ok_or_else(|| {
            input_err(
                format!("--shard auto: SLURM_ARRAY_TASK_ID is set but {name} is not"),
                "Slurm sets SLURM_ARRAY_TASK_ID, SLURM_ARRAY_TASK_MIN and SLURM_ARRAY_TASK_COUNT \
                 in every task of a job array (sbatch --array); or pass --shard K/N",
            )
        })?;
        number(name, &value)
    };
    let optional = |name: &str| get(name).map(|v| number(name, &v)).transpose();
    let min = required("SLURM_ARRAY_TASK_MIN")?;
    let count = required("SLURM_ARRAY_TASK_COUNT")?;
    let step = optional("SLURM_ARRAY_TASK_STEP")?.unwrap_or(1);
    let max = optional("SLURM_ARRAY_TASK_MAX")?;
    let vars = format!(
        "SLURM_ARRAY_TASK_ID={id}, SLURM_ARRAY_TASK_MIN={min}, {}SLURM_ARRAY_TASK_STEP={step}, \
         SLURM_ARRAY_TASK_COUNT={count}",
        max.map(|m| format!("SLURM_ARRAY_TASK_MAX={m}, "))
            .unwrap_or_default()
    );
    let even = step > 0
        && count > 0
        && id >= min
        && (id - min) % step == 0
        && (id - min) / step < count
        && max.is_none_or(|max| {
            max >= min && (max - min) % step == 0 && (max - min) / step + 1 == count
        });
    if !even {
        return Err(input_err(
            format!(
                "--shard auto: this Slurm array's indices are not an evenly spaced range ({vars}), \
                 so they do not map onto shards 0..N-1"
            ),
            "submit the array as a range, e.g. sbatch --array=0-3 or --array=1-4 or --array=0-15:4 \
             (a list such as --array=1,2,9 cannot be mapped); or pass --shard K/N",
        ));
    }
    if let Some(n) = given_n.filter(|&n| n != count) {
        return Err(input_err(
            format!("--shard auto/{n} contradicts SLURM_ARRAY_TASK_COUNT={count}"),
            "under Slurm the array's size is the shard count: write --shard auto, or make N agree",
        ));
    }
    let shard = Shard {
        k: (id - min) / step,
        n: count,
    };
    Ok((shard, format!("Slurm job array: {vars}")))
}

/// `--shard auto/N` in a Kubernetes Indexed Job pod.
fn indexed_job(index: &str, given_n: Option<usize>) -> Result<(Shard, String)> {
    let k = number(K8S_INDEX, index)?;
    let Some(n) = given_n else {
        return Err(input_err(
            format!(
                "--shard auto: JOB_COMPLETION_INDEX={k} (a Kubernetes Indexed Job) gives this pod's \
                 index but not the number of shards"
            ),
            "write --shard auto/N with N = the Job's spec.completions, e.g. --shard auto/4",
        ));
    };
    if k >= n {
        return Err(input_err(
            format!("--shard auto/{n}: JOB_COMPLETION_INDEX={k} is not below {n}"),
            "N must be the Job's spec.completions (its pods have the indices 0..N-1)",
        ));
    }
    Ok((
        Shard { k, n },
        format!("Kubernetes Indexed Job: JOB_COMPLETION_INDEX={k}, N={n} from --shard auto/{n}"),
    ))
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
    Ok(read_sharded(path, shard, example)?.lines)
}

/// Where each line of a sharded batch belongs, by line number.
pub type Places = HashMap<usize, ShardPlace>;

/// The lines of one shard of a batch, with what a record needs to say where it belongs.
#[derive(Debug)]
pub struct Sharded<T> {
    pub lines: Vec<Line<T>>,
    /// Requests in the whole file (every shard).
    pub requests: usize,
    /// SHA-256 of the file (hex).
    pub sha256: String,
}

impl<T> Sharded<T> {
    /// Where each line of `shard` belongs, by its line number.
    pub fn places(&self, shard: Shard) -> Places {
        self.lines
            .iter()
            .enumerate()
            .map(|(i, (line, _))| {
                let place = ShardPlace {
                    request: shard.k + i * shard.n,
                    requests: self.requests,
                    k: shard.k,
                    n: shard.n,
                    batch_sha256: self.sha256.clone(),
                };
                (*line, place)
            })
            .collect()
    }
}

/// SHA-256 of a batch file's text, as records carry it.
fn digest(text: &str) -> String {
    format!("{:x}", Sha256::digest(text.as_bytes()))
}

/// [`read`], with the request count and the file's digest.
pub fn read_sharded<T: DeserializeOwned>(
    path: &Path,
    shard: Option<Shard>,
    example: &str,
) -> Result<Sharded<T>> {
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
    let requests = request_lines(&text).count();
    let lines = request_lines(&text)
        .enumerate()
        .filter(|(ordinal, _)| ordinal % n == k)
        .map(|(_, (line, l))| (line, parse(l)))
        .collect();
    Ok(Sharded {
        lines,
        requests,
        sha256: digest(&text),
    })
}

/// The requests of a batch file's text: (1-based line number, line), blank lines skipped.
fn request_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| (i + 1, l))
}

/// The `id` of a batch line as text (strings as they are, other JSON as written).
pub fn id_text(id: Option<&serde_json::Value>) -> Option<String> {
    id.map(|v| match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    })
}

/// The largest part `--merge` reads (a part holds one record per target, a score per context
/// token in each: larger than its share of the batch file).
pub const MAX_PART_BYTES: u64 = 1 << 30;

/// A part for [`merge`]: its name (its path, for messages) and its text.
#[derive(Debug, Clone)]
pub struct Part {
    pub name: String,
    pub text: String,
}

/// What [`merge`] put together.
#[derive(Debug)]
pub struct Merged<'a> {
    /// Every record, in input order (the records of one request in their own order).
    pub lines: Vec<&'a str>,
    /// Requests in the batch.
    pub requests: usize,
    /// Error records among `lines`.
    pub errors: usize,
}

/// What merge reads of a record: its kind, batch line and place.
#[derive(serde::Deserialize)]
struct Head {
    #[serde(rename = "type")]
    kind: Option<String>,
    line: Option<usize>,
    shard: Option<ShardPlace>,
}

/// Where a request's records were first seen.
#[derive(Debug, Clone, Copy)]
struct Seen {
    part: usize,
    at: usize,
    line: Option<usize>,
}

/// At most this many requests named in a message (all of them are counted).
const SHOWN: usize = 10;

fn listed(items: &[String]) -> String {
    let mut s = items
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > SHOWN {
        s.push_str(&format!(", … {} more", items.len() - SHOWN));
    }
    s
}

/// Put the parts of a sharded batch (the JSONL that `--shard` runs wrote) back in input order.
/// Every record must carry its `shard` place; all must be of one batch (same file digest, shard
/// count and request count); every request must be in exactly one part, once (its records
/// together, as one run wrote them). `batch` is the batch file (name, text), when given: the
/// parts must be of it, and missing requests are named by their lines too. Every failure is
/// the input's fault (exit 2): the merge computes nothing that could fail.
pub fn merge<'a>(parts: &'a [Part], batch: Option<(&str, &str)>) -> Result<Merged<'a>> {
    let hint_parts = "--merge takes the JSONL files that `ntv attribute --batch FILE --shard K/N` \
                      (or --shard auto) wrote, one per shard";
    let mut reference: Option<(ShardPlace, usize, usize)> = None;
    let mut groups: HashMap<usize, (Seen, Vec<&'a str>)> = HashMap::new();
    let mut duplicates: Vec<(usize, Seen, Seen)> = Vec::new();
    let mut errors = 0usize;
    for (p, part) in parts.iter().enumerate() {
        let mut current: Option<usize> = None;
        for (i, raw) in part.text.lines().enumerate() {
            if raw.trim().is_empty() {
                continue;
            }
            let at = i + 1;
            let head: Head = serde_json::from_str(raw).map_err(|e| {
                input_err(
                    format!(
                        "{} line {at} is not a record of ntv attribute: {e}",
                        part.name
                    ),
                    hint_parts,
                )
            })?;
            let place = head.shard.ok_or_else(|| {
                input_err(
                    format!(
                        "{} line {at} has no \"shard\" field (it was not written by a --shard run)",
                        part.name
                    ),
                    format!("{hint_parts}; run the batch with --shard"),
                )
            })?;
            match &reference {
                None => reference = Some((place.clone(), p, at)),
                Some((r, rp, rat)) => {
                    if (&r.batch_sha256, r.n, r.requests)
                        != (&place.batch_sha256, place.n, place.requests)
                    {
                        let of = |s: &ShardPlace| {
                            format!(
                                "batch {} ({} requests in {} shards)",
                                &s.batch_sha256[..s.batch_sha256.len().min(12)],
                                s.requests,
                                s.n
                            )
                        };
                        return Err(input_err(
                            format!(
                                "the parts are of different batches: {} line {rat} is of {}, \
                                 {} line {at} of {}",
                                parts[*rp].name,
                                of(r),
                                part.name,
                                of(&place)
                            ),
                            "merge the parts of one run: the same batch file split with the same N",
                        ));
                    }
                }
            }
            if place.k >= place.n
                || place.request >= place.requests
                || place.request % place.n != place.k
            {
                return Err(input_err(
                    format!(
                        "{} line {at}: request {} cannot be in shard {}/{} of a batch of {} requests",
                        part.name, place.request, place.k, place.n, place.requests
                    ),
                    "the part was edited or is not ntv's output; run that shard again",
                ));
            }
            if head.kind.as_deref() == Some("error") {
                errors += 1;
            }
            if current == Some(place.request) {
                if let Some((_, lines)) = groups.get_mut(&place.request) {
                    lines.push(raw);
                }
                continue;
            }
            current = Some(place.request);
            let seen = Seen {
                part: p,
                at,
                line: head.line,
            };
            match groups.entry(place.request) {
                std::collections::hash_map::Entry::Occupied(e) => {
                    duplicates.push((place.request, e.get().0, seen))
                }
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert((seen, vec![raw]));
                }
            }
        }
    }
    let Some((reference, _, _)) = reference else {
        return Err(input_err("the parts hold no records", hint_parts));
    };
    let where_ = |s: &Seen| format!("{} line {}", parts[s.part].name, s.at);
    if let Some((request, first, again)) = duplicates.first() {
        let line = first
            .line
            .map(|l| format!(" (batch line {l})"))
            .unwrap_or_default();
        let more = match duplicates.len() {
            1 => String::new(),
            d => format!("; {} more requests are there twice", d - 1),
        };
        return Err(input_err(
            format!(
                "request {request}{line} is in the parts twice: {} and {}{more}",
                where_(first),
                where_(again)
            ),
            "give each shard's part once (a shard run again replaces its old part: leave the old \
             one out)",
        ));
    }
    if let Some((name, text)) = batch
        && digest(text) != reference.batch_sha256
    {
        return Err(input_err(
            format!(
                "the parts were not made from {name} (its SHA-256 is {}, theirs {})",
                &digest(text)[..12],
                &reference.batch_sha256[..reference.batch_sha256.len().min(12)]
            ),
            "pass the batch file the shards ran on, or leave --batch out",
        ));
    }
    let missing: Vec<usize> = (0..reference.requests)
        .filter(|r| !groups.contains_key(r))
        .collect();
    if !missing.is_empty() {
        let n = reference.n;
        let mut shards: Vec<usize> = missing.iter().map(|r| r % n).collect();
        shards.sort_unstable();
        shards.dedup();
        let requests: Vec<String> = missing.iter().map(|r| r.to_string()).collect();
        let lines = batch.map(|(name, text)| {
            let all: Vec<usize> = request_lines(text).map(|(l, _)| l).collect();
            let lines: Vec<String> = missing.iter().map(|&r| all[r].to_string()).collect();
            format!(" (lines {} of {name})", listed(&lines))
        });
        let shard_list = listed(
            &shards
                .iter()
                .map(|k| format!("{k}/{n}"))
                .collect::<Vec<_>>(),
        );
        return Err(input_err(
            format!(
                "{} of {} requests are missing from the parts: request{} {}{} of shard{} {shard_list}",
                missing.len(),
                reference.requests,
                if missing.len() == 1 { "" } else { "s" },
                listed(&requests),
                lines.unwrap_or_default(),
                if shards.len() == 1 { "" } else { "s" },
            ),
            if batch.is_some() {
                "run those shards again (e.g. --shard K/N) and merge every part".to_string()
            } else {
                "run those shards again (e.g. --shard K/N) and merge every part; --batch FILE \
                 names the missing requests' lines"
                    .to_string()
            },
        ));
    }
    let lines = (0..reference.requests)
        .flat_map(|r| groups.remove(&r).map(|(_, l)| l).unwrap_or_default())
        .collect();
    Ok(Merged {
        lines,
        requests: reference.requests,
        errors,
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

    /// `--shard ARG` under the variables `vars` (a map: the process environment is not touched).
    fn auto(arg: &str, vars: &[(&str, &str)]) -> Result<(Shard, Option<String>)> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Shard::resolve(arg, |name| map.get(name).cloned())
    }

    fn slurm_vars<'a>(
        id: &'a str,
        min: &'a str,
        max: &'a str,
        step: &'a str,
        count: &'a str,
    ) -> Vec<(&'static str, &'a str)> {
        vec![
            ("SLURM_ARRAY_TASK_ID", id),
            ("SLURM_ARRAY_TASK_MIN", min),
            ("SLURM_ARRAY_TASK_MAX", max),
            ("SLURM_ARRAY_TASK_STEP", step),
            ("SLURM_ARRAY_TASK_COUNT", count),
            ("SLURM_JOB_ID", "77"),
        ]
    }

    #[test]
    fn shard_auto_maps_slurm_arrays_onto_shards() {
        let shard = |vars: &[(&str, &str)]| auto("auto", vars).map(|(s, _)| (s.k, s.n));
        // --array=0-3, --array=1-4 and --array=0-15:4: four shards each.
        for (id, k) in [("0", 0), ("3", 3)] {
            assert_eq!(shard(&slurm_vars(id, "0", "3", "1", "4")).unwrap(), (k, 4));
        }
        for (id, k) in [("1", 0), ("2", 1), ("4", 3)] {
            assert_eq!(shard(&slurm_vars(id, "1", "4", "1", "4")).unwrap(), (k, 4));
        }
        for (id, k) in [("0", 0), ("4", 1), ("8", 2), ("12", 3)] {
            assert_eq!(shard(&slurm_vars(id, "0", "12", "4", "4")).unwrap(), (k, 4));
        }
        // Without MAX and STEP (older Slurm): a range of COUNT indices from MIN.
        let bare = [
            ("SLURM_ARRAY_TASK_ID", "7"),
            ("SLURM_ARRAY_TASK_MIN", "5"),
            ("SLURM_ARRAY_TASK_COUNT", "3"),
        ];
        assert_eq!(shard(&bare).unwrap(), (2, 3));
        // auto/N agrees with the count, and the source names the variables.
        let (s, from) = auto("auto/4", &slurm_vars("2", "1", "4", "1", "4")).unwrap();
        assert_eq!(s, Shard { k: 1, n: 4 });
        let from = from.unwrap();
        assert!(from.contains("SLURM_ARRAY_TASK_ID=2"), "{from}");
        assert!(from.contains("SLURM_ARRAY_TASK_COUNT=4"), "{from}");
        // Explicit K/N ignores the environment and says no source.
        assert_eq!(
            auto("1/2", &slurm_vars("3", "0", "3", "1", "4")).unwrap(),
            (Shard { k: 1, n: 2 }, None)
        );
    }

    #[test]
    fn shard_auto_refuses_what_it_cannot_map() {
        let message = |arg: &str, vars: &[(&str, &str)]| {
            let e = auto(arg, vars).unwrap_err();
            assert!(e.is_input(), "{arg} {vars:?}");
            assert!(e.hint().is_some(), "{arg} {vars:?}");
            e.message()
        };
        // A list of indices (--array=1,2,9: MIN 1, MAX 9, COUNT 3) is not a range.
        let m = message("auto", &slurm_vars("2", "1", "9", "1", "3"));
        assert!(m.contains("not an evenly spaced range"), "{m}");
        // 0-15:4 as MAX=15 would be: 15 is not on the step.
        message("auto", &slurm_vars("4", "0", "15", "4", "4"));
        // An index off the step, below MIN, past the count.
        message("auto", &slurm_vars("5", "0", "12", "4", "4"));
        message("auto", &slurm_vars("0", "1", "4", "1", "4"));
        message("auto", &slurm_vars("9", "1", "4", "1", "4"));
        // Step 0, count 0, not a number.
        message("auto", &slurm_vars("0", "0", "0", "0", "1"));
        message("auto", &slurm_vars("0", "0", "0", "1", "0"));
        let m = message("auto", &slurm_vars("x", "0", "3", "1", "4"));
        assert!(m.contains("SLURM_ARRAY_TASK_ID=x"), "{m}");
        // Missing companions are named.
        let m = message("auto", &[("SLURM_ARRAY_TASK_ID", "1")]);
        assert!(m.contains("SLURM_ARRAY_TASK_MIN"), "{m}");
        let m = message(
            "auto",
            &[("SLURM_ARRAY_TASK_ID", "1"), ("SLURM_ARRAY_TASK_MIN", "0")],
        );
        assert!(m.contains("SLURM_ARRAY_TASK_COUNT"), "{m}");
        // auto/N against the array's count.
        let m = message("auto/3", &slurm_vars("1", "0", "3", "1", "4"));
        assert!(m.contains("contradicts SLURM_ARRAY_TASK_COUNT=4"), "{m}");
        // Both schedulers, none, bad forms.
        let mut both = slurm_vars("1", "0", "3", "1", "4");
        both.push(("JOB_COMPLETION_INDEX", "1"));
        let m = message("auto/4", &both);
        assert!(m.contains("both"), "{m}");
        let m = message("auto", &[]);
        assert!(
            m.contains("SLURM_ARRAY_TASK_ID") && m.contains("JOB_COMPLETION_INDEX"),
            "{m}"
        );
        let e = auto("auto", &[("SLURM_JOB_ID", "5")]).unwrap_err();
        assert!(e.hint().unwrap().contains("not an array"), "{:?}", e.hint());
        for bad in ["auto/0", "auto/x", "auto4", "autox", "auto/"] {
            message(bad, &[("JOB_COMPLETION_INDEX", "0")]);
        }
    }

    #[test]
    fn shard_auto_takes_the_index_of_a_kubernetes_indexed_job() {
        let vars = [("JOB_COMPLETION_INDEX", "2")];
        let (s, from) = auto("auto/4", &vars).unwrap();
        assert_eq!(s, Shard { k: 2, n: 4 });
        assert!(from.unwrap().contains("JOB_COMPLETION_INDEX=2"));
        // The count is not in a pod's environment: auto alone names what to write.
        let e = auto("auto", &vars).unwrap_err();
        assert!(e.is_input());
        assert!(
            e.hint().unwrap().contains("--shard auto/N"),
            "{:?}",
            e.hint()
        );
        assert!(auto("auto/2", &vars).unwrap_err().is_input());
        assert!(
            auto("auto/4", &[("JOB_COMPLETION_INDEX", "-1")])
                .unwrap_err()
                .is_input()
        );
        // An empty variable counts as unset.
        assert!(
            auto("auto/4", &[("JOB_COMPLETION_INDEX", " ")])
                .unwrap_err()
                .is_input()
        );
    }

    /// A record of request `request` of a batch of `requests` in `n` shards.
    fn rec(kind: &str, request: usize, requests: usize, n: usize, batch: &str, t: usize) -> String {
        serde_json::json!({
            "type": kind, "line": request + 1, "target": t,
            "shard": {"request": request, "requests": requests, "k": request % n, "n": n,
                      "batch_sha256": batch}
        })
        .to_string()
    }

    /// The parts of a batch of `requests` over `n` shards; request 1 has two records (as with
    /// --all) and request 2 is an error record.
    fn parts(requests: usize, n: usize, batch: &str) -> Vec<Part> {
        (0..n)
            .map(|k| {
                let mut text = String::new();
                for r in (k..requests).step_by(n) {
                    let kind = if r == 2 { "error" } else { "attribution" };
                    let targets = if r == 1 { 2 } else { 1 };
                    for t in 0..targets {
                        text.push_str(&rec(kind, r, requests, n, batch, t));
                        text.push('\n');
                    }
                }
                Part {
                    name: format!("part{k}.jsonl"),
                    text,
                }
            })
            .collect()
    }

    fn heads(m: &Merged<'_>) -> Vec<(u64, u64)> {
        m.lines
            .iter()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                (
                    v["shard"]["request"].as_u64().unwrap(),
                    v["target"].as_u64().unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn merge_puts_the_parts_back_in_input_order() {
        let mut p = parts(7, 3, "aa");
        let want = vec![
            (0, 0),
            (1, 0),
            (1, 1),
            (2, 0),
            (3, 0),
            (4, 0),
            (5, 0),
            (6, 0),
        ];
        let m = merge(&p, None).unwrap();
        assert_eq!(heads(&m), want);
        assert_eq!((m.requests, m.errors), (7, 1));
        // The order of the parts does not matter; an empty part (a shard of no requests) and
        // blank lines are fine.
        p.reverse();
        p.push(Part {
            name: "empty.jsonl".into(),
            text: "\n".into(),
        });
        assert_eq!(heads(&merge(&p, None).unwrap()), want);
        let few = parts(2, 4, "bb");
        assert_eq!(
            heads(&merge(&few, None).unwrap()),
            vec![(0, 0), (1, 0), (1, 1)]
        );
    }

    #[test]
    fn merge_fails_on_missing_duplicate_and_foreign_records() {
        let p = parts(7, 3, "aa");
        let fails = |parts: &[Part], batch: Option<(&str, &str)>| {
            let e = merge(parts, batch).unwrap_err();
            assert!(e.is_input());
            assert!(e.hint().is_some());
            e.message()
        };
        // A missing part: its requests are named, and their lines with the batch file.
        let m = fails(&[p[0].clone(), p[2].clone()], None);
        assert!(m.contains("2 of 7 requests are missing"), "{m}");
        assert!(m.contains("requests 1, 4 of shard 1/3"), "{m}");
        let text = "{}\n\n{}\n{}\n{}\n{}\n\n{}\n{}\n";
        let mut q = parts(7, 3, &digest(text));
        q.remove(1);
        let m = fails(&q, Some(("b.jsonl", text)));
        assert!(m.contains("(lines 3, 6 of b.jsonl)"), "{m}");
        // The parts of another batch file than the one given.
        let m = fails(&p, Some(("b.jsonl", text)));
        assert!(m.contains("not made from b.jsonl"), "{m}");
        // A part given twice, or a record twice in one part.
        let m = fails(
            &[p[0].clone(), p[1].clone(), p[2].clone(), p[1].clone()],
            None,
        );
        assert!(
            m.contains("request 1 (batch line 2) is in the parts twice"),
            "{m}"
        );
        assert!(
            m.contains("part1.jsonl line 1 and part1.jsonl line 1"),
            "{m}"
        );
        let mut twice = p.clone();
        twice[0].text = format!("{}{}", p[0].text, p[0].text);
        let m = fails(&twice, None);
        assert!(
            m.contains("request 0 (batch line 1) is in the parts twice"),
            "{m}"
        );
        assert!(m.contains("part0.jsonl line 4"), "{m}");
        // Parts of different batches: another file, another shard count.
        let mut other = p.clone();
        other[1] = parts(7, 3, "cc").remove(1);
        let m = fails(&other, None);
        assert!(m.contains("different batches"), "{m}");
        let mut other = p.clone();
        other[2] = parts(7, 4, "aa").remove(2);
        assert!(fails(&other, None).contains("different batches"));
        // Not sharded output, not JSON, nothing at all, a place that cannot be.
        let m = fails(
            &[Part {
                name: "x.jsonl".into(),
                text: "{\"type\": \"attribution\", \"line\": 1}\n".into(),
            }],
            None,
        );
        assert!(m.contains("x.jsonl line 1 has no \"shard\" field"), "{m}");
        let junk = Part {
            name: "j".into(),
            text: "oops".into(),
        };
        assert!(fails(&[junk], None).contains("j line 1"));
        let empty = Part {
            name: "e".into(),
            text: String::new(),
        };
        assert!(fails(&[empty], None).contains("no records"));
        let bad = Part {
            name: "b".into(),
            text: rec("attribution", 1, 7, 3, "aa", 0).replace("\"k\":1", "\"k\":2"),
        };
        assert!(fails(&[bad], None).contains("cannot be in shard 2/3"));
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
