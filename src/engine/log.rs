//! Routing of llama.cpp / ggml log messages: silent by default, kept in memory so that a
//! failed load can quote llama.cpp's own reason, and echoed to stderr with `--verbose`.

use std::ffi::{CStr, c_char, c_void};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use llama_cpp_sys_2 as sys;

static VERBOSE: AtomicBool = AtomicBool::new(false);
static RECENT_ERRORS: Mutex<Vec<String>> = Mutex::new(Vec::new());
static PENDING: Mutex<(i32, String)> = Mutex::new((0, String::new()));

/// Echo llama.cpp's log to stderr (`--verbose`).
pub fn set_verbose(on: bool) {
    VERBOSE.store(on, Ordering::Relaxed);
}

/// The error and warning lines llama.cpp logged since the last call (oldest first).
pub(crate) fn take_errors() -> Vec<String> {
    std::mem::take(&mut *RECENT_ERRORS.lock().unwrap_or_else(|e| e.into_inner()))
}

unsafe extern "C" fn on_log(level: sys::ggml_log_level, text: *const c_char, _ud: *mut c_void) {
    if text.is_null() {
        return;
    }
    // SAFETY: llama.cpp passes a NUL-terminated string that lives for the duration of the call.
    let msg = unsafe { CStr::from_ptr(text) }
        .to_string_lossy()
        .into_owned();
    // No panic may unwind into C: everything below is wrapped.
    let _ = std::panic::catch_unwind(move || record(level, msg));
}

fn record(level: sys::ggml_log_level, msg: String) {
    if VERBOSE.load(Ordering::Relaxed) {
        use std::io::Write;
        let _ = std::io::stderr().write_all(msg.as_bytes());
    }
    let mut pending = PENDING.lock().unwrap_or_else(|e| e.into_inner());
    // GGML_LOG_LEVEL_CONT continues the previous message; anything else starts a new one.
    if level as i32 != sys::GGML_LOG_LEVEL_CONT as i32 {
        flush(&mut pending);
        pending.0 = level as i32;
    }
    pending.1.push_str(&msg);
    if pending.1.ends_with('\n') {
        flush(&mut pending);
    }
}

fn flush(pending: &mut (i32, String)) {
    let line = pending.1.trim().to_string();
    pending.1.clear();
    let problem = pending.0 == sys::GGML_LOG_LEVEL_ERROR as i32
        || pending.0 == sys::GGML_LOG_LEVEL_WARN as i32;
    if problem && !line.is_empty() {
        let mut errs = RECENT_ERRORS.lock().unwrap_or_else(|e| e.into_inner());
        if errs.len() >= 32 {
            errs.remove(0);
        }
        errs.push(line);
    }
}

/// Install the callback (idempotent; must run before the backend starts).
pub(crate) fn install() {
    // SAFETY: `on_log` is a plain extern "C" function with 'static lifetime that never unwinds;
    // the user-data pointer is unused.
    unsafe { sys::llama_log_set(Some(on_log), std::ptr::null_mut()) };
}
