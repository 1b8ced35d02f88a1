//! Prometheus metrics with TGI's names, plus wick's KV and prefix-cache figures, plus the
//! vLLM names that the Gateway API Inference Extension's endpoint picker reads (its
//! model-server protocol, `docs/proposals/003-model-server-protocol`): queue length,
//! running requests and KV-cache usage, with vLLM's meaning and units.
//!
//! The recorder belongs to one server (no global install), so several servers can run
//! in one process; request metrics are recorded through it, engine gauges are read from
//! the engine's stats when `/metrics` is scraped.

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

use crate::engine::StatsSnapshot;

pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// Timings of one finished request, in seconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestFigures {
    pub total: f64,
    pub validation: f64,
    pub queue: f64,
    pub inference: f64,
    pub time_per_token: f64,
    pub generated_tokens: u64,
}

impl Metrics {
    pub fn new(max_input_tokens: usize, max_total_tokens: usize) -> Self {
        // TGI's buckets.
        let mut duration_buckets = Vec::with_capacity(35);
        let mut value = 0.0001;
        for _ in 0..35 {
            value *= 1.5;
            duration_buckets.push(value);
        }
        let spread = |max: usize| -> Vec<f64> {
            (0..100)
                .map(|x| (max.max(1) as f64 / 100.0) * (x + 1) as f64)
                .collect()
        };
        let build = || -> Result<PrometheusBuilder, metrics_exporter_prometheus::BuildError> {
            PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("duration".into()), &duration_buckets)?
                .set_buckets_for_metric(
                    Matcher::Full("tgi_request_input_length".into()),
                    &spread(max_input_tokens),
                )?
                .set_buckets_for_metric(
                    Matcher::Full("tgi_request_generated_tokens".into()),
                    &spread(max_total_tokens),
                )?
                .set_buckets_for_metric(
                    Matcher::Full("tgi_request_max_new_tokens".into()),
                    &spread(max_total_tokens),
                )
        };
        let recorder = build()
            .unwrap_or_else(|_| PrometheusBuilder::new())
            .build_recorder();
        let handle = recorder.handle();
        let m = Self { recorder, handle };
        m.with(|| {
            describe_counter!("tgi_request_count", "Total number of requests");
            describe_counter!("tgi_request_success", "Number of successful requests");
            describe_counter!(
                "tgi_request_failure",
                "Number of failed requests by error type"
            );
            describe_histogram!(
                "tgi_request_duration",
                metrics::Unit::Seconds,
                "Total time spent processing the request"
            );
            describe_histogram!(
                "tgi_request_validation_duration",
                metrics::Unit::Seconds,
                "Time spent validating the request"
            );
            describe_histogram!(
                "tgi_request_queue_duration",
                metrics::Unit::Seconds,
                "Time spent in the queue per request"
            );
            describe_histogram!(
                "tgi_request_inference_duration",
                metrics::Unit::Seconds,
                "Request inference duration"
            );
            describe_histogram!(
                "tgi_request_mean_time_per_token_duration",
                metrics::Unit::Seconds,
                "Mean time per token per request"
            );
            describe_histogram!("tgi_request_input_length", "Input token length per request");
            describe_histogram!(
                "tgi_request_generated_tokens",
                "Generated tokens per request"
            );
            describe_histogram!(
                "tgi_request_max_new_tokens",
                "Maximum new tokens per request"
            );
            describe_gauge!("tgi_queue_size", "Current queue size");
            describe_gauge!("tgi_batch_current_size", "Current batch size");
            describe_gauge!(
                "tgi_batch_current_max_tokens",
                "Tokens (prompt + generated) of the running batch"
            );
            describe_gauge!("tgi_batch_total_tokens", "KV cache capacity in tokens");
            describe_gauge!("wick_requests_in_flight", "Requests queued or running");
            describe_gauge!("wick_kv_blocks_total", "KV cache blocks");
            describe_gauge!("wick_kv_blocks_used", "KV cache blocks held by sequences");
            describe_gauge!(
                "wick_kv_blocks_cached",
                "KV cache blocks in the prefix cache"
            );
            describe_counter!(
                "wick_prefix_cache_hit_tokens_total",
                "Prompt tokens served from the prefix cache"
            );
            describe_counter!(
                "wick_preemptions_total",
                "Sequences preempted for KV blocks"
            );
            describe_counter!("wick_steps_total", "Engine steps");
            describe_counter!("wick_prefill_tokens_total", "Prompt tokens computed");
            describe_counter!("wick_decode_tokens_total", "Tokens decoded");
            describe_counter!("wick_requests_finished_total", "Requests finished");
            describe_counter!("wick_requests_cancelled_total", "Requests cancelled");
            describe_counter!(
                "wick_requests_failed_total",
                "Requests failed in the engine"
            );
            // The model-server protocol's names (vLLM's), read by the endpoint picker.
            describe_gauge!(
                "vllm:num_requests_waiting",
                "Number of requests waiting to be processed"
            );
            describe_gauge!(
                "vllm:num_requests_running",
                "Number of requests in model execution batches"
            );
            describe_gauge!(
                "vllm:kv_cache_usage_perc",
                "KV-cache usage. 1 means 100 percent usage"
            );
            describe_gauge!(
                "vllm:gpu_cache_usage_perc",
                "KV-cache usage. 1 means 100 percent usage (older name of vllm:kv_cache_usage_perc)"
            );
            describe_gauge!(
                "vllm:cache_config_info",
                "Information of the KV cache (block_size and num_gpu_blocks labels)"
            );
        });
        m
    }

    /// Runs `f` with this server's recorder as the metrics recorder.
    pub fn with<T>(&self, f: impl FnOnce() -> T) -> T {
        metrics::with_local_recorder(&self.recorder, f)
    }

    pub fn request(&self) {
        self.with(|| counter!("tgi_request_count").increment(1));
    }

    pub fn failure(&self, err: &'static str) {
        self.with(|| counter!("tgi_request_failure", "err" => err).increment(1));
    }

    pub fn validated(&self, input_length: usize, max_new_tokens: usize) {
        self.with(|| {
            histogram!("tgi_request_input_length").record(input_length as f64);
            histogram!("tgi_request_max_new_tokens").record(max_new_tokens as f64);
        });
    }

    pub fn success(&self, f: &RequestFigures) {
        self.with(|| {
            counter!("tgi_request_success").increment(1);
            histogram!("tgi_request_duration").record(f.total);
            histogram!("tgi_request_validation_duration").record(f.validation);
            histogram!("tgi_request_queue_duration").record(f.queue);
            histogram!("tgi_request_inference_duration").record(f.inference);
            histogram!("tgi_request_mean_time_per_token_duration").record(f.time_per_token);
            histogram!("tgi_request_generated_tokens").record(f.generated_tokens as f64);
        });
    }

    /// The Prometheus text, with the engine's current figures.
    pub fn render(&self, s: &StatsSnapshot, kv_tokens: usize) -> String {
        self.with(|| {
            gauge!("tgi_queue_size").set(s.queue_size as f64);
            gauge!("tgi_batch_current_size").set(s.running as f64);
            gauge!("tgi_batch_current_max_tokens").set(s.batch_tokens as f64);
            gauge!("tgi_batch_total_tokens").set(kv_tokens as f64);
            gauge!("wick_requests_in_flight").set(s.in_flight as f64);
            gauge!("wick_kv_blocks_total").set(s.blocks_total as f64);
            gauge!("wick_kv_blocks_used").set(s.blocks_used as f64);
            gauge!("wick_kv_blocks_cached").set(s.blocks_cached as f64);
            counter!("wick_prefix_cache_hit_tokens_total").absolute(s.prefix_hit_tokens);
            counter!("wick_preemptions_total").absolute(s.preemptions);
            counter!("wick_steps_total").absolute(s.steps);
            counter!("wick_prefill_tokens_total").absolute(s.prefill_tokens);
            counter!("wick_decode_tokens_total").absolute(s.decode_tokens);
            counter!("wick_requests_finished_total").absolute(s.requests_finished);
            counter!("wick_requests_cancelled_total").absolute(s.requests_cancelled);
            counter!("wick_requests_failed_total").absolute(s.requests_failed);
            // Grammar masks (structured output): how many, their compute time, and the
            // part of it steps waited for after their forward pass; beside the steps' time.
            counter!("wick_grammar_masks_total").absolute(s.grammar.count);
            counter!("wick_grammar_mask_microseconds_total").absolute(s.grammar.sum_us);
            counter!("wick_grammar_mask_wait_microseconds_total").absolute(s.grammar.wait_us);
            counter!("wick_step_microseconds_total").absolute(s.step_us);
            // The endpoint picker's inputs, with vLLM's meaning: waiting (queued or
            // preempted) and running as in tgi_queue_size and tgi_batch_current_size, and
            // KV usage as the fraction (0..1, not 0..100) of blocks held by sequences,
            // prefix-cached blocks no sequence holds counting as free.
            gauge!("vllm:num_requests_waiting").set(s.queue_size as f64);
            gauge!("vllm:num_requests_running").set(s.running as f64);
            let usage = kv_usage(s);
            gauge!("vllm:kv_cache_usage_perc").set(usage);
            gauge!("vllm:gpu_cache_usage_perc").set(usage);
            // Every block holds the same number of tokens (kv_tokens = blocks * block size).
            let block_size = kv_tokens.checked_div(s.blocks_total as usize).unwrap_or(0);
            gauge!(
                "vllm:cache_config_info",
                "block_size" => block_size.to_string(),
                "num_gpu_blocks" => s.blocks_total.to_string()
            )
            .set(1.0);
        });
        self.handle.run_upkeep();
        self.handle.render()
    }
}

