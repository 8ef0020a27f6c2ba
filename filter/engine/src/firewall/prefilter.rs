//! The regex rules of one scope, and the prefilter that decides which of them run on a text.
//!
//! Running each regex over each text costs a search per rule, whatever the text: at 1,000 rules
//! that is 1,000 searches per text. Instead, a pass of one literal automaton and one of a lazy
//! DFA per [`SET_PATTERNS`] rules without literals (usually one) tell which regexes can match
//! the text, and only those run their own search (for positions, the `luhn` check and
//! masking). The prefilter never hides a match; it only decides which regexes are worth
//! running. Two kinds, chosen per regex:
//!
//! - **Required literals**, for a regex every match of which contains one of a few literals of
//!   at least [`MIN_LITERAL_BYTES`] bytes (`acct-` in `\bacct-\d{8}\b`, `-0042` in
//!   `\d{3}-\d{2}-0042`, `@dept7.example.com`/`.org` in an email pattern; `(?i)` gives every
//!   case variant, up to [`MAX_LITERALS_PER_RULE`]). The literals of all such regexes, in ASCII
//!   lower case (their case variants one literal), join the scope's substring patterns in one
//!   ASCII-case-insensitive Aho-Corasick automaton, built when the snapshot is compiled, so a
//!   text is scanned once for both (`Firewall::find`): a regex runs only when one of its
//!   literals occurs, in any ASCII case. Its cost does not depend on what the text looks like.
//! - **Approximations**, for the others (the PII templates: `\d{3}-\d{2}-\d{4}`, phone, card,
//!   email): each regex is rewritten into one that matches everything it matches, and
//!   possibly more, and up to [`SET_PATTERNS`] of them are compiled into one multi-pattern lazy
//!   DFA that reports which of them match. The rewrite drops look-around assertions (`\b`,
//!   `^`, … : a lazy DFA cannot decide a Unicode `\b` on non-ASCII text) and widens every
//!   class's non-ASCII members to any non-ASCII character (`\d`, `\w`, `(?i)k` keep their ASCII
//!   members exactly; Unicode tables would make the automaton many times larger). Only the
//!   forward DFA is built, with a cache of at most [`MAX_SET_DFA_CACHE`] per worker. A text
//!   that keeps creating DFA states (many partial matches of many patterns at once) makes it
//!   give up ([`MIN_BYTES_PER_STATE`]): then all its regexes run, as without a prefilter.
//!
//! Rules with the same pattern (a template for several keys) are one pattern. An automaton
//! over its limits ([`MAX_LITERAL_TOTAL_BYTES`], [`MAX_SET_SIZE`]) is split or left out, and a
//! regex no prefilter covers runs on every text.

use std::collections::HashMap;
use std::sync::Arc;

use regex::Regex;
use regex_automata::hybrid::dfa::{Cache, DFA};
use regex_automata::nfa::thompson::{self, WhichCaptures};
use regex_automata::util::pool::Pool;
use regex_automata::{Input, MatchKind, PatternSet};
use regex_syntax::hir::literal::{ExtractKind, Extractor};
use regex_syntax::hir::{Class, ClassUnicode, ClassUnicodeRange, Hir, HirKind, Repetition};

use super::REGEX_NEST_LIMIT;

/// Shortest literal worth a prefilter entry: shorter ones (`-`, `@`) occur in most texts, and
/// such a regex is better served by an approximation.
pub const MIN_LITERAL_BYTES: usize = 3;
/// Most literals one regex may need (its `(?i)` variants, its alternatives).
pub const MAX_LITERALS_PER_RULE: usize = 64;
/// Literals are cut to this many bytes: longer ones are no more selective.
pub const MAX_LITERAL_BYTES: usize = 32;
/// Most literal bytes in one scope's automaton; the regexes beyond it are approximated.
pub const MAX_LITERAL_TOTAL_BYTES: usize = 1024 * 1024;
/// Most approximations in one lazy DFA: fewer keep its states (sets of NFA states) small,
/// more scan the text fewer times.
pub const SET_PATTERNS: usize = 256;
/// Size limit of one lazy DFA's NFA, in bytes.
pub const MAX_SET_SIZE: usize = 4 * 1024 * 1024;
/// Cache of one lazy DFA (per worker VM), in bytes. When the DFA needs more for its few
/// mandatory states, it gets that minimum instead.
pub const MAX_SET_DFA_CACHE: usize = 512 * 1024;
/// When a lazy DFA's cache fills up before it has searched this many bytes per state it holds,
/// the text is one that keeps creating new states: the DFA gives up for that search and its
/// regexes all run, instead of paying to build a state per byte.
pub const MIN_BYTES_PER_STATE: usize = 10;

