//! The HTTP API v1: one route table ([`ROUTES`]) from which both the axum router and the
//! OpenAPI document are built, so the two cannot drift; the handlers; and the layers (body
//! limit, request timeout, latency metrics, problem+json for every error, axum's own included).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{on, MethodFilter, MethodRouter};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::Value;
use tower_http::timeout::TimeoutLayer;

use crate::config::RunConfig;
use crate::digest::decode_hex;
use crate::serve::auth::{self, bearer, secret_matches, split};
use crate::serve::coordinator::{now_unix_ms, Accepted, Coordinator, NextTask, RoundError};
use crate::serve::limits::RateLimiter;
use crate::serve::metrics::{Metrics, Rejection};
use crate::serve::problem::{Problem, PROBLEM_JSON};
use protocol::messages::{
    self, ChargedRound, EnrolRequest, Enrolment, EpsilonSpent, Health, Liveness, PrivacyReport,
    Receipt, RunStatus, ScoresRequest, SecAggReceipt, SecureAggregationStatus, ServedConfig,
    Tokens, TokensRequest, MAX_ENROLMENT_TOKENS,
};
use protocol::EmbeddingDtype;
use secure_aggregation::{ClientMessage, ProtocolError, Received, SessionView};

/// `meta` key of the SHA-256 (hex) of the admin token.
pub const ADMIN_HASH_KEY: &str = "admin_token_hash";
/// How long one request may take before it is answered 408.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone, without a token.
    Public,
    /// A body-borne enrolment token.
    Enrolment,
    /// An enrolled client's bearer token.
    Client,
    /// The admin's or a client's bearer token.
    AdminOrClient,
    /// The admin's bearer token.
    Admin,
}

/// What each route does; [`router`] attaches the handler, [`crate::serve::openapi`] documents
/// it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Health,
    OpenApi,
    Metrics,
    Enrol,
    NextTask,
    Candidates,
    Scores,
    SecAggView,
    SecAggMessage,
    Privacy,
    EnrolmentTokens,
    RunStatus,
    Pause,
    Resume,
    Stop,
}

/// One row of the route table.
#[derive(Debug, Clone)]
pub struct Route {
    pub method: Method,
    pub path: &'static str,
    pub access: Access,
    pub endpoint: Endpoint,
    /// One line for the OpenAPI document.
    pub summary: &'static str,
    /// The success status.
    pub success: u16,
    /// The error statuses the route can answer with.
    pub errors: &'static [u16],
}

const fn route(
    method: Method,
    path: &'static str,
    access: Access,
    endpoint: Endpoint,
    summary: &'static str,
    success: u16,
    errors: &'static [u16],
) -> Route {
    Route {
        method,
        path,
        access,
        endpoint,
        summary,
        success,
        errors,
    }
}

