//! Which files of a repository a reference means, by llama.cpp's `-hf` rules: a quantisation
//! tag matches a model GGUF whose path holds `TAG.` or `TAG-` (case-insensitive); without a tag
//! Q4_K_M, then Q8_0, then the first model GGUF; projector, imatrix and draft files are never
//! the model; a split model (`-00001-of-0000N.gguf`) is chosen by its first part and fetched
//! whole. Unlike llama.cpp, which takes the first match, several matching models are an error
//! that lists them.

use super::{HubError, Pick};

/// The files to fetch for one model: the first is the one llama.cpp opens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub files: Vec<String>,
}

impl Choice {
    /// The file llama.cpp loads (the first part of a split model).
    pub fn primary(&self) -> &str {
        &self.files[0]
    }
}

/// `name-00001-of-00003.gguf` → (`name`, 1, 3); a single file is part 1 of 1.
pub fn split_info(path: &str) -> Option<(&str, u32, u32)> {
    let stem = strip_suffix_ci(path, ".gguf")?;
    let split = (|| {
        let (rest, count) = stem.rsplit_once("-of-")?;
        let (prefix, index) = rest.rsplit_once('-')?;
        let digits = |s: &str| s.len() == 5 && s.bytes().all(|b| b.is_ascii_digit());
        if !(digits(index) && digits(count)) {
            return None;
        }
        Some((prefix, index.parse().ok()?, count.parse().ok()?))
    })();
    Some(split.unwrap_or((stem, 1, 1)))
}

fn strip_suffix_ci<'a>(s: &'a str, suffix: &str) -> Option<&'a str> {
    let n = s.len().checked_sub(suffix.len())?;
    (s.is_char_boundary(n) && s[n..].eq_ignore_ascii_case(suffix)).then(|| &s[..n])
}

/// A GGUF that is a model, not a projector, an importance matrix or a draft head.
pub fn is_model_gguf(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    strip_suffix_ci(name, ".gguf").is_some()
        && !["mmproj", "imatrix", "mtp-", "eagle3-", "dflash-", "dspark-"]
            .iter()
            .any(|k| name.contains(k))
}

