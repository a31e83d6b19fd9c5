//! `vibrant serve`: an OpenAI- and Ollama-compatible HTTP server. Handlers (axum on tokio)
//! check and tokenize requests, then queue them through a bounded channel to the model's own
//! thread, whose [`scheduler`] batches the running requests into each forward step.

mod grammar;
mod metrics;
mod routes;
mod scheduler;
mod tools;
mod wire;

pub use scheduler::{Limits, StepModel};
pub use tools::reads_calls as template_calls_tools;

use crate::chat::ChatTemplate;
use crate::tokenizer::Tokenizer;
use metrics::Metrics;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::sync_channel;
use std::sync::Arc;
use std::time::Duration;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Builds the model on the model's thread (a CPU backend cannot move between threads).
pub type LoadModel = Box<dyn FnOnce() -> Result<Box<dyn StepModel>, BoxError> + Send>;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("loading the model")]
    Load(#[source] BoxError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("the server failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("the model thread stopped before the model was loaded")]
    ModelThread,
    #[error("the model's thread stopped: {0}")]
    ModelStopped(String),
}

/// How the server listens and what it admits.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub host: String,
    pub port: u16,
    /// Requests waiting for a slot beyond which new ones get 503.
    pub queue: usize,
    /// Bearer token every route but /health requires.
    pub api_key: Option<String>,
    /// Largest request body, in bytes.
    pub max_body: usize,
    /// How long shutdown waits for running requests before cutting them.
    pub shutdown_grace: Duration,
}

/// What the routes tell about the model.
pub struct ModelInfo {
    /// The name clients use in `model`.
    pub name: String,
    pub tokenizer: Tokenizer,
    pub template: Option<ChatTemplate>,
    pub architecture: String,
    pub file_bytes: u64,
    /// The most common tensor type, as Ollama's `quantization_level`.
    pub quantization: String,
    pub n_ctx_train: usize,
    pub n_vocab: usize,
}

/// Loads the model on its thread, then serves until SIGTERM or Ctrl-C.
pub fn serve(config: ServeConfig, info: ModelInfo, load: LoadModel) -> Result<(), ServeError> {
    let info = Arc::new(info);
    let metrics = Arc::new(Metrics::default());
    let stop = Arc::new(AtomicBool::new(false));
    let (jobs_tx, jobs_rx) = sync_channel(config.queue.max(1));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let ended = Arc::new(tokio::sync::Notify::new());
    let thread = {
        let (info, metrics, stop) = (info.clone(), metrics.clone(), stop.clone());
        let ended = ended.clone();
        std::thread::Builder::new()
            .name("vibrant-model".into())
            .spawn(move || {
                let mut model = match load() {
                    Ok(model) => model,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return None;
                    }
                };
                let limits = model.limits();
                let _up = ModelUp::new(&metrics, &ended);
                let _ = ready_tx.send(Ok(limits));
                let mut scheduler = scheduler::Scheduler::new(&info.tokenizer, limits, &metrics);
                scheduler.run(&mut *model, &jobs_rx, &stop)
            })?
    };
    let limits = ready_rx
        .recv()
        .map_err(|_| ServeError::ModelThread)?
        .map_err(ServeError::Load)?;
    let state = routes::AppState::new(config.clone(), info, limits, metrics, jobs_tx);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let served = runtime.block_on(listen(config, state, ended));
    stop.store(true, Ordering::Relaxed);
    let joined = thread.join();
    // Handlers cut off at the grace period may still hold their tasks: do not wait on them.
    runtime.shutdown_background();
    match joined {
        Ok(None) => served,
        Ok(Some(lost)) => Err(ServeError::ModelStopped(lost)),
        Err(_) => Err(ServeError::ModelStopped("it panicked".into())),
    }
}

/// Marks the model's thread as serving while it lives, and tells the server when it ends,
/// however it ends.
struct ModelUp<'m> {
    metrics: &'m Metrics,
    ended: &'m tokio::sync::Notify,
}

impl<'m> ModelUp<'m> {
    fn new(metrics: &'m Metrics, ended: &'m tokio::sync::Notify) -> Self {
        metrics.model_up.store(true, Ordering::Relaxed);
        Self { metrics, ended }
    }
}

impl Drop for ModelUp<'_> {
    fn drop(&mut self) {
        self.metrics.model_up.store(false, Ordering::Relaxed);
        self.ended.notify_one();
    }
}

/// Serves until a signal, or until the model's thread ends (`ended`).
async fn listen(
    config: ServeConfig,
    state: routes::AppState,
    ended: Arc<tokio::sync::Notify>,
) -> Result<(), ServeError> {
    let addr = format!("{}:{}", config.host, config.port);
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|source| ServeError::Bind {
            addr: addr.clone(),
            source,
        })?;
    eprintln!(
        "vibrant serve: listening on http://{}",
        listener.local_addr()?
    );
    let signalled = Arc::new(tokio::sync::Notify::new());
    let server = {
        let signalled = signalled.clone();
        axum::serve(listener, routes::router(state)).with_graceful_shutdown(async move {
            let why = tokio::select! {
                why = shutdown_signal() => why,
                _ = ended.notified() => "the model's thread ended",
            };
            eprintln!("vibrant serve: shutting down ({why}), finishing running requests");
            signalled.notify_one();
        })
    };
    let grace = config.shutdown_grace;
    tokio::select! {
        served = server => served?,
        _ = async { signalled.notified().await; tokio::time::sleep(grace).await } => {
            eprintln!("vibrant serve: requests still running after {} s are cut", grace.as_secs_f64());
        }
    }
    Ok(())
}

/// Ctrl-C or SIGTERM, named. A signal that cannot be listened for never comes.
async fn shutdown_signal() -> &'static str {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => drop(s.recv().await),
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => "SIGINT",
        _ = term => "SIGTERM",
    }
}
