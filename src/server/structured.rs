//! Structured output and tool calls on the server's side: what a request's `grammar`,
//! `response_format` or `tools` constrain the output to (a [`GrammarSpec`] the routes
//! compile before submitting), how tools are described to a model whose chat template
//! does not take them, and how a candidate's output is read back as text or tool calls,
//! whole or token by token.
//!
//! Tool calls are constrained by a Lark grammar (llguidance's dialect) with two
//! branches: the calls, one JSON value (`{"name": <const>, "arguments": <that tool's
//! parameters schema>}` for each tool, or an array of them when parallel calls are
//! allowed), and, for `tool_choice: auto` only, plain text that starts with neither `{`,
//! `[` nor whitespace. The first character of the output therefore says which branch
//! the model took, so a stream can send text as `content` from the first token on and
//! never puts call JSON there; text stays plain text (no JSON string a small model must
//! escape); and every call the model finishes parses and follows its tool's schema.

use rand::Rng;
use serde_json::{json, Map, Value};

use super::error::ApiError;
use super::types::structured::*;
use crate::grammar::GrammarSpec;

/// A JSON Schema given as an object (or a boolean) or as a string holding one.
fn schema_value(v: &Value, param: &'static str) -> Result<Value, ApiError> {
    let schema = match v {
        Value::String(s) => serde_json::from_str::<Value>(s).map_err(|e| {
            ApiError::param(param, format!("the grammar's JSON Schema is not JSON: {e}"))
        })?,
        v => v.clone(),
    };
    match schema {
        Value::Object(_) => Ok(schema),
        Value::Bool(true) => Ok(json!({})),
        _ => Err(ApiError::param(
            param,
            "the grammar's JSON Schema must be an object",
        )),
    }
}

/// TGI's `parameters.grammar`.
pub fn tgi_grammar(g: &GrammarParam) -> Result<GrammarSpec, ApiError> {
    match g {
        GrammarParam::Json(v) => Ok(GrammarSpec::JsonSchema(schema_value(v, "grammar")?)),
        GrammarParam::Regex(r) => Ok(GrammarSpec::Regex(r.clone())),
    }
}

/// A `response_format` (OpenAI's or TGI's chat form); `text` constrains nothing.
pub fn response_format(f: &ResponseFormat) -> Result<Option<GrammarSpec>, ApiError> {
    let any_object = || json!({"type": "object"});
    Ok(match f {
        ResponseFormat::Text => None,
        ResponseFormat::JsonObject { value: None } => Some(GrammarSpec::JsonSchema(any_object())),
        ResponseFormat::JsonObject { value: Some(v) } => {
            Some(GrammarSpec::JsonSchema(schema_value(v, "response_format")?))
        }
        ResponseFormat::JsonSchema { json_schema } => {
            if json_schema.name.trim().is_empty() {
                return Err(ApiError::param(
                    "response_format",
                    "`response_format.json_schema.name` must not be empty",
                ));
            }
            let schema = match &json_schema.schema {
                None | Some(Value::Null) => any_object(),
                Some(v) => schema_value(v, "response_format")?,
            };
            Some(GrammarSpec::JsonSchema(schema))
        }
        ResponseFormat::Regex { value } => Some(GrammarSpec::Regex(value.clone())),
    })
}

