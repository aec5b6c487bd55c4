//! `fedsyn serve`: POPri with remote clients over HTTP (axum on tokio), the round engine on its
//! own blocking thread, the state in SQLite. See [`run`] for the order of durable writes and
//! why a `kill -9` at any point loses no budget and releases no round twice.

pub mod auth;
pub mod coordinator;
pub mod http;
pub mod limits;
pub mod metrics;
pub mod openapi;
pub mod problem;
pub mod run;
pub mod store;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::config::RunConfig;
use crate::engine::Progress;
use crate::error::{Result, ServerError};
use crate::run_dir::{RoundMetrics, RunDir};
use coordinator::{CollectionRules, Coordinator};
use store::{Store, DATABASE_FILE};

/// The admin token file in the run directory (0600), unless `FEDSYN_ADMIN_TOKEN` is set.
pub const ADMIN_TOKEN_FILE: &str = "admin-token";
/// Fresh enrolment tokens of `--enrolment-tokens N` (0600, one per line).
pub const ENROLMENT_TOKENS_FILE: &str = "enrolment-tokens.txt";
/// The environment variable that supplies the admin token instead of a generated one.
pub const ADMIN_TOKEN_ENV: &str = "FEDSYN_ADMIN_TOKEN";

/// How `fedsyn serve` runs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The run directory (created on first start, continued after).
    pub dir: PathBuf,
    /// The configuration; `None` continues the run in `dir` with its saved one.
    pub config: Option<RunConfig>,
    /// Overrides `serve.bind`.
    pub bind: Option<String>,
    /// PEM certificate chain and key: serve HTTPS (rustls, ring provider).
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Enrolment tokens to create now (written to `DIR/enrolment-tokens.txt`).
    pub enrolment_tokens: usize,
    /// Exit once the run is finished (otherwise keep answering until interrupted).
    pub exit_when_finished: bool,
}

/// Runs the server until the run is finished (`exit_when_finished`) or the process is
/// interrupted. `on_listening` gets the URL once the socket is bound; `on_round` each released
/// round's metrics.
pub fn serve(
    options: &ServeOptions,
    progress: Arc<dyn Progress + Send + Sync>,
    on_listening: &dyn Fn(&str),
    on_round: Arc<dyn Fn(&RoundMetrics) + Send + Sync>,
) -> Result<()> {
    let (dir, config) = open_run_dir(options)?;
    let store = Arc::new(Store::open(&dir.root().join(DATABASE_FILE))?);
    set_up_admin_token(&store, dir.root())?;
    let metrics = Arc::new(metrics::Metrics::default());
    let rules = CollectionRules {
        clip: config.privacy.clip,
        quorum: config.serve.quorum,
        min_submissions: config.serve.min_submissions,
        deadline: Duration::from_secs(config.serve.round_deadline_seconds),
    };
    let coordinator = Arc::new(Coordinator::new(store, rules, metrics)?);
    if options.enrolment_tokens > 0 {
        let tokens = http::create_enrolment_tokens(&coordinator, options.enrolment_tokens)?;
        write_secret(
            &dir.root().join(ENROLMENT_TOKENS_FILE),
            &(tokens.join("\n") + "\n"),
        )?;
    }
    let values = config.prompts.num_prompts * config.generation.candidates_per_prompt;
    let state = Arc::new(http::AppState {
        coordinator: coordinator.clone(),
        config: config.clone(),
        limiter: limits::RateLimiter::new(config.serve.rate_limit_per_minute),
        openapi: openapi::document(),
    });
    let app = http::router(state, config.serve.body_limit(values));

    let bind = options.bind.as_deref().unwrap_or(&config.serve.bind);
    let address: SocketAddr = bind.parse().map_err(|_| {
        ServerError::argument(
            "--bind",
            bind,
            "an IP address and port, e.g. 127.0.0.1:8080",
        )
    })?;
    let listener = std::net::TcpListener::bind(address)
        .map_err(|e| ServerError::Http(format!("cannot listen on {address}: {e}")))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| ServerError::Http(e.to_string()))?;
    let local = listener
        .local_addr()
        .map_err(|e| ServerError::Http(e.to_string()))?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| ServerError::Http(format!("cannot start the async runtime: {e}")))?;
    let handle = axum_server::Handle::new();
    let tls = match &options.tls {
        Some((cert, key)) => Some(runtime.block_on(tls_config(cert, key))?),
        None => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    on_listening(&format!("{scheme}://{local}"));

    // The engine thread: rounds until finished; its result decides how the server ends.
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<Result<()>>();
    let engine_coordinator = coordinator.clone();
    let engine_dir = dir;
    let engine_config = config.clone();
    std::thread::Builder::new()
        .name("fedsyn-engine".into())
        .spawn(move || {
            let result = run::run_rounds(
                &engine_config,
                &engine_dir,
                &engine_coordinator,
                progress.as_ref(),
                on_round.as_ref(),
            );
            let _ = done_tx.send(result);
        })
        .map_err(|e| ServerError::Http(format!("cannot start the engine thread: {e}")))?;

    let exit_when_finished = options.exit_when_finished;
    let shutdown = handle.clone();
    runtime.block_on(async move {
        let server = async {
            let service = app.into_make_service();
            match tls {
                Some(tls) => {
                    axum_server::from_tcp_rustls(listener, tls)
                        .handle(handle)
                        .serve(service)
                        .await
                }
                None => {
                    axum_server::from_tcp(listener)
                        .handle(handle)
                        .serve(service)
                        .await
                }
            }
            .map_err(|e| ServerError::Http(format!("serving failed: {e}")))
        };
        let watcher = async move {
            let engine = async {
                match done_rx.await {
                    Ok(Ok(())) if !exit_when_finished => std::future::pending().await,
                    Ok(Ok(())) => {
                        linger_until_clients_know(&coordinator).await;
                        Ok(())
                    }
                    Ok(result) => result,
                    Err(_) => Err(ServerError::Http("the engine thread died".into())),
                }
            };
            let result = tokio::select! {
                result = engine => result,
                _ = tokio::signal::ctrl_c() => Ok(()),
            };
            shutdown.graceful_shutdown(Some(Duration::from_secs(5)));
            result
        };
        let (served, watched) = tokio::join!(server, watcher);
        watched.and(served)
    })
}

