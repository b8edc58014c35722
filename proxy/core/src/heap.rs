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

/// How many malloc arenas a process that calls [`limit_arenas`] keeps.
pub const ARENAS: i32 = 2;

/// Caps glibc's malloc arenas at [`ARENAS`] (a no-op elsewhere). Call once, first thing in
/// `main`. glibc gives threads their own arenas (up to eight per core), and heap freed in one
/// arena serves only that arena: the agent's syncs run on changing blocking threads, so at
/// 10,000 services each one left its own ~10 MB of freed heap behind (ebpf-mode agent RSS
/// 88–96 MB with glibc's default, 70 MB with one arena; two leave the async workers and the
/// sync thread an arena each).
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; called before other threads exist.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, ARENAS);
    }
}
