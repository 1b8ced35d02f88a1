//! Route handlers: TGI's and OpenAI's.

pub mod openai;
pub mod tgi;
