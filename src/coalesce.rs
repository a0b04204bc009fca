//! Coalesced point reads: callers reading the same key at the same moment
//! share one read, under one rule that keeps this exactly as correct as every
//! caller reading alone: a caller only takes the result of a read that
//! *started after the caller arrived*. Nothing is cached.
//!
//! Per key there is at most one read in flight (`running`) and one queued
//! behind it (`next`). A newcomer never joins `running` (it may have read the
//! row before the newcomer arrived); it joins `next`, which starts when
//! `running` completes. So a caller waits at most for the rest of the current
//! read plus one read of its own, a burst of N callers costs about two reads
//! instead of N, and once the last read of a key completes its slot is gone.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::future::{BoxFuture, FutureExt, Shared, WeakShared};

type Flight<V> = Shared<BoxFuture<'static, V>>;

struct Slot<V> {
    /// The read in flight: it may already have read the row, so it is too old for newcomers.
    running: Option<(u64, WeakShared<BoxFuture<'static, V>>)>,
    /// The read that starts when `running` completes; newcomers join it.
    next: Option<(u64, WeakShared<BoxFuture<'static, V>>)>,
}

struct Slots<K, V> {
    map: Mutex<HashMap<K, Slot<V>>>,
    ids: AtomicU64,
}

impl<K: Eq + Hash, V> Slots<K, V> {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, Slot<V>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `next` is about to read: from now on it is too old for newcomers.
    fn promote(&self, key: &K, id: u64) {
        let mut map = self.lock();
        if let Some(slot) = map.get_mut(key) {
            if slot.next.as_ref().is_some_and(|(n, _)| *n == id) {
                slot.running = slot.next.take();
            }
        }
    }

    /// The read `id` completed or was dropped.
    fn forget(&self, key: &K, id: u64) {
        let mut map = self.lock();
        if let Some(slot) = map.get_mut(key) {
            if slot.running.as_ref().is_some_and(|(r, _)| *r == id) {
                slot.running = None;
            }
            if slot.next.as_ref().is_some_and(|(n, _)| *n == id) {
                slot.next = None;
            }
            if slot.running.is_none() && slot.next.is_none() {
                map.remove(key);
            }
        }
    }
}

/// Clears a read's slot entry when the read completes or is dropped unfinished.
struct Forget<K: Eq + Hash, V> {
    slots: Arc<Slots<K, V>>,
    key: K,
    id: u64,
}

impl<K: Eq + Hash, V> Drop for Forget<K, V> {
    fn drop(&mut self) {
        self.slots.forget(&self.key, self.id);
    }
}

pub struct Coalescer<K, V> {
    slots: Arc<Slots<K, V>>,
}

impl<K, V> Default for Coalescer<K, V> {
    fn default() -> Self {
        Self {
            slots: Arc::new(Slots {
                map: Mutex::new(HashMap::new()),
                ids: AtomicU64::new(0),
            }),
        }
    }
}

impl<K, V> Coalescer<K, V>
where
    K: Eq + Hash + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// The result of a `read` of `key` that started after this call did,
    /// shared with the callers of the same key that arrived before it started.
    pub async fn read<F, Fut>(&self, key: &K, read: F) -> V
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = V> + Send + 'static,
    {
        // Shared handles are dropped only after the lock is released: dropping
        // the last one runs `Forget`, which takes the lock.
        let running: Option<Flight<V>>;
        let flight = {
            let mut map = self.slots.lock();
            let slot = map.entry(key.clone()).or_insert(Slot {
                running: None,
                next: None,
            });
            running = slot.running.as_ref().and_then(|(_, w)| w.upgrade());
            match slot.next.as_ref().and_then(|(_, w)| w.upgrade()) {
                Some(next) => next,
                None => {
                    let id = self.slots.ids.fetch_add(1, Ordering::Relaxed);
                    let forget = Forget {
                        slots: Arc::clone(&self.slots),
                        key: key.clone(),
                        id,
                    };
                    let behind = running.clone();
                    let flight: Flight<V> = async move {
                        let forget = forget;
                        if let Some(behind) = behind {
                            behind.await;
                            forget.slots.promote(&forget.key, forget.id);
                        }
                        read().await
                    }
                    .boxed()
                    .shared();
                    let weak = flight.downgrade().map(|w| (id, w));
                    if running.is_some() {
                        slot.next = weak;
                    } else {
                        slot.running = weak;
                    }
                    flight
                }
            }
        };
        drop(running);
        flight.await
    }

    #[cfg(test)]
    fn keys(&self) -> usize {
        self.slots.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A read that notes when it started and takes `ms`.
    fn reader(
        clock: &Arc<AtomicU64>,
        reads: &Arc<AtomicU64>,
        ms: u64,
    ) -> impl FnOnce() -> BoxFuture<'static, u64> + Send + 'static {
        let (clock, reads) = (Arc::clone(clock), Arc::clone(reads));
        move || {
            async move {
                reads.fetch_add(1, Ordering::SeqCst);
                let started = clock.fetch_add(1, Ordering::SeqCst) + 1;
                tokio::time::sleep(Duration::from_millis(ms)).await;
                started
            }
            .boxed()
        }
    }

    #[tokio::test]
    async fn a_caller_only_takes_a_read_that_started_after_it_arrived() {
        let c = Arc::new(Coalescer::<&str, u64>::default());
        let clock = Arc::new(AtomicU64::new(0));
        let reads = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for i in 0..200u64 {
            let (c, clock, reads) = (Arc::clone(&c), Arc::clone(&clock), Arc::clone(&reads));
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(i % 40)).await;
                let arrived = clock.load(Ordering::SeqCst);
                let got = c.read(&"k", reader(&clock, &reads, 5)).await;
                assert!(
                    got > arrived,
                    "took read #{got}, which started before arrival (#{arrived} had started)"
                );
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let n = reads.load(Ordering::SeqCst);
        assert!(
            n < 40,
            "200 callers over 40 ms share reads of 5 ms: {n} reads"
        );
        assert_eq!(c.keys(), 0, "nothing is kept once the reads are done");
    }

    #[tokio::test]
    async fn keys_do_not_share() {
        let c = Coalescer::<u32, u64>::default();
        let clock = Arc::new(AtomicU64::new(0));
        let reads = Arc::new(AtomicU64::new(0));
        let (a, b) = tokio::join!(
            c.read(&1, reader(&clock, &reads, 5)),
            c.read(&2, reader(&clock, &reads, 5))
        );
        assert_ne!(a, b);
        assert_eq!(reads.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_dropped_caller_neither_wedges_the_key_nor_leaks_it() {
        let c = Arc::new(Coalescer::<&str, u64>::default());
        let clock = Arc::new(AtomicU64::new(0));
        let reads = Arc::new(AtomicU64::new(0));
        // The only caller of a slow read goes away mid-read.
        let slow = c.read(&"k", reader(&clock, &reads, 10_000));
        assert!(tokio::time::timeout(Duration::from_millis(20), slow)
            .await
            .is_err());
        assert_eq!(
            c.keys(),
            0,
            "the abandoned read was dropped with its caller"
        );
        // A queued caller that goes away leaves the running read alone.
        let first = tokio::spawn({
            let (c, r) = (Arc::clone(&c), reader(&clock, &reads, 30));
            async move { c.read(&"k", r).await }
        });
        tokio::time::sleep(Duration::from_millis(5)).await;
        let queued = c.read(&"k", reader(&clock, &reads, 30));
        assert!(tokio::time::timeout(Duration::from_millis(5), queued)
            .await
            .is_err());
        assert!(first.await.unwrap() > 0);
        let later = tokio::time::timeout(
            Duration::from_secs(1),
            c.read(&"k", reader(&clock, &reads, 1)),
        )
        .await
        .expect("the key still answers");
        assert!(later > 0);
        assert_eq!(c.keys(), 0);
    }
}
