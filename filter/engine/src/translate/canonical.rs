//! The gateway's neutral form of a conversation and of a reply.
//!
//! Every client format is read into [`Conversation`] and every provider format is written from
//! it; provider replies are read into [`Reply`] (whole) or [`Event`]s (streamed) and written in
//! the client's format. With three client formats and three provider wire formats this keeps
//! the code at one reader and one writer per format instead of one module per pair.

use serde_json::Value;

use crate::usage::Usage;

/// A chat request, independent of wire format.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Conversation {
    /// System and developer instructions, in order.
    pub system: Vec<String>,
    pub messages: Vec<Message>,
    pub tools: Vec<Tool>,
    pub tool_choice: Option<ToolChoice>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    /// Output token limit (`max_tokens`, `max_completion_tokens`, `max_output_tokens`).
    pub max_tokens: Option<u64>,
    pub stop: Vec<String>,
    pub format: Option<OutputFormat>,
    pub stream: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    User,
    Assistant,
}

/// One turn. Tool results travel in user turns (Anthropic's and Gemini's model); writers for
/// OpenAI split them into `tool` messages.
#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    pub role: Role,
    pub parts: Vec<Part>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Part {
    Text(String),
    Image(Image),
    ToolCall(ToolCall),
    ToolResult {
        call_id: String,
        /// The result as text (JSON results stay JSON text).
        content: String,
        is_error: bool,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Image {
    /// An `http(s)` URL the provider fetches itself.
    Url(String),
    /// Base64 image bytes (from a `data:` URL or an inline source).
    Inline { media_type: String, data: String },
}

impl Image {
    /// `data:<media type>;base64,<data>` URLs become [`Image::Inline`]; other URLs stay URLs.
    pub fn from_url(url: &str) -> Image {
        if let Some(rest) = url.strip_prefix("data:") {
            if let Some((meta, data)) = rest.split_once(',') {
                if let Some(media_type) = meta.strip_suffix(";base64") {
                    return Image::Inline {
                        media_type: media_type.to_string(),
                        data: data.to_string(),
                    };
                }
            }
        }
        Image::Url(url.to_string())
    }

    /// The image as a URL (`data:` URL for inline images).
    pub fn to_url(&self) -> String {
        match self {
            Image::Url(u) => u.clone(),
            Image::Inline { media_type, data } => format!("data:{media_type};base64,{data}"),
        }
    }
}

/// A function call the model made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// Arguments as JSON text, as OpenAI carries them.
    pub arguments: String,
}

/// A function tool the model may call.
#[derive(Clone, Debug, PartialEq)]
pub struct Tool {
    pub name: String,
    pub description: Option<String>,
    /// JSON Schema of the arguments.
    pub parameters: Value,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ToolChoice {
    Auto,
    None,
    /// The model must call some tool.
    Required,
    /// The model must call this tool.
    Function(String),
}

#[derive(Clone, Debug, PartialEq)]
pub enum OutputFormat {
    JsonObject,
    JsonSchema {
        name: String,
        schema: Value,
        strict: bool,
    },
}

/// Why the model stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    Stop,
    Length,
    ToolCalls,
    ContentFilter,
}

/// A whole (non-streamed) reply.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Reply {
    pub text: String,
    pub tool_calls: Vec<ToolCall>,
    pub finish: Option<Finish>,
    pub usage: Usage,
}

/// One step of a streamed reply.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    Text(String),
    /// A tool call begins; `index` counts tool calls from 0 in this reply.
    ToolCallStart {
        index: usize,
        id: String,
        name: String,
    },
    /// More argument JSON text for the tool call `index`.
    ToolCallArgs {
        index: usize,
        arguments: String,
    },
    Finish(Finish),
    /// Usage so far; later events replace earlier ones.
    Usage(Usage),
    /// The provider ended the stream normally.
    End,
}

impl Reply {
    /// The reply as the events a stream of it would carry.
    pub fn into_events(self) -> Vec<Event> {
        let mut events = Vec::new();
        if !self.text.is_empty() {
            events.push(Event::Text(self.text));
        }
        for (index, call) in self.tool_calls.into_iter().enumerate() {
            events.push(Event::ToolCallStart {
                index,
                id: call.id,
                name: call.name,
            });
            events.push(Event::ToolCallArgs {
                index,
                arguments: call.arguments,
            });
        }
        events.push(Event::Finish(self.finish.unwrap_or(Finish::Stop)));
        events.push(Event::Usage(self.usage));
        events.push(Event::End);
        events
    }
}

/// Collects streamed events into a whole reply (the client asked for JSON, the provider
/// streamed anyway). Returns whether [`Event::End`] was seen.
#[derive(Debug, Default)]
pub struct ReplyBuilder {
    pub reply: Reply,
    pub ended: bool,
}

impl ReplyBuilder {
    pub fn push(&mut self, event: Event) {
        match event {
            Event::Text(t) => self.reply.text.push_str(&t),
            Event::ToolCallStart { id, name, .. } => self.reply.tool_calls.push(ToolCall {
                id,
                name,
                arguments: String::new(),
            }),
            Event::ToolCallArgs { index, arguments } => {
                if let Some(c) = self.reply.tool_calls.get_mut(index) {
                    c.arguments.push_str(&arguments);
                }
            }
            Event::Finish(f) => self.reply.finish = Some(f),
            Event::Usage(u) => self.reply.usage = u,
            Event::End => self.ended = true,
        }
    }
}
