//! Prompt complexity: a fast, deterministic classifier that puts a prompt in one of four tiers
//! ([`Tier`]) so that the auto modes can pick the cheapest model able to answer it, and a task
//! detector ([`detect_task`]) for routing rules that match on the task.
//!
//! No model and no allocation per keyword: one byte pass over the text (length, `?`, list items,
//! commas, code punctuation, `2+2`-style arithmetic) and one Aho–Corasick scan (ASCII
//! case-insensitive) over a fixed keyword table. Each keyword carries a cue (what it says about
//! the prompt's difficulty) and, optionally, a vote for a task.
//!
//! # Scoring
//! Two sums of points:
//! - *complexity*: length, code blocks, the cues of ordinary work (explain, write, summarize…) and
//!   of large work (design, refactor, migrate, comprehensive…), constraints (must, without, at
//!   least…), enumerations (commas, list items, several questions), conversation turns and tools;
//!   minus the cues of small talk and look-ups (hello, thanks, what is, in one sentence…);
//! - *reasoning*: proof and derivation vocabulary (prove, derive, step by step, O(n log n),
//!   puzzle…), weaker problem-solving words (why, probability, algorithm, optimal…) and math
//!   notation.
//!
//! Enough reasoning points make the prompt [`Tier::Reasoning`]; otherwise the complexity points
//! fall into [`Tier::Simple`], [`Tier::Medium`] or [`Tier::Complex`]. The weights were tuned on
//! `tests/complexity/prompts.jsonl` (labelled by hand before tuning) and its test prints
//! the accuracy.
//!
//! # Bounds
//! Only the first [`HEAD_BYTES`] and the last [`TAIL_BYTES`] of the text are scanned (cut at
//! character boundaries); the length signal uses the whole length. The work is therefore bounded
//! whatever the prompt's size, and no input can make it panic.

use std::sync::OnceLock;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, AhoCorasickKind, MatchKind};

/// Bytes scanned from the start of the text.
pub const HEAD_BYTES: usize = 32 * 1024;
/// Bytes scanned from the end of the text (the newest message), when the text is longer than
/// [`HEAD_BYTES`] + [`TAIL_BYTES`].
pub const TAIL_BYTES: usize = 8 * 1024;

/// How demanding a prompt is, from cheapest to most expensive model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tier {
    /// Greetings, acknowledgements, one-line facts, tiny arithmetic, short rewrites.
    Simple,
    /// Ordinary writing, summaries, explanations, short code snippets, emails.
    Medium,
    /// Multi-step design, long documents, non-trivial code, analysis under several constraints.
    Complex,
    /// Proofs, hard math, logic puzzles, algorithm design with complexity analysis.
    Reasoning,
}

impl Tier {
    pub const ALL: [Tier; 4] = [Tier::Simple, Tier::Medium, Tier::Complex, Tier::Reasoning];

    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Simple => "simple",
            Tier::Medium => "medium",
            Tier::Complex => "complex",
            Tier::Reasoning => "reasoning",
        }
    }

    /// Parses a tier name, ASCII case-insensitive (`simple`, `SIMPLE`, `Simple`…).
    pub fn parse(s: &str) -> Option<Tier> {
        Tier::ALL
            .into_iter()
            .find(|t| t.as_str().eq_ignore_ascii_case(s.trim()))
    }
}

/// What [`classify`] found.
#[derive(Clone, Debug, PartialEq)]
pub struct Classification {
    pub tier: Tier,
    /// 0.0–1.0, increasing with difficulty; each tier owns a quarter of the range (simple
    /// `[0, 0.25)`, medium `[0.25, 0.5)`, complex `[0.5, 0.75)`, reasoning `[0.75, 1]`).
    pub score: f32,
    /// [`detect_task`] of the same text.
    pub task: Option<&'static str>,
    /// Names of the signals that fired, for logs and route explanations (`long_prompt`,
    /// `code_block`, `proof_vocabulary`…), in a fixed order.
    pub signals: Vec<&'static str>,
}

/// Classifies a prompt.
///
/// `text` is the user-visible prompt text (all messages concatenated, system prompt included,
/// newest last); `turns` the number of messages; `has_tools` whether the request declares tools.
pub fn classify(text: &str, turns: usize, has_tools: bool) -> Classification {
    let f = Features::of(text);
    let points = Points::of(&f, turns, has_tools);
    let tier = points.tier();
    let mut signals = Vec::with_capacity(8);
    f.push_signals(turns, has_tools, &mut signals);
    Classification {
        tier,
        score: points.score(tier),
        task: f.task(),
        signals,
    }
}

/// The prompt's task: one of `coding`, `math`, `summarization`, `translation`, `extraction`,
/// `writing`, `analysis` or `chat` (anything else that has words); `None` for a text with no
/// words.
pub fn detect_task(text: &str) -> Option<&'static str> {
    Features::of(text).task()
}

// ---------------------------------------------------------------------------------------------
// Keyword table.

/// What a keyword says about the prompt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cue {
    /// Small talk and acknowledgements: hello, thanks, ok.
    Greeting,
    /// One-fact questions: what is, who wrote, capital of, how many.
    Lookup,
    /// An explicit ask for a tiny answer: in one sentence, one word, yes or no.
    Tiny,
    /// A softer ask for brevity, or a short form: short, quickly, haiku, joke.
    Brief,
    /// Ordinary work: explain, write, draft, summarize, translate, compare.
    Ordinary,
    /// Large work: design, architecture, refactor, migrate, comprehensive, production.
    Large,
    /// Constraints on the answer: must, without, at least, keep, backward compatible.
    Constraint,
    /// Proof and derivation vocabulary: prove, derive, show that, think step by step.
    Proof,
    /// Rigor and puzzles: step by step, O(n log n), recurrence, puzzle, each case.
    Rigor,
    /// Problem-solving words: why, probability, algorithm, optimal, recurrence.
    Solve,
    /// Math notation: ^, √, ≥, ≡, sqrt.
    Notation,
    /// Code syntax: fences, `def `, `=>`, `#include`.
    Code,
    /// Only a task vote.
    None,
}

const CUES: usize = 13;

