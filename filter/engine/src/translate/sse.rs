//! Incremental Server-Sent Events: splitting a byte stream that arrives in arbitrary chunks into
//! events, and writing events.

use crate::error::{ErrorKind, GatewayError};
use crate::usage::MAX_EVENT_BYTES;

/// One parsed event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field, when present.
    pub event: Option<String>,
    /// The `data:` lines joined with `\n`.
    pub data: Vec<u8>,
}

/// Holds the bytes of the event in progress between chunks; never more than one event, and
/// never more than [`MAX_EVENT_BYTES`].
#[derive(Debug, Default)]
pub struct SseSplitter {
    /// Bytes after the last complete event.
    pending: Vec<u8>,
}

impl SseSplitter {
    /// Complete events in `pending + chunk`; at the end of the stream a final event without its
    /// blank line counts too. An event larger than [`MAX_EVENT_BYTES`] is an error.
    pub fn feed(
        &mut self,
        chunk: &[u8],
        end_of_stream: bool,
    ) -> Result<Vec<SseEvent>, GatewayError> {
        self.pending.extend_from_slice(chunk);
        let mut events = Vec::new();
        let mut consumed = 0;
        while let Some((len, sep)) = crate::usage::find_event_end(&self.pending[consumed..]) {
            if let Some(e) = parse_event(&self.pending[consumed..consumed + len]) {
                events.push(e);
            }
            consumed += len + sep;
        }
        self.pending.drain(..consumed);
        if end_of_stream {
            let tail = std::mem::take(&mut self.pending);
            if let Some(e) = parse_event(&tail) {
                events.push(e);
            }
        } else if self.pending.len() > MAX_EVENT_BYTES {
            self.pending.clear();
            return Err(GatewayError::new(
                ErrorKind::Provider,
                format!("The provider sent a stream event larger than {MAX_EVENT_BYTES} bytes."),
            ));
        }
        Ok(events)
    }
}

/// Fields of one event block; `None` for blocks with neither data nor an event name
/// (comments, keep-alives).
fn parse_event(block: &[u8]) -> Option<SseEvent> {
    let mut event = None;
    let mut data: Option<Vec<u8>> = None;
    for line in block.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(0) => continue,
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"event" => event = Some(String::from_utf8_lossy(value).into_owned()),
            b"data" => match &mut data {
                Some(d) => {
                    d.push(b'\n');
                    d.extend_from_slice(value);
                }
                None => data = Some(value.to_vec()),
            },
            _ => {}
        }
    }
    if event.is_none() && data.is_none() {
        return None;
    }
    Some(SseEvent {
        event,
        data: data.unwrap_or_default(),
    })
}

/// Appends `data: <json>\n\n`.
pub fn write_data(out: &mut Vec<u8>, json: &serde_json::Value) {
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(json.to_string().as_bytes());
    out.extend_from_slice(b"\n\n");
}

/// Appends `event: <name>\ndata: <json>\n\n`.
pub fn write_event(out: &mut Vec<u8>, name: &str, json: &serde_json::Value) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.push(b'\n');
    write_data(out, json);
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn events_split_across_any_chunking() {
        let stream =
            b": comment\n\nevent: a\ndata: {\"x\":1}\n\ndata: l1\ndata: l2\r\n\r\ndata: tail";
        for size in [1, 2, 5, stream.len()] {
            let mut s = SseSplitter::default();
            let chunks: Vec<&[u8]> = stream.chunks(size).collect();
            let mut got = Vec::new();
            for (i, c) in chunks.iter().enumerate() {
                got.extend(s.feed(c, i + 1 == chunks.len()).unwrap());
            }
            let want = vec![
                SseEvent {
                    event: Some("a".into()),
                    data: b"{\"x\":1}".to_vec(),
                },
                SseEvent {
                    event: None,
                    data: b"l1\nl2".to_vec(),
                },
                SseEvent {
                    event: None,
                    data: b"tail".to_vec(),
                },
            ];
            assert_eq!(got, want, "chunk size {size}");
        }
    }

    #[test]
    fn oversized_event_is_a_provider_error() {
        let mut s = SseSplitter::default();
        let big = vec![b'a'; MAX_EVENT_BYTES + 1];
        assert_eq!(s.feed(&big, false).unwrap_err().status(), 502);
    }
}