/// The tools a request offers and how the answer may use them.
#[derive(Debug, Clone)]
pub struct ToolPlan {
    /// All the request's tools (the template or the system message describes them).
    pub tools: Vec<Tool>,
    /// What the output is constrained to.
    pub grammar: GrammarSpec,
    /// `auto`: the model may answer in text instead.
    pub text_allowed: bool,
    /// Several calls (a JSON array) rather than exactly one.
    pub parallel: bool,
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// The schema of one call of `tool`: its name and its arguments, in that order.
fn call_schema(tool: &FunctionDefinition) -> Value {
    let arguments = match &tool.parameters {
        Some(p) => p.clone(),
        None => json!({"type": "object", "properties": {}, "additionalProperties": false}),
    };
    json!({
        "type": "object",
        "properties": {"name": {"const": tool.name}, "arguments": arguments},
        "required": ["name", "arguments"],
        "additionalProperties": false,
    })
}

/// Checks the tools and the choice and builds the grammar; `None` when the answer is
/// not constrained by tools (none offered, or `tool_choice: none`).
pub fn plan_tools(
    tools: Option<&[Tool]>,
    choice: Option<&ToolChoice>,
    parallel: Option<bool>,
) -> Result<Option<ToolPlan>, ApiError> {
    let tools = tools.unwrap_or_default();
    let mut seen = std::collections::HashSet::new();
    for t in tools {
        if t.kind != "function" {
            return Err(ApiError::param(
                "tools",
                format!(
                    "tools of type {:?} are not supported: expected \"function\"",
                    t.kind
                ),
            ));
        }
        let name = &t.function.name;
        if !valid_name(name) {
            return Err(ApiError::param(
                "tools",
                format!(
                    "invalid tool name {name:?}: 1 to 64 letters, digits, underscores or dashes"
                ),
            ));
        }
        if !seen.insert(name.as_str()) {
            return Err(ApiError::param(
                "tools",
                format!("two tools are named {name:?}"),
            ));
        }
        match &t.function.parameters {
            None | Some(Value::Object(_)) => {}
            Some(_) => {
                return Err(ApiError::param(
                    "tools",
                    format!("the parameters of tool {name:?} must be a JSON Schema object"),
                ))
            }
        }
    }
    let choice = choice.cloned().unwrap_or(ToolChoice::Auto);
    if tools.is_empty() {
        return match choice {
            ToolChoice::None | ToolChoice::Auto => Ok(None),
            ToolChoice::Required | ToolChoice::Function(_) => Err(ApiError::param(
                "tool_choice",
                "`tool_choice` needs `tools`",
            )),
        };
    }
    let (chosen, text_allowed): (Vec<&Tool>, bool) = match &choice {
        ToolChoice::None => return Ok(None),
        ToolChoice::Auto => (tools.iter().collect(), true),
        ToolChoice::Required => (tools.iter().collect(), false),
        ToolChoice::Function(name) => match tools.iter().find(|t| &t.function.name == name) {
            Some(t) => (vec![t], false),
            None => {
                return Err(ApiError::param(
                    "tool_choice",
                    format!("`tool_choice` names {name:?}, which is not one of the tools"),
                ))
            }
        },
    };
    let parallel = parallel.unwrap_or(true);
    let calls: Vec<Value> = chosen.iter().map(|t| call_schema(&t.function)).collect();
    let one = if calls.len() == 1 {
        calls.into_iter().next().unwrap_or_default()
    } else {
        json!({"anyOf": calls})
    };
    let mut schema = if parallel {
        json!({"type": "array", "items": one, "minItems": 1})
    } else {
        one
    };
    if let Value::Object(m) = &mut schema {
        m.insert(
            "x-guidance".into(),
            json!({"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "}),
        );
    }
    let grammar = if text_allowed {
        // Text starts with neither `{`, `[` nor whitespace: its first character tells
        // it from a call.
        GrammarSpec::Lark(format!(
            "start: calls | text\ncalls: %json {schema}\ntext: TEXT\nTEXT: /[^\\[{{\\s][\\s\\S]*/\n"
        ))
    } else {
        GrammarSpec::JsonSchema(schema)
    };
    Ok(Some(ToolPlan {
        tools: tools.to_vec(),
        grammar,
        text_allowed,
        parallel,
    }))
}

/// What a system message says about the tools when the chat template does not take
/// them: `lead` (TGI's `tool_prompt`, or a default), the functions as JSON, and the
/// answer's format.
pub fn tools_system_text(plan: &ToolPlan, lead: Option<&str>) -> String {
    let functions: Vec<&FunctionDefinition> = plan.tools.iter().map(|t| &t.function).collect();
    let list = serde_json::to_string(&functions).unwrap_or_default();
    let lead = lead
        .filter(|l| !l.trim().is_empty())
        .unwrap_or("You can call the following functions.");
    let format = if plan.parallel {
        "To call functions, answer with only a JSON array of calls, each \
         {\"name\": <function name>, \"arguments\": <its arguments as a JSON object>}."
    } else {
        "To call a function, answer with only a JSON object \
         {\"name\": <function name>, \"arguments\": <its arguments as a JSON object>}."
    };
    let text = if plan.text_allowed {
        " If no function fits, answer in plain text."
    } else {
        ""
    };
    format!("{lead}\n{list}\n{format}{text}")
}

/// A tool call as the model writes it (for earlier calls in the conversation, when the
/// chat template does not take `tool_calls`).
pub fn call_text(calls: &[ToolCallIn]) -> String {
    let one = |c: &ToolCallIn| {
        let mut m = Map::new();
        m.insert("name".into(), Value::String(c.function.name.clone()));
        m.insert("arguments".into(), arguments_value(&c.function.arguments));
        Value::Object(m)
    };
    let v = match calls {
        [c] => one(c),
        cs => Value::Array(cs.iter().map(one).collect()),
    };
    python_json(&v)
}

/// A call's arguments as an object: OpenAI sends them as a JSON string.
pub fn arguments_value(v: &Value) -> Value {
    match v {
        Value::String(s) => serde_json::from_str(s).unwrap_or_else(|_| v.clone()),
        Value::Null => json!({}),
        v => v.clone(),
    }
}

/// JSON with `", "` and `": "` separators, as the grammar makes the model write it.
fn python_json(v: &Value) -> String {
    let mut out = String::new();
    write_json(v, &mut out);
    out
}

fn write_json(v: &Value, out: &mut String) {
    match v {
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_json(x, out);
            }
            out.push(']');
        }
        Value::Object(m) => {
            out.push('{');
            for (i, (k, x)) in m.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push_str(": ");
                write_json(x, out);
            }
            out.push('}');
        }
        v => out.push_str(&v.to_string()),
    }
}

