//! Runs of equal rule traces in a `sync.v1.UsageBatch`: a record whose trace equals that of the
//! last record before it that carries one may travel with `rule_trace_as_previous` set and its
//! trace empty (`config.v1.Settings.accepts_trace_runs`). The edge marks a batch with
//! [`send_once`]; [`restore`] gives the records their traces back, on the control plane before
//! storing them and on the edge when a marked batch could not be queued.

use crate::sync::v1::UsageRecord;

/// Clears the trace of each record whose trace equals that of the last record before it that
/// carries one, and marks it `rule_trace_as_previous`. Undone by [`restore`].
pub fn send_once(records: &mut [UsageRecord]) {
    let mut last: Option<usize> = None;
    for i in 0..records.len() {
        if records[i].rule_trace.is_empty() {
            continue;
        }
        match last {
            Some(l) if records[l].rule_trace == records[i].rule_trace => {
                records[i].rule_trace = String::new();
                records[i].rule_trace_as_previous = true;
            }
            _ => last = Some(i),
        }
    }
}

/// Gives each record marked `rule_trace_as_previous` the trace of the last record before it
/// that carries one, and clears the mark; how many were marked, and how many of those had no
/// such record (left without a trace).
pub fn restore(records: &mut [UsageRecord]) -> (usize, usize) {
    let (mut marked, mut unresolved) = (0, 0);
    let mut last: Option<usize> = None;
    for i in 0..records.len() {
        if records[i].rule_trace_as_previous {
            records[i].rule_trace_as_previous = false;
            marked += 1;
            match last {
                Some(l) => records[i].rule_trace = records[l].rule_trace.clone(),
                None => unresolved += 1,
            }
        } else if !records[i].rule_trace.is_empty() {
            last = Some(i);
        }
    }
    (marked, unresolved)
}

/// Each record's trace as [`restore`] would give it, by reference and without clearing a mark:
/// `(trace, marked, unresolved)`, `unresolved` for a marked record with no record before it
/// that carries a trace (its own, normally empty, trace is kept). For a reader that resolves
/// the runs itself (the control plane's stores).
pub fn resolved(records: &[UsageRecord]) -> impl Iterator<Item = (&str, bool, bool)> {
    let mut carried: Option<&str> = None;
    records.iter().map(move |r| {
        let own = r.rule_trace.as_str();
        if !r.rule_trace_as_previous {
            if !own.is_empty() {
                carried = Some(own);
            }
            return (own, false, false);
        }
        match carried {
            Some(previous) => (previous, true, false),
            None => (own, true, true),
        }
    })
}

/// What [`restore`] would report, read only: how many records are marked, and how many of
/// those have no record before them that carries a trace.
pub fn count(records: &[UsageRecord]) -> (usize, usize) {
    resolved(records).fold((0, 0), |(marked, unresolved), (_, m, u)| {
        (marked + usize::from(m), unresolved + usize::from(u))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn traced(id: &str, trace: &str) -> UsageRecord {
        UsageRecord {
            request_id: id.into(),
            rule_trace: trace.into(),
            ..UsageRecord::default()
        }
    }

    #[test]
    fn runs_of_equal_traces_are_sent_once_and_restored() {
        let original = vec![
            traced("a", "A"),
            traced("b", "A"),
            traced("c", ""),
            traced("d", "A"),
            traced("e", "B"),
            traced("f", "B"),
            traced("g", "A"),
        ];
        let mut sent = original.clone();
        send_once(&mut sent);
        let shape: Vec<(&str, bool)> = sent
            .iter()
            .map(|r| (r.rule_trace.as_str(), r.rule_trace_as_previous))
            .collect();
        assert_eq!(
            shape,
            [
                ("A", false),
                ("", true),
                ("", false),
                ("", true),
                ("B", false),
                ("", true),
                ("A", false)
            ]
        );
        let mut restored = sent.clone();
        restore(&mut restored);
        assert_eq!(restored, original);
    }

    #[test]
    fn trace_runs_take_the_last_trace_sent() {
        let record = |trace: &str, as_previous: bool| UsageRecord {
            rule_trace: trace.into(),
            rule_trace_as_previous: as_previous,
            ..UsageRecord::default()
        };
        let mut records = vec![
            record("", true),
            record("A", false),
            record("", true),
            record("", false),
            record("", true),
            record("B", false),
            record("", true),
        ];
        assert_eq!(count(&records), (4, 1), "what restore reports, read only");
        let by_reference: Vec<String> = resolved(&records).map(|(t, ..)| t.to_string()).collect();
        assert_eq!(restore(&mut records), (4, 1));
        let traces: Vec<&str> = records.iter().map(|r| r.rule_trace.as_str()).collect();
        assert_eq!(traces, ["", "A", "A", "", "A", "B", "B"]);
        assert_eq!(by_reference, traces);
        assert!(records.iter().all(|r| !r.rule_trace_as_previous));
    }
}
