//! Streaming HTTP clients for the two wire formats: TGI's `/generate_stream` and OpenAI's
//! `/v1/completions` with `"stream": true` (see the compatibility notes for both formats).
//!
//! One request is timed from just before it is sent: the time to its first token (TTFT),
//! the gaps between later tokens (inter-token latency) and the time to the end of the
//! stream. Tokens are counted from the stream itself: one TGI event is one token, and the
//! final event's `details.generated_tokens` is authoritative; an OpenAI chunk with text is
//! one arrival, and `usage.completion_tokens` (when the server sends usage) is the count.

use std::fmt;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use hyper::{Method, Request, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

use super::cli::Api;

/// What went wrong with one request, as a stable kind for the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ErrorKind {
    /// No connection, or the connection broke before a response.
    Connect,
    /// A non-2xx status before the stream started.
    Http(u16),
    /// An error event inside the stream.
    Stream,
    /// The stream ended without its final event (`details` / `[DONE]`).
    Incomplete,
    /// The stream carried no token at all.
    NoTokens,
    /// An event that is not the expected JSON.
    Protocol,
    /// The request ran past `--timeout`.
    Timeout,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorKind::Connect => f.write_str("connect"),
            ErrorKind::Http(s) => write!(f, "http_{s}"),
            ErrorKind::Stream => f.write_str("stream_error"),
            ErrorKind::Incomplete => f.write_str("incomplete"),
            ErrorKind::NoTokens => f.write_str("no_tokens"),
            ErrorKind::Protocol => f.write_str("protocol"),
            ErrorKind::Timeout => f.write_str("timeout"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestError {
    pub kind: ErrorKind,
    pub message: String,
}

impl RequestError {
    fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

impl std::error::Error for RequestError {}

/// The measurements of one successful request.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestResult {
    /// Send to first token.
    pub ttft: Duration,
    /// Send to end of stream.
    pub latency: Duration,
    /// Gaps between successive token arrivals.
    pub itl: Vec<Duration>,
    /// Tokens generated, as the server counts them (else the arrivals).
    pub output_tokens: usize,
    /// Prompt tokens as the server reports them, when it does.
    pub prompt_tokens: Option<usize>,
    pub finish_reason: Option<String>,
}

impl RequestResult {
    /// Time per output token after the first, when there is more than one.
    pub fn tpot(&self) -> Option<Duration> {
        (self.output_tokens > 1)
            .then(|| (self.latency.saturating_sub(self.ttft)) / (self.output_tokens as u32 - 1))
    }
}

/// Splits a byte stream into server-sent events and returns their `data` payloads.
#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
}

impl SseParser {
    /// Feeds bytes; returns the data of every event completed by them (events without a
    /// data field, such as keep-alive comments, are dropped).
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        self.buf.extend(bytes.iter().filter(|&&b| b != b'\r'));
        let mut out = Vec::new();
        while let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = self.buf.drain(..end + 2).collect();
            if let Some(data) = event_data(&event[..end]) {
                out.push(data);
            }
        }
        out
    }

    /// The last event, if the stream ended without a blank line after it.
    pub fn finish(&mut self) -> Option<String> {
        let rest = std::mem::take(&mut self.buf);
        event_data(&rest)
    }
}

fn event_data(event: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(event);
    let mut data: Option<String> = None;
    for line in text.split('\n') {
        let Some(value) = line.strip_prefix("data:") else {
            continue; // comments, `event:`, `id:`, `retry:`
        };
        let value = value.strip_prefix(' ').unwrap_or(value);
        match &mut data {
            Some(d) => {
                d.push('\n');
                d.push_str(value);
            }
            None => data = Some(value.to_string()),
        }
    }
    data
}

/// A client for one server.
#[derive(Debug, Clone)]
pub struct Client {
    http: HyperClient<HttpConnector, Full<Bytes>>,
    base: String,
    api: Api,
    model: String,
    api_key: Option<String>,
    timeout: Duration,
    extra: serde_json::Map<String, Value>,
}

impl Client {
    pub fn new(
        url: &str,
        api: Api,
        model: &str,
        api_key: Option<&str>,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let url = url.trim().trim_end_matches('/');
        let base = if url.contains("://") {
            url.to_string()
        } else {
            format!("http://{url}")
        };
        anyhow::ensure!(
            base.starts_with("http://"),
            "{base}: only http:// URLs are supported"
        );
        base.parse::<Uri>()
            .map_err(|e| anyhow::anyhow!("bad --url {base}: {e}"))?;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let http = HyperClient::builder(TokioExecutor::new()).build(connector);
        Ok(Self {
            http,
            base,
            api,
            model: model.to_string(),
            api_key: api_key.map(str::to_string),
            timeout,
            extra: serde_json::Map::new(),
        })
    }

