//! The axum application: routes, limits, model selection, graceful shutdown.
//!
//! | route | |
//! |---|---|
//! | `GET /` | the web page |
//! | `GET /healthz` | `{"status":"ok","models":N}` |
//! | `GET /v1/models` | the served models ([`ModelInfo`]) |
//! | `POST /v1/caption`, `/v1/vqa`, `/v1/entail` | predictions (multipart or JSON, see [`crate::request`]) |
//! | `GET /v1/examples`, `GET /examples/{name}` | example images from `--examples DIR` |
//!
//! Limits: bodies over `max_upload_bytes` get 413 (checked on `Content-Length` before
//! reading, and while reading); at most `max_inflight` prediction requests are admitted at
//! once, the next get 503 with `Retry-After`; a request body must arrive within
//! `request_timeout` (else 408) and the answer within the same time (else 503 with
//! `Retry-After`). A connection that does not deliver a request's headers within
//! `header_timeout` is closed, and at most `max_connections` are open at once. Decoding and inference run off the async runtime (blocking pool, model
//! worker threads).

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path as UrlPath, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use tokio::sync::{oneshot, Semaphore};

use close_core::{Error, Result};

use crate::api_error::ApiError;
use crate::predictor::{Beam, DecodeOptions, ModelInfo, Neighbor, Predictor, Query, Task};
use crate::request::{self, BodyKind};
use crate::worker::{Job, Worker};

/// The web page (`GET /`).
pub const PAGE_HTML: &str = include_str!("page.html");

/// Largest beam width a request may ask for.
pub const MAX_BEAMS: usize = 16;
/// Largest number of nearest captions a request may ask for.
pub const MAX_NEIGHBORS: usize = 50;

/// Server settings.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
#[serde(default)]
pub struct ServeConfig {
    /// Listening address; loopback by default.
    pub addr: SocketAddr,
    /// Largest accepted request body (413 above).
    pub max_upload_bytes: usize,
    /// Time allowed to receive a body, and again to produce the answer.
    pub request_timeout: Duration,
    /// Prediction requests admitted at once (503 + Retry-After beyond).
    pub max_inflight: usize,
    /// Largest batch handed to a model.
    pub max_batch: usize,
    /// Time a connection may take to send a request's headers, counted from when the server
    /// starts waiting for them (also on an idle keep-alive connection); then it is closed.
    pub header_timeout: Duration,
    /// Open connections at once; further clients wait in the listen backlog.
    pub max_connections: usize,
    /// Optional folder of example images offered on the page.
    pub examples_dir: Option<PathBuf>,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_upload_bytes: 10 * 1024 * 1024,
            request_timeout: Duration::from_secs(30),
            max_inflight: 64,
            max_batch: 16,
            header_timeout: Duration::from_secs(10),
            max_connections: 256,
            examples_dir: None,
        }
    }
}

impl ServeConfig {
    pub fn validate(&self) -> Result<()> {
        if self.max_upload_bytes < 1024 {
            return Err(Error::config("max_upload_bytes", "must be at least 1024"));
        }
        if self.max_inflight == 0 {
            return Err(Error::config("max_inflight", "must be at least 1"));
        }
        if self.max_batch == 0 {
            return Err(Error::config("max_batch", "must be at least 1"));
        }
        if self.request_timeout.is_zero() {
            return Err(Error::config("request_timeout", "must be positive"));
        }
        if self.header_timeout.is_zero() {
            return Err(Error::config("header_timeout", "must be positive"));
        }
        if self.max_connections == 0 {
            return Err(Error::config("max_connections", "must be at least 1"));
        }
        Ok(())
    }
}

struct Served {
    info: ModelInfo,
    worker: Worker,
}

/// Shared state of the application.
pub struct AppState {
    cfg: ServeConfig,
    models: Vec<Served>,
    permits: Arc<Semaphore>,
    examples: Vec<String>,
}