impl Cue {
    fn index(self) -> usize {
        self as usize
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Task {
    Coding,
    Math,
    Summarization,
    Translation,
    Extraction,
    Writing,
    Analysis,
}

const TASKS: usize = 7;
const TASK_NAMES: [&str; TASKS] = [
    "coding",
    "math",
    "summarization",
    "translation",
    "extraction",
    "writing",
    "analysis",
];

/// Where a keyword must sit relative to word characters (ASCII letters and digits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Edge {
    /// A whole word: no word character just before or just after (`hi`, not `this`).
    Word,
    /// The start of a word (`prov` in `prove`, `proving`).
    Stem,
    /// Anywhere (symbols, fences).
    Any,
}

#[derive(Clone, Copy, Debug)]
struct Keyword {
    pat: &'static str,
    cue: Cue,
    edge: Edge,
    /// Task vote and its weight.
    task: Option<(Task, u8)>,
}

const fn w(pat: &'static str, cue: Cue) -> Keyword {
    Keyword {
        pat,
        cue,
        edge: Edge::Word,
        task: None,
    }
}

const fn s(pat: &'static str, cue: Cue) -> Keyword {
    Keyword {
        pat,
        cue,
        edge: Edge::Stem,
        task: None,
    }
}

const fn a(pat: &'static str, cue: Cue) -> Keyword {
    Keyword {
        pat,
        cue,
        edge: Edge::Any,
        task: None,
    }
}

impl Keyword {
    const fn t(mut self, task: Task, weight: u8) -> Keyword {
        self.task = Some((task, weight));
        self
    }
}

use Cue::{
    Brief, Code, Constraint, Greeting, Large, Lookup, None as Vote, Notation, Ordinary, Proof,
    Rigor, Solve, Tiny,
};
use Task::{Analysis, Coding, Extraction, Math, Summarization, Translation, Writing};

/// Patterns are ASCII case-insensitive: keep them lower-case, and spell a non-ASCII capital out
/// (`Übersetz`) where a sentence may start with it. Overlapping patterns resolve to the longest
/// at the leftmost position, so a phrase (`short story`, `how many ways`) overrides its words.
const KEYWORDS: &[Keyword] = &[
    // Greeting
    w("hello", Greeting),
    w("hi", Greeting),
    w("hey", Greeting),
    w("good morning", Greeting),
    w("good night", Greeting),
    w("good evening", Greeting),
    w("thanks", Greeting),
    w("thank you", Greeting),
    w("ok", Greeting),
    w("okay", Greeting),
    w("yes", Greeting),
    w("please go ahead", Greeting),
    s("acknowledg", Greeting),
    w("confirm you", Greeting),
    w("say hi", Greeting),
    w("how are you", Greeting),
    w("bonjour", Greeting),
    w("hola", Greeting),
    // Lookup
    w("what is", Lookup),
    w("what's", Lookup),
    w("who wrote", Lookup),
    w("who painted", Lookup),
    w("who is", Lookup),
    w("what year", Lookup),
    w("when did", Lookup),
    w("capital of", Lookup),
    w("how many", Lookup),
    w("stand for", Lookup),
    w("define", Lookup),
    w("synonym", Lookup),
    w("opposite of", Lookup),
    w("spell", Lookup),
    w("convert", Lookup),
    w("plural of", Lookup),
    w("how do you say", Lookup).t(Translation, 3),
    w("is a", Lookup),
    w("which", Lookup),
    w("where is", Lookup),
    w("pick a", Lookup),
    w("give me a", Lookup),
    w("round", Lookup).t(Math, 1),
    // Brief
    w("in one sentence", Tiny),
    w("one sentence", Tiny),
    w("one-line", Tiny),
    w("one line", Tiny),
    w("one-word", Tiny),
    w("one word", Tiny),
    w("short", Brief),
    w("quick", Brief),
    w("quickly", Brief),
    w("briefly", Brief),
    w("just", Tiny),
    w("yes or no", Tiny),
    w("tl;dr", Tiny).t(Summarization, 2),
    w("haiku", Brief).t(Writing, 2),
    w("tagline", Brief).t(Writing, 2),
    w("joke", Brief).t(Writing, 2),
    w("typo", Brief).t(Writing, 2),
    // Ordinary work
    s("explain", Ordinary),
    w("what are", Ordinary),
    w("what does this", Ordinary),
    w("calculate", Ordinary).t(Math, 2),
    w("prepare", Ordinary),
    w("tips", Ordinary),
    w("best practices", Ordinary),
    w("good practices", Ordinary),
    w("short story", Ordinary).t(Writing, 2),
    s("describe", Ordinary),
    w("write", Ordinary).t(Writing, 1),
    w("draft", Ordinary).t(Writing, 2),
    s("rédige", Ordinary).t(Writing, 2),
    s("summar", Ordinary).t(Summarization, 3),
    s("translat", Ordinary).t(Translation, 3),
    s("traduis", Ordinary).t(Translation, 3),
    s("traduce", Ordinary).t(Translation, 3),
    s("übersetz", Ordinary).t(Translation, 3),
    s("Übersetz", Ordinary).t(Translation, 3),
    w("compare", Ordinary).t(Analysis, 2),
    w("difference between", Ordinary),
    w("pros and cons", Ordinary).t(Analysis, 3),
    w("ideas", Ordinary).t(Writing, 1),
    w("suggest", Ordinary),
    w("create", Ordinary),
    w("list", Ordinary),
    w("classify", Ordinary).t(Analysis, 2),
    s("extract", Ordinary).t(Extraction, 3),
    w("pull out", Ordinary).t(Extraction, 3),
    w("example", Ordinary),
    w("how does", Ordinary),
    w("how do", Ordinary),
    w("how should", Ordinary),
    w("email", Ordinary).t(Writing, 2),
    w("e-mail", Ordinary).t(Writing, 2),
    w("letter", Ordinary).t(Writing, 2),
    w("story", Ordinary).t(Writing, 2),
    w("poem", Ordinary).t(Writing, 2),
    w("post", Ordinary).t(Writing, 1),
    w("speech", Ordinary).t(Writing, 2),
    w("bio", Ordinary).t(Writing, 2),
    w("note", Ordinary).t(Writing, 1),
    w("agenda", Ordinary).t(Writing, 2),
    w("itinerary", Ordinary).t(Writing, 2),
    w("description", Ordinary).t(Writing, 1),
    w("checklist", Ordinary).t(Writing, 1),
    w("rewrite", Ordinary).t(Writing, 2),
    w("unit tests", Ordinary).t(Coding, 2),
    w("script", Ordinary).t(Coding, 2),
    w("query", Ordinary).t(Coding, 2),
    w("function", Ordinary).t(Coding, 2),
    w("component", Ordinary).t(Coding, 2),
    w("class", Ordinary).t(Coding, 1),
    w("regex", Ordinary).t(Coding, 3),
    w("error", Vote).t(Coding, 1),
    w("dockerfile", Ordinary).t(Coding, 3),
    w("meal plan", Ordinary).t(Writing, 2),
    // Large work
    s("design", Large),
    s("architect", Large),
    s("refactor", Large).t(Coding, 3),
    s("debug", Large).t(Coding, 3),
    s("deadlock", Large).t(Coding, 2),
    s("migrat", Large),
    w("port", Vote).t(Coding, 1),
    s("implement", Large).t(Coding, 2),
    w("build", Large),
    s("comprehensive", Large),
    w("detailed", Large),
    w("complete", Large),
    w("full", Large),
    w("production", Large),
    s("scal", Large),
    s("microservic", Large).t(Coding, 2),
    w("arquitectura", Large),
    w("caching", Large),
    w("pagination", Large),
    w("authentication", Large),
    w("authorization", Large),
    w("offline", Large),
    w("latency", Large),
    w("throughput", Large),
    w("failover", Large),
    w("replication", Large),
    w("sharding", Large),
    w("likely causes", Large).t(Analysis, 2),
    w("walk through", Large),
    w("schema", Large).t(Coding, 2),
    w("pipeline", Large),
    w("terraform", Vote).t(Coding, 3),
    s("kubernetes", Vote).t(Coding, 2),
    w("ansible", Vote).t(Coding, 3),
    w("strategy", Large).t(Analysis, 1),
    w("plan", Large).t(Analysis, 1),
    w("roadmap", Large).t(Analysis, 1),
    s("evaluat", Large).t(Analysis, 2),
    s("recommend", Large).t(Analysis, 2),
    w("requirements", Large),
    w("edge cases", Large),
    w("security", Large),
    w("performance", Large),
    s("concurren", Large),
    w("threat model", Large).t(Analysis, 2),
    w("multi-tenant", Large),
    w("distributed", Large),
    w("report", Large),
    w("proposal", Large).t(Writing, 2),
    w("policy", Large).t(Writing, 2),
    w("runbook", Large).t(Writing, 2),
    w("handbook", Large).t(Writing, 2),
    w("tests", Large).t(Coding, 2),
    w("trade-offs", Large).t(Analysis, 2),
    w("tradeoffs", Large).t(Analysis, 2),
    s("analy", Large).t(Analysis, 2),
    w("root cause", Large).t(Analysis, 3),
    s("diagnos", Large).t(Analysis, 2),
    s("forecast", Large).t(Analysis, 2),
    w("projection", Large).t(Analysis, 2),
    s("audit", Large),
    w("review", Large),
    w("each change", Large),
    w("each setting", Large),
    w("each one", Large),
    w("and justify", Large).t(Analysis, 1),
    w("assumptions", Large).t(Analysis, 1),
    w("risks", Large).t(Analysis, 1),
    w("action items", Large).t(Summarization, 1),
    w("step", Vote),
    w("structured", Large),
    w("curriculum", Large).t(Writing, 2),
    w("business plan", Large).t(Analysis, 2),
    w("go-to-market", Large).t(Analysis, 2),
    w("competitive", Large).t(Analysis, 2),
    w("capacity", Large).t(Analysis, 1),
    w("remediation", Large),
    w("observability", Large),
    w("idempotent", Large).t(Coding, 2),
    w("websockets", Large).t(Coding, 2),
    w("resolvers", Large).t(Coding, 2),
    w("backend", Large).t(Coding, 2),
    w("middleware", Large).t(Coding, 2),
    w("interpreter", Large).t(Coding, 2),
    w("parser", Large).t(Coding, 2),
    w("extension", Large).t(Coding, 1),
    w("consumer", Large).t(Coding, 1),
    w("service", Vote).t(Coding, 1),
    a("00-word", Large).t(Writing, 2),
    a("00 words", Large).t(Writing, 2),
    w("diseña", Large).t(Coding, 1),
    w("detaillierten", Large).t(Analysis, 1),
    w("projektplan", Large).t(Analysis, 2),
    // Constraints
    w("must", Constraint),
    w("without", Constraint),
    w("at least", Constraint),
    w("at most", Constraint),
    w("no more than", Constraint),
    w("exactly", Constraint),
    w("ensure", Constraint),
    s("constraint", Constraint),
    w("keep", Constraint),
    w("backward compatible", Constraint),
    w("preserving", Constraint),
    w("handle", Constraint),
    w("handling", Constraint),
    w("support", Constraint),
    w("include", Constraint),
    w("including", Constraint),
    w("covering", Constraint),
    w("cover", Constraint),
    // Proof and derivation
    s("prove", Proof).t(Math, 3),
    w("proof", Proof).t(Math, 3),
    w("prove or disprove", Proof).t(Math, 3),
    s("derive", Proof).t(Math, 2),
    w("derivation", Proof).t(Math, 2),
    s("lemma", Rigor).t(Math, 2),
    w("induction", Proof).t(Math, 2),
    w("show that", Proof).t(Math, 2),
    w("if and only if", Proof).t(Math, 2),
    s("pigeonhole", Proof).t(Math, 3),
    s("deduc", Proof).t(Analysis, 1),
    w("think step by step", Proof),
    w("reason step by step", Proof),
    w("master theorem", Proof).t(Math, 2),
    w("exchange argument", Proof).t(Coding, 2),
    s("demuestra", Proof).t(Math, 3),
    s("beweise", Proof).t(Math, 3),
    s("montrez", Proof).t(Math, 3),
    s("démontre", Proof).t(Math, 3),
    // Rigor and puzzles
    s("rigorous", Rigor).t(Math, 1),
    w("step by step", Rigor),
    w("step-by-step", Rigor),
    w("each step", Rigor),
    w("paso a paso", Rigor),
    w("schritt für schritt", Rigor),
    w("contradiction", Rigor).t(Math, 1),
    s("puzzle", Rigor).t(Analysis, 2),
    s("riddle", Rigor).t(Analysis, 2),
    s("paradox", Rigor).t(Math, 1),
    s("axiom", Rigor).t(Math, 1),
    s("knight", Rigor).t(Analysis, 2),
    s("knave", Rigor).t(Analysis, 2),
    w("tells the truth", Rigor).t(Analysis, 2),
    w("tell the truth", Rigor).t(Analysis, 2),
    w("always lies", Rigor).t(Analysis, 2),
    w("winning strategy", Rigor).t(Math, 2),
    w("time complexity", Rigor).t(Coding, 2),
    w("space complexity", Rigor).t(Coding, 2),
    w("worst-case complexity", Rigor).t(Coding, 2),
    a("o(n", Rigor).t(Coding, 1),
    a("o(log", Rigor).t(Coding, 1),
    a("o(1)", Rigor).t(Coding, 1),
    a("o(m", Rigor).t(Coding, 1),
    a("ω(", Rigor).t(Math, 1),
    a("θ(", Rigor).t(Math, 1),
    w("closed form", Rigor).t(Math, 2),
    s("recurrence", Rigor).t(Math, 2),
    s("linearizab", Rigor).t(Coding, 2),
    s("undecidab", Rigor).t(Math, 2),
    w("irrational", Rigor).t(Math, 2),
    s("converge", Rigor).t(Math, 2),
    s("diverge", Rigor).t(Math, 2),
    w("think carefully", Rigor),
    w("reason it through", Rigor),
    w("reasoning", Rigor),
    w("lower bound", Rigor).t(Math, 1),
    w("tight bound", Rigor).t(Math, 1),
    w("error bound", Rigor).t(Math, 1),
    s("optimality", Rigor).t(Math, 1),
    s("invariant", Rigor).t(Math, 1),
    w("np-hard", Rigor).t(Coding, 1),
    w("np-complete", Rigor).t(Coding, 1),
    w("expected number", Rigor).t(Math, 2),
    w("expected value", Rigor).t(Math, 2),
    w("number of ways", Rigor).t(Math, 2),
    w("how many ways", Rigor).t(Math, 2),
    w("how many distinct ways", Rigor).t(Math, 2),
    w("pairs of integers", Rigor).t(Math, 2),
    w("all real", Rigor).t(Math, 2),
    w("all functions", Rigor).t(Math, 2),
    w("all continuous functions", Rigor).t(Math, 2),
    w("linear program", Rigor).t(Math, 2),
    w("every case", Rigor),
    w("each case", Rigor),
    w("dynamic programming", Rigor).t(Coding, 2),
    w("dynamic program", Rigor).t(Coding, 2),
    w("correctness", Rigor).t(Coding, 1),
    w("is correct", Rigor).t(Coding, 1),
    s("argue", Rigor),
    w("argument", Rigor),
    w("show why", Rigor),
    // Problem solving
    w("why", Solve),
    s("theorem", Solve).t(Math, 2),
    s("algorithm", Solve).t(Coding, 2),
    w("optimal", Solve).t(Math, 1),
    s("optimi", Solve),
    s("probabilit", Solve).t(Math, 2),
    w("equation", Solve).t(Math, 2),
    s("integral", Solve).t(Math, 2),
    s("derivative", Solve).t(Math, 2),
    w("formula", Solve).t(Math, 1),
    w("modular", Solve).t(Math, 2),
    w("remainder", Solve).t(Math, 2),
    w("prime", Solve).t(Math, 2),
    w("primes", Solve).t(Math, 2),
    w("divisible", Solve).t(Math, 2),
    w("minimize", Solve).t(Math, 1),
    w("maximize", Solve).t(Math, 1),
    w("maximizes", Solve).t(Math, 1),
    w("expected", Solve).t(Math, 1),
    w("logic", Solve),
    w("explain why", Solve),
    w("greedy", Solve).t(Coding, 2),
    w("graph", Solve).t(Math, 1),
    w("vertices", Solve).t(Math, 2),
    w("integers", Solve).t(Math, 2),
    w("real numbers", Solve).t(Math, 2),
    w("solve", Solve).t(Math, 2),
    w("calculation", Vote).t(Math, 2),
    w("compute", Vote).t(Math, 1),
    w("interest", Vote).t(Math, 1),
    s("percent", Vote).t(Math, 1),
    w("square root", Vote).t(Math, 2),
    w("squared", Vote).t(Math, 2),
    w("divided by", Vote).t(Math, 2),
    w("times", Vote).t(Math, 1),
    w("sum of", Vote).t(Math, 2),
    w("minimum", Solve),
    w("generalize", Solve).t(Math, 1),
    w("minimum number", Solve).t(Math, 1),
    s("verify", Solve),
    w("counting", Solve).t(Math, 1),
    w("series", Solve).t(Math, 1),
    w("strategy that guarantees", Solve),
    w("guarantee", Solve),
    w("guarantees", Solve),
    w("mutual", Solve),
    w("worst case", Solve),
    w("how long", Solve),
    w("how far", Solve),
    w("players", Solve).t(Math, 1),
    w("chessboard", Solve).t(Math, 1),
    w("complexity", Solve).t(Coding, 1),
    // Notation
    a("^", Notation).t(Math, 1),
    a("√", Notation).t(Math, 1),
    a("≡", Notation).t(Math, 1),
    a("≥", Notation).t(Math, 1),
    a("≤", Notation).t(Math, 1),
    a(">=", Notation),
    a("<=", Notation),
    a("∑", Notation).t(Math, 1),
    a("∫", Notation).t(Math, 1),
    a("σ", Notation).t(Math, 1),
    a("α", Notation).t(Math, 1),
    a("π", Notation).t(Math, 1),
    w("sqrt", Notation).t(Math, 1),
    w("ln", Notation).t(Math, 1),
    w("mod", Notation).t(Math, 1),
    w("n log n", Notation),
    // Code
    a("```", Code).t(Coding, 3),
    w("def", Code).t(Coding, 1),
    w("fn", Code).t(Coding, 1),
    w("return", Code).t(Coding, 1),
    w("import", Code).t(Coding, 1),
    a("#include", Code).t(Coding, 2),
    a("=>", Code).t(Coding, 1),
    a("();", Code).t(Coding, 1),
    a("};", Code).t(Coding, 1),
    a("</", Code).t(Coding, 1),
    a("console.", Code).t(Coding, 1),
    w("select", Vote).t(Coding, 1),
    w("sql", Vote).t(Coding, 2),
    w("python", Vote).t(Coding, 2),
    w("javascript", Vote).t(Coding, 2),
    w("typescript", Vote).t(Coding, 2),
    w("rust", Vote).t(Coding, 2),
    w("go", Vote).t(Coding, 1),
    w("java", Vote).t(Coding, 2),
    w("swiftui", Vote).t(Coding, 2),
    w("node.js", Vote).t(Coding, 2),
    w("react", Vote).t(Coding, 2),
    w("css", Vote).t(Coding, 2),
    w("html", Vote).t(Coding, 2),
    w("bash", Vote).t(Coding, 2),
    w("git", Vote).t(Coding, 2),
    w("linux", Vote).t(Coding, 1),
    w("command", Vote).t(Coding, 1),
    w("code", Vote).t(Coding, 2),
    w("api", Vote).t(Coding, 1),
    w("rest api", Vote).t(Coding, 2),
    w("endpoint", Vote).t(Coding, 1),
    w("database", Vote).t(Coding, 1),
    w("cli", Vote).t(Coding, 2),
    w("file extension", Vote).t(Coding, 2),
    w("closure", Vote).t(Coding, 2),
    w("decorators", Vote).t(Coding, 2),
    w("recursion", Vote).t(Coding, 2),
    w("hash map", Vote).t(Coding, 2),
    w("hash table", Vote).t(Coding, 2),
    w("linked list", Vote).t(Coding, 2),
    w("array", Vote).t(Coding, 2),
    w("big o", Vote).t(Coding, 2),
    w("commit", Vote).t(Coding, 1),
    w("json", Vote).t(Extraction, 1),
    w("yaml", Vote).t(Coding, 1),
    w("parse", Vote).t(Extraction, 2),
    w("into json", Vote).t(Extraction, 2),
    w("markdown table", Vote).t(Extraction, 2),
    w("fields", Vote).t(Extraction, 1),
    w("find the", Vote).t(Extraction, 1),
    w("record", Vote).t(Extraction, 1),
    w("categorize", Vote).t(Analysis, 2),
    w("sentiment", Vote).t(Analysis, 2),
    w("trends", Vote).t(Analysis, 2),
    w("causes", Vote).t(Analysis, 2),
    w("landscape", Vote).t(Analysis, 2),
    w("a/b test", Vote).t(Analysis, 2),
    w("test plan", Vote).t(Analysis, 2),
    w("in french", Vote).t(Translation, 2),
    w("in spanish", Vote).t(Translation, 2),
    w("in german", Vote).t(Translation, 2),
    w("into spanish", Vote).t(Translation, 2),
    w("into french", Vote).t(Translation, 2),
    w("into german", Vote).t(Translation, 2),
    w("to english", Vote).t(Translation, 2),
    w("en anglais", Vote).t(Translation, 2),
    w("ins englische", Vote).t(Translation, 2),
    w("key points", Vote).t(Summarization, 2),
    w("main ideas", Vote).t(Summarization, 2),
    w("executive summary", Vote).t(Summarization, 2),
    w("blog", Vote).t(Writing, 2),
    w("article", Vote).t(Writing, 2),
    w("readme", Vote).t(Writing, 2),
    w("tweet", Vote).t(Writing, 2),
    w("linkedin", Vote).t(Writing, 2),
    w("faq", Vote).t(Writing, 1),
    w("job posting", Vote).t(Writing, 2),
    w("cover letter", Vote).t(Writing, 2),
    w("auto-reply", Vote).t(Writing, 2),
    w("reply", Vote).t(Writing, 1),
    w("politely", Vote).t(Writing, 2),
    w("professional", Vote).t(Writing, 1),
    w("shorter", Vote).t(Writing, 2),
    w("title", Vote).t(Writing, 1),
    w("capitalize", Vote).t(Writing, 2),
    w("deck", Vote).t(Writing, 2),
    w("content calendar", Vote).t(Writing, 2),
    w("literature review", Vote).t(Writing, 2),
    w("requirements document", Vote).t(Writing, 2),
];

/// The keyword automaton, built on first use (the table is fixed, so it is built once per
/// process or wasm VM, never per request). `None` only if the build failed, which a fixed
/// table makes impossible in practice; the classifier then runs on byte signals alone.
///
/// A contiguous NFA rather than a DFA: ~135 KB instead of ~1.4 MB per wasm VM, and faster on
/// 2 KB prompts too (the DFA's tables miss the cache).
fn automaton() -> Option<&'static AhoCorasick> {
    static AC: OnceLock<Option<AhoCorasick>> = OnceLock::new();
    AC.get_or_init(|| {
        AhoCorasickBuilder::new()
            .ascii_case_insensitive(true)
            .match_kind(MatchKind::LeftmostLongest)
            .kind(Some(AhoCorasickKind::ContiguousNFA))
            .build(KEYWORDS.iter().map(|k| k.pat))
            .ok()
    })
    .as_ref()
}