/// A fresh call id (`call_` and 24 hex digits).
pub fn call_id() -> String {
    let mut rng = rand::rng();
    let (a, b): (u64, u32) = (rng.random(), rng.random());
    format!("call_{a:016x}{b:08x}")
}

/// What a candidate's output becomes, piece by piece.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolEvent {
    /// Text for `content`.
    Text(String),
    /// A call's start: its index among the candidate's calls, id and name.
    CallStart {
        index: usize,
        id: String,
        name: String,
    },
    /// A fragment of a call's arguments (the fragments join into the arguments' text).
    Arguments { index: usize, fragment: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Undecided,
    Text,
    Calls,
}

/// Where the scanner is in the calls' JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scan {
    /// Before the outer `[` or the single call's `{`.
    Start,
    /// Inside the array: before a call's `{`, a `,` or the closing `]`.
    InArray,
    /// Inside a call: before a key, a `,` or the closing `}`.
    InCall,
    /// After a key, before its `:`.
    Colon(Key),
    /// In a value of `Key`, which began at `start`.
    Value(Key, ValueScan),
    /// After the calls.
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    Name,
    Arguments,
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ValueScan {
    start: usize,
    depth: usize,
    in_string: bool,
    escaped: bool,
    begun: bool,
}

#[derive(Debug, Clone, Default)]
struct Call {
    id: String,
    name: Option<String>,
    /// Byte range of the arguments in the buffer, as far as scanned.
    args: Option<(usize, usize)>,
    /// Bytes of arguments already reported.
    reported: usize,
    announced: bool,
}

/// Reads one candidate's output as text or tool calls. With `tools_active` false
/// everything is text.
#[derive(Debug, Clone)]
pub struct ToolCallParser {
    tools_active: bool,
    mode: Mode,
    buf: String,
    pos: usize,
    scan: Scan,
    array: bool,
    calls: Vec<Call>,
    text: String,
}