impl AppState {
    /// Start one worker thread per predictor. Model names must be unique.
    pub fn new(cfg: ServeConfig, predictors: Vec<Box<dyn Predictor>>) -> Result<Self> {
        cfg.validate()?;
        if predictors.is_empty() {
            return Err(Error::invalid("no model to serve"));
        }
        let mut models: Vec<Served> = Vec::new();
        for p in predictors {
            let info = p.info();
            if models.iter().any(|m| m.info.name == info.name) {
                return Err(Error::invalid(format!(
                    "two served models are named `{}`; model names must be unique",
                    info.name
                )));
            }
            let worker = Worker::spawn(p, cfg.max_batch)
                .map_err(|e| Error::invalid(format!("cannot start a worker thread: {e}")))?;
            models.push(Served { info, worker });
        }
        let examples = match &cfg.examples_dir {
            Some(d) => list_examples(d)?,
            None => Vec::new(),
        };
        let permits = Arc::new(Semaphore::new(cfg.max_inflight));
        Ok(Self {
            cfg,
            models,
            permits,
            examples,
        })
    }

    pub fn models(&self) -> Vec<ModelInfo> {
        self.models.iter().map(|m| m.info.clone()).collect()
    }
}

/// Image files directly inside `dir` (sorted, at most 500).
fn list_examples(dir: &std::path::Path) -> Result<Vec<String>> {
    let rd = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut names: Vec<String> = rd
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
        .filter_map(|e| e.file_name().to_str().map(|s| s.to_string()))
        .filter(|n| image_mime(n).is_some())
        .collect();
    names.sort();
    names.truncate(500);
    Ok(names)
}

fn image_mime(name: &str) -> Option<&'static str> {
    let lower = name.to_ascii_lowercase();
    let ext = lower.rsplit_once('.')?.1.to_string();
    match ext.as_str() {
        "png" => Some("image/png"),
        "jpg" | "jpeg" => Some("image/jpeg"),
        "webp" => Some("image/webp"),
        _ => None,
    }
}

/// Build the router over a state.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(|| async { Html(PAGE_HTML) }))
        .route("/healthz", get(healthz))
        .route("/v1/models", get(models))
        .route("/v1/examples", get(examples))
        .route("/examples/{name}", get(example_file))
        .route(
            "/v1/caption",
            post(|s: State<Arc<AppState>>, r: Request| predict(s, r, Task::Caption)),
        )
        .route(
            "/v1/vqa",
            post(|s: State<Arc<AppState>>, r: Request| predict(s, r, Task::Vqa)),
        )
        .route(
            "/v1/entail",
            post(|s: State<Arc<AppState>>, r: Request| predict(s, r, Task::Entail)),
        )
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such route; see GET /v1/models and POST /v1/{caption,vqa,entail}",
            )
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed on this route",
            )
        })
        .with_state(state)
}

async fn healthz(State(s): State<Arc<AppState>>) -> impl IntoResponse {
    Json(serde_json::json!({
        "status": "ok",
        "models": s.models.len(),
        "inflight": s.cfg.max_inflight - s.permits.available_permits(),
        "max_inflight": s.cfg.max_inflight,
    }))
}

async fn models(State(s): State<Arc<AppState>>) -> impl IntoResponse {
    Json(serde_json::json!({ "models": s.models(), "max_upload_bytes": s.cfg.max_upload_bytes }))
}

async fn examples(State(s): State<Arc<AppState>>) -> impl IntoResponse {
    Json(serde_json::json!({ "examples": s.examples }))
}

async fn example_file(State(s): State<Arc<AppState>>, UrlPath(name): UrlPath<String>) -> Response {
    // Only names listed at startup: no path traversal.
    let (Some(dir), true) = (&s.cfg.examples_dir, s.examples.contains(&name)) else {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no example image `{name}`"),
        )
        .into_response();
    };
    match tokio::fs::read(dir.join(&name)).await {
        Ok(bytes) => {
            let mime = image_mime(&name).unwrap_or("application/octet-stream");
            (
                [
                    (header::CONTENT_TYPE, mime),
                    (header::CACHE_CONTROL, "no-cache"),
                ],
                bytes,
            )
                .into_response()
        }
        Err(e) => ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("example `{name}`: {e}"),
        )
        .into_response(),
    }
}

