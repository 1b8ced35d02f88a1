//! The `wick` command line.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use wick::config::ModelsConfig;
use wick::engine::{
    generate_greedy, greedy_request, run_to_end, CacheConfig, EngineConfig, EngineCore,
    EngineStats, ModelRunner, SchedulerConfig,
};
use wick::hub::{self, HubOptions};
use wick::kv::DEFAULT_BLOCK_SIZE;
use wick::model::{self, LoadOptions, LoadedModel};
use wick::tokenizer::ChatMessage;

#[derive(Parser, Debug)]
#[command(
    name = "wick",
    version,
    about = "A native LLM inference engine and server"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Generate text for one prompt, streamed to stdout (greedy).
    Generate(GenerateArgs),
    /// Print the local path of a model's files, fetching them if needed.
    ModelPath(ModelArgs),
    /// Measure prefill and single-stream decode throughput on a model.
    Bench(BenchArgs),
    /// Load-test a running TGI- or OpenAI-compatible server over HTTP: throughput, TTFT,
    /// TPOT and latency percentiles for each concurrency level.
    #[cfg(feature = "loadgen")]
    Benchmark(wick::loadgen::cli::BenchmarkArgs),
    /// Serve a model over HTTP: Hugging Face TGI's and OpenAI's APIs (TGI's launcher flags).
    Serve(wick::config::LauncherArgs),
}

/// Which model to run and how much KV cache to give it.
#[derive(Args, Debug, Clone)]
struct ModelArgs {
    /// A name from models.toml, a .gguf file or snapshot directory, or a Hugging Face
    /// repo id (`org/name`). Default: the models.toml default.
    #[arg(long, env = "MODEL_ID")]
    model_id: Option<String>,
    /// A models.toml to use instead of the embedded one.
    #[arg(long, env = "WICK_MODELS_CONFIG")]
    models_config: Option<PathBuf>,
    /// Tokens per KV cache block.
    #[arg(long, env = "BLOCK_SIZE", default_value_t = DEFAULT_BLOCK_SIZE)]
    block_size: usize,
    /// KV cache size in tokens; default: a fraction of available memory.
    #[arg(long, env = "MAX_BATCH_TOTAL_TOKENS")]
    max_batch_total_tokens: Option<usize>,
    /// Fraction of available memory for the KV cache when no token budget is given.
    #[arg(long, env = "WICK_KV_MEMORY_FRACTION", default_value_t = 0.2)]
    kv_memory_fraction: f64,
    /// Worker threads for the CPU kernels (default: all cores).
    #[arg(long, env = "WICK_THREADS")]
    threads: Option<usize>,
    /// Where the model runs: auto, cpu, cuda or cuda:N.
    #[arg(long, env = "WICK_DEVICE", default_value = "auto")]
    device: String,
}

#[derive(Args, Debug)]
struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The prompt.
    #[arg(long)]
    prompt: String,
    /// Wrap the prompt as a user message in the model's chat template.
    #[arg(long)]
    chat: bool,
    /// A system message (with --chat).
    #[arg(long, requires = "chat")]
    system: Option<String>,
    #[arg(long, default_value_t = 256)]
    max_new_tokens: usize,
    /// Most prompt tokens in one forward pass; longer prompts are prefilled in chunks.
    #[arg(long, env = "MAX_BATCH_PREFILL_TOKENS", default_value_t = 4096)]
    max_batch_prefill_tokens: usize,
}

#[derive(Args, Debug)]
struct BenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[arg(long, default_value_t = 512)]
    prompt_tokens: usize,
    #[arg(long, default_value_t = 128)]
    decode_tokens: usize,
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// Keeps freed memory in the process: each forward pass allocates its activations afresh
/// (tens of MB in a 512-token prefill), and with glibc's defaults the large ones are
/// mmapped and unmapped every step and the heap top trimmed, so every step paid page
/// faults on zero-filled pages (7.7% of a Q6_K prefill's profile; +7% prefill tok/s with
/// these settings on a 2-core VM). Buffers up to 32 MiB (glibc's largest threshold) come
/// from the heap, and the heap is never trimmed: resident memory stays at the largest
/// step's, as it would with a workspace arena.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before any thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