// ---------------------------------------------------------------------------------------------
// Features.

/// Bytes from the start of a text whose keywords vote twice for the task (the leading verb).
const LEAD_BYTES: usize = 40;

#[derive(Debug, Default, PartialEq)]
struct Features {
    /// Length of the whole text, in bytes.
    bytes: usize,
    /// Words in the scanned part (runs of non-whitespace).
    words: u32,
    questions: u32,
    /// Lines that start with `1.`, `2)`, `-`, `*` or `•`.
    list_items: u32,
    commas: u32,
    lines: u32,
    /// `{ } ; = < > [ ]` and friends: dense in code, rare in prose.
    code_punct: u32,
    /// `2+2`, `7 * 8`: a digit, an operator and a digit.
    arithmetic: u32,
    /// Runs of digits: the quantities of a word problem, the figures of a data dump.
    numbers: u32,
    /// `15%`: a math vote for the task, not a reasoning signal (reports are full of them).
    percents: u32,
    /// `"` characters, and the bytes between each opening and closing one: a short quoted
    /// payload ("translate \"thank you\"") marks a short rewrite.
    quotes: u32,
    quoted_bytes: u32,
    /// Keyword hits per [`Cue`].
    cues: [u16; CUES],
    /// Task votes, weighted.
    tasks: [u16; TASKS],
}

