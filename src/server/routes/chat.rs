//! OpenAI's `POST /v1/chat/completions`: the conversation rendered with the model's chat
//! template, one request with `n` candidates, answered as one `ChatCompletion` or as
//! `chat.completion.chunk` events.

use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::Stream;
use serde_json::json;

use super::openai::{self, logprob_content, model_name, usage, Plan, SseItem};
use super::respond::{sse, sse_json, timing_headers};
use crate::engine::{FinishReason, GeneratedToken, GenerationRequest, StoppingParams};
use crate::grammar::GrammarSpec;
use crate::server::error::ApiError;
use crate::server::json::Body;
use crate::server::state::{unix_now, AppState};
use crate::server::stream::{GenerationStream, Item};
use crate::server::structured::{self, ToolCallParser, ToolEvent};
use crate::server::types::openai::*;
use crate::server::validation::{self, DefaultMaxNew};
use crate::tokenizer::ChatMessage;

/// Most alternatives per token (`top_logprobs`).
const MAX_TOP_LOGPROBS: u32 = 20;

/// The conversation as the template sees it: roles checked, content parts joined;
/// earlier tool calls as the template's `tool_calls` when it takes them (arguments as
/// objects, as transformers gives them), else written into the turn as the JSON the
/// model answers calls with.
fn chat_messages(req: &ChatRequest, takes_tool_calls: bool) -> Result<Vec<ChatMessage>, ApiError> {
    if req.messages.is_empty() {
        return Err(ApiError::param("messages", "`messages` must not be empty"));
    }
    req.messages
        .iter()
        .map(|m| {
            let role = match m.role.as_str() {
                r @ ("system" | "user" | "assistant" | "tool") => r,
                "developer" => "system",
                other => {
                    return Err(ApiError::param(
                        "messages",
                        format!(
                            "unknown message role {other:?}: expected system, developer, user, \
                             assistant or tool"
                        ),
                    ))
                }
            };
            let mut content = match &m.content {
                Some(MessageContent::Text(s)) => s.clone(),
                Some(MessageContent::Parts(parts)) => {
                    let mut out = String::new();
                    for p in parts {
                        if p.kind != "text" {
                            return Err(ApiError::param(
                                "messages",
                                format!("content parts of type {:?} are not supported", p.kind),
                            ));
                        }
                        out.push_str(p.text.as_deref().unwrap_or(""));
                    }
                    out
                }
                None => String::new(),
            };
            let calls = m.tool_calls.as_deref().filter(|c| !c.is_empty());
            let mut tool_calls = None;
            if let Some(calls) = calls {
                if takes_tool_calls {
                    tool_calls = Some(
                        calls
                            .iter()
                            .map(|c| {
                                json!({
                                    "id": c.id,
                                    "type": "function",
                                    "function": {
                                        "name": c.function.name,
                                        "arguments": structured::arguments_value(&c.function.arguments),
                                    },
                                })
                            })
                            .collect(),
                    );
                } else {
                    if !content.is_empty() {
                        content.push('\n');
                    }
                    content.push_str(&structured::call_text(calls));
                }
            }
            Ok(ChatMessage {
                role: role.to_string(),
                content,
                tool_calls,
                tool_call_id: m.tool_call_id.clone(),
                name: m.name.clone(),
            })
        })
        .collect()
}

/// Adds the tools' description to the system message (the first, made if missing).
fn describe_tools(messages: &mut Vec<ChatMessage>, text: String) {
    match messages.first_mut() {
        Some(m) if m.role == "system" => {
            if !m.content.is_empty() {
                m.content.push_str("\n\n");
            }
            m.content.push_str(&text);
        }
        _ => messages.insert(
            0,
            ChatMessage {
                role: "system".into(),
                content: text,
                ..Default::default()
            },
        ),
    }
}

struct ChatPlan {
    request: GenerationRequest,
    logprobs: bool,
    include_usage: bool,
    model: String,
    compute_characters: usize,
    /// What the output is constrained to, and the field that asked.
    grammar: Option<(GrammarSpec, &'static str)>,
    /// The answers may be tool calls.
    tools: bool,
}

impl Plan for ChatPlan {
    fn requests(&self) -> Vec<GenerationRequest> {
        vec![self.request.clone()]
    }

