//! Per-request generation parameters, already validated by the server.

/// How to choose each next token. Neutral values switch a processor off.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// false: greedy (argmax after logit_bias and penalties), whatever the other knobs say.
    pub do_sample: bool,
    /// > 0; 1.0 is neutral.
    pub temperature: f32,
    /// 0 = off.
    pub top_k: usize,
    /// (0, 1]; 1.0 = off.
    pub top_p: f32,
    /// (0, 1]; 1.0 = off.
    pub typical_p: f32,
    /// [0, 1); 0.0 = off.
    pub min_p: f32,
    /// > 0; 1.0 = off. TGI semantics: over prompt and generated tokens.
    pub repetition_penalty: f32,
    /// OpenAI semantics, over generated tokens; 0.0 = off.
    pub frequency_penalty: f32,
    /// OpenAI semantics, over generated tokens; 0.0 = off.
    pub presence_penalty: f32,
    /// Added to the logits of these tokens before anything else.
    pub logit_bias: Vec<(u32, f32)>,
    /// The request's RNG seed (the server draws one when the client gave none, and
    /// reports it back).
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            do_sample: false,
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            typical_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            logit_bias: Vec::new(),
            seed: 0,
        }
    }
}