/// Where [`Features::scan_bytes`] stands between bytes.
struct ByteScan {
    in_word: bool,
    in_number: bool,
    in_quote: bool,
    line_start: bool,
}

impl Default for ByteScan {
    fn default() -> ByteScan {
        ByteScan {
            in_word: false,
            in_number: false,
            in_quote: false,
            line_start: true,
        }
    }
}

impl Features {
    fn of(text: &str) -> Features {
        let mut f = Features {
            bytes: text.len(),
            ..Features::default()
        };
        let (head, tail) = window(text);
        for part in [head, tail] {
            if !part.is_empty() {
                f.scan_bytes(part.as_bytes());
                f.scan_keywords(part, part.as_ptr() == text.as_ptr());
            }
        }
        f
    }

    fn scan_bytes(&mut self, b: &[u8]) {
        let mut at = ByteScan::default();
        let mut i = 0;
        while i < b.len() {
            if !at.line_start && PLAIN[usize::from(b[i])] {
                // A run of bytes that only extend a word (most of a prompt): what
                // `scan_byte` would count for each of them, counted once for the run.
                let run = b[i..]
                    .iter()
                    .take_while(|c| PLAIN[usize::from(**c)])
                    .count();
                if !at.in_word {
                    self.words += 1;
                }
                at.in_word = true;
                at.in_number = false;
                if at.in_quote {
                    self.quoted_bytes = self
                        .quoted_bytes
                        .saturating_add(u32::try_from(run).unwrap_or(u32::MAX));
                }
                i += run;
                continue;
            }
            self.scan_byte(&mut at, b, i);
            i += 1;
        }
    }