/// The compiled regex rules of one scope.
#[derive(Clone, Debug, Default)]
pub(super) struct RegexRules {
    /// Rule index (into the firewall's rules) and its regex, per regex rule of the scope.
    rules: Vec<(usize, Regex)>,
    /// The required literals of the regexes that have some (ASCII lower case), by literal id,
    /// until the scope takes them into its automaton (`ScopeSet::patterns`).
    literals: Vec<Vec<u8>>,
    /// Literal id → the entries of `rules` that need it.
    literal_entries: Vec<Vec<usize>>,
    /// Lazy DFAs over the approximations of the other regexes. Shared by clones of the
    /// firewall (with their caches).
    sets: Vec<Arc<PrefilterSet>>,
    /// Entries of `rules` no prefilter covers: they run on every text.
    unfiltered: Vec<usize>,
}

type CachePool = Pool<Cache, Box<dyn Fn() -> Cache + Send + Sync>>;

/// One multi-pattern lazy DFA over the approximations of some regexes: which of them match a
/// text, not where.
#[derive(Debug)]
struct PrefilterSet {
    dfa: DFA,
    /// Lazy-DFA caches: one per thread that searches (one per worker VM in the filter).
    caches: CachePool,
    /// Pattern id → the entries of [`RegexRules::rules`] with that pattern.
    members: Vec<Vec<usize>>,
}

