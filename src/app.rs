//! The `wick serve` application: loads the model (models.toml or the hub), starts the
//! engine, builds the server's state and router, binds the listener and serves until a
//! signal, then shuts down gracefully. `server` is the library of routes and state this
//! puts together.

use std::future::{Future, IntoFuture};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::config::{LauncherArgs, ModelsConfig};
use crate::engine::EngineHandle;
use crate::grammar::{GrammarCompiler, GrammarLimits};
use crate::hub::{self, HubOptions};
use crate::model::{self, LoadOptions};
use crate::server::{self, AppState, ServerOptions};

/// Serves `engine` on `listener` until `shutdown` completes, then stops accepting
/// connections, lets in-flight requests finish for up to `options.shutdown_timeout`,
/// stops the engine (requests still running end with an error event) and returns.
pub async fn serve<F>(
    listener: tokio::net::TcpListener,
    engine: EngineHandle,
    options: ServerOptions,
    shutdown: F,
) -> Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    let timeout = options.shutdown_timeout;
    let grammar = if options.disable_grammar_support {
        None
    } else {
        // Once, over the model's vocabulary: the token trie every grammar's masks use.
        let compiler = GrammarCompiler::new(
            engine.tokenizer().clone(),
            engine.model_config().vocab_size,
            GrammarLimits::default(),
        )
        .context("building the grammar compiler over the model's vocabulary")?;
        Some(std::sync::Arc::new(compiler))
    };
    let state = AppState::new(engine.clone(), options, grammar)?;
    let app = server::router(state.clone())?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        let _ = stop_rx.await;
    });
    let mut server = tokio::spawn(server.into_future());
    let engine_stopped = {
        let engine = engine.clone();
        async move {
            while !engine.has_stopped() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    tokio::select! {
        r = &mut server => {
            engine.shutdown();
            return r.context("the server task failed")?.context("the server failed");
        }
        _ = shutdown => {}
        _ = engine_stopped => {
            // Requests in flight have failed with it; a server without an engine would
            // only answer errors, so it stops (and `wick serve` exits non-zero).
            tracing::error!("the engine stopped unexpectedly: the server stops");
            state.begin_shutdown();
            let _ = stop_tx.send(());
            if tokio::time::timeout(Duration::from_secs(10), &mut server).await.is_err() {
                server.abort();
            }
            anyhow::bail!("the engine stopped unexpectedly");
        }
    }
    tracing::info!(
        "shutting down: no new connections, in-flight requests get {}s to finish",
        timeout.as_secs_f64()
    );
    state.begin_shutdown();
    let _ = stop_tx.send(());
    let finished = match tokio::time::timeout(timeout, &mut server).await {
        Ok(r) => Some(r),
        Err(_) => {
            tracing::warn!("shutdown deadline reached: cancelling the requests still running");
            engine.shutdown();
            tokio::time::timeout(Duration::from_secs(10), &mut server)
                .await
                .ok()
        }
    };
    engine.shutdown();
    match finished {
        Some(r) => r
            .context("the server task failed")?
            .context("the server failed"),
        None => {
            server.abort();
            Ok(())
        }
    }
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
    tracing::info!("signal received");
}

fn parse_dtype(s: &str) -> Result<candle_core::DType> {
    use candle_core::DType;
    Ok(match s.to_ascii_lowercase().as_str() {
        "float16" | "f16" | "half" => DType::F16,
        "bfloat16" | "bf16" => DType::BF16,
        "float32" | "f32" | "float" => DType::F32,
        other => anyhow::bail!("unsupported --dtype {other:?} (float16, bfloat16 or float32)"),
    })
}

/// `wick serve`: loads the model, starts the engine and serves until SIGINT/SIGTERM.
pub fn run(args: LauncherArgs) -> Result<()> {
    for flag in args.ignored_flags() {
        tracing::warn!("{flag} is accepted for compatibility with TGI and has no effect");
    }
    let models = ModelsConfig::load(args.models_config.as_deref())?;
    let model_id = args.model_id_with_revision();
    let resolved = hub::resolve(model_id.as_deref(), &models, &HubOptions::from_env())?;
    let mut load = LoadOptions {
        device: model::select_device(&args.device)?,
        ..LoadOptions::default()
    };
    if let Some(d) = &args.dtype {
        load.dtype = Some(parse_dtype(d)?);
    }
    let loaded = model::load(&resolved, &load)?;
    let name = args.model_id.clone().unwrap_or_else(|| loaded.name.clone());
    let engine = EngineHandle::start(loaded, args.engine_config())?;
    let options = ServerOptions::from_args(&args, name.clone());
    let addr = args.bind_addr();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("wick-http")
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        tracing::info!("serving {name} on http://{}", listener.local_addr()?);
        serve(listener, engine, options, shutdown_signal()).await
    })
}
