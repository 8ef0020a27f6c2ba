//! Usage records as the sync singleton forwards them: the workers' encoded records are split out
//! of their batches and regrouped into the stream's messages as bytes, never decoded and
//! encoded again on Envoy's main thread. The control plane fills a record's empty `node_id`
//! from the stream's hello.
//!
//! Only the framing is read here (keys, varints, lengths), and it is checked all the way into
//! each record: a record whose framing is broken would make the control plane refuse the
//! whole stream message, and with it every resend.

use prost::bytes::Buf;
use prost::encoding::{
    decode_key, decode_varint, encode_key, encode_varint, encoded_len_varint, key_len, WireType,
};

/// `UsageBatch.batch_id` (sync.proto).
const BATCH_ID: u32 = 1;
/// `UsageBatch.records`.
const RECORDS: u32 = 2;
/// `EdgeMessage.usage`.
const EDGE_USAGE: u32 = 2;

/// The encoded records of an encoded `UsageBatch`, in order; `None` when the framing of the
/// batch or of any of its records is broken (then none of it is used).
pub fn split_batch(bytes: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut buf = bytes;
    let mut records = Vec::new();
    while buf.has_remaining() {
        let (tag, wire) = decode_key(&mut buf).ok()?;
        if (tag, wire) != (RECORDS, WireType::LengthDelimited) {
            skip(&mut buf, wire)?;
            continue;
        }
        let record = take_delimited(&mut buf)?;
        if !well_framed(record) {
            return None;
        }
        records.push(record.to_vec());
    }
    Some(records)
}

/// `EdgeMessage { usage: UsageBatch { batch_id, records } }`, encoded as prost encodes it.
pub fn usage_message(batch_id: u64, records: &[Vec<u8>]) -> Vec<u8> {
    let field_len = |tag: u32, len: usize| key_len(tag) + encoded_len_varint(len as u64) + len;
    let id_len = if batch_id == 0 {
        0
    } else {
        key_len(BATCH_ID) + encoded_len_varint(batch_id)
    };
    let batch_len = id_len
        + records
            .iter()
            .map(|r| field_len(RECORDS, r.len()))
            .sum::<usize>();
    let mut out = Vec::with_capacity(field_len(EDGE_USAGE, batch_len));
    encode_key(EDGE_USAGE, WireType::LengthDelimited, &mut out);
    encode_varint(batch_len as u64, &mut out);
    if batch_id != 0 {
        encode_key(BATCH_ID, WireType::Varint, &mut out);
        encode_varint(batch_id, &mut out);
    }
    for record in records {
        encode_key(RECORDS, WireType::LengthDelimited, &mut out);
        encode_varint(record.len() as u64, &mut out);
        out.extend_from_slice(record);
    }
    out
}

/// Every field of a message is a key and a value of its wire type that ends inside it (groups,
/// which proto3 never writes, are refused).
fn well_framed(mut message: &[u8]) -> bool {
    while message.has_remaining() {
        let Ok((_, wire)) = decode_key(&mut message) else {
            return false;
        };
        if skip(&mut message, wire).is_none() {
            return false;
        }
    }
    true
}

fn skip(buf: &mut &[u8], wire: WireType) -> Option<()> {
    match wire {
        WireType::Varint => decode_varint(buf).ok().map(drop),
        WireType::SixtyFourBit => advance(buf, 8),
        WireType::ThirtyTwoBit => advance(buf, 4),
        WireType::LengthDelimited => take_delimited(buf).map(drop),
        WireType::StartGroup | WireType::EndGroup => None,
    }
}

fn take_delimited<'a>(buf: &mut &'a [u8]) -> Option<&'a [u8]> {
    let len = usize::try_from(decode_varint(buf).ok()?).ok()?;
    if len > buf.len() {
        return None;
    }
    let (value, rest) = buf.split_at(len);
    *buf = rest;
    Some(value)
}

fn advance(buf: &mut &[u8], n: usize) -> Option<()> {
    if n > buf.len() {
        return None;
    }
    buf.advance(n);
    Some(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use prost::Message;
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
            assert_eq!(
                usage_message(batch_id, &split),
                expected,
                "batch id {batch_id}"
            );
        }
        assert_eq!(
            usage_message(7, &[]),
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
        encode_key(RECORDS, WireType::LengthDelimited, &mut batch);
        encode_varint(inner.len() as u64, &mut batch);
        batch.extend_from_slice(&inner);
        assert_eq!(split_batch(&batch), None);
        // A group, a wire type proto3 never writes.
        assert_eq!(split_batch(&[0x0b]), None);
        assert_eq!(split_batch(&[]), Some(vec![]));
    }
}
