//! What proxy-wasm keeps across VMs, kept across threads: shared data (with its compare-and-swap
//! numbers), shared queues (with the one thread each queue wakes) and metrics.
//!
//! Every lock is held for a copy in or out only, never while the filter's code runs.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};

use tokio::sync::mpsc::UnboundedSender;

use crate::stats;

/// Bound on the items one queue holds; beyond it, enqueueing fails as Envoy's does when a
/// queue is gone (the worker keeps its records and tries again).
const MAX_QUEUED: usize = 10_000;
/// A queue wakes its thread at every this many items (else its tick drains it).
const WAKE_EVERY: usize = 16;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere aborts the process (panic = "abort"): a poisoned lock cannot be seen,
    // but its data would still be whole.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Default)]
struct Data {
    entries: HashMap<String, (Vec<u8>, u32)>,
}

fn data() -> &'static Mutex<Data> {
    static DATA: OnceLock<Mutex<Data>> = OnceLock::new();
    DATA.get_or_init(Mutex::default)
}

/// A copy of the value under `key` and its compare-and-swap number.
pub fn get_data(key: &str) -> Option<(Vec<u8>, u32)> {
    lock(data()).entries.get(key).cloned()
}

/// Sets `key` unless `cas` is non-zero and no longer the value's number.
pub fn set_data(key: &str, value: &[u8], cas: u32) -> bool {
    let mut d = lock(data());
    let entry = d.entries.entry(key.to_string()).or_insert((Vec::new(), 0));
    if cas != 0 && cas != entry.1 {
        return false;
    }
    entry.0.clear();
    entry.0.extend_from_slice(value);
    entry.1 = entry.1.wrapping_add(1).max(1);
    true
}

/// Who a queue wakes when an item arrives: the thread that registered it, with its id.
pub type Waker = UnboundedSender<u32>;

#[derive(Default)]
struct Queues {
    ids: HashMap<(String, String), u32>,
    queues: HashMap<u32, Queue>,
}

struct Queue {
    items: VecDeque<Vec<u8>>,
    waker: Waker,
}

fn queues() -> &'static Mutex<Queues> {
    static QUEUES: OnceLock<Mutex<Queues>> = OnceLock::new();
    QUEUES.get_or_init(Mutex::default)
}

/// Registers (or finds) the queue `name` of `vm_id`; its items wake `waker`.
pub fn register_queue(vm_id: &str, name: &str, waker: Waker) -> u32 {
    let mut q = lock(queues());
    let next = u32::try_from(q.ids.len()).unwrap_or(u32::MAX - 1) + 1;
    let id = *q
        .ids
        .entry((vm_id.to_string(), name.to_string()))
        .or_insert(next);
    q.queues
        .entry(id)
        .and_modify(|queue| queue.waker = waker.clone())
        .or_insert_with(|| Queue {
            items: VecDeque::new(),
            waker,
        });
    id
}

pub fn resolve_queue(vm_id: &str, name: &str) -> Option<u32> {
    lock(queues())
        .ids
        .get(&(vm_id.to_string(), name.to_string()))
        .copied()
}

/// Adds an item; `false` when the queue is unknown or full. The queue's thread drains it on
/// its tick, and is woken sooner only each [`WAKE_EVERY`] items: a wake-up per item (a record
/// per request on an idle worker) cost as much CPU as the items themselves.
pub fn enqueue(id: u32, item: &[u8]) -> bool {
    let waker = {
        let mut q = lock(queues());
        let Some(queue) = q.queues.get_mut(&id) else {
            return false;
        };
        if queue.items.len() >= MAX_QUEUED {
            return false;
        }
        queue.items.push_back(item.to_vec());
        (queue.items.len() % WAKE_EVERY == 0).then(|| queue.waker.clone())
    };
    // The queue's thread gone (its runtime stopped) leaves the item for a later dequeue.
    if let Some(waker) = waker {
        let _ = waker.send(id);
    }
    true
}

/// The ids of every queue (the control thread drains them on its tick).
pub fn queue_ids() -> Vec<u32> {
    lock(queues()).queues.keys().copied().collect()
}

/// The oldest item; `Err(())` when the queue is unknown.
pub fn dequeue(id: u32) -> Result<Option<Vec<u8>>, ()> {
    let mut q = lock(queues());
    let queue = q.queues.get_mut(&id).ok_or(())?;
    Ok(queue.items.pop_front())
}

/// Most metrics the module defines (the filter's fixed counters and five per provider and
/// model it served); a name beyond them gets id 0, which counts nothing.
pub const MAX_METRICS: usize = 4096;

/// Every metric's value, by id − 1: counting is one atomic add, with no lock.
static VALUES: [AtomicI64; MAX_METRICS] = [const { AtomicI64::new(0) }; MAX_METRICS];
/// Where each metric also counts in Envoy's stats, by id − 1 (set when it is defined).
static ENVOY_TARGETS: [OnceLock<stats::Target>; MAX_METRICS] =
    [const { OnceLock::new() }; MAX_METRICS];
/// How many ids are defined: the name map's length, readable without its lock.
static DEFINED: AtomicUsize = AtomicUsize::new(0);

fn names() -> &'static Mutex<HashMap<String, u32>> {
    static NAMES: OnceLock<Mutex<HashMap<String, u32>>> = OnceLock::new();
    NAMES.get_or_init(Mutex::default)
}

/// The id of the metric `name` (one per name, across threads, as Envoy's stats are); 0 once
/// [`MAX_METRICS`] are defined.
pub fn define_metric(name: &str) -> u32 {
    let mut names = lock(names());
    if let Some(id) = names.get(name) {
        return *id;
    }
    let defined = names.len();
    let Some(id) = (defined < MAX_METRICS)
        .then(|| u32::try_from(defined + 1).ok())
        .flatten()
    else {
        return 0;
    };
    if let (Some(target), Some(slot)) = (stats::target(name), ENVOY_TARGETS.get(defined)) {
        let _ = slot.set(target);
    }
    names.insert(name.to_string(), id);
    DEFINED.store(names.len(), Ordering::Release);
    id
}

fn metric(id: u32) -> Option<&'static AtomicI64> {
    let index = usize::try_from(id).ok()?.checked_sub(1)?;
    if index >= DEFINED.load(Ordering::Acquire) {
        return None;
    }
    VALUES.get(index)
}

/// Every defined metric that also counts in Envoy's stats: (index, its value, where).
pub fn envoy_targets() -> impl Iterator<Item = (usize, i64, &'static stats::Target)> {
    let defined = DEFINED.load(Ordering::Acquire);
    VALUES
        .iter()
        .zip(&ENVOY_TARGETS)
        .take(defined)
        .enumerate()
        .filter_map(|(at, (value, target))| {
            target.get().map(|t| (at, value.load(Ordering::Relaxed), t))
        })
}

pub fn increment_metric(id: u32, by: i64) -> bool {
    metric(id)
        .map(|v| v.fetch_add(by, Ordering::Relaxed))
        .is_some()
}

pub fn record_metric(id: u32, value: i64) -> bool {
    metric(id)
        .map(|v| v.store(value, Ordering::Relaxed))
        .is_some()
}

pub fn metric_value(id: u32) -> Option<i64> {
    metric(id).map(|v| v.load(Ordering::Relaxed))
}
