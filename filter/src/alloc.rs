//! The VM's allocator: small blocks from one free list per size class, everything else from
//! the system allocator (Rust's dlmalloc in the VM).
//!
//! A request makes a few hundred small allocations (header copies, the parsed body's strings
//! and maps, the decision, the usage record) and frees them all by its end. A size class's
//! free list answers those with a push or a pop; dlmalloc's bins, splitting and coalescing
//! cost several times that under V8. Blocks of a class are carved from 64 KiB slabs taken from
//! the system allocator and, once freed, stay in their class: a VM's memory for small blocks is
//! its peak use per class (a VM's linear memory never shrinks anyway).
//!
//! The VM has one thread, and Envoy never enters it from two at once; the allocator holds no
//! lock, so whoever makes one promises that only one thread uses it ([`Pools::new`] is
//! `unsafe`). It is generic over its backing allocator so that native tests can drive it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::UnsafeCell;
use std::ptr;

/// Every block's alignment (a larger one goes to the backing allocator), and the step of the
/// classes up to [`LINEAR_MAX`].
const ALIGN: usize = 16;
/// Up to this size the classes are 16 bytes apart (16, 32, … 128); above it, four per
/// doubling (160, 192, 224, 256, 320, …), so a block wastes under a fifth of itself.
const LINEAR_MAX: usize = 128;
const LINEAR_CLASSES: usize = LINEAR_MAX / ALIGN;
/// The largest size a class serves; larger blocks come from the backing allocator.
pub const MAX_SMALL: usize = 4096;
/// 8 linear classes, then four per doubling from 128 to 4 096 (5 doublings).
const CLASSES: usize = LINEAR_CLASSES + 4 * 5;

/// The block size of each class.
const SIZES: [usize; CLASSES] = {
    let mut sizes = [0; CLASSES];
    let mut i = 0;
    while i < CLASSES {
        sizes[i] = if i < LINEAR_CLASSES {
            (i + 1) * ALIGN
        } else {
            let doubling = (i - LINEAR_CLASSES) / 4;
            let quarter = (i - LINEAR_CLASSES) % 4;
            let base = LINEAR_MAX << doubling;
            base + (base / 4) * (quarter + 1)
        };
        i += 1;
    }
    sizes
};
/// What the classes take from the backing allocator at a time.
const SLAB: usize = 64 * 1024;

struct State {
    /// Each class's first free block; a free block holds the address of the next.
    free: [*mut u8; CLASSES],
    /// The current slab's unused part.
    next: *mut u8,
    end: *mut u8,
}

pub struct Pools<B = System> {
    state: UnsafeCell<State>,
    backing: B,
}

// SAFETY: a global allocator must be `Sync`; `Pools::new`'s caller promises that one thread
// uses it (the wasm VM has one; so do the profiling harness and each test).
unsafe impl<B: Sync> Sync for Pools<B> {}

impl<B> Pools<B> {
    /// An allocator with no block yet, taking its slabs and large blocks from `backing`.
    ///
    /// # Safety
    /// It takes no lock: only one thread may ever use it (the VM, a single-threaded program).
    pub const unsafe fn new(backing: B) -> Pools<B> {
        Pools {
            state: UnsafeCell::new(State {
                free: [ptr::null_mut(); CLASSES],
                next: ptr::null_mut(),
                end: ptr::null_mut(),
            }),
            backing,
        }
    }
}

/// The class serving `layout` (the smallest whose blocks hold it), when one does.
#[inline]
fn class(layout: Layout) -> Option<usize> {
    (layout.size() <= MAX_SMALL && layout.align() <= ALIGN).then(|| size_class(layout.size()))
}

