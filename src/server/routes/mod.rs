//! Route handlers: TGI's (`tgi`, `tokenize`) and OpenAI's (`chat`, `completions`,
//! `openai`); `respond` holds what their answers share (headers, SSE).

pub mod chat;
pub mod completions;
pub mod openai;
mod respond;
pub mod tgi;
pub mod tokenize;
