//! `wick benchmark`: a serving load generator for any TGI- or OpenAI-compatible server.
//!
//! For each concurrency level of the sweep it sends `--num-prompts` streaming requests,
//! at most `level` at a time (closed loop, or Poisson arrivals with `--request-rate`), and
//! reports request and token throughput, TTFT, TPOT, inter-token and end-to-end latency
//! (p50/p90/p99) and errors by kind. Prompts are synthetic, of an exact token length
//! measured with the served model's tokenizer, or read from a file; the same `--seed`
//! gives the same prompts and arrival times, so runs against different servers compare.

pub mod cli;
pub mod client;
pub mod report;
pub mod workload;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use cli::{Api, BenchmarkArgs};
use client::{Client, ErrorKind, RequestError, RequestResult};
use report::{BenchmarkReport, LevelReport};
use workload::{Prompt, Rng, TokenCounter};

/// Runs `wick benchmark`: the sweep, then the table on stdout and the optional JSON and
/// chart files.
pub fn run_cli(args: BenchmarkArgs) -> Result<()> {
    args.validate()?;
    // One thread is plenty to drive a few hundred streams, and leaves the cores to the
    // server when both share a machine.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let report = rt.block_on(run(&args))?;
    print!("{}", report.table());
    if let Some(path) = &args.json_out {
        let json = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, json + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(path) = &args.chart_out {
        report::write_chart(&[&report], path)?;
    }
    Ok(())
}

fn progress(args: &BenchmarkArgs, len: usize, what: String) -> ProgressBar {
    if args.quiet {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::with_draw_target(Some(len as u64), ProgressDrawTarget::stderr());
    pb.set_style(
        ProgressStyle::with_template(
            "{msg:>24} [{elapsed_precise}] {wide_bar} {pos}/{len} ({eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb.set_message(what);
    pb
}

/// Runs the sweep and returns the report.
pub async fn run(args: &BenchmarkArgs) -> Result<BenchmarkReport> {
    args.validate()?;
    let client = Arc::new(
        Client::new(
            &args.url,
            args.api,
            &args.model,
            args.api_key.as_deref(),
            Duration::from_secs_f64(args.timeout),
        )?
        .with_extra_body(args.extra_body.clone().unwrap_or_default()),
    );
    let date = chrono::Local::now()
        .format("%Y-%m-%d %H:%M:%S %z")
        .to_string();

    let counts: Vec<usize> = args
        .concurrency
        .iter()
        .map(|&c| args.prompts_for(c))
        .collect();
    let total = args.warmup + counts.iter().sum::<usize>();
    let (prompts, counter_name) = prepare_prompts(args, &client, total).await?;
    let measured: Vec<usize> = prompts.iter().filter_map(|p| p.tokens).collect();
    let mean_prompt_tokens = (!measured.is_empty())
        .then(|| measured.iter().sum::<usize>() as f64 / measured.len() as f64);
    let mut prompts = prompts.into_iter();

    if args.warmup > 0 {
        let warm: Vec<Prompt> = prompts.by_ref().take(args.warmup).collect();
        let pb = progress(args, warm.len(), "warm-up".into());
        let (results, _) = run_level(&client, warm, 1, None, args.output_len, &pb).await;
        pb.finish_and_clear();
        if let Some(Err(e)) = results.iter().find(|r| r.is_err()) {
            if results.iter().all(|r| r.is_err())
                && matches!(
                    e.kind,
                    ErrorKind::Connect | ErrorKind::Http(401 | 403 | 404)
                )
            {
                anyhow::bail!(
                    "the warm-up request to {} failed ({e}): is the server up, and does it speak the {} API?",
                    args.url,
                    args.api.as_str()
                );
            }
            eprintln!("warning: a warm-up request failed: {e}");
        }
    }

    let mut levels = Vec::new();
    for (&c, &n) in args.concurrency.iter().zip(&counts) {
        let level_prompts: Vec<Prompt> = prompts.by_ref().take(n).collect();
        let pb = progress(args, n, format!("concurrency {c}"));
        let arrivals = args.request_rate.map(|rate| {
            let mut rng = Rng::derive(args.seed ^ 0xA221_7A15, c as u64);
            workload::poisson_arrivals(n, rate, &mut rng)
        });
        let (results, duration) =
            run_level(&client, level_prompts, c, arrivals, args.output_len, &pb).await;
        pb.finish_and_clear();
        let level = LevelReport::summarize(c, &results, duration, args.output_len);
        if !args.quiet {
            eprintln!(
                "concurrency {c}: {}/{} ok, {:.1} output tok/s, TTFT p50 {:.0} ms",
                level.completed, level.num_prompts, level.output_throughput, level.ttft_ms.p50
            );
        }
        levels.push(level);
    }

    Ok(BenchmarkReport {
        label: args.label.clone().unwrap_or_else(|| args.url.clone()),
        url: args.url.clone(),
        api: args.api.as_str().to_string(),
        date,
        input_len: args.prompts_file.is_none().then_some(args.input_len),
        output_len: args.output_len,
        request_rate: args.request_rate,
        seed: args.seed,
        prompt_tokens_by: counter_name,
        mean_prompt_tokens,
        levels,
    })
}

/// Chooses how to measure prompts and builds `total` of them.
async fn prepare_prompts(
    args: &BenchmarkArgs,
    client: &Client,
    total: usize,
) -> Result<(Vec<Prompt>, String)> {
    if let Some(path) = &args.prompts_file {
        let lines = workload::load_prompts_file(path)?;
        let prompts = (0..total)
            .map(|i| Prompt {
                text: lines[i % lines.len()].clone(),
                tokens: None,
            })
            .collect();
        return Ok((prompts, format!("file {}", path.display())));
    }
    let counter = match &args.tokenizer {
        Some(model) => TokenCounter::local(model)
            .with_context(|| format!("loading the tokenizer of {model}"))?,
        None => match client.api() {
            Api::Tgi => match client.tokenize_count("hello world").await {
                Ok(_) => TokenCounter::Remote(Box::new(client.clone())),
                Err(e) => {
                    eprintln!(
                        "warning: cannot count tokens with the server's /tokenize ({e:#}); \
                         prompts will have about {} tokens (pass --tokenizer for exact lengths)",
                        args.input_len
                    );
                    TokenCounter::Estimate
                }
            },
            Api::Openai => {
                eprintln!(
                    "warning: no --tokenizer given: prompts will have about {} tokens",
                    args.input_len
                );
                TokenCounter::Estimate
            }
        },
    };
    let pb = progress(args, total, "preparing prompts".into());
    let mut prompts = Vec::with_capacity(total);
    for i in 0..total {
        let mut rng = Rng::derive(args.seed, i as u64);
        prompts.push(workload::synthetic_prompt(&counter, args.input_len, &mut rng).await?);
        pb.inc(1);
    }
    pb.finish_and_clear();
    let off = prompts
        .iter()
        .filter(|p| p.tokens.is_some_and(|n| n != args.input_len))
        .count();
    if off > 0 {
        eprintln!(
            "warning: {off} of {total} prompts could not be made exactly {} tokens long",
            args.input_len
        );
    }
    Ok((prompts, counter.describe().to_string()))
}

/// Sends `prompts`, at most `concurrency` in flight, each when its arrival time (if any)
/// has come; returns the results in prompt order and the wall time from the first send
/// to the last answer.
async fn run_level(
    client: &Arc<Client>,
    prompts: Vec<Prompt>,
    concurrency: usize,
    arrivals: Option<Vec<Duration>>,
    output_len: usize,
    pb: &ProgressBar,
) -> (Vec<Result<RequestResult, RequestError>>, Duration) {
    let n = prompts.len();
    let permits = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    let start = Instant::now();
    for (i, prompt) in prompts.into_iter().enumerate() {
        if let Some(at) = arrivals.as_ref().and_then(|a| a.get(i)) {
            tokio::time::sleep_until(tokio::time::Instant::from_std(start + *at)).await;
        }
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break; // never closed
        };
        let client = client.clone();
        let pb = pb.clone();
        tasks.spawn(async move {
            let r = client.generate(&prompt.text, output_len).await;
            drop(permit);
            pb.inc(1);
            (i, r)
        });
    }
    let mut results: Vec<Option<Result<RequestResult, RequestError>>> = vec![None; n];
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((i, r)) => results[i] = Some(r),
            Err(e) => eprintln!("warning: a request task failed: {e}"),
        }
    }
    let duration = start.elapsed();
    let results = results
        .into_iter()
        .map(|r| {
            r.unwrap_or_else(|| {
                Err(RequestError {
                    kind: ErrorKind::Incomplete,
                    message: "the request task was lost".into(),
                })
            })
        })
        .collect();
    (results, duration)
}