    /// Counts byte `i` of `b`, whatever it is.
    fn scan_byte(&mut self, at: &mut ByteScan, b: &[u8], i: usize) {
        let c = b[i];
        let space = c.is_ascii_whitespace();
        if !space && !at.in_word {
            self.words += 1;
        }
        at.in_word = !space;
        let digit = c.is_ascii_digit();
        if digit && !at.in_number {
            self.numbers += 1;
        }
        at.in_number = digit;
        if c == b'"' {
            self.quotes += 1;
            at.in_quote = !at.in_quote;
        } else if at.in_quote {
            self.quoted_bytes += 1;
        }
        if at.line_start && !space {
            at.line_start = false;
            if list_marker(&b[i..]) {
                self.list_items += 1;
            }
        }
        match c {
            b'\n' => {
                self.lines += 1;
                at.line_start = true;
            }
            b'?' => self.questions += 1,
            // Commas of a quoted payload are not the prompt's own enumeration.
            b',' if !at.in_quote => self.commas += 1,
            b'{' | b'}' | b';' | b'=' | b'<' | b'>' | b'[' | b']' | b'|' | b'$' | b'_' => {
                self.code_punct += 1
            }
            // Not `-`: dates, phone numbers and ranges would count.
            b'+' | b'*' | b'/' | b'x' | b'^' if arithmetic_at(b, i) => self.arithmetic += 1,
            b'%' if i > 0 && b[i - 1].is_ascii_digit() => self.percents += 1,
            _ => {}
        }
    }

    fn scan_keywords(&mut self, text: &str, at_start: bool) {
        let Some(ac) = automaton() else { return };
        let b = text.as_bytes();
        for m in ac.find_iter(text) {
            let Some(kw) = KEYWORDS.get(m.pattern().as_usize()) else {
                continue;
            };
            if !edges_ok(b, m.start(), m.end(), kw.edge) {
                continue;
            }
            let cue = &mut self.cues[kw.cue.index()];
            *cue = cue.saturating_add(1);
            if let Some((task, weight)) = kw.task {
                let lead = if at_start && m.start() < LEAD_BYTES {
                    2
                } else {
                    1
                };
                let vote = &mut self.tasks[task as usize];
                *vote = vote.saturating_add(u16::from(weight) * lead);
            }
        }
    }

    fn cue(&self, cue: Cue) -> f32 {
        f32::from(self.cues[cue.index()])
    }

    /// Estimated prompt tokens (bytes / 4, the usual rule of thumb: an estimate).
    fn tokens(&self) -> usize {
        self.bytes.div_ceil(4)
    }

