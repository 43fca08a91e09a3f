//! Locks that outlive a panic elsewhere.
//!
//! A lock is poisoned when a thread panicked while holding it. Everything flowwatch keeps
//! behind a lock is updated in one step (a value replaced, a counter bumped, an entry
//! inserted), so what the lock holds is still sound after such a panic, and one panic must
//! not take down every later reader of a cache, a queue or the readiness state. These take
//! the lock either way.

use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}