impl ToolCallParser {
    pub fn new(tools_active: bool) -> Self {
        Self {
            tools_active,
            mode: Mode::Undecided,
            buf: String::new(),
            pos: 0,
            scan: Scan::Start,
            array: false,
            calls: Vec::new(),
            text: String::new(),
        }
    }

    /// Whether the output is tool calls (decided by its first character).
    pub fn is_calls(&self) -> bool {
        self.mode == Mode::Calls
    }

    /// Feeds the next piece of output; returns what it adds.
    pub fn push(&mut self, piece: &str) -> Vec<ToolEvent> {
        let mut out = Vec::new();
        if piece.is_empty() {
            return out;
        }
        if self.mode == Mode::Undecided {
            let first = piece.chars().next();
            self.mode = match first {
                Some('{' | '[') if self.tools_active => Mode::Calls,
                _ => Mode::Text,
            };
        }
        if self.mode == Mode::Text {
            self.text.push_str(piece);
            out.push(ToolEvent::Text(piece.to_string()));
            return out;
        }
        self.buf.push_str(piece);
        self.scan_calls(&mut out);
        out
    }

    /// The output as an answer: the text (`None` for calls) and the calls.
    pub fn finish(&self) -> (Option<String>, Vec<ToolCallOut>) {
        if self.mode != Mode::Calls {
            return (Some(self.text.clone()), Vec::new());
        }
        let calls = self
            .calls
            .iter()
            .map(|c| ToolCallOut {
                id: c.id.clone(),
                kind: "function",
                function: FunctionCallOut {
                    name: c.name.clone().unwrap_or_default(),
                    arguments: c
                        .args
                        .and_then(|(s, e)| self.buf.get(s..e))
                        .unwrap_or_default()
                        .to_string(),
                },
            })
            .collect();
        (None, calls)
    }

    fn scan_calls(&mut self, out: &mut Vec<ToolEvent>) {
        while self.pos < self.buf.len() {
            let Some(c) = self.buf[self.pos..].chars().next() else {
                break;
            };
            let at = self.pos;
            let len = c.len_utf8();
            match self.scan {
                Scan::Start => {
                    match c {
                        '[' => {
                            self.array = true;
                            self.scan = Scan::InArray;
                        }
                        '{' => self.open_call(),
                        _ => {}
                    }
                    self.pos += len;
                }
                Scan::InArray => {
                    match c {
                        '{' => self.open_call(),
                        ']' => self.scan = Scan::Done,
                        _ => {}
                    }
                    self.pos += len;
                }
                Scan::InCall => match c {
                    '"' => {
                        // A key: wait until it is complete.
                        let Some(end) = string_end(&self.buf, at) else {
                            break;
                        };
                        let key: String =
                            serde_json::from_str(&self.buf[at..end]).unwrap_or_default();
                        self.scan = Scan::Colon(match key.as_str() {
                            "name" => Key::Name,
                            "arguments" | "parameters" => Key::Arguments,
                            _ => Key::Other,
                        });
                        self.pos = end;
                    }
                    '}' => {
                        self.close_call(out);
                        self.scan = if self.array {
                            Scan::InArray
                        } else {
                            Scan::Done
                        };
                        self.pos += len;
                    }
                    _ => self.pos += len,
                },
                Scan::Colon(key) => {
                    self.pos += len;
                    if c == ':' {
                        self.scan = Scan::Value(
                            key,
                            ValueScan {
                                start: self.pos,
                                depth: 0,
                                in_string: false,
                                escaped: false,
                                begun: false,
                            },
                        );
                    }
                }
                Scan::Value(key, mut v) => {
                    let done = step_value(&mut v, c, at);
                    match done {
                        ValueStep::More => {
                            self.pos += len;
                            self.scan = Scan::Value(key, v);
                            if key == Key::Arguments {
                                self.set_args(v.start, self.pos);
                            }
                        }
                        ValueStep::EndsAfter => {
                            self.pos += len;
                            self.value_done(key, v.start, self.pos);
                        }
                        ValueStep::EndedBefore => self.value_done(key, v.start, at),
                    }
                }
                Scan::Done => self.pos += len,
            }
        }
        self.report(out);
    }