/// Once the run is finished, keeps answering until every enrolled client was told so (polling
/// clients then exit cleanly instead of finding the server gone), for at most [`LINGER`].
async fn linger_until_clients_know(coordinator: &Coordinator) {
    let start = std::time::Instant::now();
    while start.elapsed() < LINGER {
        let enrolled = tokio::task::block_in_place(|| coordinator.store().enrolled());
        if enrolled.is_ok_and(|n| coordinator.clients_told_finished() >= n) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The longest a finished server (`--exit-when-finished`) waits for its clients to learn it.
const LINGER: Duration = Duration::from_secs(15);

/// The run directory and its configuration: created from `options.config` on first start,
/// reopened with its saved configuration afterwards.
fn open_run_dir(options: &ServeOptions) -> Result<(RunDir, RunConfig)> {
    match &options.config {
        Some(config) if !options.dir.join(DATABASE_FILE).exists() => {
            config.validate()?;
            let dir = RunDir::create(&options.dir, config)?;
            Ok((dir, config.clone()))
        }
        _ => {
            let dir = RunDir::open(&options.dir)?;
            let config = dir.load_config()?;
            config.validate()?;
            if let Some(given) = &options.config {
                if given != &config {
                    return Err(ServerError::RunDir {
                        path: options.dir.clone(),
                        message: "holds a run of a different configuration; continue it with \
                                  `fedsyn serve --resume DIR`, or choose a new --out"
                            .into(),
                    });
                }
            }
            Ok((dir, config))
        }
    }
}

/// Stores the admin token's hash: `FEDSYN_ADMIN_TOKEN` when set (every start), else a fresh
/// token written once to `DIR/admin-token` (0600).
fn set_up_admin_token(store: &Store, dir: &Path) -> Result<()> {
    if let Ok(token) = std::env::var(ADMIN_TOKEN_ENV) {
        if token.trim().len() < 16 {
            return Err(ServerError::argument(
                "FEDSYN_ADMIN_TOKEN",
                "(too short)",
                "a secret of at least 16 characters",
            ));
        }
        let hash = auth::hex(&auth::sha256(token.trim().as_bytes()));
        return store.set_meta(http::ADMIN_HASH_KEY, &hash);
    }
    if store.meta(http::ADMIN_HASH_KEY)?.is_some() {
        return Ok(());
    }
    let token = auth::issue("a").token;
    write_secret(&dir.join(ADMIN_TOKEN_FILE), &format!("{token}\n"))?;
    store.set_meta(
        http::ADMIN_HASH_KEY,
        &auth::hex(&auth::sha256(token.as_bytes())),
    )
}

/// Writes a file only its owner can read.
fn write_secret(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(|e| ServerError::io(path, e))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| ServerError::io(path, e))
}

/// The rustls configuration of a PEM certificate chain and key (ring provider).
async fn tls_config(cert: &Path, key: &Path) -> Result<axum_server::tls_rustls::RustlsConfig> {
    // Installing fails only when a provider is installed already, which is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
        .await
        .map_err(|e| {
            ServerError::Http(format!(
                "cannot load the TLS certificate {} / key {}: {e}; give PEM files \
                 (--tls-cert chain, --tls-key private key)",
                cert.display(),
                key.display()
            ))
        })
}
