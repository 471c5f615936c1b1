//! The plugins' allocator in Wasm builds: small blocks are recycled through one free list per size in
//! front of the standard allocator. Every string or list that crosses the plugin boundary is allocated
//! and freed in the plugin once per call (a router's path on every request), and the standard allocator
//! of `wasm32-unknown-unknown` (dlmalloc) spends ~400 instructions on each such pair; a free list pops
//! and pushes in a few.
//!
//! Freed small blocks stay on their list for the next allocation of that size rather than going back
//! to the standard allocator: a plugin keeps, for each size, as many blocks as it ever held at once
//! (linear memory never shrinks anyway). A plugin that wants another allocator turns off the SDK's
//! default feature `allocator` and declares its own `#[global_allocator]`.

#![allow(unsafe_code, reason = "a global allocator is unsafe by nature")]

use std::alloc::{GlobalAlloc, Layout};
use std::cell::UnsafeCell;
use std::ptr;

/// Sizes recycled: 8, 16, 32, ... 1,024 bytes; a request is served from the smallest that fits.
const CLASSES: usize = 8;
const MIN_BLOCK: usize = 8;
const MAX_BLOCK: usize = MIN_BLOCK << (CLASSES - 1);
/// What every recycled block is aligned to: the standard allocator's own alignment on wasm32, so
/// filling a list costs it no extra work; a stricter request goes straight to the standard allocator.
const BLOCK_ALIGN: usize = 8;

/// Per-size free lists in front of `inner`. A free block holds the address of the next one in its
/// first bytes (every block is at least a pointer wide and aligned for one).
///
/// `Sync` only in a Wasm build without threads: the lists are plain memory, fit for one thread only.
pub(crate) struct Recycling<A> {
    inner: A,
    free: UnsafeCell<[*mut u8; CLASSES]>,
}

impl<A> Recycling<A> {
    pub(crate) const fn new(inner: A) -> Self {
        Recycling {
            inner,
            free: UnsafeCell::new([ptr::null_mut(); CLASSES]),
        }
    }
}

/// The free list that serves `layout`, if it is small enough and needs no stricter alignment.
fn class_of(layout: Layout) -> Option<usize> {
    if layout.size() > MAX_BLOCK || layout.align() > BLOCK_ALIGN {
        return None;
    }
    let block = layout.size().max(MIN_BLOCK).next_power_of_two();
    Some((block.trailing_zeros() - MIN_BLOCK.trailing_zeros()) as usize)
}

/// The layout the blocks of a list are taken from the inner allocator with.
fn block_layout(class: usize) -> Layout {
    // MIN_BLOCK << class is a power of two no larger than MAX_BLOCK, and BLOCK_ALIGN is a power of two.
    Layout::from_size_align(MIN_BLOCK << class, BLOCK_ALIGN).expect("a valid block layout")
}

