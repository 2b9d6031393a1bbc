//! Re-quantising a GGUF model with llama.cpp's own quantiser (`llama_model_quantize`), e.g. to
//! make a second, genuinely different model for `ntv diff` and its tests.

use std::ffi::CString;
use std::io::Read;
use std::path::Path;

use llama_cpp_sys_2 as sys;

use super::error::EngineError;
use super::{backend, log};

/// The target types [`quantize`] accepts, by llama.cpp's names (case does not matter). Types
/// that need an importance matrix (the IQ1/IQ2/IQ3 families) are left out: llama.cpp refuses
/// them without one.
pub const QUANT_TYPES: &[&str] = &[
    "F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K_S", "Q3_K_M",
    "Q3_K_L", "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K", "IQ4_NL", "IQ4_XS",
];

/// llama.cpp's `llama_ftype` for a name of [`QUANT_TYPES`].
fn ftype_of(name: &str) -> Option<sys::llama_ftype> {
    Some(match name.to_ascii_uppercase().as_str() {
        "F32" => sys::LLAMA_FTYPE_ALL_F32,
        "F16" => sys::LLAMA_FTYPE_MOSTLY_F16,
        "BF16" => sys::LLAMA_FTYPE_MOSTLY_BF16,
        "Q4_0" => sys::LLAMA_FTYPE_MOSTLY_Q4_0,
        "Q4_1" => sys::LLAMA_FTYPE_MOSTLY_Q4_1,
        "Q5_0" => sys::LLAMA_FTYPE_MOSTLY_Q5_0,
        "Q5_1" => sys::LLAMA_FTYPE_MOSTLY_Q5_1,
        "Q8_0" => sys::LLAMA_FTYPE_MOSTLY_Q8_0,
        "Q2_K" => sys::LLAMA_FTYPE_MOSTLY_Q2_K,
        "Q3_K_S" => sys::LLAMA_FTYPE_MOSTLY_Q3_K_S,
        "Q3_K_M" => sys::LLAMA_FTYPE_MOSTLY_Q3_K_M,
        "Q3_K_L" => sys::LLAMA_FTYPE_MOSTLY_Q3_K_L,
        "Q4_K_S" => sys::LLAMA_FTYPE_MOSTLY_Q4_K_S,
        "Q4_K_M" => sys::LLAMA_FTYPE_MOSTLY_Q4_K_M,
        "Q5_K_S" => sys::LLAMA_FTYPE_MOSTLY_Q5_K_S,
        "Q5_K_M" => sys::LLAMA_FTYPE_MOSTLY_Q5_K_M,
        "Q6_K" => sys::LLAMA_FTYPE_MOSTLY_Q6_K,
        "IQ4_NL" => sys::LLAMA_FTYPE_MOSTLY_IQ4_NL,
        "IQ4_XS" => sys::LLAMA_FTYPE_MOSTLY_IQ4_XS,
        _ => return None,
    })
}

fn io_error(path: &Path, kind: std::io::ErrorKind, msg: &str) -> EngineError {
    EngineError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::new(kind, msg.to_string()),
    }
}

/// A path as a C string (the raw bytes on Unix).
fn c_path(path: &Path) -> Result<CString, EngineError> {
    #[cfg(unix)]
    let bytes = {
        use std::os::unix::ffi::OsStrExt;
        path.as_os_str().as_bytes().to_vec()
    };
    #[cfg(not(unix))]
    let bytes = path.to_string_lossy().into_owned().into_bytes();
    CString::new(bytes).map_err(|_| {
        io_error(
            path,
            std::io::ErrorKind::InvalidInput,
            "the path contains a NUL byte",
        )
    })
}

/// Checks that `src` is an existing GGUF file, like [`super::Model::load`] does.
fn check_source(src: &Path) -> Result<(), EngineError> {
    let meta = std::fs::metadata(src).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => EngineError::NotFound(src.to_path_buf()),
        _ => EngineError::Io {
            path: src.to_path_buf(),
            source: e,
        },
    })?;
    let mut magic = [0u8; 4];
    let n = if meta.is_dir() {
        0
    } else {
        std::fs::File::open(src)
            .and_then(|mut f| f.read(&mut magic))
            .map_err(|e| EngineError::Io {
                path: src.to_path_buf(),
                source: e,
            })?
    };
    if n < 4 || &magic != b"GGUF" {
        return Err(EngineError::NotGguf {
            path: src.to_path_buf(),
        });
    }
    Ok(())
}

