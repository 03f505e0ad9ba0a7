//! Boxing large futures without copying them.
//!
//! `Box::pin(value)` builds `value` on the stack and then copies it into the heap; a request's
//! future is kilobytes, and the copy (several, in practice) showed as the largest single cost of
//! the HTTP/1 fast path. Allocating first and building the value in the box lets the compiler
//! write it where it will live.

use std::pin::Pin;

/// Boxes what `make` builds, in place.
#[inline(always)]
pub fn pinned<X>(make: impl FnOnce() -> X) -> Pin<Box<X>> {
    let slot = Box::<X>::new_uninit();
    Box::into_pin(Box::write(slot, make()))
}