impl RegexRules {
    /// Builds the prefilter over `rules` (rule index, regex).
    pub(super) fn new(rules: Vec<(usize, Regex)>) -> RegexRules {
        // Distinct patterns, each with every entry that has it.
        let mut patterns: Vec<(&str, Vec<usize>)> = Vec::with_capacity(rules.len());
        let mut seen: HashMap<&str, usize> = HashMap::with_capacity(rules.len());
        for (entry, (_, re)) in rules.iter().enumerate() {
            match seen.get(re.as_str()).and_then(|&i| patterns.get_mut(i)) {
                Some((_, entries)) => entries.push(entry),
                None => {
                    seen.insert(re.as_str(), patterns.len());
                    patterns.push((re.as_str(), vec![entry]));
                }
            }
        }
        let mut unfiltered = Vec::new();
        let mut literal_ids: HashMap<Vec<u8>, usize> = HashMap::new();
        let mut literal_entries: Vec<Vec<usize>> = Vec::new();
        let mut literal_bytes = 0;
        let mut approximated = Vec::new();
        for (pattern, entries) in patterns {
            let Some(hir) = parse(pattern) else {
                unfiltered.extend(entries);
                continue;
            };
            let literals = required_literals(&hir).filter(|lits| {
                let bytes: usize = lits.iter().map(Vec::len).sum();
                literal_bytes + bytes <= MAX_LITERAL_TOTAL_BYTES
            });
            let Some(literals) = literals else {
                approximated.push((entries, widen(hir)));
                continue;
            };
            for mut literal in literals {
                literal_bytes += literal.len();
                // Scanned ASCII-case-insensitively: case variants are one literal.
                literal.make_ascii_lowercase();
                let id = *literal_ids.entry(literal).or_insert_with(|| {
                    literal_entries.push(Vec::new());
                    literal_entries.len() - 1
                });
                if let Some(needing) = literal_entries.get_mut(id) {
                    if !needing.ends_with(&entries) {
                        needing.extend(&entries);
                    }
                }
            }
        }
        let mut by_id: Vec<(usize, Vec<u8>)> =
            literal_ids.into_iter().map(|(lit, id)| (id, lit)).collect();
        by_id.sort_unstable();
        let literals = by_id.into_iter().map(|(_, lit)| lit).collect();
        let mut sets = Vec::new();
        for chunk in approximated.chunks(SET_PATTERNS) {
            build_sets(chunk, &mut sets, &mut unfiltered);
        }
        unfiltered.sort_unstable();
        unfiltered.dedup();
        RegexRules {
            rules,
            literals,
            literal_entries,
            sets,
            unfiltered,
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The required literals, by id, for the scope's automaton (which keeps them; this does
    /// not).
    pub(super) fn take_literals(&mut self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.literals)
    }

    /// How many literals [`RegexRules::candidates`] takes as found or not.
    pub(super) fn literal_count(&self) -> usize {
        self.literal_entries.len()
    }

    /// The literals cannot be scanned for (their automaton could not be built): every regex
    /// that needs one runs on every text.
    pub(super) fn unfilter_literals(&mut self) {
        self.unfiltered
            .extend(self.literal_entries.drain(..).flatten());
        self.unfiltered.sort_unstable();
        self.unfiltered.dedup();
    }

    /// How many regexes each prefilter covers: (required literals, lazy DFAs, none).
    #[cfg(test)]
    pub(super) fn coverage(&self) -> (usize, usize, usize) {
        let mut by_literals: Vec<usize> = self.literal_entries.iter().flatten().copied().collect();
        by_literals.sort_unstable();
        by_literals.dedup();
        let by_sets = self
            .sets
            .iter()
            .flat_map(|s| s.members.iter().flatten())
            .count();
        (by_literals.len(), by_sets, self.unfiltered.len())
    }

    /// The compiled regexes.
    pub(super) fn regexes(&self) -> impl Iterator<Item = &Regex> {
        self.rules.iter().map(|(_, re)| re)
    }

    /// Heap bytes of the lazy DFAs' NFAs as compiled, and of the lazy-DFA caches the calling
    /// thread has filled so far (the literals are in the scope's automaton).
    pub(super) fn prefilter_bytes(&self) -> (usize, usize) {
        self.sets.iter().fold((0, 0), |(nfa, cache), s| {
            (
                nfa + s.dfa.get_nfa().memory_usage(),
                cache + s.caches.get().memory_usage(),
            )
        })
    }

    /// The entries (rule index, regex) that may match in `text[from..]`: every one that does is
    /// among them. `text[..from]` is context only, as for [`Regex::find_at`]. `found` tells,
    /// by literal id ([`RegexRules::take_literals`]), which literals occur in `text[from..]` (a
    /// match starting at `from` or later contains its literal there).
    pub(super) fn candidates<'s>(
        &'s self,
        text: &str,
        from: usize,
        found: &[bool],
    ) -> impl Iterator<Item = &'s (usize, Regex)> {
        let mut run = vec![false; self.rules.len()];
        let mut mark = |entries: &[usize]| {
            for &entry in entries {
                if let Some(r) = run.get_mut(entry) {
                    *r = true;
                }
            }
        };
        mark(&self.unfiltered);
        for (entries, _) in self.literal_entries.iter().zip(found).filter(|(_, f)| **f) {
            mark(entries);
        }
        for set in &self.sets {
            for entries in set.candidates(text, from) {
                mark(entries);
            }
        }
        self.rules
            .iter()
            .zip(run)
            .filter_map(|(rule, run)| run.then_some(rule))
    }
}

impl PrefilterSet {
    /// Entries of the patterns that match somewhere in `text[from..]`; all of them when the
    /// lazy DFA gave up (see [`MIN_BYTES_PER_STATE`]).
    fn candidates(&self, text: &str, from: usize) -> Vec<&[usize]> {
        let mut found = PatternSet::new(self.members.len());
        let searched = from <= text.len() && {
            let input = Input::new(text).span(from..text.len());
            let mut cache = self.caches.get();
            self.dfa
                .try_which_overlapping_matches(&mut cache, &input, &mut found)
                .is_ok()
        };
        if !searched {
            return self.members.iter().map(Vec::as_slice).collect();
        }
        found
            .iter()
            .filter_map(|id| self.members.get(id.as_usize()).map(Vec::as_slice))
            .collect()
    }
}