/// The smallest class whose blocks hold `size` bytes (at most [`MAX_SMALL`]).
#[inline]
fn size_class(size: usize) -> usize {
    if size <= LINEAR_MAX {
        return size.saturating_sub(1) / ALIGN;
    }
    // size - 1 has `bits` significant bits: size is in (2^(bits-1), 2^bits], a doubling
    // split in four quarters of 2^(bits-3).
    let bits = (usize::BITS - (size - 1).leading_zeros()) as usize;
    let quarter = ((size - 1) >> (bits - 3)) & 3;
    LINEAR_CLASSES + (bits - 8) * 4 + quarter
}

#[inline]
fn class_size(class: usize) -> usize {
    SIZES.get(class).copied().unwrap_or(MAX_SMALL)
}

impl<B: GlobalAlloc> Pools<B> {
    /// A block of class `wanted` from the current slab, or from a new one.
    #[cold]
    unsafe fn carve(&self, state: &mut State, wanted: usize) -> *mut u8 {
        let size = class_size(wanted);
        if (state.end as usize) - (state.next as usize) < size {
            // SAFETY: a valid, non-zero layout.
            let slab = self
                .backing
                .alloc(Layout::from_size_align_unchecked(SLAB, ALIGN));
            if slab.is_null() {
                return slab;
            }
            // The old slab's rest (less than a block of this class) goes to the classes of
            // the blocks it holds.
            let mut rest = (state.end as usize) - (state.next as usize);
            while rest >= ALIGN {
                let fits = size_class(rest);
                let c = if class_size(fits) > rest {
                    fits.saturating_sub(1)
                } else {
                    fits
                };
                let block = state.next;
                block.cast::<*mut u8>().write(state.free[c]);
                state.free[c] = block;
                state.next = block.add(class_size(c));
                rest -= class_size(c);
            }
            state.next = slab;
            state.end = slab.add(SLAB);
        }
        let block = state.next;
        state.next = block.add(size);
        block
    }
}

