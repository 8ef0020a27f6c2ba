//! Usage records on their way to the control plane.
//!
//! A worker sends each run of equal rule traces once per batch (`tokenrouter_proto::trace_runs`):
//! most requests are decided by the same rules alike, and the trace (≈ 2.9 KB for ten rules)
//! was most of a record's bytes through the shared queue, the main thread and the stream.
//!
//! The sync singleton then splits the workers' encoded records out of their batches and
//! regroups them into the stream's messages as bytes, never decoded and encoded again on
//! Envoy's main thread. A worker's batch is never split across messages ([`Pending`]), so a
//! record's "trace as the previous record's" always finds that record in the same message. The
//! control plane fills a record's empty `node_id` from the stream's hello.
//!
//! Only the framing is read here (keys, varints, lengths), and it is checked all the way into
//! each record: a record whose framing is broken would make the control plane refuse the
//! whole stream message, and with it every resend.

use std::collections::VecDeque;

use prost::bytes::Buf;
use prost::encoding::{decode_key, message, skip_field, DecodeContext};
use prost::Message;
use tokenrouter_proto::sync::v1::UsageRecord;
use tokenrouter_proto::trace_runs;

/// `UsageBatch` (sync.proto) with its records left encoded: `repeated bytes` and
/// `repeated UsageRecord` are the same on the wire.
#[derive(Clone, PartialEq, Message)]
pub struct EncodedBatch {
    #[prost(uint64, tag = "1")]
    pub batch_id: u64,
    #[prost(bytes = "vec", repeated, tag = "2")]
    pub records: Vec<Vec<u8>>,
}

/// `EdgeMessage.usage` (a field of its oneof).
const EDGE_MESSAGE_USAGE: u32 = 2;

/// The encoded records of an encoded `UsageBatch`, in order; `None` when the framing of the
/// batch or of any of its records is broken (then none of it is used).
pub fn split_batch(bytes: &[u8]) -> Option<Vec<Vec<u8>>> {
    let batch = EncodedBatch::decode(bytes).ok()?;
    batch
        .records
        .iter()
        .all(|r| well_framed(r))
        .then_some(batch.records)
}

/// `EdgeMessage { usage: batch }`, encoded as prost encodes it.
pub fn usage_message(batch: &EncodedBatch) -> Vec<u8> {
    let mut out = Vec::with_capacity(message::encoded_len(EDGE_MESSAGE_USAGE, batch));
    message::encode(EDGE_MESSAGE_USAGE, batch, &mut out);
    out
}

/// Encoded records waiting for the stream, as the workers' batches they came in.
#[derive(Default)]
pub struct Pending {
    batches: VecDeque<Vec<Vec<u8>>>,
    records: usize,
}

impl Pending {
    /// Records held.
    pub fn len(&self) -> usize {
        self.records
    }

    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    /// A worker's batch, after those held.
    pub fn push_back(&mut self, batch: Vec<Vec<u8>>) {
        if !batch.is_empty() {
            self.records += batch.len();
            self.batches.push_back(batch);
        }
    }

    /// Records taken by [`Pending::take`], back in front in their order, as the batches
    /// `sizes` says they were.
    pub fn put_back(&mut self, records: Vec<Vec<u8>>, sizes: &[usize]) {
        let mut rest = records;
        for &size in sizes.iter().rev() {
            let batch = rest.split_off(rest.len().saturating_sub(size));
            self.records += batch.len();
            self.batches.push_front(batch);
        }
        if !rest.is_empty() {
            self.records += rest.len();
            self.batches.push_front(rest);
        }
    }

    /// Drops the oldest whole batches until at most `max` records are held; how many records
    /// went.
    pub fn drop_oldest_over(&mut self, max: usize) -> usize {
        let mut dropped = 0;
        while self.records > max {
            let Some(batch) = self.batches.pop_front() else {
                break;
            };
            self.records -= batch.len();
            dropped += batch.len();
        }
        dropped
    }