// SAFETY: blocks handed out are either the inner allocator's (for a layout that fits them) or blocks of
// a list, each taken from the inner allocator with its list's `block_layout` (at least as large and as
// aligned as any layout the list serves) and owned by the list alone until handed out again. `dealloc`
// and `realloc` get back a layout of the same class as the one allocated with (GlobalAlloc's contract
// for the caller), so each block returns to the list or allocator it came from. Access to the lists is
// unsynchronized: `Recycling` is `Sync` only where there is one thread (below).
unsafe impl<A: GlobalAlloc> GlobalAlloc for Recycling<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some(class) = class_of(layout) else {
            // SAFETY: forwarded with the caller's guarantees (a non-zero-size layout).
            return unsafe { self.inner.alloc(layout) };
        };
        // SAFETY: single-threaded (above), and no reference to the lists outlives this call.
        let head = unsafe { &mut (*self.free.get())[class] };
        if head.is_null() {
            // SAFETY: a block layout has a non-zero size.
            return unsafe { self.inner.alloc(block_layout(class)) };
        }
        let block = *head;
        // SAFETY: `block` is a free block of this list; its first bytes hold the next one.
        *head = unsafe { block.cast::<*mut u8>().read() };
        block
    }

    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        let Some(class) = class_of(layout) else {
            // SAFETY: a block of this layout came from the inner allocator (`alloc`, `realloc`).
            return unsafe { self.inner.dealloc(block, layout) };
        };
        // SAFETY: single-threaded (above); `block` is a block of this class that the caller gives up,
        // large and aligned enough for the link.
        unsafe {
            let head = &mut (*self.free.get())[class];
            block.cast::<*mut u8>().write(*head);
            *head = block;
        }
    }

    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees a valid layout for the new size with the old alignment.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        match (class_of(layout), class_of(new_layout)) {
            // SAFETY: both sizes belong to the inner allocator: forwarded with the caller's guarantees.
            (None, None) => unsafe { self.inner.realloc(block, layout, new_size) },
            // The block already has room for the new size.
            (Some(old), Some(new)) if old == new => block,
            _ => {
                // SAFETY: a non-zero new size (the caller's guarantee); the old block is valid for
                // `layout.size()` bytes and the new one for `new_size`, and they do not overlap.
                unsafe {
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
}

// SAFETY: `wasm32` without the `atomics` feature has no shared-memory threads: only one thread ever
// touches the lists. Everywhere else `Recycling` stays not `Sync`, so it cannot be a `static` there.
#[cfg(all(target_arch = "wasm32", not(target_feature = "atomics")))]
unsafe impl<A: Sync> Sync for Recycling<A> {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::alloc::System;
    use std::cell::RefCell;

    /// The system allocator, with a log of what reached it.
    #[derive(Default)]
    struct Counting {
        allocs: RefCell<Vec<Layout>>,
        frees: RefCell<Vec<Layout>>,
    }

    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            self.allocs.borrow_mut().push(layout);
            unsafe { System.alloc(layout) }
        }
        unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
            self.frees.borrow_mut().push(layout);
            unsafe { System.dealloc(block, layout) }
        }
    }

    fn layout(size: usize, align: usize) -> Layout {
        Layout::from_size_align(size, align).unwrap()
    }

    #[test]
    fn sizes_map_to_the_smallest_block_that_fits() {
        assert_eq!(class_of(layout(1, 1)), Some(0));
        assert_eq!(class_of(layout(8, 8)), Some(0));
        assert_eq!(class_of(layout(9, 1)), Some(1));
        assert_eq!(class_of(layout(16, 4)), Some(1));
        assert_eq!(class_of(layout(17, 1)), Some(2));
        assert_eq!(class_of(layout(1024, 8)), Some(CLASSES - 1));
        assert_eq!(class_of(layout(1025, 1)), None);
        assert_eq!(class_of(layout(8, 16)), None);
        assert_eq!(block_layout(CLASSES - 1).size(), MAX_BLOCK);
    }

    #[test]
    fn a_freed_small_block_is_reused_without_the_inner_allocator() {
        let a = Recycling::new(Counting::default());
        unsafe {
            let p = a.alloc(layout(20, 1));
            p.write_bytes(0xAB, 20);
            a.dealloc(p, layout(20, 1));
            // Same list (17..=32 bytes): the same block comes back.
            let q = a.alloc(layout(32, 8));
            assert_eq!(q, p);
            assert_eq!(q as usize % BLOCK_ALIGN, 0);
            q.write_bytes(0xCD, 32);
            // Another size takes a block of its own.
            let r = a.alloc(layout(8, 1));
            assert_ne!(r, q);
            a.dealloc(q, layout(32, 8));
            a.dealloc(r, layout(8, 1));
        }
        assert_eq!(*a.inner.allocs.borrow(), [layout(32, 8), layout(8, 8)]);
        assert!(a.inner.frees.borrow().is_empty());
    }

    #[test]
    fn large_and_overaligned_requests_go_to_the_inner_allocator() {
        let a = Recycling::new(Counting::default());
        unsafe {
            let big = a.alloc(layout(4096, 1));
            let aligned = a.alloc(layout(16, 64));
            assert_eq!(aligned as usize % 64, 0);
            a.dealloc(big, layout(4096, 1));
            a.dealloc(aligned, layout(16, 64));
        }
        assert_eq!(*a.inner.allocs.borrow(), [layout(4096, 1), layout(16, 64)]);
        assert_eq!(*a.inner.frees.borrow(), [layout(4096, 1), layout(16, 64)]);
    }

    #[test]
    fn many_blocks_stay_distinct_and_keep_their_contents() {
        let a = Recycling::new(Counting::default());
        let mut live: Vec<(*mut u8, Layout, u8)> = Vec::new();
        // A deterministic mix of sizes across every list and beyond, freed in an interleaved order.
        for round in 0..3u8 {
            for i in 0..200usize {
                let size = 1 + (i * 37 + usize::from(round) * 11) % 1500;
                let l = layout(size, 1 << (i % 4));
                let tag = (i as u8).wrapping_add(round);
                let p = unsafe { a.alloc(l) };
                assert!(!p.is_null());
                assert_eq!(p as usize % l.align(), 0);
                unsafe { p.write_bytes(tag, size) };
                live.push((p, l, tag));
            }
            for (p, l, tag) in live.iter().step_by(2) {
                let bytes = unsafe { std::slice::from_raw_parts(*p, l.size()) };
                assert!(bytes.iter().all(|b| b == tag), "a block was overwritten");
                unsafe { a.dealloc(*p, *l) };
            }
            live = live.into_iter().skip(1).step_by(2).collect();
        }
        for (p, l, tag) in live {
            let bytes = unsafe { std::slice::from_raw_parts(p, l.size()) };
            assert!(bytes.iter().all(|b| *b == tag), "a block was overwritten");
            unsafe { a.dealloc(p, l) };
        }
    }

    #[test]
    fn realloc_keeps_the_contents_across_lists_and_to_the_inner_allocator() {
        let a = Recycling::new(Counting::default());
        unsafe {
            let p = a.alloc(layout(10, 1));
            for i in 0..10 {
                p.add(i).write(i as u8);
            }
            // Within the block's size: the same block.
            let same = a.realloc(p, layout(10, 1), 16);
            assert_eq!(same, p);
            // To a larger list, then past the largest, then back down.
            let mid = a.realloc(same, layout(16, 1), 100);
            let big = a.realloc(mid, layout(100, 1), 5000);
            let big2 = a.realloc(big, layout(5000, 1), 6000);
            let small = a.realloc(big2, layout(6000, 1), 4);
            let bytes = std::slice::from_raw_parts(small, 4);
            assert_eq!(bytes, [0, 1, 2, 3]);
            a.dealloc(small, layout(4, 1));
            // The first block went back to its list when the data moved on: reused now.
            assert_eq!(a.alloc(layout(12, 1)), p);
        }
    }
}