/// Compiles `chunk` (entry, approximation) into one automaton, or, when it is refused (too
/// large), its halves; a single approximation that is refused goes to `unfiltered`.
fn build_sets(
    chunk: &[(Vec<usize>, Hir)],
    sets: &mut Vec<Arc<PrefilterSet>>,
    unfiltered: &mut Vec<usize>,
) {
    match build_set(chunk) {
        Some(set) => sets.push(Arc::new(set)),
        None if chunk.len() > 1 => {
            let (a, b) = chunk.split_at(chunk.len() / 2);
            build_sets(a, sets, unfiltered);
            build_sets(b, sets, unfiltered);
        }
        None => unfiltered.extend(chunk.iter().flat_map(|(entries, _)| entries)),
    }
}

fn build_set(chunk: &[(Vec<usize>, Hir)]) -> Option<PrefilterSet> {
    let nfa = thompson::Compiler::new()
        .configure(
            thompson::Config::new()
                .nfa_size_limit(Some(MAX_SET_SIZE))
                .which_captures(WhichCaptures::None),
        )
        .build_many_from_hir(&chunk.iter().map(|(_, hir)| hir).collect::<Vec<_>>())
        .ok()?;
    let dfa = DFA::builder()
        .configure(
            DFA::config()
                // Every pattern that matches anywhere, not just the leftmost match.
                .match_kind(MatchKind::All)
                .cache_capacity(MAX_SET_DFA_CACHE)
                // Rather than refusing to build when its minimum exceeds the capacity.
                .skip_cache_capacity_check(true)
                // Give up on a text that keeps creating states (the caller then runs every
                // regex of the set) rather than building a state per byte.
                .minimum_cache_clear_count(Some(0))
                .minimum_bytes_per_state(Some(MIN_BYTES_PER_STATE)),
        )
        .build_from_nfa(nfa)
        .ok()?;
    let create = dfa.clone();
    Some(PrefilterSet {
        caches: Pool::new(Box::new(move || create.create_cache())),
        dfa,
        members: chunk.iter().map(|(entries, _)| entries.clone()).collect(),
    })
}

/// `pattern`'s syntax tree, as the `regex` crate parses it; `None` if it does not parse (it
/// always does once validated).
fn parse(pattern: &str) -> Option<Hir> {
    regex_syntax::ParserBuilder::new()
        .nest_limit(REGEX_NEST_LIMIT)
        .build()
        .parse(pattern)
        .ok()
}

/// A regex matching every text `pattern` matches, without look-around assertions and with
/// every class's non-ASCII members widened to any non-ASCII character.
#[cfg(test)]
pub(super) fn approximate(pattern: &str) -> Option<Hir> {
    parse(pattern).map(widen)
}