/// Every route of the API.
pub const ROUTES: &[Route] = &[
    route(
        Method::GET,
        "/v1/health",
        Access::Public,
        Endpoint::Health,
        "Liveness and the run's state",
        200,
        &[429],
    ),
    route(
        Method::GET,
        "/v1/openapi.json",
        Access::Public,
        Endpoint::OpenApi,
        "This OpenAPI 3.1 document",
        200,
        &[429],
    ),
    route(
        Method::GET,
        "/metrics",
        Access::Public,
        Endpoint::Metrics,
        "Prometheus metrics (aggregates only)",
        200,
        &[429],
    ),
    route(
        Method::POST,
        "/v1/enrol",
        Access::Enrolment,
        Endpoint::Enrol,
        "Enrol with a one-time enrolment token; returns the client's bearer token",
        201,
        &[401, 413, 422, 429],
    ),
    route(
        Method::GET,
        "/v1/tasks/next",
        Access::Client,
        Endpoint::NextTask,
        "What the client should do next: a task, wait, or finished",
        200,
        &[401, 429],
    ),
    route(
        Method::GET,
        "/v1/rounds/{round}/candidates",
        Access::Client,
        Endpoint::Candidates,
        "The round's candidate embeddings (FSCAND01 wire format)",
        200,
        &[401, 403, 404, 410, 429],
    ),
    route(
        Method::POST,
        "/v1/rounds/{round}/scores",
        Access::Client,
        Endpoint::Scores,
        "Submit the client's clipped score vector",
        202,
        &[401, 403, 404, 409, 410, 413, 422, 429],
    ),
    route(
        Method::GET,
        "/v1/rounds/{round}/secagg",
        Access::Client,
        Endpoint::SecAggView,
        "The round's secure-aggregation session as this client sees it: its step, and what \
         this client needs for it (roster, inbox or survivors)",
        200,
        &[401, 403, 404, 409, 410, 429],
    ),
    route(
        Method::POST,
        "/v1/rounds/{round}/secagg/{session}",
        Access::Client,
        Endpoint::SecAggMessage,
        "Send this client's message for the session's current step (keys, shares, masked \
         input or unmasking shares)",
        202,
        &[401, 403, 404, 409, 410, 413, 422, 429],
    ),
    route(
        Method::GET,
        "/v1/privacy",
        Access::AdminOrClient,
        Endpoint::Privacy,
        "Budget report and the per-round ledger",
        200,
        &[401, 429],
    ),
    route(
        Method::POST,
        "/v1/admin/enrolment-tokens",
        Access::Admin,
        Endpoint::EnrolmentTokens,
        "Create one-time enrolment tokens",
        201,
        &[401, 413, 422, 429],
    ),
    route(
        Method::GET,
        "/v1/admin/run",
        Access::Admin,
        Endpoint::RunStatus,
        "The run's status",
        200,
        &[401, 429],
    ),
    route(
        Method::POST,
        "/v1/admin/run/pause",
        Access::Admin,
        Endpoint::Pause,
        "Open no new round until resumed",
        200,
        &[401, 429],
    ),
    route(
        Method::POST,
        "/v1/admin/run/resume",
        Access::Admin,
        Endpoint::Resume,
        "Resume a paused run",
        200,
        &[401, 429],
    ),
    route(
        Method::POST,
        "/v1/admin/run/stop",
        Access::Admin,
        Endpoint::Stop,
        "No further rounds; the outputs are written after the current round",
        200,
        &[401, 429],
    ),
];

/// Everything the handlers share.
pub struct AppState {
    pub coordinator: Arc<Coordinator>,
    pub config: RunConfig,
    /// Per client token (client routes).
    pub limiter: RateLimiter,
    /// Per source address (every route without a client token).
    pub address_limiter: RateLimiter,
    pub openapi: Value,
}

type Shared = State<Arc<AppState>>;

/// The router of [`ROUTES`] with its layers.
pub fn router(state: Arc<AppState>, body_limit: usize) -> Router {
    let mut router = Router::new();
    for route in ROUTES {
        let filter = MethodFilter::try_from(route.method.clone())
            .expect("the route table uses GET and POST only");
        router = router.route(route.path, handler(route.endpoint, filter));
    }
    router
        .fallback(|| async {
            Problem::new(
                StatusCode::NOT_FOUND,
                "not-found",
                "no such endpoint; see /v1/openapi.json for the API",
            )
        })
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            limit_by_address,
        ))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// Whether `path` is a route that clients call with their token (limited per token instead).
fn is_client_route(path: &str) -> bool {
    path == "/v1/tasks/next" || path == "/v1/privacy" || path.starts_with("/v1/rounds/")
}

/// Rate-limits every request that carries no client token per source address: enrolment
/// (guessing enrolment tokens), admin (guessing the admin token), the public routes and
/// unknown paths (flooding). Without the peer address (a router not served over TCP) nothing
/// is limited here.
async fn limit_by_address(State(state): Shared, request: Request, next: Next) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(address)| address.ip());
    if let Some(ip) = peer.filter(|_| !is_client_route(request.uri().path())) {
        if let Err(seconds) = state.address_limiter.check(&ip.to_string(), Instant::now()) {
            return Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate-limited",
                format!(
                    "more than {} requests a minute from this address; retry after {seconds} s",
                    state.address_limiter.per_minute()
                ),
            )
            .retry_after(seconds)
            .into_response();
        }
    }
    next.run(request).await
}

/// The method router of `endpoint` for `filter`.
fn handler(endpoint: Endpoint, filter: MethodFilter) -> MethodRouter<Arc<AppState>> {
    match endpoint {
        Endpoint::Health => on(filter, health),
        Endpoint::OpenApi => on(filter, openapi),
        Endpoint::Metrics => on(filter, metrics),
        Endpoint::Enrol => on(filter, enrol),
        Endpoint::NextTask => on(filter, next_task),
        Endpoint::Candidates => on(filter, candidates),
        Endpoint::Scores => on(filter, scores),
        Endpoint::SecAggView => on(filter, secagg_view),
        Endpoint::SecAggMessage => on(filter, secagg_message),
        Endpoint::Privacy => on(filter, privacy),
        Endpoint::EnrolmentTokens => on(filter, enrolment_tokens),
        Endpoint::RunStatus => on(filter, run_status),
        Endpoint::Pause => on(filter, pause),
        Endpoint::Resume => on(filter, resume),
        Endpoint::Stop => on(filter, stop),
    }
}