    /// The oldest whole batches, up to `max` records (at least one batch), and their sizes.
    pub fn take(&mut self, max: usize) -> (Vec<Vec<u8>>, Vec<usize>) {
        let mut records = Vec::new();
        let mut sizes = Vec::new();
        while let Some(next) = self.batches.front() {
            if !records.is_empty() && records.len() + next.len() > max {
                break;
            }
            let Some(batch) = self.batches.pop_front() else {
                break;
            };
            self.records -= batch.len();
            sizes.push(batch.len());
            records.extend(batch);
        }
        (records, sizes)
    }
}

/// `records` (whole worker batches, in order) as a control plane that does not read runs of
/// traces must get them: each record marked `rule_trace_as_previous` re-encoded with the trace
/// it stands for (`trace_runs::restore`), every other record left as it came. Unchanged when
/// no record is marked, or when a record does not decode (the control plane then judges it as
/// it would have anyway).
pub fn with_traces_restored(mut records: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    let Ok(mut decoded) = records
        .iter()
        .map(|r| UsageRecord::decode(r.as_slice()))
        .collect::<Result<Vec<_>, _>>()
    else {
        return records;
    };
    let marked: Vec<usize> = (0..decoded.len())
        .filter(|&i| decoded[i].rule_trace_as_previous)
        .collect();
    trace_runs::restore(&mut decoded);
    for i in marked {
        records[i] = decoded[i].encode_to_vec();
    }
    records
}