    fn open_call(&mut self) {
        self.calls.push(Call {
            id: call_id(),
            ..Call::default()
        });
        self.scan = Scan::InCall;
    }

    fn close_call(&mut self, out: &mut Vec<ToolEvent>) {
        self.report(out);
    }

    fn set_args(&mut self, start: usize, end: usize) {
        if let Some(call) = self.calls.last_mut() {
            // Leading whitespace is not part of the arguments.
            let s = start + (self.buf[start..end].len() - self.buf[start..end].trim_start().len());
            call.args = Some((s, end.max(s)));
        }
    }

    fn value_done(&mut self, key: Key, start: usize, end: usize) {
        match key {
            Key::Name => {
                let name: Option<String> = serde_json::from_str(self.buf[start..end].trim()).ok();
                if let Some(call) = self.calls.last_mut() {
                    call.name = name;
                }
            }
            Key::Arguments => self.set_args(start, end),
            Key::Other => {}
        }
        self.scan = Scan::InCall;
    }

    /// Announces calls whose name is known and reports new argument bytes.
    fn report(&mut self, out: &mut Vec<ToolEvent>) {
        for (index, call) in self.calls.iter_mut().enumerate() {
            let Some(name) = &call.name else { continue };
            if !call.announced {
                call.announced = true;
                out.push(ToolEvent::CallStart {
                    index,
                    id: call.id.clone(),
                    name: name.clone(),
                });
            }
            if let Some((s, e)) = call.args {
                let from = s + call.reported;
                if e > from {
                    if let Some(fragment) = self.buf.get(from..e) {
                        out.push(ToolEvent::Arguments {
                            index,
                            fragment: fragment.to_string(),
                        });
                        call.reported = e - s;
                    }
                }
            }
        }
    }
}

enum ValueStep {
    /// The value goes on.
    More,
    /// `c` was the value's last character.
    EndsAfter,
    /// The value ended before `c` (a number or literal followed by `,` or `}`).
    EndedBefore,
}

fn step_value(v: &mut ValueScan, c: char, _at: usize) -> ValueStep {
    if !v.begun {
        if c.is_whitespace() {
            return ValueStep::More;
        }
        v.begun = true;
        return match c {
            '{' | '[' => {
                v.depth = 1;
                ValueStep::More
            }
            '"' => {
                v.in_string = true;
                ValueStep::More
            }
            _ => ValueStep::More,
        };
    }
    if v.in_string {
        if v.escaped {
            v.escaped = false;
        } else if c == '\\' {
            v.escaped = true;
        } else if c == '"' {
            v.in_string = false;
            if v.depth == 0 {
                return ValueStep::EndsAfter;
            }
        }
        return ValueStep::More;
    }
    if v.depth == 0 {
        // A number or a literal: it ends at a delimiter.
        return if matches!(c, ',' | '}' | ']') || c.is_whitespace() {
            ValueStep::EndedBefore
        } else {
            ValueStep::More
        };
    }
    match c {
        '"' => v.in_string = true,
        '{' | '[' => v.depth += 1,
        '}' | ']' => {
            v.depth -= 1;
            if v.depth == 0 {
                return ValueStep::EndsAfter;
            }
        }
        _ => {}
    }
    ValueStep::More
}

