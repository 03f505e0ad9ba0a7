//! The gateway's global allocator: mimalloc, asked for plain blocks whenever the alignment asked
//! for is one every mimalloc block has.
//!
//! Why not the `mimalloc` crate's own `MiMalloc`: it passes every allocation to
//! `mi_malloc_aligned`, and mimalloc v3 serves that call on its fast path only for blocks up to
//! 1 KiB (or sizes that are powers of two). Anything else, such as the boxed future of a proxied
//! request (a few KiB), is over-allocated by the alignment and aligned by hand, and freed through
//! the slow path too: about 300 instructions per allocation instead of about 20 (upstream:
//! microsoft/mimalloc#1408). Every block mimalloc hands out is aligned to at least 8 bytes (its
//! size classes are multiples of the word), so for alignments up to 8, which is nearly every
//! Rust type, the plain calls give exactly what `GlobalAlloc` promises. Larger alignments still
//! go to the aligned calls. Measured with `bench/callgrind.sh` (bench/RESULTS.md, issue 13).

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// The alignment every mimalloc block has.
const BLOCK_ALIGN: usize = std::mem::size_of::<usize>();

/// mimalloc as the global allocator (`#[global_allocator] static A: MiMalloc = MiMalloc;`).
#[derive(Debug, Default, Clone, Copy)]
pub struct MiMalloc;

// SAFETY (for each method): mimalloc's functions are thread-safe and return null on failure, as
// `GlobalAlloc` requires; blocks from either family are freed by `mi_free` and resized by
// `mi_realloc*` (mimalloc keeps no per-call state apart from the block). A plain block satisfies
// any `layout.align() <= BLOCK_ALIGN`, since every block is aligned to the word.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for MiMalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= BLOCK_ALIGN {
            unsafe { mi::mi_malloc(layout.size()) as *mut u8 }
        } else {
            unsafe { mi::mi_malloc_aligned(layout.size(), layout.align()) as *mut u8 }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= BLOCK_ALIGN {
            unsafe { mi::mi_zalloc(layout.size()) as *mut u8 }
        } else {
            unsafe { mi::mi_zalloc_aligned(layout.size(), layout.align()) as *mut u8 }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        unsafe { mi::mi_free(ptr as *mut c_void) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if layout.align() <= BLOCK_ALIGN {
            unsafe { mi::mi_realloc(ptr as *mut c_void, new_size) as *mut u8 }
        } else {
            unsafe {
                mi::mi_realloc_aligned(ptr as *mut c_void, new_size, layout.align()) as *mut u8
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every size and alignment a Rust program asks for comes back aligned, writable, resizable
    /// with its contents kept, and freed.
    #[test]
    fn blocks_are_aligned_and_keep_their_bytes() {
        let a = MiMalloc;
        for align in [1usize, 2, 4, 8, 16, 32, 64, 128, 4096] {
            for size in [
                1usize,
                3,
                8,
                24,
                40,
                100,
                1000,
                1025,
                2800,
                5000,
                70_000,
                3 << 20,
            ] {
                let Ok(layout) = Layout::from_size_align(size, align) else {
                    continue;
                };
                for zeroed in [false, true] {
                    // SAFETY: the layout has a non-zero size; the block is used within it and
                    // freed once, with the layout it was made with (or its resize).
                    #[allow(unsafe_code)]
                    unsafe {
                        let p = if zeroed {
                            a.alloc_zeroed(layout)
                        } else {
                            a.alloc(layout)
                        };
                        assert!(!p.is_null());
                        assert_eq!(p as usize % align, 0, "size {size} align {align}");
                        if zeroed {
                            assert!(std::slice::from_raw_parts(p, size).iter().all(|b| *b == 0));
                        }
                        std::ptr::write_bytes(p, 0xA5, size);
                        let bigger = size * 2 + 17;
                        let q = a.realloc(p, layout, bigger);
                        assert!(!q.is_null());
                        assert_eq!(q as usize % align, 0, "realloc size {size} align {align}");
                        assert!(std::slice::from_raw_parts(q, size)
                            .iter()
                            .all(|b| *b == 0xA5));
                        a.dealloc(q, Layout::from_size_align_unchecked(bigger, align));
                    }
                }
            }
        }
    }
}