unsafe impl<B: GlobalAlloc> GlobalAlloc for Pools<B> {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some(class) = class(layout) else {
            return self.backing.alloc(layout);
        };
        // SAFETY: one thread, and no call below re-enters this allocator's state.
        let state = &mut *self.state.get();
        let head = state.free[class];
        if head.is_null() {
            return self.carve(state, class);
        }
        state.free[class] = head.cast::<*mut u8>().read();
        head
    }

    #[inline]
    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        let Some(class) = class(layout) else {
            return self.backing.dealloc(block, layout);
        };
        let state = &mut *self.state.get();
        block.cast::<*mut u8>().write(state.free[class]);
        state.free[class] = block;
    }

    #[inline]
    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `new_size` comes with `layout`'s alignment, which the caller made valid.
        let new_layout = Layout::from_size_align_unchecked(new_size, layout.align());
        match (class(layout), class(new_layout)) {
            (Some(old), Some(new)) if old == new => block,
            (None, None) => self.backing.realloc(block, layout, new_size),
            _ => {
                let moved = self.alloc(new_layout);
                if !moved.is_null() {
                    ptr::copy_nonoverlapping(block, moved, layout.size().min(new_size));
                    self.dealloc(block, layout);
                }
                moved
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn layout(size: usize, align: usize) -> Layout {
        Layout::from_size_align(size, align).unwrap()
    }

    #[test]
    fn sizes_map_to_the_smallest_class_that_holds_them() {
        for (size, align, want) in [
            (0, 1, Some(0)),
            (1, 1, Some(0)),
            (16, 8, Some(0)),
            (17, 8, Some(1)),
            (32, 4, Some(1)),
            (33, 1, Some(2)),
            (128, 8, Some(7)),
            (129, 8, Some(8)),
            (160, 8, Some(8)),
            (161, 8, Some(9)),
            (256, 8, Some(11)),
            (257, 8, Some(12)),
            (4096, 16, Some(CLASSES - 1)),
            (4097, 1, None),
            (64, 32, None),
        ] {
            assert_eq!(
                class(layout(size, align)),
                want,
                "size {size} align {align}"
            );
        }
        assert_eq!(SIZES[..9], [16, 32, 48, 64, 80, 96, 112, 128, 160]);
        assert_eq!(class_size(CLASSES - 1), MAX_SMALL);
        // Every size goes to the smallest class that holds it, and every class is a multiple
        // of the alignment.
        for size in 1..=MAX_SMALL {
            let c = class(layout(size, 1)).unwrap();
            assert!(SIZES[c] >= size, "size {size} in class {c} of {}", SIZES[c]);
            assert!(
                c == 0 || SIZES[c - 1] < size,
                "size {size} fits class {}",
                c - 1
            );
        }
        assert!(SIZES.iter().all(|s| s % ALIGN == 0));
    }

    #[test]
    fn a_freed_block_is_reused_by_its_class_only() {
        // SAFETY: used by this test's thread only.
        let pools = unsafe { Pools::new(System) };
        unsafe {
            let a = pools.alloc(layout(24, 8));
            let b = pools.alloc(layout(24, 8));
            assert_ne!(a, b);
            assert_eq!(a as usize % ALIGN, 0);
            pools.dealloc(a, layout(24, 8));
            // Another class does not take it; its own does (LIFO).
            let c = pools.alloc(layout(100, 8));
            assert_ne!(c, a);
            assert_eq!(pools.alloc(layout(30, 8)), a);
            pools.dealloc(b, layout(24, 8));
            pools.dealloc(c, layout(100, 8));
        }
    }

    #[test]
    fn realloc_keeps_the_contents_across_classes_and_to_the_backing_allocator() {
        // SAFETY: used by this test's thread only.
        let pools = unsafe { Pools::new(System) };
        unsafe {
            let mut size = 3;
            let mut block = pools.alloc(layout(size, 1));
            for i in 0..size {
                *block.add(i) = i as u8;
            }
            for new_size in [10, 16, 17, 500, 4096, 5000, 100_000, 4000, 20, 2] {
                block = pools.realloc(block, layout(size, 1), new_size);
                assert!(!block.is_null());
                for i in 0..size.min(new_size) {
                    assert_eq!(
                        *block.add(i),
                        i as u8,
                        "byte {i} after {size} -> {new_size}"
                    );
                }
                for i in size.min(new_size)..new_size {
                    *block.add(i) = i as u8;
                }
                size = new_size;
            }
            pools.dealloc(block, layout(size, 1));
        }
    }

    /// Many live blocks of mixed sizes, freed and made again in a scrambled order: no two live
    /// blocks overlap, and none is written over by another's use.
    #[test]
    fn live_blocks_never_overlap() {
        // SAFETY: used by this test's thread only.
        let pools = unsafe { Pools::new(System) };
        let mut live: Vec<(*mut u8, Layout, u8)> = Vec::new();
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        unsafe {
            for step in 0..200_000u32 {
                let r = next();
                if live.len() > 2_000 || (r % 3 == 0 && !live.is_empty()) {
                    let (block, l, tag) = live.swap_remove((r >> 8) as usize % live.len());
                    for i in 0..l.size() {
                        assert_eq!(
                            *block.add(i),
                            tag,
                            "block of {} bytes overwritten",
                            l.size()
                        );
                    }
                    pools.dealloc(block, l);
                } else {
                    let size = match r % 10 {
                        0 => 1 + (r >> 16) as usize % 20_000,
                        _ => 1 + (r >> 16) as usize % 700,
                    };
                    let l = layout(size, [1, 2, 4, 8, 16][(r >> 40) as usize % 5]);
                    let block = pools.alloc(l);
                    assert!(!block.is_null());
                    assert_eq!(block as usize % l.align(), 0);
                    let tag = step as u8;
                    ptr::write_bytes(block, tag, size);
                    live.push((block, l, tag));
                }
            }
            for (block, l, tag) in live {
                for i in 0..l.size() {
                    assert_eq!(*block.add(i), tag);
                }
                pools.dealloc(block, l);
            }
        }
    }
}