/// The quantisation tag of a file name (`model-Q4_K_M.gguf` → `Q4_K_M`), upper-case.
pub fn quant_of(path: &str) -> Option<String> {
    let (prefix, _, _) = split_info(path)?;
    let name = prefix.rsplit('/').next().unwrap_or(prefix);
    let at = name.rfind(['-', '.'])?;
    let tag = &name[at + 1..];
    (!tag.is_empty() && tag.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        .then(|| tag.to_ascii_uppercase())
}

/// Whether `path` carries `tag` as llama.cpp matches it (`TAG` followed by `.` or `-`).
fn carries(path: &str, tag: &str) -> bool {
    let (p, t) = (path.to_ascii_lowercase(), tag.to_ascii_lowercase());
    p.match_indices(&t)
        .any(|(i, _)| matches!(p.as_bytes().get(i + t.len()), Some(b'.' | b'-')))
}

/// Every part of the split model whose part `first` is, in order.
fn parts(files: &[String], repo: &str, first: &str) -> Result<Vec<String>, HubError> {
    let Some((prefix, _, count)) = split_info(first) else {
        return Ok(vec![first.to_string()]);
    };
    if count <= 1 {
        return Ok(vec![first.to_string()]);
    }
    (1..=count)
        .map(|i| {
            files
                .iter()
                .find(|f| split_info(f) == Some((prefix, i, count)))
                .cloned()
                .ok_or_else(|| HubError::MissingPart {
                    repo: repo.to_string(),
                    file: first.to_string(),
                    part: i,
                    count,
                })
        })
        .collect()
}

/// The models of the listing: model GGUFs, a split model by its first part.
fn models(files: &[String]) -> Vec<&String> {
    files
        .iter()
        .filter(|f| is_model_gguf(f))
        .filter(|f| split_info(f).is_some_and(|(_, i, _)| i == 1))
        .collect()
}

/// Choose the files of `pick` among the repository's `files` (in the hub's order).
pub fn choose(repo: &str, files: &[String], pick: &Pick) -> Result<Choice, HubError> {
    let ggufs: Vec<String> = files
        .iter()
        .filter(|f| strip_suffix_ci(f, ".gguf").is_some())
        .cloned()
        .collect();
    let first = match pick {
        Pick::File(want) => files
            .iter()
            .find(|f| f.eq_ignore_ascii_case(want))
            .cloned()
            .ok_or_else(|| HubError::NoMatch {
                repo: repo.into(),
                wanted: want.clone(),
                files: ggufs.clone(),
            })?,
        _ => {
            let all = models(files);
            if all.is_empty() {
                return Err(HubError::NoGguf {
                    repo: repo.into(),
                    files: ggufs,
                });
            }
            let tags: Vec<&str> = match pick {
                Pick::Quant(q) => vec![q.as_str()],
                _ => vec!["Q4_K_M", "Q8_0"],
            };
            let mut found = None;
            for tag in &tags {
                let hits: Vec<&String> = all.iter().copied().filter(|f| carries(f, tag)).collect();
                match hits.as_slice() {
                    [] => continue,
                    [one] => {
                        found = Some((*one).clone());
                        break;
                    }
                    many => {
                        return Err(HubError::Ambiguous {
                            repo: repo.into(),
                            wanted: format!(":{tag}"),
                            candidates: many.iter().map(|s| s.to_string()).collect(),
                        });
                    }
                }
            }
            match (found, pick) {
                (Some(f), _) => f,
                (None, Pick::Quant(q)) => {
                    return Err(HubError::NoMatch {
                        repo: repo.into(),
                        wanted: format!(":{q}"),
                        files: ggufs,
                    });
                }
                (None, _) => all[0].clone(),
            }
        }
    };
    Ok(Choice {
        files: parts(files, repo, &first)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn pick(names: &[&str], p: Pick) -> Result<Vec<String>, HubError> {
        choose("o/r", &files(names), &p).map(|c| c.files)
    }

    const QUANTS: &[&str] = &[
        "README.md",
        "m-Q2_K.gguf",
        "m-Q8_0.gguf",
        "m-Q4_K_M.gguf",
        "m-Q4_K_S.gguf",
        "mmproj-m-Q4_K_M.gguf",
        "m.imatrix.gguf",
    ];

    #[test]
    fn a_tag_matches_case_insensitively_and_only_whole_tags() {
        assert_eq!(
            pick(QUANTS, Pick::Quant("q4_k_s".into())).unwrap(),
            ["m-Q4_K_S.gguf"]
        );
        // Q4_K is not Q4_K_M: the tag must be followed by `.` or `-`.
        assert!(matches!(
            pick(QUANTS, Pick::Quant("Q4_K".into())),
            Err(HubError::NoMatch { .. })
        ));
    }

    #[test]
    fn without_a_tag_q4_k_m_then_q8_0_then_the_first_model() {
        assert_eq!(pick(QUANTS, Pick::Default).unwrap(), ["m-Q4_K_M.gguf"]);
        assert_eq!(
            pick(&["a-Q2_K.gguf", "a-Q8_0.gguf"], Pick::Default).unwrap(),
            ["a-Q8_0.gguf"]
        );
        assert_eq!(
            pick(
                &["mmproj-a.gguf", "a-F16.gguf", "a-Q2_K.gguf"],
                Pick::Default
            )
            .unwrap(),
            ["a-F16.gguf"]
        );
        assert!(matches!(
            pick(&["README.md", "model.safetensors"], Pick::Default),
            Err(HubError::NoGguf { .. })
        ));
    }

    #[test]
    fn split_models_are_chosen_by_their_first_part_and_fetched_whole() {
        let names = [
            "big-Q8_0-00002-of-00003.gguf",
            "big-Q8_0-00001-of-00003.gguf",
            "big-Q8_0-00003-of-00003.gguf",
            "big-Q2_K.gguf",
        ];
        assert_eq!(
            pick(&names, Pick::Quant("Q8_0".into())).unwrap(),
            [
                "big-Q8_0-00001-of-00003.gguf",
                "big-Q8_0-00002-of-00003.gguf",
                "big-Q8_0-00003-of-00003.gguf"
            ]
        );
        assert!(matches!(
            pick(&names[..2], Pick::Quant("Q8_0".into())),
            Err(HubError::MissingPart { part: 3, .. })
        ));
        assert_eq!(split_info("a/x-00001-of-00002.gguf"), Some(("a/x", 1, 2)));
        assert_eq!(split_info("x.GGUF"), Some(("x", 1, 1)));
        assert_eq!(split_info("x.bin"), None);
    }

    #[test]
    fn several_matching_models_are_an_error_listing_them() {
        let e = pick(
            &["a/m-Q4_0.gguf", "b/m-Q4_0.gguf", "m-Q8_0.gguf"],
            Pick::Quant("Q4_0".into()),
        )
        .unwrap_err();
        match e {
            HubError::Ambiguous { candidates, .. } => {
                assert_eq!(candidates, ["a/m-Q4_0.gguf", "b/m-Q4_0.gguf"])
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_named_file_is_matched_case_insensitively() {
        assert_eq!(
            pick(QUANTS, Pick::File("M-q8_0.GGUF".into())).unwrap(),
            ["m-Q8_0.gguf"]
        );
        assert!(pick(QUANTS, Pick::File("nope.gguf".into())).is_err());
    }

    #[test]
    fn quant_tags_of_file_names() {
        assert_eq!(quant_of("m-Q4_K_M.gguf").as_deref(), Some("Q4_K_M"));
        assert_eq!(
            quant_of("SmolLM2-135M-Instruct.Q4_1.gguf").as_deref(),
            Some("Q4_1")
        );
        assert_eq!(
            quant_of("d/big-q8_0-00001-of-00002.gguf").as_deref(),
            Some("Q8_0")
        );
    }
}
