use slab::Slab;

/// Buffers frames for multiple streams.
#[derive(Debug)]
pub struct Buffer<T> {
    slab: Slab<Slot<T>>,
    /// PATCH (tokengate): the capacity given back by `release_if_empty`,
    /// reserved again in one step at the next frame (`regrow`).
    released_capacity: usize,
}

/// A sequence of frames in a `Buffer`
#[derive(Debug)]
pub struct Deque {
    indices: Option<Indices>,
}

/// Tracks the head & tail for a sequence of frames in a `Buffer`.
#[derive(Debug, Default, Copy, Clone)]
struct Indices {
    head: usize,
    tail: usize,
}

#[derive(Debug)]
struct Slot<T> {
    value: T,
    next: Option<usize>,
}

impl<T> Buffer<T> {
    pub fn new() -> Self {
        Buffer {
            slab: Slab::new(),
            released_capacity: 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.slab.is_empty()
    }

    /// PATCH (tokengate): gives back the slab's memory when it holds no
    /// frame (see `Streams::release_if_idle`).
    pub(crate) fn release_if_empty(&mut self) -> bool {
        if self.slab.is_empty() && self.slab.capacity() != 0 {
            self.released_capacity = self.slab.capacity();
            self.slab = Slab::new();
            return true;
        }
        false
    }

    /// PATCH (tokengate): see `released_capacity`.
    #[inline]
    fn regrow(&mut self) {
        if self.released_capacity != 0 {
            let n = std::mem::take(&mut self.released_capacity);
            if self.slab.capacity() == 0 {
                self.slab.reserve_exact(n);
            }
        }
    }
}

impl Deque {
    pub fn new() -> Self {
        Deque { indices: None }
    }

    pub fn is_empty(&self) -> bool {
        self.indices.is_none()
    }

    pub fn push_back<T>(&mut self, buf: &mut Buffer<T>, value: T) {
        buf.regrow();
        let key = buf.slab.insert(Slot { value, next: None });

        match self.indices {
            Some(ref mut idxs) => {
                buf.slab[idxs.tail].next = Some(key);
                idxs.tail = key;
            }
            None => {
                self.indices = Some(Indices {
                    head: key,
                    tail: key,
                });
            }
        }
    }

    pub fn push_front<T>(&mut self, buf: &mut Buffer<T>, value: T) {
        buf.regrow();
        let key = buf.slab.insert(Slot { value, next: None });

        match self.indices {
            Some(ref mut idxs) => {
                buf.slab[key].next = Some(idxs.head);
                idxs.head = key;
            }
            None => {
                self.indices = Some(Indices {
                    head: key,
                    tail: key,
                });
            }
        }
    }

    pub fn pop_front<T>(&mut self, buf: &mut Buffer<T>) -> Option<T> {
        match self.indices {
            Some(mut idxs) => {
                let mut slot = buf.slab.remove(idxs.head);

                if idxs.head == idxs.tail {
                    assert!(slot.next.is_none());
                    self.indices = None;
                } else {
                    idxs.head = slot.next.take().unwrap();
                    self.indices = Some(idxs);
                }

                Some(slot.value)
            }
            None => None,
        }
    }
}