/// Records latencies and turns every error response that is not problem+json yet (axum's
/// 405, the timeout's 408, …) into one.
async fn observe(State(state): Shared, request: Request, next: Next) -> Response {
    let clock = Instant::now();
    let response = next.run(request).await;
    state
        .coordinator
        .metrics()
        .observe_latency(clock.elapsed().as_secs_f64());
    let status = response.status();
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(PROBLEM_JSON.as_bytes()));
    if status.as_u16() < 400 || is_problem {
        return response;
    }
    let detail = match status {
        StatusCode::METHOD_NOT_ALLOWED => {
            "this endpoint does not take that method; see /v1/openapi.json".to_string()
        }
        StatusCode::REQUEST_TIMEOUT => format!(
            "the request took longer than {} s; retry",
            REQUEST_TIMEOUT.as_secs()
        ),
        other => format!("{other}"),
    };
    let mut problem = Problem::new(status, "http", detail);
    if let Some(retry) = response.headers().get(header::RETRY_AFTER) {
        problem.retry_after_seconds = retry.to_str().ok().and_then(|s| s.parse().ok());
    }
    let mut converted = problem.into_response();
    if let Some(allow) = response.headers().get(header::ALLOW) {
        converted.headers_mut().insert(header::ALLOW, allow.clone());
    }
    converted
}

/// Who made a request.
enum Caller {
    Admin,
    Client(String),
}

/// The caller of `headers`, if its bearer token is valid and `access` admits it.
fn authenticate(state: &AppState, headers: &HeaderMap, access: Access) -> Result<Caller, Problem> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer)
        .ok_or_else(|| {
            Problem::unauthorized(
                "missing bearer token: send `Authorization: Bearer <token>` (clients get theirs \
                 from POST /v1/enrol)",
            )
        })?;
    let store = state.coordinator.store();
    if matches!(access, Access::Admin | Access::AdminOrClient) {
        if let Some(stored) = store.meta(ADMIN_HASH_KEY)? {
            let stored = decode_hex(&stored).unwrap_or_default();
            if secret_matches(token, &stored) {
                return Ok(Caller::Admin);
            }
        }
        if access == Access::Admin {
            return Err(Problem::unauthorized(
                "this endpoint needs the admin token (DIR/admin-token, or FEDSYN_ADMIN_TOKEN)",
            ));
        }
    }
    let invalid = || {
        Problem::unauthorized(
            "invalid client token: use the token POST /v1/enrol returned (enrol again with a \
             fresh enrolment token if it was lost)",
        )
    };
    let (id, secret) = split(token).ok_or_else(invalid)?;
    match store.client_secret_hash(id)? {
        Some(stored) if secret_matches(secret, &stored) => Ok(Caller::Client(id.to_string())),
        _ => Err(invalid()),
    }
}

/// The client of a client-only request, rate-limited.
fn client(state: &AppState, headers: &HeaderMap, access: Access) -> Result<Caller, Problem> {
    let caller = authenticate(state, headers, access)?;
    if let Caller::Client(id) = &caller {
        state.limiter.check(id, Instant::now()).map_err(|seconds| {
            Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate-limited",
                format!(
                    "more than {} requests a minute from this client; retry after {seconds} s",
                    state.config.serve.rate_limit_per_minute
                ),
            )
            .retry_after(seconds)
        })?;
    }
    Ok(caller)
}

fn client_id(state: &AppState, headers: &HeaderMap) -> Result<String, Problem> {
    match client(state, headers, Access::Client)? {
        Caller::Client(id) => Ok(id),
        Caller::Admin => Err(Problem::forbidden("this endpoint is for clients")),
    }
}

async fn health(State(state): Shared) -> Json<Health> {
    let (run_state, open) = state.coordinator.snapshot();
    Json(Health {
        status: Liveness::Ok,
        state: run_state,
        round: open.map(|o| o.round),
    })
}

