//! wick: a native, in-process LLM inference engine and server.
//!
//! The modules mirror the layers of the architecture: `config` (flags, models.toml),
//! `hub` (model sources), `tokenizer`, `model` (one file per architecture family),
//! `kv` (paged KV cache), `ops` (paged attention and friends), `engine` (batches and the
//! step loop), `sampling`, `server` (routes and state) and `app` (`wick serve`: the
//! model, the engine and the server put together). With the `loadgen` feature (on by
//! default), `loadgen`: the `wick benchmark` client, with its own HTTP client and SVG
//! charts, which embedders can leave out (`default-features = false`).

pub mod app;
pub mod config;
pub mod engine;
pub mod grammar;
pub mod hub;
pub mod kv;
#[cfg(feature = "loadgen")]
pub mod loadgen;
pub mod model;
pub mod ops;
pub mod sampling;
pub mod server;
pub mod tokenizer;

#[cfg(test)]
mod test_alloc;
