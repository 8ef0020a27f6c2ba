//! The module's global allocator: mimalloc, asked the way its blocks are laid out.
//!
//! Through Envoy's exported `malloc` (tcmalloc) the filter's many small per-request allocations
//! cost ≈ 30 000 instructions a request; mimalloc's thread-local heaps serve them for less, and
//! free safely across threads (queue items and call answers are freed on the sync thread).
//! Envoy never frees the module's memory, nor the module Envoy's. Built with local-dynamic TLS
//! (`local_dynamic_tls`): Envoy loads the module with `dlopen`, where initial-exec TLS would
//! need glibc's small static TLS surplus.
//!
//! The `mimalloc` crate sends every allocation through `mi_malloc_aligned`, whose fast path
//! works only when the next free block happens to be aligned. mimalloc's blocks of 16 bytes or
//! more are 16-aligned, and smaller ones 8-aligned (as glibc's `malloc`), so an alignment no
//! larger than 16 nor than the size needs no aligned call: plain `mi_malloc` (as Rust's own
//! `System` allocator decides for `malloc`).

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys::{
    mi_free, mi_malloc, mi_malloc_aligned, mi_realloc, mi_realloc_aligned, mi_zalloc,
    mi_zalloc_aligned,
};

/// The largest alignment every block of at least that size has.
const BLOCK_ALIGN: usize = 16;

/// Whether a block of `size` bytes from plain `mi_malloc` is aligned to `align`.
fn plain(size: usize, align: usize) -> bool {
    align <= BLOCK_ALIGN && align <= size
}

pub struct MiMalloc;

// SAFETY: each call passes the layout's size and alignment on to mimalloc's matching
// function; a block from either kind of call is freed and reallocated by mimalloc.
unsafe impl GlobalAlloc for MiMalloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: mimalloc's allocation functions take any size and a power-of-two alignment.
        unsafe {
            if plain(layout.size(), layout.align()) {
                mi_malloc(layout.size()).cast()
            } else {
                mi_malloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as `alloc`.
        unsafe {
            if plain(layout.size(), layout.align()) {
                mi_zalloc(layout.size()).cast()
            } else {
                mi_zalloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from this allocator, i.e. from mimalloc.
        unsafe { mi_free(ptr.cast::<c_void>()) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from this allocator with `layout`; mimalloc keeps the contents.
        unsafe {
            if plain(new_size, layout.align()) {
                mi_realloc(ptr.cast::<c_void>(), new_size).cast()
            } else {
                mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_calls_are_only_for_alignments_its_blocks_have() {
        let cases = [
            (1, 1, true),
            (8, 8, true),
            (24, 8, true),
            (16, 16, true),
            (48, 16, true),
            (4, 8, false),
            (8, 16, false),
            (64, 32, false),
            (4096, 4096, false),
        ];
        for (size, align, expected) in cases {
            assert_eq!(plain(size, align), expected, "size {size}, align {align}");
        }
    }

    #[test]
    fn every_block_has_its_alignment_and_keeps_its_contents() {
        let a = MiMalloc;
        for align in [1, 2, 4, 8, 16, 32, 64, 4096] {
            for size in [1, 7, 8, 15, 16, 24, 40, 100, 1000, 70_000] {
                let Ok(layout) = Layout::from_size_align(size, align) else {
                    continue;
                };
                // SAFETY: a non-zero layout; each block is freed once with its layout.
                unsafe {
                    let p = a.alloc(layout);
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "alloc size {size}, align {align}");
                    p.write_bytes(0xab, size);
                    let grown = a.realloc(p, layout, size * 3);
                    assert_eq!(
                        grown as usize % align,
                        0,
                        "realloc size {size}, align {align}"
                    );
                    assert!(std::slice::from_raw_parts(grown, size)
                        .iter()
                        .all(|b| *b == 0xab));
                    a.dealloc(grown, Layout::from_size_align_unchecked(size * 3, align));
                    let z = a.alloc_zeroed(layout);
                    assert_eq!(z as usize % align, 0, "zeroed size {size}, align {align}");
                    assert!(std::slice::from_raw_parts(z, size).iter().all(|b| *b == 0));
                    a.dealloc(z, layout);
                }
            }
        }
    }
}