/// Writes a copy of the GGUF model `src` quantised to `ftype` (one of [`QUANT_TYPES`], e.g.
/// `"Q8_0"`, `"Q4_0"`, `"Q5_1"`, `"F16"`) to `dst`, using `threads` CPU threads (0 or less:
/// one per hardware thread), like llama.cpp's `llama-quantize` tool with its defaults.
///
/// Already-quantised tensors may be re-quantised (`allow_requantize`), so a Q4_1 model can be
/// turned into Q8_0 or Q4_0; the result carries the source's rounding errors, which is fine for
/// comparisons but worse than quantising from F16. The file is written to a temporary name in
/// `dst`'s folder and renamed when complete, so a failure never leaves a partial `dst`.
///
/// Errors: a missing or non-GGUF `src` ([`EngineError::NotFound`], [`EngineError::NotGguf`]);
/// an unknown `ftype` ([`EngineError::Backend`], naming the known types); `dst` equal to `src`
/// or an unwritable folder ([`EngineError::Io`]); llama.cpp refusing the model
/// ([`EngineError::Corrupt`] with llama.cpp's own message).
pub fn quantize(src: &Path, dst: &Path, ftype: &str, threads: i32) -> Result<(), EngineError> {
    let Some(ft) = ftype_of(ftype) else {
        return Err(EngineError::Backend(format!(
            "unknown quantisation type '{ftype}' (known: {})",
            QUANT_TYPES.join(", ")
        )));
    };
    check_source(src)?;
    if let (Ok(a), Ok(b)) = (src.canonicalize(), dst.canonicalize())
        && a == b
    {
        return Err(io_error(
            dst,
            std::io::ErrorKind::InvalidInput,
            "the destination is the source model; choose another output path",
        ));
    }
    let dir = match dst.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let tmp = tempfile::Builder::new()
        .prefix(".ntv-quantize-")
        .suffix(".gguf.tmp")
        .tempfile_in(dir)
        .map_err(|e| EngineError::Io {
            path: dir.to_path_buf(),
            source: e,
        })?
        .into_temp_path();
    let src_c = c_path(src)?;
    let tmp_c = c_path(&tmp)?;

    backend()?;
    log::take_errors();
    // SAFETY: a plain function returning a struct by value; it has no preconditions.
    let mut params = unsafe { sys::llama_model_quantize_default_params() };
    params.nthread = threads;
    params.ftype = ft;
    params.allow_requantize = true;
    // SAFETY: both paths are valid NUL-terminated strings that outlive the call; `params` is a
    // fully initialised struct from llama.cpp's own defaults whose pointer fields (imatrix,
    // overrides, pruned layers) are null, which llama.cpp treats as "none"; it only reads
    // `params`. llama.cpp catches its own exceptions and reports failure as a non-zero result.
    let rc = unsafe { sys::llama_model_quantize(src_c.as_ptr(), tmp_c.as_ptr(), &params) };
    if rc != 0 {
        let errors = log::take_errors();
        let detail = if errors.is_empty() {
            format!("llama.cpp could not quantise it to {ftype}")
        } else {
            format!(
                "llama.cpp could not quantise it to {ftype}: {}",
                errors.join("; ")
            )
        };
        // Dropping `tmp` deletes the partial output.
        return Err(EngineError::Corrupt {
            path: src.to_path_buf(),
            detail,
        });
    }
    tmp.persist(dst).map_err(|e| EngineError::Io {
        path: dst.to_path_buf(),
        source: e.error,
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_type_has_an_ftype() {
        for name in QUANT_TYPES {
            assert!(ftype_of(name).is_some(), "{name}");
            assert_eq!(ftype_of(&name.to_lowercase()), ftype_of(name));
        }
        assert_eq!(ftype_of("Q8_0"), Some(7));
        assert_eq!(ftype_of("IQ2_XXS"), None);
    }

    #[test]
    fn bad_inputs_fail_before_llama_cpp() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("m.gguf");
        let dst = dir.path().join("out.gguf");
        let e = quantize(&src, &dst, "Q8_0", 1).unwrap_err();
        assert!(matches!(e, EngineError::NotFound(_)), "{e}");
        std::fs::write(&src, b"not a model").unwrap();
        let e = quantize(&src, &dst, "Q8_0", 1).unwrap_err();
        assert!(matches!(e, EngineError::NotGguf { .. }), "{e}");
        let e = quantize(&src, &dst, "Q9_9", 1).unwrap_err();
        assert!(e.to_string().contains("Q9_9") && e.to_string().contains("Q8_0"));
        std::fs::write(&src, b"GGUF\0\0\0\0").unwrap();
        let e = quantize(&src, &src, "Q8_0", 1).unwrap_err();
        assert!(matches!(e, EngineError::Io { .. }), "{e}");
        // A truncated GGUF reaches llama.cpp, which refuses it; nothing is left behind.
        let e = quantize(&src, &dst, "Q8_0", 1).unwrap_err();
        assert!(matches!(e, EngineError::Corrupt { .. }), "{e}");
        assert!(!dst.exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
