//! Large zeroed tables backed by transparent huge pages, for the tables the workers read at
//! random per packet (the connection tracker): with 4 KB pages nearly every lookup of a
//! table of tens of megabytes also misses the TLB; with 2 MB pages it rarely does.
//!
//! The memory comes from an anonymous `mmap` (zero-filled by the kernel, so every
//! all-zero-valid type such as the atomics is initialised) and is advised `MADV_HUGEPAGE`;
//! where the kernel refuses huge pages it is an ordinary mapping. It is faulted in when made
//! (`MADV_POPULATE_WRITE`), not on a worker's first touch. Measured by
//! `cargo bench -p benches --bench conntrack` (docs/perf.md).

use std::{marker::PhantomData, ops::Deref, ptr::NonNull};

/// Types whose all-zero bytes are a valid value.
///
/// # Safety
/// Implementors must be valid when every byte is zero and must not need `Drop`.
pub unsafe trait Zeroable: Sized {}

// SAFETY: an AtomicU64 of all zero bytes is the value 0; it has no Drop.
unsafe impl Zeroable for std::sync::atomic::AtomicU64 {}
// SAFETY: an AtomicU32 of all zero bytes is the value 0; it has no Drop.
unsafe impl Zeroable for std::sync::atomic::AtomicU32 {}
// SAFETY: an array of zeroable values is zeroable.
unsafe impl<T: Zeroable, const N: usize> Zeroable for [T; N] {}

/// A fixed-length, zero-initialised slice in its own (huge-page advised) mapping.
pub struct HugeTable<T: Zeroable> {
    ptr: NonNull<T>,
    len: usize,
    bytes: usize,
    _owns: PhantomData<T>,
}

// SAFETY: the table owns its memory like a Box<[T]>; sharing it is sharing &[T].
unsafe impl<T: Zeroable + Sync> Sync for HugeTable<T> {}
// SAFETY: as above, moving it moves ownership of the mapping.
unsafe impl<T: Zeroable + Send> Send for HugeTable<T> {}

impl<T: Zeroable> std::fmt::Debug for HugeTable<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HugeTable").field("len", &self.len).field("bytes", &self.bytes).finish()
    }
}

const HUGE_PAGE: usize = 2 << 20;

impl<T: Zeroable> HugeTable<T> {
    /// `len` zeroed values. Panics only if the system is out of address space, as a Box
    /// would abort.
    pub fn zeroed(len: usize) -> HugeTable<T> {
        let want = (len.max(1)).checked_mul(std::mem::size_of::<T>()).expect("table size overflows");
        let bytes = want.next_multiple_of(HUGE_PAGE);
        // SAFETY: an anonymous private mapping of `bytes` with no address hint; the result is
        // checked before use.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert!(p != libc::MAP_FAILED, "mmap of {bytes} bytes for a table failed: {}", std::io::Error::last_os_error());
        // SAFETY: `p` is the mapping just made, `bytes` long. Advice only: failure leaves an
        // ordinary mapping, which is correct, merely slower.
        unsafe { libc::madvise(p, bytes, libc::MADV_HUGEPAGE) };
        // SAFETY: as above. Faults the pages in now (Linux ≥ 5.14), so a worker never stalls
        // on a first touch; where unsupported, pages fault in on first use.
        unsafe { libc::madvise(p, bytes, libc::MADV_POPULATE_WRITE) };
        assert!((p as usize).is_multiple_of(std::mem::align_of::<T>()), "mmap returns page-aligned memory");
        HugeTable { ptr: NonNull::new(p.cast()).expect("mmap never returns null on success"), len, bytes, _owns: PhantomData }
    }

    /// Bytes mapped.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Asks the CPU to bring element `i`'s cache line in, without waiting for it: the
    /// prefetch stage of a batch (`cargo bench -p benches --bench conntrack`,
    /// `twill-batch` against `twill`). Out of range does nothing.
    #[inline]
    pub fn prefetch(&self, i: usize) {
        if i >= self.len {
            return;
        }
        #[cfg(target_arch = "x86_64")]
        // SAFETY: a prefetch is a hint: it never faults, reads nothing into the program and
        // has no effect on its meaning; SSE (which it needs) is part of the x86_64 baseline.
        // The address is inside the mapping anyway (checked above).
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(self.ptr.as_ptr().add(i).cast());
        }
    }
}

/// Asks the CPU to bring the cache line holding `*r` in, without waiting for it, for tables
/// that do not live in a [`HugeTable`]: the prefetch stages of the route table's batched
/// lookup (`cargo bench -p benches --bench lpm`, `twill-batch` against `twill`).
#[inline(always)]
pub fn prefetch<T>(r: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint: it never faults, reads nothing into the program and has
    // no effect on its meaning; SSE (which it needs) is part of the x86_64 baseline. The
    // address is that of a live reference anyway.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>((r as *const T).cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = r;
}

impl<T: Zeroable> Deref for HugeTable<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: the mapping holds at least `len` values of T, zero-initialised (valid for
        // T: Zeroable), aligned, alive as long as self, and only ever shared (&).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl<T: Zeroable> Drop for HugeTable<T> {
    fn drop(&mut self) {
        // SAFETY: the mapping was made by `zeroed` with this length; T needs no Drop.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.bytes) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[test]
    fn zeroed_writable_and_sized() {
        let t: HugeTable<[AtomicU64; 8]> = HugeTable::zeroed(100_000);
        assert_eq!(t.len(), 100_000);
        assert!(t.bytes() >= 100_000 * 64 && t.bytes().is_multiple_of(HUGE_PAGE));
        assert!(t.iter().all(|b| b.iter().all(|w| w.load(Ordering::Relaxed) == 0)));
        t[99_999][7].store(7, Ordering::Relaxed);
        assert_eq!(t[99_999][7].load(Ordering::Relaxed), 7);
        let empty: HugeTable<AtomicU64> = HugeTable::zeroed(0);
        assert!(empty.is_empty());
    }
}
