//! Ctrl-C and `kill` (SIGINT, SIGTERM) during a generation: the first one asks the step loop to
//! stop at the next token boundary (stop reason `interrupted`; the command saves what it has,
//! prints its summary and exits 130); a second one ends the process at once with status 130,
//! for a user who does not want to wait. Commands that cannot stop cleanly do not install the
//! handlers and keep the default (the process ends).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

/// The exit status of an interrupted command (128 + SIGINT, as shells report it).
pub const EXIT_INTERRUPTED: u8 = 130;

fn flag() -> &'static Arc<AtomicBool> {
    static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();
    FLAG.get_or_init(|| Arc::new(AtomicBool::new(false)))
}

/// Catch SIGINT and SIGTERM from now on (idempotent enough: a second call adds handlers that
/// do the same).
pub fn install() -> std::io::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    for sig in [SIGINT, SIGTERM] {
        // Registered first, so it sees the flag as the previous signal left it: the second
        // signal exits, the first only sets the flag.
        signal_hook::flag::register_conditional_shutdown(
            sig,
            i32::from(EXIT_INTERRUPTED),
            Arc::clone(flag()),
        )?;
        signal_hook::flag::register(sig, Arc::clone(flag()))?;
    }
    Ok(())
}

/// Whether a stop was asked for.
pub fn requested() -> bool {
    flag().load(Ordering::Relaxed)
}