    fn grammar(&self) -> Option<(GrammarSpec, &'static str)> {
        self.grammar.clone()
    }
}

fn plan_chat(st: &AppState, req: &ChatRequest, id: u64) -> Result<ChatPlan, ApiError> {
    let tool_plan = structured::plan_tools(
        req.tools.as_deref(),
        req.tool_choice.as_ref(),
        req.parallel_tool_calls,
    )?;
    let format = match &req.response_format {
        Some(f) => structured::response_format(f)?,
        None => None,
    };
    if format.is_some() && tool_plan.as_ref().is_some_and(|t| t.text_allowed) {
        return Err(ApiError::param(
            "response_format",
            "`response_format` cannot be combined with `tools` when `tool_choice` is auto",
        ));
    }
    let grammar = match (&tool_plan, format) {
        (Some(t), _) => Some((t.grammar.clone(), "tools")),
        (None, Some(f)) => Some((f, "response_format")),
        (None, None) => None,
    };
    let top = req.top_logprobs.unwrap_or(0);
    if top > 0 && !req.logprobs {
        return Err(ApiError::param(
            "top_logprobs",
            "`logprobs` must be true when `top_logprobs` is set",
        ));
    }
    if top > MAX_TOP_LOGPROBS {
        return Err(ApiError::param(
            "top_logprobs",
            format!("`top_logprobs` must be <= {MAX_TOP_LOGPROBS}. Given: {top}"),
        ));
    }
    let max_new = req.max_completion_tokens.or(req.max_tokens);
    if max_new == Some(0) {
        return Err(ApiError::param(
            "max_tokens",
            "`max_tokens` must be strictly positive",
        ));
    }
    let n = validation::choices(req.sampling.n)?;
    let sampling = validation::openai_sampling(&st.limits, &req.sampling)?;
    let template = st
        .chat
        .as_ref()
        .map_err(|e| ApiError::template(e.clone()))?;
    let mut messages = chat_messages(req, template.takes_tool_calls())?;
    let mut template_tools = None;
    if let Some(plan) = &tool_plan {
        if template.takes_tools() && req.tool_prompt.is_none() {
            template_tools = Some(
                plan.tools
                    .iter()
                    .map(|t| serde_json::to_value(t).unwrap_or_default())
                    .collect::<Vec<_>>(),
            );
        } else {
            describe_tools(
                &mut messages,
                structured::tools_system_text(plan, req.tool_prompt.as_deref()),
            );
        }
    }
    let text = template
        .render_with_tools(&messages, true, template_tools.as_deref())
        .map_err(|e| ApiError::template(format!("{e:#}")))?;
    // The template writes the special tokens itself.
    let ids = validation::tokenize(st.engine.tokenizer(), &text, false)?;
    let prompt = validation::prompt(&st.limits, ids, None, max_new, DefaultMaxNew::Remaining)?;
    Ok(ChatPlan {
        request: GenerationRequest {
            id,
            prompt: prompt.ids,
            sampling,
            stopping: StoppingParams {
                max_new_tokens: prompt.max_new_tokens,
                stop_sequences: req.sampling.stop.clone(),
                include_stop_sequence: false,
                ignore_eos: false,
            },
            top_n_tokens: if req.logprobs { top as usize } else { 0 },
            prompt_logprobs: false,
            grammar: None,
            candidates: n,
        },
        logprobs: req.logprobs,
        include_usage: req.stream_options.as_ref().is_some_and(|o| o.include_usage),
        model: model_name(st, req.model.as_deref()),
        compute_characters: text.chars().count(),
        grammar,
        tools: tool_plan.is_some(),
    })
}

/// OpenAI's finish reason of a candidate: `tool_calls` when it ended its calls itself.
fn finish_reason(parser: &ToolCallParser, reason: FinishReason) -> &'static str {
    if parser.is_calls() && reason == FinishReason::EosToken {
        "tool_calls"
    } else {
        reason.as_openai()
    }
}

/// `POST /v1/chat/completions`
#[utoipa::path(
    post,
    path = "/v1/chat/completions",
    tag = "OpenAI",
    request_body = ChatRequest,
    responses(
        (status = 200, description = "Chat completion", content(
            (ChatCompletion = "application/json"),
            (ChatCompletionChunk = "text/event-stream"),
        )),
        (status = 422, description = "Input validation error", body = OpenAiError),
        (status = 429, description = "Model is overloaded", body = OpenAiError),
    )
)]
pub async fn chat_completions(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let route = "/v1/chat/completions";
    let started = openai::start(
        &st,
        route,
        &headers,
        body,
        |r: &ChatRequest| r.stream,
        |r, id| plan_chat(&st, r, id),
    )
    .await;
    let (plan, stream, s) = match started {
        Ok(x) => x,
        Err(e) => return e.into_response(),
    };
    if stream {
        let prompt_tokens = plan.request.prompt.len();
        let characters = plan.compute_characters;
        return sse(
            &st,
            prompt_tokens,
            characters,
            chat_events(st.clone(), s, plan),
        );
    }
    chat_answer(&st, s, &plan).await
}