async fn openapi(State(state): Shared) -> Json<Value> {
    Json(state.openapi.clone())
}

async fn metrics(State(state): Shared) -> Response {
    let metrics = state.coordinator.metrics();
    if let Ok(enrolled) = state.coordinator.store().enrolled() {
        metrics
            .enrolled_clients
            .store(enrolled as u64, Ordering::Relaxed);
    }
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        metrics.render(),
    )
        .into_response()
}

/// A JSON body, or the problem that says why it is not one.
fn json_body<T: for<'de> Deserialize<'de>>(
    body: Result<Bytes, BytesRejection>,
    example: &str,
) -> Result<T, Problem> {
    let bytes = body.map_err(body_problem)?;
    serde_json::from_slice(&bytes).map_err(|e| {
        Problem::unprocessable(format!(
            "the body is not the expected JSON ({e}); send {example}"
        ))
    })
}

fn body_problem(rejection: BytesRejection) -> Problem {
    let status = rejection.status();
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        Problem::new(
            status,
            "body-too-large",
            "the request body is larger than serve.max_body_bytes allows; a score vector needs \
             about 32 bytes per candidate",
        )
    } else {
        Problem::new(
            status,
            "bad-body",
            format!("the body cannot be read: {rejection}"),
        )
    }
}

/// Runs a handler body that touches SQLite (and may wait for its fsync) on this worker thread,
/// telling tokio to move its other tasks elsewhere meanwhile.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

async fn enrol(State(state): Shared, body: Result<Bytes, BytesRejection>) -> Response {
    match blocking(|| enrol_inner(&state, body)) {
        Ok(response) => response,
        Err(problem) => problem.into_response(),
    }
}

fn enrol_inner(state: &AppState, body: Result<Bytes, BytesRejection>) -> Result<Response, Problem> {
    let request: EnrolRequest = json_body(body, r#"{"enrolment_token": "…"}"#)?;
    let refused = || {
        Problem::unauthorized(
            "unknown or already used enrolment token: ask the operator for a fresh one \
             (each token enrols one client once)",
        )
    };
    let (id, secret) = split(&request.enrolment_token).ok_or_else(refused)?;
    let store = state.coordinator.store();
    let stored = store.unused_enrolment_token(id)?.ok_or_else(refused)?;
    if !secret_matches(secret, &stored) {
        return Err(refused());
    }
    let issued = auth::issue("c");
    if !store.enrol(id, &issued.id, &issued.secret_hash, now_unix_ms())? {
        return Err(refused());
    }
    let metrics = state.coordinator.metrics();
    metrics.enrolments.fetch_add(1, Ordering::Relaxed);
    state.coordinator.notify();
    Ok((
        StatusCode::CREATED,
        Json(Enrolment {
            client_id: issued.id,
            token: issued.token,
        }),
    )
        .into_response())
}

async fn next_task(
    State(state): Shared,
    headers: HeaderMap,
) -> Result<Json<messages::NextTask>, Problem> {
    blocking(|| next_task_inner(&state, &headers))
}

fn next_task_inner(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<Json<messages::NextTask>, Problem> {
    let id = client_id(state, headers)?;
    let dtype = match state.config.serve.embedding_dtype {
        crate::config::WireDtype::F16 => EmbeddingDtype::F16,
        crate::config::WireDtype::F32 => EmbeddingDtype::F32,
    };
    Ok(Json(match state.coordinator.next_task(&id)? {
        NextTask::Task {
            round,
            attempt,
            rows,
            dim,
            deadline_unix_ms,
        } => messages::NextTask::Task(messages::Task {
            round,
            attempt: u64::from(attempt),
            clip: state.config.privacy.clip,
            candidates: rows,
            dim,
            dtype,
            deadline_unix_ms,
            candidates_url: format!("/v1/rounds/{round}/candidates"),
            aggregation: state.config.serve.aggregation,
        }),
        NextTask::Wait { retry_after_ms } => messages::NextTask::Wait { retry_after_ms },
        NextTask::Finished => messages::NextTask::Finished,
    }))
}

/// The round number of a path, or 404 (a path that is not a round is no resource).
fn round_number(text: &str) -> Result<u64, Problem> {
    text.parse().map_err(|_| {
        Problem::new(
            StatusCode::NOT_FOUND,
            "unknown-round",
            format!("{text:?} is not a round number"),
        )
    })
}

async fn candidates(
    State(state): Shared,
    Path(round): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    blocking(|| candidates_inner(&state, &round, &headers))
}

fn candidates_inner(
    state: &AppState,
    round: &str,
    headers: &HeaderMap,
) -> Result<Response, Problem> {
    let id = client_id(state, headers)?;
    let round = round_number(round)?;
    let bytes = state
        .coordinator
        .candidates(round, &id)
        .map_err(|e| round_problem(e).1)?;
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        )],
        Body::from(bytes),
    )
        .into_response())
}

