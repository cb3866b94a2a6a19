//! Reusable transfer buffers. A buffer is lent out as `Bytes` (through `Bytes::from_owner`) and
//! returns to its pool when the last reference is dropped, so a transfer of any size touches a
//! few megabytes of memory once instead of allocating fresh pages for every chunk (under musl
//! each large allocation is an mmap, page faults that zero the pages, and an munmap).

use std::sync::{Arc, Mutex};

use bytes::Bytes;

/// A free list of equally sized buffers.
pub struct Pool {
    /// Buffers not lent out; locked only to push or pop.
    free: Mutex<Vec<Vec<u8>>>,
    size: usize,
    keep: usize,
}

impl Pool {
    /// A pool of `size`-byte buffers that keeps at most `keep` of them when they come back.
    pub fn new(size: usize, keep: usize) -> Arc<Self> {
        Arc::new(Self {
            free: Mutex::new(Vec::new()),
            size,
            keep,
        })
    }

    /// A buffer of `size` bytes: a returned one, or a new one.
    pub fn take(&self) -> Vec<u8> {
        let reused = self.free.lock().unwrap_or_else(|e| e.into_inner()).pop();
        reused.unwrap_or_else(|| vec![0u8; self.size])
    }

    /// Lends the first `len` bytes of `buf` out as `Bytes`; `buf` comes back when they are dropped.
    pub fn lend(self: &Arc<Self>, buf: Vec<u8>, len: usize) -> Bytes {
        Bytes::from_owner(Lent {
            len: len.min(buf.len()),
            buf,
            pool: Arc::clone(self),
        })
    }
}

/// A buffer out on loan.
struct Lent {
    buf: Vec<u8>,
    len: usize,
    pool: Arc<Pool>,
}

impl AsRef<[u8]> for Lent {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        let mut free = self.pool.free.lock().unwrap_or_else(|e| e.into_inner());
        if free.len() < self.pool.keep && buf.len() == self.pool.size {
            free.push(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back() {
        let pool = Pool::new(4, 2);
        let mut b = pool.take();
        b[..3].copy_from_slice(b"abc");
        let ptr = b.as_ptr();
        let lent = pool.lend(b, 3);
        assert_eq!(&lent[..], b"abc");
        let clone = lent.clone();
        drop(lent);
        assert!(
            pool.free.lock().unwrap().is_empty(),
            "still lent while a clone lives"
        );
        drop(clone);
        let again = pool.take();
        assert_eq!(again.as_ptr(), ptr, "the same buffer again");
    }
}