    fn task(&self) -> Option<&'static str> {
        if self.words == 0 {
            return None;
        }
        let mut tasks = self.tasks;
        let arithmetic = u16::try_from((self.arithmetic + self.percents).min(3)).unwrap_or(3);
        tasks[Task::Math as usize] = tasks[Task::Math as usize].saturating_add(2 * arithmetic);
        let mut best = (0u16, "chat");
        for (votes, name) in tasks.iter().zip(TASK_NAMES) {
            if *votes > best.0 {
                best = (*votes, name);
            }
        }
        // One weak vote (a stray "go" or "times") is not a task.
        Some(if best.0 >= 2 { best.1 } else { "chat" })
    }

    /// A short instruction about a short quoted text: `Translate "thank you" into Spanish.`
    fn short_payload(&self) -> bool {
        self.quotes >= 2 && self.quoted_bytes <= 40 && self.bytes <= 100 && self.code_punct == 0
    }

    fn has_code_block(&self) -> bool {
        self.cues[Code.index()] > 0 && self.code_punct >= 4 && self.lines >= 2
    }

    fn push_signals(&self, turns: usize, has_tools: bool, out: &mut Vec<&'static str>) {
        let tokens = self.tokens();
        let flags: [(bool, &'static str); 14] = [
            (tokens <= 16, "short_prompt"),
            (tokens > 400, "long_prompt"),
            (self.cues[Greeting.index()] > 0, "greeting"),
            (self.cues[Lookup.index()] > 0, "lookup"),
            (
                self.cues[Tiny.index()] + self.cues[Brief.index()] > 0,
                "brief_answer",
            ),
            (self.has_code_block(), "code_block"),
            (self.cues[Large.index()] > 0, "large_task"),
            (self.cues[Constraint.index()] > 0, "constraints"),
            (self.questions >= 2 || self.list_items >= 3, "multi_part"),
            (self.cues[Proof.index()] > 0, "proof_vocabulary"),
            (
                self.cues[Solve.index()] + self.cues[Notation.index()] > 0 || self.arithmetic > 0,
                "math",
            ),
            (turns >= 3, "multi_turn"),
            (has_tools, "tools"),
            (self.bytes > HEAD_BYTES + TAIL_BYTES, "truncated_scan"),
        ];
        out.extend(flags.iter().filter(|(on, _)| *on).map(|(_, name)| *name));
    }
}

/// The parts of `text` that are scanned: the first [`HEAD_BYTES`] and the last [`TAIL_BYTES`],
/// each cut at a character boundary; the whole text (and an empty tail) when it is short.
fn window(text: &str) -> (&str, &str) {
    if text.len() <= HEAD_BYTES + TAIL_BYTES {
        return (text, "");
    }
    let mut head_end = HEAD_BYTES;
    while !text.is_char_boundary(head_end) {
        head_end -= 1;
    }
    let mut tail_start = text.len() - TAIL_BYTES;
    while !text.is_char_boundary(tail_start) {
        tail_start += 1;
    }
    (
        text.get(..head_end).unwrap_or_default(),
        text.get(tail_start..).unwrap_or_default(),
    )
}

/// Bytes that [`Features::scan_bytes`] counts only as part of a word: not whitespace, a digit,
/// a quote, or a byte any of its counters or markers looks at (`x` is one: `3 x 4`).
static PLAIN: [bool; 256] = {
    let mut t = [true; 256];
    let special = b" \t\n\x0C\r0123456789\"?,{};=<>[]|$_+*/x^%";
    let mut i = 0;
    while i < special.len() {
        t[special[i] as usize] = false;
        i += 1;
    }
    t
};

fn is_word_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric()
}

fn edges_ok(b: &[u8], start: usize, end: usize, edge: Edge) -> bool {
    let before = start
        .checked_sub(1)
        .and_then(|i| b.get(i))
        .is_some_and(|c| is_word_byte(*c));
    let after = b.get(end).is_some_and(|c| is_word_byte(*c));
    match edge {
        Edge::Word => !before && !after,
        Edge::Stem => !before,
        Edge::Any => true,
    }
}

/// Whether a line starting at `b` is a list item: `12.` / `3)` followed by a space, or a
/// bullet (`-`, `*`, `•`) followed by a space.
fn list_marker(b: &[u8]) -> bool {
    let digits = b.iter().take_while(|c| c.is_ascii_digit()).count();
    if digits > 0 && digits <= 3 {
        return matches!(b.get(digits), Some(b'.' | b')'))
            && b.get(digits + 1).is_some_and(|c| *c == b' ');
    }
    match b {
        [b'-' | b'*', b' ', ..] => true,
        [0xE2, 0x80, 0xA2, b' ', ..] => true, // "• "
        _ => false,
    }
}

/// Whether the operator at `i` sits between two digits (spaces allowed): `2+2`, `7 * 8`.
fn arithmetic_at(b: &[u8], i: usize) -> bool {
    let before = b
        .get(..i)
        .unwrap_or_default()
        .iter()
        .rev()
        .find(|c| **c != b' ')
        .is_some_and(|c| c.is_ascii_digit());
    let after = b
        .get(i + 1..)
        .unwrap_or_default()
        .iter()
        .find(|c| **c != b' ')
        .is_some_and(|c| c.is_ascii_digit());
    before && after
}

// ---------------------------------------------------------------------------------------------
// Points.

/// Complexity points at or above which a prompt is at least medium.
const MEDIUM_AT: f32 = 0.5;
/// Complexity points at or above which a prompt is complex.
const COMPLEX_AT: f32 = 3.5;
/// Reasoning points at or above which a prompt is a reasoning prompt.
const REASONING_AT: f32 = 3.0;

struct Points {
    complexity: f32,
    reasoning: f32,
}

impl Points {
    fn of(f: &Features, turns: usize, has_tools: bool) -> Points {
        let tokens = f.tokens();
        let mut c = match tokens {
            0..=8 => -1.5,
            9..=16 => -0.5,
            17..=40 => 0.0,
            41..=100 => 1.0,
            101..=250 => 2.0,
            251..=600 => 3.0,
            601..=2000 => 4.0,
            2001..=8000 => 5.0,
            _ => 6.0,
        };
        if tokens <= 40 {
            let small_talk = f.cue(Greeting) + f.cue(Lookup) + 2.0 * f.cue(Tiny) + f.cue(Brief);
            c -= small_talk.min(2.0);
            if f.short_payload() {
                c -= 2.0;
            }
            if f.code_punct >= 4 {
                c += 1.5;
            }
        }
        if f.cues[Ordinary.index()] > 0 {
            c += 2.0 + 0.25 * (f.cue(Ordinary) - 1.0).min(4.0);
        }
        if f.cues[Large.index()] > 0 {
            c += 0.5 + f.cue(Large).min(5.0);
        }
        c += 0.5 * f.cue(Constraint).min(4.0);
        if f.has_code_block() {
            c += 2.0;
        }
        c += match f.commas {
            0..=3 => 0.0,
            4..=6 => 1.0,
            _ => 2.0,
        };
        if f.questions >= 2 {
            c += 0.5 * (f.questions - 1).min(3) as f32;
        }
        if f.list_items >= 3 {
            c += 1.0;
        }
        c += match turns {
            0..=2 => 0.0,
            3..=7 => 1.0,
            _ => 2.0,
        };
        if has_tools {
            c += 1.0;
        }

        let r = 3.0 * f.cue(Proof).min(3.0)
            + 2.0 * f.cue(Rigor).min(4.0)
            + f.cue(Solve).min(4.0)
            + 0.5 * (f.cue(Notation) + f.arithmetic as f32).min(4.0);
        // Quantities make a word problem of a question that asks for a solution.
        let r = match f.numbers {
            _ if r < 2.0 => r,
            0..=2 => r,
            3..=5 => r + 1.0,
            _ => r + 2.0,
        };
        Points {
            complexity: c,
            reasoning: r,
        }
    }

