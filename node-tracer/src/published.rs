//! One value many readers share while one writer replaces it: readers take the latest `Arc`
//! (a pointer copy under a lock held for nothing else) and keep it as long as they like; the
//! writer builds the next value aside and swaps it in. A reader never waits for the writer's
//! work, only for another pointer copy.

use std::sync::{Arc, RwLock};

#[derive(Debug, Default)]
pub struct Published<T> {
    latest: RwLock<Arc<T>>,
}

impl<T> Published<T> {
    pub fn new(value: Arc<T>) -> Self {
        Self {
            latest: RwLock::new(value),
        }
    }

    /// The latest value.
    pub fn load(&self) -> Arc<T> {
        // The lock guards a pointer copy only: a panic cannot leave it half-written.
        self.latest
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Replaces the value; readers holding the old one keep it.
    pub fn store(&self, value: T) {
        self.store_arc(Arc::new(value));
    }

    /// [`Published::store`] of a value the writer keeps a handle on.
    pub fn store_arc(&self, value: Arc<T>) {
        *self
            .latest
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = value;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readers_keep_what_they_loaded_while_the_writer_replaces_it() {
        let p = Published::new(Arc::new(vec![1]));
        let held = p.load();
        p.store(vec![2]);
        assert_eq!(*held, [1]);
        assert_eq!(*p.load(), [2]);
    }
}
