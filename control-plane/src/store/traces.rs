//! Rule traces stored once (migration 0011). A request's rule trace names every rule it was
//! checked against, with each condition's expected and actual value: about 2.9 KB of JSON for
//! ten rules, and the same text for every request that the same rules decided alike (in the
//! benchmark, all but two of 413 678 rows; BENCHMARKS.md, finding 15). A trace of
//! [`SHARED_MIN_BYTES`] or more is stored once in `rule_traces`, addressed by its SHA-256, and a
//! log row names it by `rule_trace_id`; a shorter one stays in the row.
//!
//! Both backends share the bookkeeping here: a batch's traces grouped so that each distinct text
//! is looked at once ([`BatchTraces`]), and the ids this process has already seen stored
//! ([`KnownTraces`]), so that a batch whose traces are all known touches `rule_traces` not at
//! all. `rule_traces` rows are never deleted, so a known id stays valid; an id is learned only
//! once the transaction that stored or found it has committed.

use std::collections::HashMap;
use std::sync::Mutex;

use sha2::{Digest, Sha256};
use tokenrouter_proto::sync::v1::UsageRecord;
use tokenrouter_proto::trace_runs;

use super::StoreError;

/// Traces at least this long go to `rule_traces`; a shorter one (no rules, or one or two)
/// costs less in its row than an id and a lookup.
pub const SHARED_MIN_BYTES: usize = 512;

/// Most text the known ids may hold; past it they are forgotten and learned again.
const KNOWN_MAX_BYTES: usize = 8 * 1024 * 1024;

/// The key of a trace in `rule_traces`.
pub fn digest(trace: &str) -> [u8; 32] {
    Sha256::digest(trace.as_bytes()).into()
}

/// The `rule_traces` ids this process has seen committed, by trace text.
#[derive(Default)]
pub struct KnownTraces {
    inner: Mutex<Known>,
}

#[derive(Default)]
struct Known {
    ids: HashMap<Box<str>, i64, foldhash::fast::RandomState>,
    bytes: usize,
}

impl std::fmt::Debug for KnownTraces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let known = self.inner.lock().map(|k| k.ids.len()).unwrap_or(0);
        f.debug_struct("KnownTraces")
            .field("known", &known)
            .finish()
    }
}

impl KnownTraces {
    /// Learns the ids a batch stored or found (call after its transaction committed).
    pub fn learn(&self, batch: &BatchTraces<'_>) {
        let Ok(mut known) = self.inner.lock() else {
            return;
        };
        for &(text, id) in &batch.distinct {
            let Some(id) = id else { continue };
            if known.ids.contains_key(text) {
                continue;
            }
            if known.bytes + text.len() > KNOWN_MAX_BYTES {
                known.ids.clear();
                known.bytes = 0;
            }
            known.bytes += text.len();
            known.ids.insert(text.into(), id);
        }
    }
}

/// The long traces of one batch of records: each distinct text once, with its `rule_traces` id
/// once known.
pub struct BatchTraces<'r> {
    /// Per record: its trace, a record marked `rule_trace_as_previous` given the one it repeats.
    texts: Vec<&'r str>,
    /// Per record: its trace's index in `distinct`, or `None` for a trace kept in the row.
    slots: Vec<Option<usize>>,
    distinct: Vec<(&'r str, Option<i64>)>,
}