/// Literals one of which every match of `hir` contains, each at least [`MIN_LITERAL_BYTES`]
/// long; `None` when no such set is found. Tried: the match's possible prefixes, its
/// possible suffixes, and inner literals (the prefixes of what follows each literal of a
/// concatenation, `-0042` in `\d{3}-\d{2}-0042`), recursively into groups, repetitions of at
/// least one and alternations (each branch must have literals). The best set has the longest
/// shortest literal, then the fewest literals.
pub(super) fn required_literals(hir: &Hir) -> Option<Vec<Vec<u8>>> {
    let mut best = None;
    consider(&mut best, extract(ExtractKind::Prefix, hir));
    consider(&mut best, extract(ExtractKind::Suffix, hir));
    match hir.kind() {
        HirKind::Concat(subs) => {
            for (i, sub) in subs.iter().enumerate().skip(1) {
                if matches!(sub.kind(), HirKind::Literal(_)) {
                    let rest = Hir::concat(subs.get(i..).unwrap_or_default().to_vec());
                    consider(&mut best, extract(ExtractKind::Prefix, &rest));
                }
            }
            for sub in subs {
                consider(&mut best, required_literals(sub));
            }
        }
        HirKind::Capture(cap) => consider(&mut best, required_literals(&cap.sub)),
        HirKind::Repetition(rep) if rep.min > 0 => consider(&mut best, required_literals(&rep.sub)),
        HirKind::Alternation(subs) => {
            // Every branch must bring literals of its own.
            let all = subs.iter().map(required_literals).try_fold(
                Vec::new(),
                |mut all: Vec<Vec<u8>>, lits| {
                    all.extend(lits?);
                    Some(all)
                },
            );
            consider(
                &mut best,
                all.map(|mut all| {
                    all.sort_unstable();
                    all.dedup();
                    all
                }),
            );
        }
        _ => {}
    }
    best
}

/// The prefixes or suffixes of `hir`'s matches, when finitely many and all long enough.
fn extract(kind: ExtractKind, hir: &Hir) -> Option<Vec<Vec<u8>>> {
    let seq = Extractor::new()
        .kind(kind)
        .limit_total(MAX_LITERALS_PER_RULE)
        .limit_literal_len(MAX_LITERAL_BYTES)
        .extract(hir);
    let literals: Vec<Vec<u8>> = seq
        .literals()?
        .iter()
        .map(|l| l.as_bytes().to_vec())
        .collect();
    Some(literals)
}

fn consider(best: &mut Option<Vec<Vec<u8>>>, candidate: Option<Vec<Vec<u8>>>) {
    // Past 8 bytes a literal is rare enough in text; then fewer literals is better.
    let score = |lits: &Vec<Vec<u8>>| {
        let shortest = lits.iter().map(Vec::len).min().unwrap_or(0);
        (shortest.min(8), std::cmp::Reverse(lits.len()))
    };
    let Some(candidate) = candidate else { return };
    let usable = !candidate.is_empty()
        && candidate.len() <= MAX_LITERALS_PER_RULE
        && candidate.iter().all(|l| l.len() >= MIN_LITERAL_BYTES);
    if usable && best.as_ref().is_none_or(|b| score(&candidate) > score(b)) {
        *best = Some(candidate);
    }
}

/// Non-ASCII characters, as one class range.
const NON_ASCII: (char, char) = ('\u{80}', char::MAX);

fn widen(hir: Hir) -> Hir {
    match hir.into_kind() {
        HirKind::Look(_) => Hir::empty(),
        HirKind::Class(Class::Unicode(class)) => {
            let wide = class.ranges().last().is_some_and(|r| !r.end().is_ascii());
            if !wide {
                return Hir::class(Class::Unicode(class));
            }
            let mut ranges: Vec<ClassUnicodeRange> = class
                .ranges()
                .iter()
                .filter(|r| r.start().is_ascii())
                .map(|r| ClassUnicodeRange::new(r.start(), r.end().min('\u{7f}')))
                .collect();
            ranges.push(ClassUnicodeRange::new(NON_ASCII.0, NON_ASCII.1));
            Hir::class(Class::Unicode(ClassUnicode::new(ranges)))
        }
        HirKind::Repetition(rep) => Hir::repetition(Repetition {
            sub: Box::new(widen(*rep.sub)),
            ..rep
        }),
        // Which group matched what does not matter to a prefilter.
        HirKind::Capture(cap) => widen(*cap.sub),
        HirKind::Concat(subs) => Hir::concat(subs.into_iter().map(widen).collect()),
        HirKind::Alternation(subs) => Hir::alternation(subs.into_iter().map(widen).collect()),
        HirKind::Empty => Hir::empty(),
        HirKind::Literal(lit) => Hir::literal(lit.0),
        // ASCII only: a byte class in a `str` regex cannot match beyond ASCII.
        HirKind::Class(class @ Class::Bytes(_)) => Hir::class(class),
    }
}