/// Every field of a record is a key and a value of its wire type that ends inside it.
fn well_framed(mut record: &[u8]) -> bool {
    while record.has_remaining() {
        let Ok((tag, wire)) = decode_key(&mut record) else {
            return false;
        };
        if skip_field(wire, tag, &mut record, DecodeContext::default()).is_err() {
            return false;
        }
    }
    true
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use prost::encoding::{encode_key, encode_varint, WireType};
    use tokenrouter_proto::sync::v1::{
        edge_message, Attempt, EdgeMessage, UsageBatch, UsageRecord,
    };

    fn record(id: &str) -> UsageRecord {
        UsageRecord {
            request_id: id.into(),
            key_id: "key-1".into(),
            provider: "openai".into(),
            model: "gpt-4o-mini".into(),
            status: 200,
            input_tokens: 12,
            cost_picos: -3,
            rule_trace: "[{\"rule\":\"r1\",\"matched\":true,\"é\":\"ü\"}]".into(),
            firewall_actions: vec!["warn:pii".into()],
            attempts: vec![Attempt {
                provider: "openai".into(),
                model: "gpt-4o-mini".into(),
                status: 200,
                ..Attempt::default()
            }],
            ..UsageRecord::default()
        }
    }

    #[test]
    fn a_split_and_regrouped_batch_is_what_prost_encodes() {
        let records = vec![record("a"), UsageRecord::default(), record("c")];
        let worker_batch = UsageBatch {
            batch_id: 0,
            records: records.clone(),
        }
        .encode_to_vec();
        let split = split_batch(&worker_batch).expect("well framed");
        assert_eq!(split.len(), 3);
        for batch_id in [0, 1, 300, u64::MAX] {
            let expected = EdgeMessage {
                msg: Some(edge_message::Msg::Usage(UsageBatch {
                    batch_id,
                    records: records.clone(),
                })),
            }
            .encode_to_vec();
            let regrouped = EncodedBatch {
                batch_id,
                records: split.clone(),
            };
            assert_eq!(usage_message(&regrouped), expected, "batch id {batch_id}");
        }
        assert_eq!(
            usage_message(&EncodedBatch {
                batch_id: 7,
                records: vec![]
            }),
            EdgeMessage {
                msg: Some(edge_message::Msg::Usage(UsageBatch {
                    batch_id: 7,
                    records: vec![]
                })),
            }
            .encode_to_vec()
        );
    }

    #[test]
    fn a_batch_with_broken_framing_is_refused_whole() {
        let good = UsageBatch {
            batch_id: 0,
            records: vec![record("a"), record("b")],
        }
        .encode_to_vec();
        // Cut anywhere inside the last record (or its length), the batch is refused.
        for cut in 1..good.len() {
            let cut_batch = &good[..cut];
            if let Some(records) = split_batch(cut_batch) {
                // A cut exactly between the two records leaves one whole record.
                assert_eq!(records.len(), 1, "cut at {cut}");
                assert_eq!(
                    UsageRecord::decode(records[0].as_slice())
                        .unwrap()
                        .request_id,
                    "a"
                );
            }
        }
        // A record whose inner length runs past its end.
        let inner = [0x0a, 50, b'a', b'b'];
        let mut batch = Vec::new();
        encode_key(2, WireType::LengthDelimited, &mut batch);
        encode_varint(inner.len() as u64, &mut batch);
        batch.extend_from_slice(&inner);
        assert_eq!(split_batch(&batch), None);
        // A group, a wire type proto3 never writes.
        assert_eq!(split_batch(&[0x0b]), None);
        assert_eq!(split_batch(&[]), Some(vec![]));
    }

    #[test]
    fn marked_records_get_their_traces_back_for_a_control_plane_without_runs() {
        let mut traced = vec![record("a"), record("b"), record("c"), record("d")];
        traced[2].rule_trace = "other".into();
        let mut marked = traced.clone();
        trace_runs::send_once(&mut marked);
        assert!(marked[1].rule_trace_as_previous && !marked[3].rule_trace_as_previous);
        let encoded: Vec<Vec<u8>> = marked.iter().map(|r| r.encode_to_vec()).collect();
        let restored = with_traces_restored(encoded.clone());
        let decoded: Vec<UsageRecord> = restored
            .iter()
            .map(|r| UsageRecord::decode(r.as_slice()).unwrap())
            .collect();
        assert_eq!(decoded, traced);
        // Only the marked record was encoded again.
        assert_eq!(
            restored
                .iter()
                .zip(&encoded)
                .filter(|(a, b)| a != b)
                .count(),
            1
        );
        // Nothing marked, or a record that does not decode: the records as they came.
        let plain: Vec<Vec<u8>> = traced.iter().map(|r| r.encode_to_vec()).collect();
        assert_eq!(with_traces_restored(plain.clone()), plain);
        let mut broken = encoded.clone();
        broken.push(vec![0x0a, 0x02, 0xff, 0xfe]); // request_id that is not UTF-8
        assert_eq!(with_traces_restored(broken.clone()), broken);
    }

    #[test]
    fn pending_keeps_worker_batches_whole() {
        let batch = |tag: u8, n: usize| (0..n).map(|i| vec![tag, i as u8]).collect::<Vec<_>>();
        let mut pending = Pending::default();
        pending.push_back(batch(1, 3));
        pending.push_back(vec![]);
        pending.push_back(batch(2, 4));
        pending.push_back(batch(3, 2));
        assert_eq!(pending.len(), 9);
        // 3 + 4 would pass 5: the first message takes the first batch only.
        let (first, sizes) = pending.take(5);
        assert_eq!((first.clone(), sizes.clone()), (batch(1, 3), vec![3]));
        // A batch larger than the limit still goes, whole and alone.
        let (second, second_sizes) = pending.take(2);
        assert_eq!(
            (second.clone(), second_sizes.clone()),
            (batch(2, 4), vec![4])
        );
        // Unacknowledged messages come back in front, in order, as their batches.
        pending.put_back(second, &second_sizes);
        pending.put_back(first, &sizes);
        assert_eq!(pending.len(), 9);
        let (all, all_sizes) = pending.take(100);
        assert_eq!(all_sizes, [3, 4, 2]);
        assert_eq!(all, [batch(1, 3), batch(2, 4), batch(3, 2)].concat());
        assert!(pending.is_empty());

        // The bound drops whole batches, oldest first.
        pending.push_back(batch(1, 3));
        pending.push_back(batch(2, 4));
        assert_eq!(pending.drop_oldest_over(5), 3);
        assert_eq!(pending.take(100).0, batch(2, 4));
    }
}