    fn tier(&self) -> Tier {
        if self.reasoning >= REASONING_AT {
            Tier::Reasoning
        } else if self.complexity >= COMPLEX_AT {
            Tier::Complex
        } else if self.complexity >= MEDIUM_AT {
            Tier::Medium
        } else {
            Tier::Simple
        }
    }

    /// Maps the points to the tier's quarter of `[0, 1]`.
    fn score(&self, tier: Tier) -> f32 {
        let (base, x, lo, hi) = match tier {
            Tier::Simple => (0.0, self.complexity, -4.0, MEDIUM_AT),
            Tier::Medium => (0.25, self.complexity, MEDIUM_AT, COMPLEX_AT),
            Tier::Complex => (0.5, self.complexity, COMPLEX_AT, COMPLEX_AT + 8.0),
            Tier::Reasoning => (0.75, self.reasoning, REASONING_AT, REASONING_AT + 12.0),
        };
        let frac = ((x - lo) / (hi - lo)).clamp(0.0, 0.999);
        base + 0.25 * frac
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    /// The byte scan without its runs: every byte through [`Features::scan_byte`], the
    /// reference the faster scan must count exactly like.
    fn scan_bytes_one_by_one(f: &mut Features, b: &[u8]) {
        let mut at = ByteScan::default();
        for i in 0..b.len() {
            f.scan_byte(&mut at, b, i);
        }
    }

    #[test]
    fn byte_scan_counts_as_one_byte_at_a_time() {
        let corpus = include_str!("../../tests/complexity/prompts.jsonl");
        let mut texts: Vec<String> = corpus
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| v["prompt"].as_str().map(str::to_string))
            .collect();
        assert!(texts.len() > 400, "{}", texts.len());
        texts.extend(
            [
                "",
                "x",
                "word",
                "  leading spaces\n- item one\n* item two\n\u{2022} bullet\n12. twelve\n3) three",
                "say \"thank you, friend\" and \"merci\" now",
                "an unclosed \"quote that runs to the end, with commas, and words",
                "3 x 4 = 12, 7*8=56, 2 ^ 10, 10/5 and 15% of 200 or 2 +  2",
                "fn main() { let v = vec![1, 2]; if a < b && c > d { return $x_y | z; } }",
                "tab\tform\x0cfeed\rcarriage\nnewline\u{00e9}t\u{00e9} \u{1f600}emoji\u{1f600}",
                "xxx xx x-ray max(x) 0x1F",
            ]
            .map(str::to_string),
        );
        for text in &texts {
            let mut fast = Features::default();
            fast.scan_bytes(text.as_bytes());
            let mut reference = Features::default();
            scan_bytes_one_by_one(&mut reference, text.as_bytes());
            assert_eq!(fast, reference, "{text:?}");
        }
    }

    #[test]
    fn tier_names_round_trip() {
        for t in Tier::ALL {
            assert_eq!(Tier::parse(t.as_str()), Some(t));
            assert_eq!(Tier::parse(&t.as_str().to_ascii_uppercase()), Some(t));
        }
        assert_eq!(Tier::parse("Reasoning"), Some(Tier::Reasoning));
        assert_eq!(Tier::parse("hard"), None);
        assert_eq!(Tier::parse(""), None);
        assert!(Tier::Simple < Tier::Medium && Tier::Complex < Tier::Reasoning);
    }

    #[test]
    fn clear_cases_per_tier() {
        let cases: [(Tier, &[&str]); 4] = [
            (
                Tier::Simple,
                &[
                    "what's 2+2",
                    "Hello, world!",
                    "say hi",
                    "Respond quickly with a short acknowledgement.",
                    "What is the capital of France?",
                    "thanks!",
                    "Who wrote Hamlet?",
                    "How many days are in a week?",
                    "Translate \"good morning\" into Spanish.",
                    "What does NASA stand for?",
                    "Summarize what Kubernetes is in one sentence.",
                    "Give me a synonym for \"fast\".",
                ],
            ),
            (
                Tier::Medium,
                &[
                    "Draft an onboarding email for new customers.",
                    "Explain decorators",
                    "Write a story",
                    "Write a Python function that merges two sorted lists.",
                    "Explain the difference between HTTP and HTTPS.",
                    "Write a polite reply to a customer asking for an invoice copy.",
                    "What are the pros and cons of electric cars?",
                    "Summarize the plot of Hamlet in a paragraph.",
                    "Write a SQL query that lists customers with no orders.",
                    "Give me 5 ideas for a company newsletter.",
                    "Explain how DNS resolution works.",
                    "Write a cover letter for a marketing internship.",
                ],
            ),
            (
                Tier::Complex,
                &[
                    "Design a scalable architecture for a ride-sharing backend, covering matching, pricing, payments, notifications and failover, and explain the main risks.",
                    "Refactor this module to use dependency injection and add tests:\n```python\nimport db\ndef load(id):\n    row = db.get(id)\n    return {'id': row[0], 'name': row[1]}\n```",
                    "Write a detailed migration plan from MySQL to PostgreSQL for a production system with 2 TB of data, including replication, cutover, rollback and verification.",
                    "Implement a REST API in Go with authentication, pagination, rate limiting and integration tests.",
                    "Write a comprehensive security policy for a fintech startup covering access control, encryption, incident response and vendor management.",
                    "Compare three message brokers for our event pipeline with respect to ordering, throughput, operational cost and team skills, and recommend one.",
                    "Write a 1500-word blog post about zero-downtime deployments with sections on blue-green, canary releases, database migrations and rollbacks.",
                    "Build a CLI tool in Rust that syncs a local folder to S3 with retries, concurrency limits, checksums and a dry-run mode. Include tests and explain the design.",
                    "Analyze our funnel data and diagnose why conversion dropped, then propose three experiments with metrics, sample sizes and risks.",
                    "Create a go-to-market plan for a new analytics product including pricing tiers, channels, launch timeline and KPIs.",
                    "Debug this code that deadlocks under load and rewrite it safely:\n```rust\nlet a = m1.lock();\nlet b = m2.lock();\n```\nIt runs on many threads in production.",
                    "Design the database schema for a multi-tenant SaaS with billing, usage metering, invoices and audit logs, and explain the indexing strategy.",
                ],
            ),
            (
                Tier::Reasoning,
                &[
                    "Prove that the square root of 3 is irrational.",
                    "Prove by induction that 1 + 2 + ... + n = n(n+1)/2.",
                    "Think step by step: a train leaves at 3pm going 60 km/h and another at 4pm going 90 km/h on the same track. When does the second catch up?",
                    "Design an algorithm to find the longest palindromic substring and analyze its time complexity.",
                    "Show that there is no largest prime number.",
                    "Derive the formula for the sum of a geometric series and prove that it converges when |r| < 1.",
                    "Knights always tell the truth and knaves always lie. A says 'we are both knaves'. What are A and B?",
                    "What is the expected number of draws to get a red card from a shuffled deck? Derive it.",
                    "Solve the recurrence T(n) = 2T(n/2) + n and prove the bound with the master theorem.",
                    "Find all pairs of integers (x, y) with x^2 + y^2 = 25.",
                    "Demuestra que hay infinitos números primos.",
                    "Given a graph, design a dynamic programming algorithm for the longest path in a DAG and prove its correctness.",
                ],
            ),
        ];
        for (want, prompts) in cases {
            for p in prompts {
                let got = classify(p, 1, false);
                assert_eq!(got.tier, want, "{p:?}: {got:?}");
            }
        }
    }

