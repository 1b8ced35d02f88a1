//! Wire types: TGI's (`router/src/lib.rs`) and OpenAI's (the openai-python SDK).

pub mod openai;
pub mod structured;
pub mod tgi;