/// The answer to a prediction request.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct PredictResponse {
    pub model: String,
    pub task: Task,
    /// The best beam's text.
    pub answer: String,
    /// The best beam's summed log-probability.
    pub logprob: f32,
    pub beams: Vec<Beam>,
    pub neighbors: Vec<Neighbor>,
    /// The question / hypothesis used (trimmed), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    pub options: DecodeOptions,
    /// Server-side time for the whole request.
    pub elapsed_ms: f64,
}

async fn predict(State(s): State<Arc<AppState>>, req: Request, task: Task) -> Response {
    let start = Instant::now();
    // Admission: a full server answers at once instead of queueing without bound.
    let Ok(_permit) = s.permits.clone().try_acquire_owned() else {
        return ApiError::unavailable(
            "busy",
            format!(
                "server is at capacity ({} requests in flight); retry shortly",
                s.cfg.max_inflight
            ),
            1,
        )
        .into_response();
    };
    let result = handle(&s, req, task, start).await;
    match result {
        Ok(r) => Json(r).into_response(),
        Err(e) => {
            if e.status.is_server_error() && e.status != StatusCode::SERVICE_UNAVAILABLE {
                tracing::error!("{task}: {e}");
            } else {
                tracing::debug!("{task}: {e}");
            }
            e.into_response()
        }
    }
}

async fn read_body(
    s: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> std::result::Result<axum::body::Bytes, ApiError> {
    let limit = s.cfg.max_upload_bytes;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("request body exceeds the upload limit of {limit} bytes"),
        )
    };
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if len > limit as u64 {
            return Err(too_large());
        }
    }
    match tokio::time::timeout(s.cfg.request_timeout, axum::body::to_bytes(body, limit)).await {
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "timeout",
            "request body not received in time",
        )),
        Ok(Ok(b)) => Ok(b),
        Ok(Err(e)) => {
            let mut src: Option<&(dyn std::error::Error + 'static)> = Some(&e);
            while let Some(x) = src {
                if x.to_string().contains("length limit exceeded") {
                    return Err(too_large());
                }
                src = x.source();
            }
            Err(ApiError::bad_request(
                "bad_body",
                format!("could not read the request body: {e}"),
            ))
        }
    }
}

fn pick_model<'a>(
    s: &'a AppState,
    task: Task,
    name: Option<&str>,
) -> std::result::Result<&'a Served, ApiError> {
    let of_task: Vec<&str> = s
        .models
        .iter()
        .filter(|m| m.info.task == task)
        .map(|m| m.info.name.as_str())
        .collect();
    match name {
        None => s
            .models
            .iter()
            .find(|m| m.info.task == task)
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    "no_model",
                    format!(
                        "no {task} model is served (served: {})",
                        s.models
                            .iter()
                            .map(|m| format!("{} ({})", m.info.name, m.info.task))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )
            }),
        Some(n) => match s.models.iter().find(|m| m.info.name == n) {
            Some(m) if m.info.task == task => Ok(m),
            Some(m) => Err(ApiError::bad_request(
                "wrong_task",
                format!(
                    "model `{n}` is a {} model; {task} models: [{}]",
                    m.info.task,
                    of_task.join(", ")
                ),
            )),
            None => Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_model",
                format!(
                    "unknown model `{n}`; {task} models: [{}]",
                    of_task.join(", ")
                ),
            )),
        },
    }
}

fn options(
    info: &ModelInfo,
    r: &request::RawRequest,
) -> std::result::Result<DecodeOptions, ApiError> {
    let d = info.defaults;
    let o = DecodeOptions {
        beams: r.beams.unwrap_or(d.beams),
        max_tokens: r.max_tokens.unwrap_or(d.max_tokens),
        neighbors: r.neighbors.unwrap_or(d.neighbors),
    };
    if o.beams == 0 || o.beams > MAX_BEAMS {
        return Err(ApiError::bad_request(
            "bad_field",
            format!("field `beams`: must be in 1..={MAX_BEAMS}, got {}", o.beams),
        ));
    }
    if o.max_tokens == 0 || o.max_tokens > info.max_tokens_limit {
        return Err(ApiError::bad_request(
            "bad_field",
            format!(
                "field `max_tokens`: must be in 1..={}, got {}",
                info.max_tokens_limit, o.max_tokens
            ),
        ));
    }
    if o.neighbors > MAX_NEIGHBORS {
        return Err(ApiError::bad_request(
            "bad_field",
            format!(
                "field `neighbors`: must be at most {MAX_NEIGHBORS}, got {}",
                o.neighbors
            ),
        ));
    }
    Ok(o)
}