async fn scores(
    State(state): Shared,
    Path(round): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    blocking(|| submit_scores(&state, &round, &headers, body))
}

fn submit_scores(
    state: &AppState,
    round: &str,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let metrics = state.coordinator.metrics();
    let id = match client_id(state, headers) {
        Ok(id) => id,
        Err(problem) => return refused(metrics, problem, Rejection::Unauthorized),
    };
    let request: ScoresRequest = match json_body(body, r#"{"scores": [finite numbers…]}"#) {
        Ok(request) => request,
        Err(problem) => return refused(metrics, problem, Rejection::Invalid),
    };
    let round = match round_number(round) {
        Ok(round) => round,
        Err(problem) => return problem.into_response(),
    };
    match state.coordinator.submit(round, &id, &request.scores) {
        Ok(Accepted::New { receipt, .. }) => {
            (StatusCode::ACCEPTED, Json(Receipt { round, receipt })).into_response()
        }
        Ok(Accepted::Replay { receipt }) => {
            (StatusCode::OK, Json(Receipt { round, receipt })).into_response()
        }
        Err(error) => {
            let (why, problem) = round_problem(error);
            if let Some(why) = why {
                metrics.reject(why);
            }
            problem.into_response()
        }
    }
}

/// Counts a refused submission, by the status of its `problem` where that names the reason (a
/// rate limit, a body over the limit) and as `otherwise` else, and answers with the problem.
fn refused(metrics: &Metrics, problem: Problem, otherwise: Rejection) -> Response {
    metrics.reject(match problem.status {
        StatusCode::TOO_MANY_REQUESTS => Rejection::RateLimited,
        StatusCode::PAYLOAD_TOO_LARGE => Rejection::TooLarge,
        _ => otherwise,
    });
    problem.into_response()
}

/// The problem of a refused round request, and the rejection it counts as (for submissions).
fn round_problem(error: RoundError) -> (Option<Rejection>, Problem) {
    let (why, problem) = match error {
        RoundError::UnknownRound(round) => (
            Rejection::UnknownRound,
            Problem::new(
                StatusCode::NOT_FOUND,
                "unknown-round",
                format!("round {round} was never opened; GET /v1/tasks/next says which is open"),
            ),
        ),
        RoundError::NotSampled(round) => (
            Rejection::NotSampled,
            Problem::forbidden(format!(
                "this client is not sampled in round {round}; wait for a task from \
                 GET /v1/tasks/next"
            )),
        ),
        RoundError::Conflict(round) => (
            Rejection::Conflict,
            Problem::new(
                StatusCode::CONFLICT,
                "conflict",
                format!(
                    "this client already submitted a different vector to round {round}; one \
                     submission per client and round (an identical retry is accepted)"
                ),
            ),
        ),
        RoundError::Closed(round) => (
            Rejection::Late,
            Problem::new(
                StatusCode::GONE,
                "round-closed",
                format!(
                    "round {round} is closed (quorum or deadline reached); wait for the next \
                     task"
                ),
            ),
        ),
        RoundError::Invalid(detail) => (Rejection::Invalid, Problem::unprocessable(detail)),
        RoundError::NoSession(round) => (
            Rejection::UnknownRound,
            Problem::new(
                StatusCode::NOT_FOUND,
                "no-session",
                format!(
                    "round {round}'s secure-aggregation session has not started yet; ask again \
                     in a moment"
                ),
            ),
        ),
        RoundError::NotSecure => (
            Rejection::Invalid,
            Problem::new(
                StatusCode::CONFLICT,
                "plain-aggregation",
                "this run aggregates in plain mode (serve.aggregation = \"plain\"): there is no \
                 secure-aggregation session; POST the score vector to /v1/rounds/{round}/scores",
            ),
        ),
        RoundError::StaleSession(round) => (
            Rejection::Late,
            Problem::new(
                StatusCode::GONE,
                "stale-session",
                format!(
                    "that session of round {round} was replaced (the server restarted); GET \
                     /v1/rounds/{round}/secagg and start again in the new session"
                ),
            ),
        ),
        RoundError::Session(error) => match error {
            ProtocolError::WrongStep { .. } => (
                Rejection::Late,
                Problem::new(StatusCode::CONFLICT, "wrong-step", error.to_string()),
            ),
            ProtocolError::Conflict => (
                Rejection::Conflict,
                Problem::new(StatusCode::CONFLICT, "conflict", error.to_string()),
            ),
            ProtocolError::NotParticipant => {
                (Rejection::NotSampled, Problem::forbidden(error.to_string()))
            }
            _ => (
                Rejection::Invalid,
                Problem::unprocessable(error.to_string()),
            ),
        },
        RoundError::Internal(error) => return (None, Problem::from(error)),
    };
    (Some(why), problem)
}