    #[test]
    fn score_lies_in_its_tiers_quarter() {
        for p in [
            "hi",
            "Explain decorators",
            "Design a scalable architecture for a ride-sharing backend, covering matching, pricing, payments, notifications and failover, and explain the main risks.",
            "Prove that the square root of 3 is irrational.",
        ] {
            let c = classify(p, 1, false);
            let lo = 0.25 * Tier::ALL.iter().position(|t| *t == c.tier).unwrap() as f32;
            assert!(c.score >= lo && c.score < lo + 0.25, "{p:?}: {c:?}");
        }
    }

    #[test]
    fn turns_and_tools_never_lower_the_tier() {
        for p in [
            "hi",
            "Draft an onboarding email for new customers.",
            "Find the CRM record for sara@acme.dev and suggest next steps.",
        ] {
            let alone = classify(p, 1, false);
            let agent = classify(p, 12, true);
            assert!(agent.tier >= alone.tier, "{p:?}");
            assert!(agent.signals.contains(&"tools") && agent.signals.contains(&"multi_turn"));
        }
        let long = "Draft an onboarding email for new customers.";
        assert_eq!(classify(long, 12, true).tier, Tier::Complex);
    }

    #[test]
    fn signals_name_what_fired() {
        let c = classify(
            "Refactor this:\n```python\ndef f(x):\n    return {'a': x[0]}\n```",
            1,
            false,
        );
        assert!(c.signals.contains(&"code_block"), "{c:?}");
        assert!(c.signals.contains(&"large_task"), "{c:?}");
        let c = classify("Prove that 2^n > n for n >= 1.", 1, false);
        assert!(c.signals.contains(&"proof_vocabulary") && c.signals.contains(&"math"));
        assert_eq!(
            classify("hello", 1, false).signals,
            ["short_prompt", "greeting"]
        );
    }

    #[test]
    fn task_detection() {
        let cases: [(&str, Option<&str>); 20] = [
            (
                "Write a Python function that reverses a string.",
                Some("coding"),
            ),
            (
                "Fix this bug:\n```js\nconst x = y.map(;\n```",
                Some("coding"),
            ),
            ("Write a SQL query for the top 10 products.", Some("coding")),
            ("Prove that there are infinitely many primes.", Some("math")),
            ("What's 15% of 80?", Some("math")),
            (
                "Calculate the monthly payment on a $10,000 loan.",
                Some("math"),
            ),
            (
                "Summarize this article in three bullet points.",
                Some("summarization"),
            ),
            (
                "Give me a TL;DR of the meeting notes.",
                Some("summarization"),
            ),
            ("Translate \"thank you\" into Spanish.", Some("translation")),
            (
                "Übersetze bitte ins Englische: \"Guten Tag\"",
                Some("translation"),
            ),
            (
                "Extract all email addresses from this text.",
                Some("extraction"),
            ),
            (
                "Parse this resume into JSON with name and email fields.",
                Some("extraction"),
            ),
            (
                "Draft an onboarding email for new customers.",
                Some("writing"),
            ),
            ("Write a poem about the sea.", Some("writing")),
            (
                "Compare PostgreSQL and MySQL for a small app.",
                Some("analysis"),
            ),
            (
                "Analyze these sales figures and identify trends.",
                Some("analysis"),
            ),
            ("Hello, world!", Some("chat")),
            ("What is the capital of Peru?", Some("chat")),
            ("", None),
            ("   \n\t ", None),
        ];
        for (text, want) in cases {
            assert_eq!(detect_task(text), want, "{text:?}");
            assert_eq!(classify(text, 1, false).task, want, "{text:?}");
        }
    }

    #[test]
    fn empty_and_whitespace_are_simple() {
        for text in ["", " ", "\n\n\t", "\u{0}", "?"] {
            let c = classify(text, 0, false);
            assert_eq!(c.tier, Tier::Simple, "{text:?}");
            assert!(c.score.is_finite());
        }
    }

    #[test]
    fn window_cuts_at_char_boundaries() {
        // 3- and 4-byte characters straddling both cut points.
        for ch in ['€', '😀', 'é'] {
            for pad in 0..4 {
                let text = format!("{}{}", "a".repeat(pad), ch.to_string().repeat(30_000));
                let (head, tail) = window(&text);
                assert!(head.len() <= HEAD_BYTES && head.len() > HEAD_BYTES - 4);
                assert!(tail.len() <= TAIL_BYTES && tail.len() > TAIL_BYTES - 4);
                assert!(text.starts_with(head) && text.ends_with(tail));
                let _ = classify(&text, 3, true);
            }
        }
        let short = "é".repeat(100);
        assert_eq!(window(&short), (short.as_str(), ""));
    }

    #[test]
    fn huge_prompts_are_bounded_and_long() {
        let mb = "lorem ipsum dolor sit amet, ".repeat(40_000); // ≈ 1.1 MB
        let c = classify(&mb, 1, false);
        assert!(c.tier >= Tier::Complex, "{c:?}");
        assert!(c.signals.contains(&"truncated_scan") && c.signals.contains(&"long_prompt"));
        // The proof request at the end (the newest message) is still seen.
        let ask = format!("{mb}\nNow prove that the square root of 2 is irrational.");
        assert_eq!(classify(&ask, 2, false).tier, Tier::Reasoning);
        let ten_mb = "x".repeat(10 * 1024 * 1024);
        assert!(classify(&ten_mb, 1, false).tier >= Tier::Complex);
    }

    #[test]
    fn odd_bytes_and_symbols_do_not_panic() {
        for text in [
            "```",
            "``",
            "1.",
            "- ",
            "•",
            "\"",
            "\"\"",
            "2+",
            "+2",
            "^",
            "O(",
            "ω(",
            "\u{FEFF}hi",
            "\u{10FFFF}\u{10FFFF}",
            "日本語のテキスト？",
        ] {
            let _ = classify(text, usize::MAX, true);
            let _ = detect_task(text);
        }
    }

    #[test]
    fn keyword_automaton_is_small() {
        let ac = automaton().expect("the fixed keyword table builds");
        println!(
            "keyword automaton: {} patterns, {} bytes",
            ac.patterns_len(),
            ac.memory_usage()
        );
        assert!(
            ac.memory_usage() < 256 * 1024,
            "{} bytes",
            ac.memory_usage()
        );
    }

    #[test]
    fn deterministic() {
        let p = "Design a REST API for a multi-tenant app, with pagination, auth and rate limits.";
        assert_eq!(classify(p, 2, false), classify(p, 2, false));
    }
}