fn main() {
    keep_freed_memory();
    let cli = Cli::parse();
    let threads = match &cli.command {
        Command::Generate(a) => a.model.threads,
        Command::ModelPath(a) => a.threads,
        Command::Bench(a) => a.model.threads,
        #[cfg(feature = "loadgen")]
        Command::Benchmark(_) => None,
        Command::Serve(a) => a.threads,
    };
    if let Some(n) = threads {
        // Read by candle's worker pool when it starts; no thread exists yet.
        std::env::set_var("RAYON_NUM_THREADS", n.max(1).to_string());
    }
    // The server logs one line per request (as JSON lines with --json-output).
    let (default_filter, json_logs) = match &cli.command {
        Command::Serve(a) => ("warn,wick=info", a.json_output),
        _ => ("warn", false),
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    if json_logs {
        tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    } else {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    }
    let result = match cli.command {
        Command::Generate(a) => generate(a),
        Command::ModelPath(a) => model_path(a),
        Command::Bench(a) => bench(a),
        #[cfg(feature = "loadgen")]
        Command::Benchmark(a) => wick::loadgen::run_cli(a),
        Command::Serve(a) => wick::app::run(a),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn resolve(args: &ModelArgs) -> Result<hub::ResolvedModel> {
    let models = ModelsConfig::load(args.models_config.as_deref())?;
    hub::resolve(args.model_id.as_deref(), &models, &HubOptions::from_env())
}

fn load(args: &ModelArgs) -> Result<(LoadedModel, CacheConfig)> {
    let resolved = resolve(args)?;
    let opts = LoadOptions {
        device: model::select_device(&args.device)?,
        ..LoadOptions::default()
    };
    let loaded = model::load(&resolved, &opts)?;
    let cache = CacheConfig::for_device(
        loaded.model.config(),
        loaded.model.device(),
        args.block_size,
        args.max_batch_total_tokens,
        args.kv_memory_fraction,
        1.0,
        1 << 30,
    )?;
    Ok((loaded, cache))
}

fn model_path(args: ModelArgs) -> Result<()> {
    println!("{}", resolve(&args)?.path.display());
    Ok(())
}

fn generate(args: GenerateArgs) -> Result<()> {
    let (loaded, cache) = load(&args.model)?;
    let LoadedModel {
        model,
        tokenizer,
        chat_template,
        ..
    } = loaded;
    let text = if args.chat {
        let template = tokenizer.chat(chat_template.as_deref())?.context(
            "this model has no chat template: drop --chat or set chat_template in models.toml",
        )?;
        let mut messages = Vec::new();
        if let Some(system) = args.system {
            messages.push(ChatMessage {
                role: "system".into(),
                content: system,
                ..Default::default()
            });
        }
        messages.push(ChatMessage {
            role: "user".into(),
            content: args.prompt,
            ..Default::default()
        });
        template.render(&messages, true)?
    } else {
        args.prompt
    };
    let prompt = tokenizer.encode(&text, true)?;
    if prompt.is_empty() {
        anyhow::bail!("the prompt is empty after tokenization");
    }
    let runner = ModelRunner::try_new(model, cache)?;
    let scheduler = SchedulerConfig {
        max_batch_prefill_tokens: args.max_batch_prefill_tokens,
        ..SchedulerConfig::default()
    };
    let mut engine = engine(runner, tokenizer, scheduler);
    let mut stdout = std::io::stdout().lock();
    generate_greedy(
        &mut engine,
        &[prompt],
        args.max_new_tokens,
        true,
        |_, token| {
            let _ = stdout.write_all(token.text_piece.as_bytes());
            let _ = stdout.flush();
        },
    )?;
    writeln!(stdout)?;
    Ok(())
}

/// The engine's step loop over `runner`, run in place.
fn engine(
    runner: ModelRunner,
    tokenizer: wick::tokenizer::Tokenizer,
    scheduler: SchedulerConfig,
) -> EngineCore {
    let config = EngineConfig {
        scheduler,
        check_invariants: false,
        ..EngineConfig::default()
    };
    EngineCore::new(
        runner,
        std::sync::Arc::new(tokenizer),
        std::sync::Arc::new(EngineStats::default()),
        config,
    )
}

fn bench(args: BenchArgs) -> Result<()> {
    anyhow::ensure!(
        args.prompt_tokens > 0 && args.decode_tokens > 0,
        "token counts must be positive"
    );
    let (loaded, mut cache) = load(&args.model)?;
    let vocab = loaded.model.config().vocab_size as u32;
    let need = args.prompt_tokens.max(8 + args.decode_tokens) + cache.block_size;
    cache.num_blocks = cache.num_blocks.max(need.div_ceil(cache.block_size));
    let runner = ModelRunner::try_new(loaded.model, cache)?;
    // The whole prompt in one step, computed anew each time.
    let scheduler = SchedulerConfig {
        max_batch_prefill_tokens: args.prompt_tokens.max(8),
        prefix_caching: false,
        ..SchedulerConfig::default()
    };
    let mut engine = engine(runner, loaded.tokenizer, scheduler);
    // A fixed pseudo-random prompt of exactly `prompt_tokens` ids.
    let prompt: Vec<u32> = (0..args.prompt_tokens as u64)
        .map(|i| (100 + (i * 2654435761) % (vocab as u64 - 200)) as u32)
        .collect();
    let mut best_prefill = f64::MAX;
    let mut best_decode = f64::MAX;
    for _ in 0..args.repeats.max(1) + 1 {
        // Prefill: from the step that starts the prompt to its first token.
        let t = run_to_end(&mut engine, greedy_request(0, prompt.clone(), 1, false))?.timings;
        best_prefill = best_prefill.min((t.first_token - t.started).as_secs_f64());
        // Decode: `decode_tokens` steps of one token after an 8-token prompt's first.
        let request = greedy_request(1, prompt[..8].to_vec(), args.decode_tokens + 1, false);
        let t = run_to_end(&mut engine, request)?.timings;
        best_decode = best_decode.min((t.finished - t.first_token).as_secs_f64());
    }
    let prefill = args.prompt_tokens as f64 / best_prefill;
    let decode = args.decode_tokens as f64 / best_decode;
    let threads = candle_core::utils::get_num_threads();
    let kernels = wick::model::linear::kernel_report();
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "engine": "wick",
                "prefill_tok_s": prefill,
                "decode_tok_s": decode,
                "threads": threads,
                "kernels": kernels,
                "prompt_tokens": args.prompt_tokens,
                "decode_tokens": args.decode_tokens,
            })
        );
    } else {
        println!("prefill: {prefill:.1} tok/s ({} tokens), decode: {decode:.1} tok/s ({} tokens), {threads} threads", args.prompt_tokens, args.decode_tokens);
        println!("kernels: {kernels}");
    }
    Ok(())
}