/// The end (exclusive) of the JSON string starting at `start`, once it is complete.
fn string_end(buf: &str, start: usize) -> Option<usize> {
    let mut escaped = false;
    for (i, c) in buf[start + 1..].char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == '"' {
            return Some(start + 1 + i + 1);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use crate::grammar::{GrammarCompiler, GrammarLimits, TokenMask};
    use crate::tokenizer::Tokenizer;

    fn tool(name: &str, parameters: Value) -> Tool {
        serde_json::from_value(json!({"type": "function", "function": {
            "name": name, "description": "d", "parameters": parameters}}))
        .unwrap()
    }

    fn weather() -> Vec<Tool> {
        vec![
            tool(
                "get_weather",
                json!({"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"], "additionalProperties": false}),
            ),
            tool(
                "add",
                json!({"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                       "required": ["a", "b"], "additionalProperties": false}),
            ),
        ]
    }

    /// Feeds `text` in pieces of `k` characters; returns the events joined per kind.
    fn parse(text: &str, k: usize, active: bool) -> (Vec<ToolEvent>, ToolCallParser) {
        let mut p = ToolCallParser::new(active);
        let chars: Vec<char> = text.chars().collect();
        let mut events = Vec::new();
        for chunk in chars.chunks(k) {
            events.extend(p.push(&chunk.iter().collect::<String>()));
        }
        (events, p)
    }

    #[test]
    fn calls_parse_whole_and_piece_by_piece() {
        let text = r#"[{"name": "get_weather", "arguments": {"city": "Paris {x}\"]"}}, {"name": "add", "arguments": {"a": 1, "b": 22}}]"#;
        for k in [1, 2, 3, 7, 1000] {
            let (events, p) = parse(text, k, true);
            assert!(p.is_calls());
            let (content, calls) = p.finish();
            assert_eq!(content, None);
            assert_eq!(calls.len(), 2, "{k}");
            assert_eq!(calls[0].function.name, "get_weather");
            assert_eq!(calls[0].function.arguments, r#"{"city": "Paris {x}\"]"}"#);
            assert_eq!(calls[1].function.name, "add");
            assert_eq!(calls[1].function.arguments, r#"{"a": 1, "b": 22}"#);
            assert!(calls[0].id.starts_with("call_") && calls[0].id != calls[1].id);
            // Streamed: a start per call (with its id) before its arguments, whose
            // fragments join into the whole arguments.
            for (i, call) in calls.iter().enumerate() {
                let start = events.iter().position(|e| {
                    matches!(e, ToolEvent::CallStart { index, id, name }
                        if *index == i && *id == call.id && *name == call.function.name)
                });
                let first_arg = events
                    .iter()
                    .position(|e| matches!(e, ToolEvent::Arguments { index, .. } if *index == i));
                assert!(start.is_some() && start < first_arg, "{k} {events:?}");
                let joined: String = events
                    .iter()
                    .filter_map(|e| match e {
                        ToolEvent::Arguments { index, fragment } if *index == i => {
                            Some(fragment.as_str())
                        }
                        _ => None,
                    })
                    .collect();
                assert_eq!(joined, call.function.arguments, "{k}");
            }
            assert!(!events.iter().any(|e| matches!(e, ToolEvent::Text(_))));
        }
        let (_, p) = parse(r#"{"name": "add", "arguments": {"a": 1, "b": 2}}"#, 2, true);
        let (_, calls) = p.finish();
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].function.arguments, r#"{"a": 1, "b": 2}"#);
    }

    #[test]
    fn text_is_text() {
        let (events, p) = parse("Hello {there}", 3, true);
        assert!(!p.is_calls());
        assert_eq!(p.finish(), (Some("Hello {there}".into()), vec![]));
        assert!(events.iter().all(|e| matches!(e, ToolEvent::Text(_))));
        let (_, p) = parse(r#"{"a": 1}"#, 3, false);
        assert_eq!(p.finish().0.as_deref(), Some(r#"{"a": 1}"#));
    }

    #[test]
    fn tool_plans() {
        let tools = weather();
        assert!(plan_tools(None, None, None).unwrap().is_none());
        assert!(plan_tools(Some(&tools), Some(&ToolChoice::None), None)
            .unwrap()
            .is_none());
        let p = plan_tools(Some(&tools), None, None).unwrap().unwrap();
        assert!(p.text_allowed && p.parallel);
        assert!(matches!(p.grammar, GrammarSpec::Lark(_)));
        let p = plan_tools(Some(&tools), Some(&ToolChoice::Required), Some(false))
            .unwrap()
            .unwrap();
        assert!(!p.text_allowed && !p.parallel);
        assert!(matches!(p.grammar, GrammarSpec::JsonSchema(_)));
        for (tools, choice) in [
            (vec![], Some(ToolChoice::Required)),
            (weather(), Some(ToolChoice::Function("nope".into()))),
            (vec![tool("", json!({}))], None),
            (vec![tool("a b", json!({}))], None),
            (vec![tool("f", json!(3))], None),
            (vec![tool("f", json!({})), tool("f", json!({}))], None),
        ] {
            let e = plan_tools(Some(&tools), choice.as_ref(), None).unwrap_err();
            assert_eq!(e.status.as_u16(), 422);
        }
    }

    /// Whether the grammar accepts `text` whole (byte-level vocabulary: id b = byte b).
    fn accepts(compiler: &GrammarCompiler, spec: &GrammarSpec, text: &str) -> bool {
        let g = compiler.compile_now(spec).unwrap();
        let mut c = g.start();
        let mut mask = TokenMask::default();
        for &b in text.as_bytes() {
            c.mask_into(&mut mask).unwrap();
            if !mask.allows(b as u32) || c.accept(b as u32).is_err() {
                return false;
            }
        }
        c.is_complete() || c.is_accepting()
    }

    #[test]
    fn tool_grammars_accept_calls_and_text_as_chosen() {
        let tok = Arc::new(Tokenizer::byte_level(300).unwrap());
        let compiler = GrammarCompiler::new(tok, 300, GrammarLimits::default()).unwrap();
        let tools = weather();
        let call = r#"{"name": "get_weather", "arguments": {"city": "Paris"}}"#;
        let calls = format!(r#"[{call}, {{"name": "add", "arguments": {{"a": 1, "b": 2}}}}]"#);
        let bad_args = r#"[{"name": "add", "arguments": {"a": "x", "b": 2}}]"#;
        let auto = plan_tools(Some(&tools), None, None).unwrap().unwrap();
        assert!(accepts(&compiler, &auto.grammar, &calls));
        assert!(accepts(&compiler, &auto.grammar, "The weather is fine."));
        assert!(!accepts(&compiler, &auto.grammar, " leading space"));
        assert!(!accepts(&compiler, &auto.grammar, bad_args));
        assert!(
            !accepts(&compiler, &auto.grammar, call),
            "parallel: an array"
        );
        let single = plan_tools(Some(&tools), Some(&ToolChoice::Required), Some(false))
            .unwrap()
            .unwrap();
        assert!(accepts(&compiler, &single.grammar, call));
        assert!(!accepts(&compiler, &single.grammar, &calls));
        assert!(!accepts(&compiler, &single.grammar, "text"));
        let named = plan_tools(
            Some(&tools),
            Some(&ToolChoice::Function("add".into())),
            None,
        )
        .unwrap()
        .unwrap();
        assert!(!accepts(&compiler, &named.grammar, &format!("[{call}]")));
        assert!(accepts(
            &compiler,
            &named.grammar,
            r#"[{"name": "add", "arguments": {"a": 1, "b": 2}}]"#
        ));
    }

    #[test]
    fn schemas_and_formats() {
        assert_eq!(
            tgi_grammar(&GrammarParam::Json(json!("{\"type\": \"integer\"}"))).unwrap(),
            GrammarSpec::JsonSchema(json!({"type": "integer"}))
        );
        assert!(tgi_grammar(&GrammarParam::Json(json!("{nope"))).is_err());
        assert!(tgi_grammar(&GrammarParam::Json(json!(5))).is_err());
        assert_eq!(response_format(&ResponseFormat::Text).unwrap(), None);
        assert_eq!(
            response_format(&ResponseFormat::JsonObject { value: None }).unwrap(),
            Some(GrammarSpec::JsonSchema(json!({"type": "object"})))
        );
        let calls: Vec<ToolCallIn> = serde_json::from_value(json!([
            {"id": "c1", "type": "function", "function": {"name": "add", "arguments": "{\"a\":1}"}}
        ]))
        .unwrap();
        assert_eq!(
            call_text(&calls),
            r#"{"name": "add", "arguments": {"a": 1}}"#
        );
    }
}
