//! Placeholder until the classifier lands (being written now): everything is MEDIUM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tier {
    Simple,
    Medium,
    Complex,
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
    pub fn parse(s: &str) -> Option<Tier> {
        Tier::ALL
            .into_iter()
            .find(|t| t.as_str().eq_ignore_ascii_case(s))
    }
}
pub struct Classification {
    pub tier: Tier,
    pub score: f32,
    pub task: Option<&'static str>,
    pub signals: Vec<&'static str>,
}
pub fn classify(_text: &str, _turns: usize, _has_tools: bool) -> Classification {
    Classification {
        tier: Tier::Medium,
        score: 0.0,
        task: None,
        signals: Vec::new(),
    }
}
pub fn detect_task(_text: &str) -> Option<&'static str> {
    None
}
