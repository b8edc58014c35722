//! Returning freed heap to the kernel after a large sync.
//!
//! A NAT mode's full sync at 10,000 services renders megabytes of text and temporaries; glibc
//! keeps most of that heap once freed, and the agent's RSS would stay at the high-water mark.

/// A sync whose rendered text is at least this large is followed by [`trim`].
pub const TRIM_AFTER_BYTES: usize = 1 << 20;

/// [`trim`] after a sync that rendered `bytes` of text, if that was at least
/// [`TRIM_AFTER_BYTES`] (call it once the text is dropped).
pub fn trim_after(bytes: usize) {
    if bytes >= TRIM_AFTER_BYTES {
        trim();
    }
}

/// Returns free heap memory to the kernel (glibc's `malloc_trim`; a no-op elsewhere).
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory of the allocator's arenas.
    unsafe {
        libc::malloc_trim(0);
    }
}