    /// Fields merged into every generation request (for TGI, into `parameters`).
    pub fn with_extra_body(mut self, extra: serde_json::Map<String, Value>) -> Self {
        self.extra = extra;
        self
    }

    pub fn api(&self) -> Api {
        self.api
    }

    fn url(&self, path: &str) -> String {
        if path.starts_with("/v1/") && self.base.ends_with("/v1") {
            format!("{}{}", self.base, &path[3..])
        } else {
            format!("{}{path}", self.base)
        }
    }

    fn post(
        &self,
        path: &str,
        body: &Value,
        stream: bool,
    ) -> Result<Request<Full<Bytes>>, RequestError> {
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(self.url(path))
            .header(CONTENT_TYPE, "application/json");
        if stream {
            req = req.header(ACCEPT, "text/event-stream");
        }
        if let Some(key) = &self.api_key {
            req = req.header(AUTHORIZATION, format!("Bearer {key}"));
        }
        req.body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| RequestError::new(ErrorKind::Protocol, e.to_string()))
    }

    /// The request body asking for exactly `max_tokens` tokens of `prompt`, greedy, with
    /// the extra fields merged in.
    pub fn body(&self, prompt: &str, max_tokens: usize) -> (&'static str, Value) {
        let (path, mut body) = self.base_body(prompt, max_tokens);
        let target = match self.api {
            Api::Tgi => &mut body["parameters"],
            Api::Openai => &mut body,
        };
        if let Value::Object(map) = target {
            map.extend(self.extra.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        (path, body)
    }

    fn base_body(&self, prompt: &str, max_tokens: usize) -> (&'static str, Value) {
        match self.api {
            // TGI cannot be told to ignore EOS: the report counts what was generated.
            Api::Tgi => (
                "/generate_stream",
                json!({
                    "inputs": prompt,
                    "parameters": {
                        "max_new_tokens": max_tokens,
                        "details": true,
                        "do_sample": false,
                    },
                    "stream": true,
                }),
            ),
            // `ignore_eos` is an extra field (vLLM's benchmark sends it too); servers that do
            // not know it ignore it.
            Api::Openai => (
                "/v1/completions",
                json!({
                    "model": self.model,
                    "prompt": prompt,
                    "max_tokens": max_tokens,
                    "temperature": 0.0,
                    "stream": true,
                    "stream_options": {"include_usage": true},
                    "ignore_eos": true,
                }),
            ),
        }
    }

    /// Sends one streaming generation request and times it.
    pub async fn generate(
        &self,
        prompt: &str,
        max_tokens: usize,
    ) -> Result<RequestResult, RequestError> {
        let (path, body) = self.body(prompt, max_tokens);
        let req = self.post(path, &body, true)?;
        let start = Instant::now();
        let deadline = tokio::time::Instant::from_std(start + self.timeout);
        let timeout = || {
            RequestError::new(
                ErrorKind::Timeout,
                format!(
                    "no complete answer within {:.0} s",
                    self.timeout.as_secs_f64()
                ),
            )
        };
        let resp = tokio::time::timeout_at(deadline, self.http.request(req))
            .await
            .map_err(|_| timeout())?
            .map_err(|e| RequestError::new(ErrorKind::Connect, error_chain(&e)))?;
        let status = resp.status();
        let mut body = resp.into_body();
        if !status.is_success() {
            let bytes = tokio::time::timeout_at(deadline, body.collect())
                .await
                .map(|r| r.map(|c| c.to_bytes()).unwrap_or_default())
                .unwrap_or_default();
            return Err(RequestError::new(
                ErrorKind::Http(status.as_u16()),
                error_message(&bytes),
            ));
        }
        let mut stream = StreamState::new(self.api, start);
        let mut sse = SseParser::default();
        loop {
            let frame = tokio::time::timeout_at(deadline, body.frame())
                .await
                .map_err(|_| timeout())?;
            let Some(frame) = frame else { break };
            let frame = frame.map_err(|e| {
                RequestError::new(
                    ErrorKind::Incomplete,
                    format!("stream broke: {}", error_chain(&e)),
                )
            })?;
            let Ok(data) = frame.into_data() else {
                continue; // trailers
            };
            let now = Instant::now();
            for event in sse.push(&data) {
                stream.event(&event, now)?;
            }
            if stream.done {
                break;
            }
        }
        if let Some(event) = sse.finish() {
            stream.event(&event, Instant::now())?;
        }
        stream.finish(Instant::now())
    }

    /// Counts the tokens of `text` with the server's TGI `/tokenize` route (no special
    /// tokens added).
    pub async fn tokenize_count(&self, text: &str) -> anyhow::Result<usize> {
        let body = json!({"inputs": text, "add_special_tokens": false});
        let req = self.post("/tokenize", &body, false)?;
        let resp = tokio::time::timeout(self.timeout, self.http.request(req))
            .await
            .map_err(|_| anyhow::anyhow!("/tokenize timed out"))?
            .map_err(|e| anyhow::anyhow!("/tokenize: {}", error_chain(&e)))?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await?.to_bytes();
        anyhow::ensure!(
            status.is_success(),
            "/tokenize answered {status}: {}",
            error_message(&bytes)
        );
        let tokens: Vec<Value> = serde_json::from_slice(&bytes)
            .map_err(|e| anyhow::anyhow!("/tokenize did not answer a token list: {e}"))?;
        Ok(tokens.len())
    }
}

/// Parses one stream's events.
struct StreamState {
    api: Api,
    start: Instant,
    arrivals: Vec<Instant>,
    counted: Option<usize>,
    prompt_tokens: Option<usize>,
    finish_reason: Option<String>,
    done: bool,
}

impl StreamState {
    fn new(api: Api, start: Instant) -> Self {
        Self {
            api,
            start,
            arrivals: Vec::new(),
            counted: None,
            prompt_tokens: None,
            finish_reason: None,
            done: false,
        }
    }

    fn event(&mut self, data: &str, now: Instant) -> Result<(), RequestError> {
        if self.done {
            return Ok(());
        }
        let data = data.trim();
        if data == "[DONE]" {
            self.done = true;
            return Ok(());
        }
        let v: Value = serde_json::from_str(data).map_err(|e| {
            RequestError::new(
                ErrorKind::Protocol,
                format!("event is not JSON ({e}): {}", truncate(data, 200)),
            )
        })?;
        if let Some(err) = v.get("error").filter(|e| !e.is_null()) {
            let msg = match err {
                Value::String(s) => s.clone(),
                Value::Object(o) => o
                    .get("message")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .unwrap_or_else(|| err.to_string()),
                other => other.to_string(),
            };
            return Err(RequestError::new(ErrorKind::Stream, msg));
        }
        let as_usize = |v: Option<&Value>| v.and_then(Value::as_u64).map(|n| n as usize);
        match self.api {
            Api::Tgi => {
                if v.get("token").is_some_and(|t| !t.is_null()) {
                    self.arrivals.push(now);
                }
                if let Some(d) = v.get("details").filter(|d| !d.is_null()) {
                    self.counted = as_usize(d.get("generated_tokens"));
                    self.prompt_tokens = as_usize(d.get("input_length"));
                    self.finish_reason = d
                        .get("finish_reason")
                        .and_then(Value::as_str)
                        .map(str::to_string);
                    self.done = true;
                }
            }
            Api::Openai => {
                if let Some(choice) = v
                    .get("choices")
                    .and_then(Value::as_array)
                    .and_then(|c| c.first())
                {
                    let text = choice
                        .get("text")
                        .or_else(|| choice.get("delta").and_then(|d| d.get("content")))
                        .and_then(Value::as_str);
                    if text.is_some_and(|t| !t.is_empty()) {
                        self.arrivals.push(now);
                    }
                    if let Some(r) = choice.get("finish_reason").and_then(Value::as_str) {
                        self.finish_reason = Some(r.to_string());
                    }
                }
                if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
                    self.counted = as_usize(u.get("completion_tokens"));
                    self.prompt_tokens = as_usize(u.get("prompt_tokens"));
                }
            }
        }
        Ok(())
    }

    fn finish(self, end: Instant) -> Result<RequestResult, RequestError> {
        if !self.done {
            let what = match self.api {
                Api::Tgi => "the final event with details",
                Api::Openai => "data: [DONE]",
            };
            return Err(RequestError::new(
                ErrorKind::Incomplete,
                format!(
                    "the stream ended after {} tokens without {what}",
                    self.arrivals.len()
                ),
            ));
        }
        let Some(&first) = self.arrivals.first() else {
            return Err(RequestError::new(
                ErrorKind::NoTokens,
                "the stream carried no token",
            ));
        };
        let itl = self.arrivals.windows(2).map(|w| w[1] - w[0]).collect();
        Ok(RequestResult {
            ttft: first - self.start,
            latency: end - self.start,
            itl,
            output_tokens: self.counted.unwrap_or(self.arrivals.len()),
            prompt_tokens: self.prompt_tokens,
            finish_reason: self.finish_reason,
        })
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// The message of an error body: TGI's `{"error": "..."}`, OpenAI's
/// `{"error": {"message": ...}}`, or the text itself.
fn error_message(body: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        match v.get("error") {
            Some(Value::String(s)) => return s.clone(),
            Some(Value::Object(o)) => {
                if let Some(m) = o.get("message").and_then(Value::as_str) {
                    return m.to_string();
                }
            }
            _ => {}
        }
        if let Some(m) = v.get("detail").or_else(|| v.get("message")) {
            return truncate(&m.to_string(), 300).to_string();
        }
    }
    truncate(String::from_utf8_lossy(body).trim(), 300).to_string()
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_parser_splits_events_across_chunks() {
        let mut p = SseParser::default();
        assert!(p.push(b"data:{\"a\"").is_empty());
        assert_eq!(
            p.push(b":1}\n\n: ping\n\ndata: [DONE]\r\n\r\n"),
            vec!["{\"a\":1}".to_string(), "[DONE]".to_string()]
        );
        assert_eq!(p.push(b"event: x\ndata: a\ndata: b"), Vec::<String>::new());
        assert_eq!(p.finish().as_deref(), Some("a\nb"));
    }

    #[test]
    fn tgi_stream_counts_tokens_and_reads_details() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut s = StreamState::new(Api::Tgi, t0);
        let tok = r#"{"index":1,"token":{"id":5,"text":"a","logprob":-0.1,"special":false},"top_tokens":null,"generated_text":null,"details":null}"#;
        s.event(tok, ms(100)).unwrap();
        s.event(tok, ms(110)).unwrap();
        let last = r#"{"index":3,"token":{"id":6,"text":"b","logprob":-0.1,"special":false},"top_tokens":null,"generated_text":"aab","details":{"finish_reason":"length","generated_tokens":3,"seed":null,"input_length":7}}"#;
        s.event(last, ms(130)).unwrap();
        let r = s.finish(ms(131)).unwrap();
        assert_eq!(r.ttft, Duration::from_millis(100));
        assert_eq!(r.latency, Duration::from_millis(131));
        assert_eq!(
            r.itl,
            vec![Duration::from_millis(10), Duration::from_millis(20)]
        );
        assert_eq!(r.output_tokens, 3);
        assert_eq!(r.prompt_tokens, Some(7));
        assert_eq!(r.finish_reason.as_deref(), Some("length"));
        assert_eq!(r.tpot(), Some(Duration::from_micros(15_500)));
    }

    #[test]
    fn openai_stream_needs_done_and_prefers_usage() {
        let t0 = Instant::now();
        let mut s = StreamState::new(Api::Openai, t0);
        let chunk = r#"{"id":"x","object":"text_completion","choices":[{"index":0,"text":"hi","finish_reason":null}]}"#;
        s.event(chunk, t0).unwrap();
        s.event(chunk, t0).unwrap();
        s.event(
            r#"{"choices":[],"usage":{"prompt_tokens":4,"completion_tokens":5,"total_tokens":9}}"#,
            t0,
        )
        .unwrap();
        let incomplete = StreamState {
            done: false,
            ..StreamState::new(Api::Openai, t0)
        };
        assert_eq!(
            incomplete.finish(t0).unwrap_err().kind,
            ErrorKind::Incomplete
        );
        s.event("[DONE]", t0).unwrap();
        let r = s.finish(t0).unwrap();
        assert_eq!((r.output_tokens, r.prompt_tokens), (5, Some(4)));
    }

    #[test]
    fn extra_fields_go_into_tgi_parameters_or_the_openai_body() {
        let extra: serde_json::Map<String, Value> =
            serde_json::from_str(r#"{"repeat_penalty": 1.0, "top_k": 1}"#).unwrap();
        let timeout = Duration::from_secs(1);
        let tgi = Client::new("127.0.0.1:1/", Api::Tgi, "m", None, timeout)
            .unwrap()
            .with_extra_body(extra.clone());
        let (path, body) = tgi.body("hi", 7);
        assert_eq!(path, "/generate_stream");
        assert_eq!(body["parameters"]["max_new_tokens"], 7);
        assert_eq!(body["parameters"]["repeat_penalty"], 1.0);
        assert_eq!(tgi.url(path), "http://127.0.0.1:1/generate_stream");
        let openai = Client::new("http://h:2/v1", Api::Openai, "m", None, timeout)
            .unwrap()
            .with_extra_body(extra);
        let (path, body) = openai.body("hi", 7);
        assert_eq!(openai.url(path), "http://h:2/v1/completions");
        assert_eq!(
            (body["top_k"].clone(), body["max_tokens"].clone()),
            (json!(1), json!(7))
        );
        assert_eq!(body["ignore_eos"], true);
    }

    #[test]
    fn error_events_and_bodies() {
        let mut s = StreamState::new(Api::Tgi, Instant::now());
        let e = s
            .event(
                r#"{"error":"boom","error_type":"generation"}"#,
                Instant::now(),
            )
            .unwrap_err();
        assert_eq!((e.kind, e.message.as_str()), (ErrorKind::Stream, "boom"));
        assert_eq!(
            error_message(br#"{"error":{"message":"bad","type":"x"}}"#),
            "bad"
        );
        assert_eq!(error_message(b"plain"), "plain");
        assert_eq!(ErrorKind::Http(429).to_string(), "http_429");
    }
}
