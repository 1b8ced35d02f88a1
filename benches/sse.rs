//! The per-token streaming path of the HTTP server: one generated token turned into the
//! bytes of an SSE frame, as the routes do it (the response type built, serialized with
//! `Event::json_data`, and encoded by axum's `Sse` body). Hyper, TCP and the engine are not
//! included: `scripts/http_overhead.sh` measures the whole HTTP side of a running server.
//!
//! Names (stable across commits), each a stream of 64 token events read to the end:
//! - `sse/tgi_stream_token`: `/generate_stream`'s `StreamResponse` (no details).
//! - `sse/openai_completion_chunk`: a `/v1/completions` stream chunk.
//! - `sse/openai_chat_chunk`: a `/v1/chat/completions` stream chunk.

use std::convert::Infallible;

use axum::response::sse::{Event, Sse};
use axum::response::IntoResponse;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use wick::server::types::openai::{
    ChatCompletionChunk, ChunkChoice, CompletionChoice, CompletionResponse, Delta,
};
use wick::server::types::tgi::{StreamResponse, Token};

const EVENTS: u32 = 64;

/// Builds the SSE event of the `i`-th token.
type MakeEvent = fn(u32) -> Result<Event, Infallible>;
const PIECES: [&str; 4] = [" the", " quick", " brown", " fox,"];

fn piece(i: u32) -> String {
    PIECES[i as usize % PIECES.len()].to_string()
}

fn event<T: serde::Serialize>(v: &T) -> Result<Event, Infallible> {
    Ok(Event::default()
        .json_data(v)
        .unwrap_or_else(|_| Event::default().data("{}")))
}

fn tgi(i: u32) -> Result<Event, Infallible> {
    event(&StreamResponse {
        index: i + 1,
        token: Token {
            id: 1000 + i,
            text: piece(i),
            logprob: -0.25,
            special: false,
        },
        top_tokens: Vec::new(),
        generated_text: None,
        details: None,
    })
}

fn completion(i: u32) -> Result<Event, Infallible> {
    event(&CompletionResponse {
        id: "cmpl-1f2e3d4c5b6a".to_string(),
        object: "text_completion",
        created: 1_790_000_000,
        model: "SmolLM2-135M-Instruct".to_string(),
        system_fingerprint: "0.1.0-native".to_string(),
        choices: vec![CompletionChoice {
            text: piece(i),
            index: 0,
            logprobs: None,
            finish_reason: None,
        }],
        usage: None,
    })
}

fn chat(i: u32) -> Result<Event, Infallible> {
    event(&ChatCompletionChunk {
        id: "chatcmpl-1f2e3d4c5b6a".to_string(),
        object: "chat.completion.chunk",
        created: 1_790_000_000,
        model: "SmolLM2-135M-Instruct".to_string(),
        system_fingerprint: "0.1.0-native".to_string(),
        choices: vec![ChunkChoice {
            index: 0,
            delta: Delta {
                role: None,
                content: Some(piece(i)),
                tool_calls: None,
            },
            logprobs: None,
            finish_reason: None,
        }],
        usage: None,
    })
}

/// Streams `EVENTS` events made by `make` through an SSE response body and returns the
/// body's length.
async fn stream(make: MakeEvent) -> usize {
    let events = futures::stream::iter((0..EVENTS).map(make));
    let body = Sse::new(events).into_response().into_body();
    axum::body::to_bytes(body, usize::MAX)
        .await
        .expect("an SSE body")
        .len()
}

fn sse(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    let mut group = c.benchmark_group("sse");
    group.throughput(Throughput::Elements(EVENTS as u64));
    let cases: [(&str, MakeEvent); 3] = [
        ("tgi_stream_token", tgi),
        ("openai_completion_chunk", completion),
        ("openai_chat_chunk", chat),
    ];
    for (name, make) in cases {
        assert!(rt.block_on(stream(make)) > 0);
        group.bench_function(name, |b| b.iter(|| rt.block_on(stream(make))));
    }
    group.finish();
}

criterion_group!(benches, sse);
criterion_main!(benches);