async fn handle(
    s: &AppState,
    req: Request,
    task: Task,
    start: Instant,
) -> std::result::Result<PredictResponse, ApiError> {
    let (parts, body) = req.into_parts();
    let ct = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.to_string());
    let kind = request::body_kind(ct.as_deref())?;
    let bytes = read_body(s, &parts.headers, body).await?;
    let raw = match kind {
        BodyKind::Json => request::parse_json(&bytes, task)?,
        BodyKind::Multipart { boundary } => request::parse_multipart(bytes, boundary, task).await?,
    };
    let model = pick_model(s, task, raw.model.as_deref())?;
    let opts = options(&model.info, &raw)?;
    let text = request::check_text(task, raw.text.clone())?;
    if raw.image.is_empty() {
        return Err(ApiError::bad_request("bad_image", "field `image` is empty"));
    }
    let image_bytes = raw.image;
    let image =
        tokio::task::spawn_blocking(move || close_clip::preprocess::decode_image(&image_bytes))
            .await
            .map_err(|e| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    format!("image decoding task failed: {e}"),
                )
            })?
            .map_err(|m| ApiError::bad_request("bad_image", format!("field `image`: {m}")))?;

    let (tx, rx) = oneshot::channel();
    let job = Job {
        query: Query {
            image,
            text: text.clone(),
        },
        opts,
        reply: tx,
    };
    if model.worker.submit(job).is_err() {
        return Err(ApiError::unavailable(
            "shutting_down",
            "the model worker has stopped",
            1,
        ));
    }
    let remaining = s
        .cfg
        .request_timeout
        .saturating_sub(start.elapsed())
        .max(Duration::from_millis(1));
    let pred = match tokio::time::timeout(remaining, rx).await {
        Err(_) => {
            return Err(ApiError::unavailable(
                "timeout",
                format!(
                    "no answer within {:?}; the server is busy, retry later",
                    s.cfg.request_timeout
                ),
                2,
            ))
        }
        Ok(Err(_)) => {
            return Err(ApiError::unavailable(
                "shutting_down",
                "the model worker stopped before answering",
                1,
            ))
        }
        Ok(Ok(Err(e))) if e.client => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "unusable_input",
                e.message,
            ))
        }
        Ok(Ok(Err(e))) => {
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "inference_failed",
                e.message,
            ))
        }
        Ok(Ok(Ok(p))) => p,
    };
    Ok(PredictResponse {
        model: model.info.name.clone(),
        task,
        answer: pred.answer().to_string(),
        logprob: pred.logprob(),
        beams: pred.beams,
        neighbors: pred.neighbors,
        text,
        options: opts,
        elapsed_ms: start.elapsed().as_secs_f64() * 1e3,
    })
}