/// The fraction of KV blocks held by sequences, 0 when there are none.
fn kv_usage(s: &StatsSnapshot) -> f64 {
    if s.blocks_total == 0 {
        0.0
    } else {
        (s.blocks_used as f64 / s.blocks_total as f64).clamp(0.0, 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_servers_keep_separate_figures() {
        let a = Metrics::new(100, 200);
        let b = Metrics::new(100, 200);
        a.request();
        a.request();
        b.request();
        a.failure("validation");
        a.validated(10, 20);
        a.success(&RequestFigures {
            total: 0.5,
            generated_tokens: 3,
            ..Default::default()
        });
        let stats = StatsSnapshot {
            queue_size: 2,
            blocks_used: 5,
            prefix_hit_tokens: 7,
            ..Default::default()
        };
        let text = a.render(&stats, 1024);
        assert!(text.contains("tgi_request_count 2"), "{text}");
        assert!(
            text.contains("tgi_request_failure{err=\"validation\"} 1"),
            "{text}"
        );
        assert!(text.contains("tgi_request_success 1"), "{text}");
        assert!(text.contains("tgi_request_duration_bucket"), "{text}");
        assert!(text.contains("tgi_queue_size 2"), "{text}");
        assert!(text.contains("wick_kv_blocks_used 5"), "{text}");
        assert!(
            text.contains("wick_prefix_cache_hit_tokens_total 7"),
            "{text}"
        );
        assert!(text.contains("tgi_batch_total_tokens 1024"), "{text}");
        let text = b.render(&StatsSnapshot::default(), 1);
        assert!(text.contains("tgi_request_count 1"), "{text}");
    }

    #[test]
    fn endpoint_picker_names_carry_the_engine_figures() {
        let m = Metrics::new(100, 200);
        let stats = StatsSnapshot {
            queue_size: 3,
            running: 2,
            blocks_total: 64,
            blocks_used: 16,
            blocks_cached: 40,
            ..Default::default()
        };
        let text = m.render(&stats, 64 * 16);
        assert!(text.contains("vllm:num_requests_waiting 3\n"), "{text}");
        assert!(text.contains("vllm:num_requests_running 2\n"), "{text}");
        assert!(text.contains("vllm:kv_cache_usage_perc 0.25\n"), "{text}");
        assert!(text.contains("vllm:gpu_cache_usage_perc 0.25\n"), "{text}");
        assert!(
            text.contains("# TYPE vllm:num_requests_waiting gauge"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE vllm:kv_cache_usage_perc gauge"),
            "{text}"
        );
        let info = text
            .lines()
            .find(|l| l.starts_with("vllm:cache_config_info{"))
            .unwrap_or_else(|| panic!("no vllm:cache_config_info in {text}"));
        assert!(info.contains("block_size=\"16\""), "{info}");
        assert!(info.contains("num_gpu_blocks=\"64\""), "{info}");
        assert!(info.ends_with(" 1"), "{info}");

        // Idle, and before the cache exists: zeros, never NaN.
        let text = m.render(&StatsSnapshot::default(), 0);
        assert!(text.contains("vllm:num_requests_waiting 0\n"), "{text}");
        assert!(text.contains("vllm:num_requests_running 0\n"), "{text}");
        assert!(text.contains("vllm:kv_cache_usage_perc 0\n"), "{text}");
        assert!(!text.contains("NaN"), "{text}");
    }
}
