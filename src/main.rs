fn main() -> std::process::ExitCode {
    tune_process();
    ntv::app::run()
}

/// Process-wide settings that must be made before any thread starts.
///
/// - On 2 cores, candle's element-wise "barrier pool" (cores − 1 spinning workers) competes
///   with its matmul threads; without it (`CANDLE_NUM_THREADS=1`; matmuls still use every
///   core) integrated gradients ran 15–25% faster here. A value the user set is kept.
/// - candle asks for its matmul thread count before every matmul; without `RAYON_NUM_THREADS`
///   that means parsing /proc/cpuinfo each time (saliency 10–15% slower). Setting it to the
///   available cores (rayon's own default) keeps the answer and drops the cost.
/// - glibc returns every large freed block to the kernel, so the autograd engine's tensors
///   (a few MB each, allocated and freed per operation) came back as fresh zeroed pages: page
///   clearing took ~20% of integrated gradients' time. Keeping freed memory for reuse removes
///   most of it.
fn tune_process() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    // SAFETY (both set_var): first statement of `main`: no other thread exists yet, so nothing
    // can read or write the environment concurrently.
    if cores <= 2 && std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        unsafe { std::env::set_var("CANDLE_NUM_THREADS", "1") };
    }
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        unsafe { std::env::set_var("RAYON_NUM_THREADS", cores.to_string()) };
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before any allocation-heavy
    // work and before other threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}