/// Serve on an already bound listener until `shutdown` resolves, then stop accepting, let
/// in-flight requests finish, and stop the model workers.
///
/// Connections are served by hyper directly (not `axum::serve`) for two limits it lacks:
/// a header-read timeout, so a client trickling header bytes cannot hold a connection, and
/// a cap on open connections.
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let addr = listener
        .local_addr()
        .map_err(|e| Error::invalid(format!("listener: {e}")))?;
    let (header_timeout, max_connections) = (state.cfg.header_timeout, state.cfg.max_connections);
    let app = router(state);
    let open = Arc::new(Semaphore::new(max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = open.clone().acquire_owned() => p.map_err(|e| Error::invalid(format!("server on {addr}: {e}")))?,
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!("accept on {addr}: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let conn = http1_connection(stream, app.clone(), header_timeout);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("connection closed: {e}");
            }
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

type Http1Connection = hyper::server::conn::http1::Connection<
    hyper_util::rt::TokioIo<tokio::net::TcpStream>,
    hyper_util::service::TowerToHyperService<Router>,
>;

fn http1_connection(
    stream: tokio::net::TcpStream,
    app: Router,
    header_timeout: Duration,
) -> Http1Connection {
    hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_timeout)
        .serve_connection(
            hyper_util::rt::TokioIo::new(stream),
            hyper_util::service::TowerToHyperService::new(app),
        )
}

/// Bind `cfg.addr` and serve the predictors until `shutdown` resolves (e.g. Ctrl-C).
pub async fn serve(
    cfg: ServeConfig,
    predictors: Vec<Box<dyn Predictor>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let addr = cfg.addr;
    let state = Arc::new(AppState::new(cfg, predictors)?);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Error::config("addr", format!("cannot listen on {addr}: {e}")))?;
    tracing::info!(
        "serving {} model(s) on http://{}",
        state.models.len(),
        listener.local_addr().unwrap_or(addr)
    );
    serve_on(listener, state, shutdown).await
}

/// A server running in the background of the current tokio runtime (tests, benchmarks,
/// embedding in other programs).
pub struct RunningServer {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<()>>,
}

impl RunningServer {
    /// Bind `cfg.addr` (port 0 = an ephemeral port) and serve in a background task.
    pub async fn start(cfg: ServeConfig, predictors: Vec<Box<dyn Predictor>>) -> Result<Self> {
        let state = Arc::new(AppState::new(cfg.clone(), predictors)?);
        let listener = tokio::net::TcpListener::bind(cfg.addr)
            .await
            .map_err(|e| Error::config("addr", format!("cannot listen on {}: {e}", cfg.addr)))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::invalid(format!("listener: {e}")))?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve_on(listener, state, async move {
            let _ = stopped.await;
        }));
        Ok(Self {
            addr,
            stop: Some(stop),
            task,
        })
    }

    /// `http://ADDR`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Graceful shutdown: stop accepting, finish in-flight requests, stop the workers.
    pub async fn shutdown(mut self) -> Result<()> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        (&mut self.task)
            .await
            .map_err(|e| Error::invalid(format!("server task: {e}")))?
    }
}

/// Run the server on its own multi-threaded tokio runtime until Ctrl-C (or SIGTERM on
/// Unix), then shut down gracefully. For programs without a runtime of their own (the CLI).
///
/// The signal handlers are installed before the port is bound, so a signal sent as soon as
/// the address is logged already means "shut down gracefully" (a SIGTERM that arrives
/// before a handler exists kills the process).
pub fn serve_blocking(cfg: ServeConfig, predictors: Vec<Box<dyn Predictor>>) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("close-serve-http")
        .build()
        .map_err(|e| Error::invalid(format!("cannot start the async runtime: {e}")))?;
    rt.block_on(async move {
        let signal = shutdown_signal()?;
        serve(cfg, predictors, signal).await
    })
}

/// Install handlers for Ctrl-C and (on Unix) SIGTERM now, and return a future that
/// resolves when either arrives. Must be called inside a tokio runtime.
pub fn shutdown_signal() -> Result<impl Future<Output = ()> + Send + 'static> {
    #[cfg(unix)]
    let fut = {
        use tokio::signal::unix::{signal, SignalKind};
        let handler = |kind: SignalKind, name: &str| {
            signal(kind)
                .map_err(|e| Error::invalid(format!("cannot install the {name} handler: {e}")))
        };
        let mut int = handler(SignalKind::interrupt(), "SIGINT")?;
        let mut term = handler(SignalKind::terminate(), "SIGTERM")?;
        async move {
            tokio::select! {
                _ = int.recv() => {},
                _ = term.recv() => {},
            }
        }
    };
    #[cfg(not(unix))]
    let fut = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    Ok(async move {
        fut.await;
        tracing::info!("shutting down: finishing in-flight requests");
    })
}