impl<'r> BatchTraces<'r> {
    /// Groups `records`' long traces, taking the ids `known` has. A record marked
    /// `rule_trace_as_previous` (a run the edge sent once, `trace_runs`) has the trace of the
    /// last record before it that carries one, as `trace_runs::restore` would give it, without
    /// a copy of the text per record.
    pub fn group(records: &'r [UsageRecord], known: &KnownTraces) -> BatchTraces<'r> {
        let mut texts = Vec::with_capacity(records.len());
        let mut slots = Vec::with_capacity(records.len());
        let mut distinct: Vec<(&'r str, Option<i64>)> = Vec::new();
        let mut index: HashMap<&'r str, usize, foldhash::fast::RandomState> = HashMap::default();
        let guard = known.inner.lock().ok();
        // Neighbouring records mostly share their trace: one comparison (none for a run) instead
        // of a hash of the whole text.
        let mut last: Option<(&'r str, usize)> = None;
        for (text, ..) in trace_runs::resolved(records) {
            texts.push(text);
            if text.len() < SHARED_MIN_BYTES {
                slots.push(None);
                continue;
            }
            let slot = match last {
                Some((t, slot)) if std::ptr::eq(t, text) || t == text => slot,
                _ => *index.entry(text).or_insert_with(|| {
                    let id = guard.as_ref().and_then(|k| k.ids.get(text).copied());
                    distinct.push((text, id));
                    distinct.len() - 1
                }),
            };
            last = Some((text, slot));
            slots.push(Some(slot));
        }
        BatchTraces {
            texts,
            slots,
            distinct,
        }
    }

    /// The traces without an id yet, with their index for [`BatchTraces::set_id`], ordered by
    /// digest (writers then take `rule_traces`' row locks in one order).
    pub fn unknown(&self) -> Vec<(usize, &'r str, [u8; 32])> {
        let mut out: Vec<_> = self
            .distinct
            .iter()
            .enumerate()
            .filter(|(_, (_, id))| id.is_none())
            .map(|(i, &(text, _))| (i, text, digest(text)))
            .collect();
        out.sort_unstable_by_key(|a| a.2);
        out
    }

    pub fn set_id(&mut self, index: usize, id: i64) {
        if let Some(slot) = self.distinct.get_mut(index) {
            slot.1 = Some(id);
        }
    }

    /// Sets the ids of `stored` (from [`BatchTraces::unknown`]) from what `rule_traces` returned
    /// by digest; one missing there is a corrupt table (it was just inserted or found).
    pub fn set_ids(
        &mut self,
        stored: &[(usize, &str, [u8; 32])],
        ids: &HashMap<Vec<u8>, i64>,
    ) -> Result<(), StoreError> {
        for (index, _, digest) in stored {
            let id = ids.get(&digest[..]).ok_or_else(|| {
                StoreError::Corrupt(format!(
                    "rule_traces: trace {} not stored",
                    hex::encode(digest)
                ))
            })?;
            self.set_id(*index, *id);
        }
        Ok(())
    }

    /// Record `i`'s trace (a run's repeated one resolved): what its row holds when
    /// [`BatchTraces::id_of`] is `None`.
    pub fn text_of(&self, i: usize) -> &'r str {
        self.texts.get(i).copied().unwrap_or_default()
    }

    /// The `rule_traces` id of record `i`'s trace (`None`: kept in the row).
    pub fn id_of(&self, i: usize) -> Option<i64> {
        let slot = (*self.slots.get(i)?)?;
        self.distinct.get(slot)?.1
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn record(trace: &str) -> UsageRecord {
        UsageRecord {
            rule_trace: trace.into(),
            ..UsageRecord::default()
        }
    }

    #[test]
    fn groups_each_distinct_long_trace_once() {
        let (a, b) = (
            "a".repeat(SHARED_MIN_BYTES),
            "b".repeat(SHARED_MIN_BYTES + 1),
        );
        let records: Vec<UsageRecord> = [&a, &a, &b, "short", &a, "", &b]
            .iter()
            .map(|t| record(t))
            .collect();
        let known = KnownTraces::default();
        let mut batch = BatchTraces::group(&records, &known);
        let unknown = batch.unknown();
        assert_eq!(unknown.len(), 2);
        assert!(unknown[0].2 < unknown[1].2, "ordered by digest");
        for (i, text, _) in &unknown {
            batch.set_id(*i, if *text == a { 10 } else { 20 });
        }
        let ids: Vec<_> = (0..records.len()).map(|i| batch.id_of(i)).collect();
        assert_eq!(
            ids,
            [Some(10), Some(10), Some(20), None, Some(10), None, Some(20)]
        );

        // Once learned, the same traces need nothing from the database.
        known.learn(&batch);
        let again = BatchTraces::group(&records, &known);
        assert!(again.unknown().is_empty());
        assert_eq!(again.id_of(2), Some(20));
        assert_eq!(again.id_of(3), None);
    }

    #[test]
    fn only_ids_that_were_set_are_learned() {
        let a = "a".repeat(SHARED_MIN_BYTES);
        let records = [record(&a)];
        let known = KnownTraces::default();
        let batch = BatchTraces::group(&records, &known);
        known.learn(&batch);
        assert_eq!(BatchTraces::group(&records, &known).unknown().len(), 1);
    }

    #[test]
    fn known_ids_are_bounded() {
        let known = KnownTraces::default();
        let big = "x".repeat(KNOWN_MAX_BYTES / 2 + 1);
        let other = "y".repeat(KNOWN_MAX_BYTES / 2 + 1);
        for (text, id) in [(&big, 1), (&other, 2)] {
            let records = [record(text)];
            let mut batch = BatchTraces::group(&records, &known);
            batch.set_id(0, id);
            known.learn(&batch);
        }
        let inner = known.inner.lock().unwrap();
        assert_eq!(inner.ids.len(), 1, "the first was forgotten to make room");
        assert!(inner.bytes <= KNOWN_MAX_BYTES);
    }
}
