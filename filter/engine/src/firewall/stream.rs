//! Scanning text that arrives in pieces (streamed responses).
//!
//! A match may span two pieces, so a [`TextStream`] holds back the tail of what it has seen —
//! only as much as a match still in progress could need — and releases text once no match can
//! cross it any more:
//! - substring rules: a match not yet complete starts in the last (longest pattern − 1) bytes;
//! - regex rules: every match of at most `max_match_chars` characters (per rule; default 256)
//!   is decided once `max_match_chars` + 1 characters follow its start (the extra one settles
//!   `\b` and `$`). That is the guarantee: such matches are caught wherever the pieces split.
//!   A longer match is still caught when it lies within what is held; beyond
//!   [`MAX_EXTRA_HELD_BYTES`] of held text a longer match is cut at the release point and its
//!   two parts are handled separately.
//!
//! A match is acted on when the text that contains it is released (or at the end), so a
//! `block` match is never released to the client: the caller checks [`StreamGuard::blocked`]
//! after every push and replaces the output with an error.

use std::collections::BTreeSet;

use super::{Firewall, Hit, Scope, Subject, Verdict};

/// Held text beyond the holdback after which a longer-than-guaranteed match is cut.
pub const MAX_EXTRA_HELD_BYTES: usize = 16 * 1024;

/// What the matches of all the texts of one response add up to.
#[derive(Debug, Default)]
pub struct StreamGuard {
    /// Rule indices that matched in released (or final) text.
    matched: BTreeSet<usize>,
}

impl StreamGuard {
    /// Whether a `block` rule matched.
    pub fn blocked(&self, firewall: &Firewall) -> bool {
        firewall.blocks(&self.matched)
    }

    pub fn verdict(&self, firewall: &Firewall) -> Verdict {
        firewall.verdict_of(&self.matched)
    }
}

/// One text that arrives in pieces (e.g. choice 0's `delta.content`).
#[derive(Debug, Default)]
pub struct TextStream {
    /// `context` + held text: `buf[..ctx_len]` was already released and is kept only so `\b`
    /// and `^` see the character before the held text.
    buf: String,
    ctx_len: usize,
}

impl TextStream {
    pub fn new() -> TextStream {
        TextStream::default()
    }

    /// Bytes currently held back.
    pub fn held(&self) -> usize {
        self.buf.len() - self.ctx_len
    }

    /// Adds `piece`; returns the text that can be released now, masked.
    pub fn push(
        &mut self,
        firewall: &Firewall,
        subject: Subject<'_>,
        scope: Scope,
        piece: &str,
        guard: &mut StreamGuard,
    ) -> String {
        self.buf.push_str(piece);
        self.release(firewall, subject, scope, guard, false)
    }

    /// The stream ended: releases everything still held, masked.
    pub fn finish(
        &mut self,
        firewall: &Firewall,
        subject: Subject<'_>,
        scope: Scope,
        guard: &mut StreamGuard,
    ) -> String {
        self.release(firewall, subject, scope, guard, true)
    }

    fn release(
        &mut self,
        firewall: &Firewall,
        subject: Subject<'_>,
        scope: Scope,
        guard: &mut StreamGuard,
        last: bool,
    ) -> String {
        let mut hits = firewall.find(scope, subject, &self.buf, self.ctx_len);
        let len = self.buf.len();
        let (sub_bytes, regex_chars) = firewall.holdback(scope);
        let boundary = if last {
            len
        } else {
            let by_substring = floor_char(&self.buf, len.saturating_sub(sub_bytes));
            let by_regex = if regex_chars == 0 {
                len
            } else {
                // Start of the (regex_chars + 1)-th character from the end.
                self.buf
                    .char_indices()
                    .rev()
                    .nth(regex_chars)
                    .map_or(0, |(i, _)| i)
            };
            by_substring.min(by_regex).max(self.ctx_len)
        };
        // Never release part of a match: move the cut back to the start of any match across it.
        let mut cut = boundary;
        loop {
            let before = cut;
            for h in &hits {
                if h.start < cut && cut < h.end {
                    cut = h.start;
                }
            }
            if cut == before {
                break;
            }
        }
        cut = cut.max(self.ctx_len);
        let held_limit = sub_bytes + 4 * (regex_chars + 1) + MAX_EXTRA_HELD_BYTES;
        if !last && len - cut > held_limit {
            // Only a match longer than the guarantee gets here: cut it at the boundary.
            cut = boundary;
            for h in &mut hits {
                if h.start < cut && cut < h.end {
                    h.end = cut;
                }
            }
        }
        let released: Vec<Hit> = hits
            .into_iter()
            .filter(|h| h.start < cut && h.end <= cut)
            .map(|h| Hit {
                rule: h.rule,
                start: h.start - self.ctx_len,
                end: h.end - self.ctx_len,
            })
            .collect();
        guard.matched.extend(released.iter().map(|h| h.rule));
        let text = self.buf.get(self.ctx_len..cut).unwrap_or_default();
        let out = firewall
            .apply_masks(text, &released)
            .unwrap_or_else(|| text.to_string());
        // Keep the last released character as context.
        let ctx_start = if cut > 0 {
            floor_char(&self.buf, cut - 1)
        } else {
            0
        };
        self.buf.drain(..ctx_start);
        self.ctx_len = cut - ctx_start;
        out
    }
}

/// The largest char boundary at or below `i`.
fn floor_char(s: &str, mut i: usize) -> usize {
    if i >= s.len() {
        return s.len();
    }
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}
