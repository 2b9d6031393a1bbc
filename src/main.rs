fn main() -> std::process::ExitCode {
    tune_process();
    ntv::app::run()
}

/// Process-wide settings that must be made before any thread starts.
///
/// - glibc returns every large freed block to the kernel, so the autograd engine's buffers
///   (a few MB each, allocated and freed per block) came back as fresh zeroed pages: page
///   clearing took ~20% of integrated gradients' time. Keeping freed memory for reuse removes
///   most of it.
fn tune_process() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before any allocation-heavy
    // work and before other threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}