async fn secagg_view(
    State(state): Shared,
    Path(round): Path<String>,
    headers: HeaderMap,
) -> Result<Json<SessionView>, Problem> {
    blocking(|| {
        let id = client_id(&state, &headers)?;
        let round = round_number(&round)?;
        state
            .coordinator
            .secagg_view(round, &id)
            .map(Json)
            .map_err(|e| round_problem(e).1)
    })
}

async fn secagg_message(
    State(state): Shared,
    Path((round, session)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    blocking(|| {
        let metrics = state.coordinator.metrics();
        let id = client_id(&state, &headers)?;
        let round = round_number(&round)?;
        let session: u64 = session.parse().map_err(|_| {
            Problem::new(
                StatusCode::NOT_FOUND,
                "unknown-session",
                format!("{session:?} is not a session number"),
            )
        })?;
        let message: ClientMessage = json_body(
            body,
            r#"{"step": "keys" | "shares" | "masked" | "unmask", …}"#,
        )
        .inspect_err(|_| metrics.reject(Rejection::Invalid))?;
        match state
            .coordinator
            .secagg_receive(round, session, &id, message)
        {
            Ok((step, received)) => {
                let status = match received {
                    Received::New => StatusCode::ACCEPTED,
                    Received::Replay => StatusCode::OK,
                };
                let receipt = SecAggReceipt {
                    round,
                    session,
                    step,
                };
                Ok((status, Json(receipt)).into_response())
            }
            Err(error) => {
                let (why, problem) = round_problem(error);
                if let Some(why) = why {
                    metrics.reject(why);
                }
                Err(problem)
            }
        }
    })
}

async fn privacy(State(state): Shared, headers: HeaderMap) -> Result<Json<PrivacyReport>, Problem> {
    client(&state, &headers, Access::AdminOrClient)?;
    Ok(Json(privacy_report(&state)?))
}

fn privacy_report(state: &AppState) -> Result<PrivacyReport, Problem> {
    let privacy = &state.config.privacy;
    let store = state.coordinator.store();
    let rows = store.ledger_rows()?;
    let mut ledger = privacy_accounting::Ledger::new();
    let mut rounds = Vec::with_capacity(rows.len());
    for row in rows {
        ledger
            .push(row.event.clone())
            .map_err(crate::error::ServerError::from)?;
        let epsilon = |kind| {
            ledger
                .epsilon(kind, privacy.delta)
                .map(|e| e.epsilon)
                .map_err(crate::error::ServerError::from)
        };
        // No count of the clients who answered (nor of those sampled, which under Poisson
        // sampling is random and not covered by the noise either): every field here is a
        // function of the configuration and of released, noised results only.
        rounds.push(ChargedRound {
            round: row.round,
            sigma: row.event.noise_multiplier,
            sampling: serde_json::to_value(row.event.sampling)
                .map_err(|e| Problem::internal(format!("sampling: {e}")))?,
            epsilon_rdp: epsilon(privacy_accounting::AccountantKind::Rdp)?,
            epsilon_pld: epsilon(privacy_accounting::AccountantKind::Pld)?,
            committed_unix_ms: row.committed_unix_ms,
        });
    }
    let accountants = rounds
        .last()
        .map_or(EpsilonSpent { rdp: 0.0, pld: 0.0 }, |r| EpsilonSpent {
            rdp: r.epsilon_rdp,
            pld: r.epsilon_pld,
        });
    Ok(PrivacyReport {
        target_epsilon: privacy.epsilon,
        delta: privacy.delta,
        accountants,
        rounds,
    })
}

async fn enrolment_tokens(
    State(state): Shared,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    authenticate(&state, &headers, Access::Admin)?;
    let request: TokensRequest = json_body(body, r#"{"count": 10}"#)?;
    if !(1..=MAX_ENROLMENT_TOKENS).contains(&request.count) {
        return Err(Problem::unprocessable(format!(
            "count = {}: ask for 1 to {MAX_ENROLMENT_TOKENS} tokens",
            request.count
        )));
    }
    let tokens = create_enrolment_tokens(&state.coordinator, request.count)?;
    Ok((StatusCode::CREATED, Json(Tokens { tokens })).into_response())
}

/// Makes `count` enrolment tokens (stored hashed) and returns them in plain text.
pub fn create_enrolment_tokens(
    coordinator: &Coordinator,
    count: usize,
) -> crate::error::Result<Vec<String>> {
    let issued: Vec<_> = (0..count).map(|_| auth::issue("e")).collect();
    let rows: Vec<(String, [u8; 32])> = issued
        .iter()
        .map(|t| (t.id.clone(), t.secret_hash))
        .collect();
    coordinator.store().add_enrolment_tokens(&rows)?;
    Ok(issued.into_iter().map(|t| t.token).collect())
}

async fn run_status(State(state): Shared, headers: HeaderMap) -> Result<Json<RunStatus>, Problem> {
    authenticate(&state, &headers, Access::Admin)?;
    Ok(Json(status_report(&state)?))
}

/// The admin's view of the run. It holds the open round's sampled and submitted counts: the
/// operator is trusted (in plain mode the server sees every submitted vector anyway), and these
/// counts appear on no public route, in no log line and no file of the run directory.
fn status_report(state: &AppState) -> Result<RunStatus, Problem> {
    let (run_state, open) = state.coordinator.snapshot();
    let store = state.coordinator.store();
    let sigma = store.meta("sigma")?.and_then(|s| s.parse::<f64>().ok());
    let privacy = privacy_report(state)?;
    let config = &state.config;
    Ok(RunStatus {
        state: run_state,
        round: open.as_ref().map(|o| o.round),
        attempt: open.as_ref().map(|o| o.attempt),
        round_open: open.as_ref().map(|o| !o.closed),
        enrolled: store.enrolled()?,
        sampled: open.as_ref().map_or(0, |o| o.sampled_count),
        submitted: open.as_ref().map_or(0, |o| o.submitted),
        secure_aggregation: state.coordinator.secagg_progress().map(
            |(step, awaiting, masked_inputs)| SecureAggregationStatus {
                step,
                awaiting,
                masked_inputs,
            },
        ),
        rounds_charged: privacy.rounds.len(),
        epsilon_spent: privacy.accountants,
        sigma,
        config: ServedConfig {
            name: config.run.name.clone(),
            rounds: config.privacy.rounds,
            target_epsilon: config.privacy.epsilon,
            delta: config.privacy.delta,
            clip: config.privacy.clip,
            prompts: config.prompts.num_prompts,
            candidates_per_prompt: config.generation.candidates_per_prompt,
            min_clients: config.serve.min_clients,
            quorum: config.serve.quorum,
            round_deadline_seconds: config.serve.round_deadline_seconds,
            aggregation: config.serve.aggregation,
        },
    })
}

async fn pause(State(state): Shared, headers: HeaderMap) -> Result<Json<RunStatus>, Problem> {
    authenticate(&state, &headers, Access::Admin)?;
    state.coordinator.set_paused(true)?;
    Ok(Json(status_report(&state)?))
}

async fn resume(State(state): Shared, headers: HeaderMap) -> Result<Json<RunStatus>, Problem> {
    authenticate(&state, &headers, Access::Admin)?;
    state.coordinator.set_paused(false)?;
    Ok(Json(status_report(&state)?))
}

async fn stop(State(state): Shared, headers: HeaderMap) -> Result<Json<RunStatus>, Problem> {
    authenticate(&state, &headers, Access::Admin)?;
    state.coordinator.stop()?;
    Ok(Json(status_report(&state)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_unique_and_versioned() {
        let mut seen = std::collections::HashSet::new();
        for route in ROUTES {
            assert!(
                seen.insert((route.method.clone(), route.path)),
                "{}",
                route.path
            );
            assert!(route.path.starts_with("/v1/") || route.path == "/metrics");
        }
    }
}