async fn chat_answer(st: &AppState, s: GenerationStream, plan: &ChatPlan) -> Response {
    let id = format!("chatcmpl-{:x}", s.id());
    let (results, f) = match s.collect().await {
        Ok(x) => x,
        Err(e) => return e.into_response(),
    };
    let choices = results
        .iter()
        .flat_map(|r| &r.candidates)
        .map(|c| {
            let mut parser = ToolCallParser::new(plan.tools);
            parser.push(&c.text);
            let (content, calls) = parser.finish();
            let tool_calls = content.is_none().then_some(calls);
            (c, content, tool_calls, finish_reason(&parser, c.reason))
        })
        .map(|(c, content, tool_calls, reason)| ChatChoice {
            index: c.index as u32,
            message: OutputMessage {
                role: "assistant",
                content,
                tool_calls,
            },
            logprobs: plan.logprobs.then(|| ChatLogprobs {
                content: c
                    .tokens
                    .iter()
                    .zip(&c.top_tokens)
                    .filter(|(t, _)| !t.special)
                    .map(|(t, top)| logprob_content(t, top))
                    .collect(),
            }),
            finish_reason: reason,
        })
        .collect();
    let headers = timing_headers(st, &f, plan.compute_characters);
    let body = ChatCompletion {
        id,
        object: "chat.completion",
        created: unix_now(),
        model: plan.model.clone(),
        system_fingerprint: st.system_fingerprint.clone(),
        choices,
        usage: usage(f.prompt_tokens, f.generated_tokens),
    };
    (headers, Json(body)).into_response()
}

/// The chunks of a streamed chat completion: each candidate's role, then its text (and
/// logprobs) token by token and its finish reason; `openai::events` frames them.
fn chat_events(
    st: Arc<AppState>,
    s: GenerationStream,
    plan: ChatPlan,
) -> impl Stream<Item = SseItem> {
    let id = format!("chatcmpl-{:x}", s.id());
    let created = unix_now();
    let model = plan.model;
    let chunk = move |choices: Vec<ChunkChoice>, usage: Option<Option<Usage>>| {
        sse_json(&ChatCompletionChunk {
            id: id.clone(),
            object: "chat.completion.chunk",
            created,
            model: model.clone(),
            system_fingerprint: st.system_fingerprint.clone(),
            choices,
            usage,
        })
    };
    let usage_field = if plan.include_usage { Some(None) } else { None };
    let logprobs = plan.logprobs;
    let tools = plan.tools;
    // With tools the first delta has no content: the answer may be calls.
    let opening = (0..plan.request.candidates)
        .map(|i| {
            let delta = Delta {
                role: Some("assistant"),
                content: (!tools).then(String::new),
                tool_calls: None,
            };
            chunk(vec![choice(i, delta, None, None)], usage_field)
        })
        .collect();
    let usage_chunk = plan.include_usage.then(|| {
        let chunk = chunk.clone();
        move |u| chunk(Vec::new(), Some(Some(u)))
    });
    let mut parsers: Vec<ToolCallParser> = (0..plan.request.candidates)
        .map(|_| ToolCallParser::new(tools))
        .collect();
    let format = move |item: Item| {
        let mut out = Vec::new();
        let Item::Token {
            candidate,
            token:
                GeneratedToken {
                    token,
                    text_piece,
                    top_tokens,
                },
            end,
            ..
        } = item
        else {
            return out;
        };
        if parsers.len() <= candidate {
            parsers.resize(candidate + 1, ToolCallParser::new(tools));
        }
        let parser = &mut parsers[candidate];
        let mut lp = (logprobs && !token.special).then(|| ChatLogprobs {
            content: vec![logprob_content(&token, &top_tokens)],
        });
        for event in parser.push(&text_piece) {
            let delta = match event {
                ToolEvent::Text(text) => Delta {
                    content: Some(text),
                    ..Delta::default()
                },
                ToolEvent::CallStart { index, id, name } => Delta {
                    tool_calls: Some(vec![ToolCallDelta {
                        index: index as u32,
                        id: Some(id),
                        kind: Some("function"),
                        function: FunctionCallDelta {
                            name: Some(name),
                            arguments: String::new(),
                        },
                    }]),
                    ..Delta::default()
                },
                ToolEvent::Arguments { index, fragment } => Delta {
                    tool_calls: Some(vec![ToolCallDelta {
                        index: index as u32,
                        id: None,
                        kind: None,
                        function: FunctionCallDelta {
                            name: None,
                            arguments: fragment,
                        },
                    }]),
                    ..Delta::default()
                },
            };
            out.push(chunk(
                vec![choice(candidate, delta, lp.take(), None)],
                usage_field,
            ));
        }
        if lp.is_some() {
            // A token that added nothing to show (yet): its logprobs alone.
            let delta = Delta {
                content: (!parser.is_calls()).then(String::new),
                ..Delta::default()
            };
            out.push(chunk(vec![choice(candidate, delta, lp, None)], usage_field));
        }
        if let Some(end) = end {
            let reason = Some(finish_reason(parser, end.reason));
            out.push(chunk(
                vec![choice(candidate, Delta::default(), None, reason)],
                usage_field,
            ));
        }
        out
    };
    openai::events(s, opening, format, usage_chunk)
}

fn choice(
    index: usize,
    delta: Delta,
    logprobs: Option<ChatLogprobs>,
    finish_reason: Option<&'static str>,
) -> ChunkChoice {
    ChunkChoice {
        index: index as u32,
        delta,
        logprobs,
        finish_reason,
    }
}
