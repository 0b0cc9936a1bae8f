//! Process-wide memory settings, applied once at start-up before any thread allocates.
//!
//! glibc gives threads their own malloc arenas when they contend. keyhole's publisher moves its
//! data between threads (the LDAP connection task, blocking home reads, the workers), and every
//! arena then keeps the memory freed in it: at 10,000 users that was 12–17 MB of peak RSS on top
//! of the live data (`members` 51 → 39 MB, `publish` 97 → 80-odd MB, `scripts/bench scale`).
//! The work is bound by LDAP, NFS and S3, never by malloc contention, so one arena costs nothing
//! measurable. This must never change behaviour, only memory; on other C libraries it does
//! nothing.

/// Limits glibc to a single malloc arena.
pub fn use_one_malloc_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator tunable; it is called from main before any other
    // thread exists, and M_ARENA_MAX with a positive value is valid on every glibc.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}
