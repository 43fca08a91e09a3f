//! Sharing equal values between the objects that hold them (pure).
//!
//! At 10,000 pods most of what a pod carries is repeated: every pod of a Deployment has the
//! same namespace, labels, owner and container ports, and a node's pods share its name. An
//! [`Interner`] hands out one `Arc` per distinct value, so each repeated value is stored once.

use std::borrow::Borrow;
use std::collections::HashSet;
use std::hash::Hash;
use std::sync::Arc;

/// The distinct values seen so far, each behind one `Arc`.
///
/// Long-lived interners (the watch caches) call [`Interner::intern`] forever; values that no
/// object holds any more are dropped from time to time (when the set has doubled since the
/// last sweep), so the interner stays within twice what the objects use.
#[derive(Debug)]
pub struct Interner<T: ?Sized> {
    set: HashSet<Arc<T>>,
    sweep_at: usize,
}

impl<T: ?Sized> Default for Interner<T> {
    fn default() -> Self {
        Interner {
            set: HashSet::new(),
            sweep_at: 1024,
        }
    }
}

impl<T: ?Sized + Eq + Hash> Interner<T> {
    /// The shared copy of `value` (`&str`, `String`, `Vec<X>` for `[X]`, or `T` itself).
    pub fn intern<Q>(&mut self, value: Q) -> Arc<T>
    where
        Q: Borrow<T> + Into<Arc<T>>,
    {
        if let Some(shared) = self.set.get(value.borrow()) {
            return shared.clone();
        }
        if self.set.len() >= self.sweep_at {
            self.set.retain(|v| Arc::strong_count(v) > 1);
            self.sweep_at = (self.set.len() * 2).max(1024);
        }
        let shared: Arc<T> = value.into();
        self.set.insert(shared.clone());
        shared
    }

    /// Distinct values held.
    pub fn len(&self) -> usize {
        self.set.len()
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_values_share_one_copy() {
        let mut strs: Interner<str> = Interner::default();
        let a = strs.intern("shop");
        let b = strs.intern(String::from("shop"));
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(strs.len(), 1);
        let mut lists: Interner<[u32]> = Interner::default();
        assert!(Arc::ptr_eq(
            &lists.intern(vec![1, 2]),
            &lists.intern(vec![1, 2])
        ));
        assert!(!Arc::ptr_eq(&lists.intern(vec![1]), &lists.intern(vec![2])));
    }

    #[test]
    fn values_nobody_holds_are_swept() {
        let mut strs: Interner<str> = Interner::default();
        let kept = strs.intern("kept");
        for i in 0..5000 {
            strs.intern(i.to_string()); // dropped at once
        }
        assert!(strs.len() <= 2048, "{}", strs.len());
        assert!(Arc::ptr_eq(&kept, &strs.intern("kept")));
    }
}
