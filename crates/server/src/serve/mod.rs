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
use crate::digest::{hex, sha256};
use crate::error::{Result, RunError, ServerError};
use crate::run_dir::{RoundMetrics, RunDir};
use coordinator::{CollectionRules, Coordinator};
use round_driver::Progress;
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
    /// Allow plain HTTP on an address other than loopback (tokens and score vectors then cross
    /// the network unencrypted).
    pub insecure_http: bool,
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
    // Everything a user can get wrong on the command line is refused before the run directory
    // is created or touched.
    let admin_token = admin_token_from_env()?;
    if let Some(config) = &options.config {
        bind_address(options, config)?;
    }
    let (dir, config) = open_run_dir(options)?;
    let address = bind_address(options, &config)?;
    if options.tls.is_none() && !address.ip().is_loopback() {
        eprintln!(
            "warning: --insecure-http: serving plain HTTP on {address}; bearer tokens, \
             enrolment tokens and the clients' score vectors cross the network unencrypted \
             (give --tls-cert/--tls-key to serve HTTPS)"
        );
    }
    // One process per run directory: a second server (or simulation) on the same state would
    // interleave rounds and charges. Held until this function returns.
    let _lock = dir.lock()?;
    let store = Arc::new(Store::open(&dir.root().join(DATABASE_FILE))?);
    set_up_admin_token(&store, dir.root(), admin_token.as_deref())?;
    let metrics = Arc::new(metrics::Metrics::default());
    let rules = CollectionRules {
        clip: config.privacy.clip,
        quorum: config.serve.quorum,
        deadline: Duration::from_secs(config.serve.round_deadline_seconds),
        secure: (config.serve.aggregation == crate::config::Aggregation::SecAggPlus).then(|| {
            coordinator::SecureRules {
                neighbours: config.serve.secagg_neighbours,
                step: Duration::from_secs(config.serve.secagg_step_seconds),
            }
        }),
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
        address_limiter: limits::RateLimiter::new(
            config
                .serve
                .rate_limit_per_minute
                .saturating_mul(limits::PER_ADDRESS_FACTOR),
        ),
        openapi: openapi::document(),
    });
    let app = http::router(state, config.serve.body_limit(values));

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
            // The peer address feeds the per-address rate limit of the routes without a client
            // token.
            let service = app.into_make_service_with_connect_info::<SocketAddr>();
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

/// The address to listen on. Plain HTTP is refused on anything but loopback unless the
/// operator says `--insecure-http` (and [`serve`] warns then): client tokens, enrolment tokens
/// and every score vector would cross the network in clear text.
fn bind_address(options: &ServeOptions, config: &RunConfig) -> Result<SocketAddr> {
    let bind = options.bind.as_deref().unwrap_or(&config.serve.bind);
    let address: SocketAddr = bind.parse().map_err(|_| {
        ServerError::argument(
            "--bind",
            bind,
            "an IP address and port, e.g. 127.0.0.1:8080",
        )
    })?;
    if options.tls.is_none() && !address.ip().is_loopback() && !options.insecure_http {
        return Err(ServerError::argument(
            "--bind",
            address,
            "a loopback address for plain HTTP; to listen on other addresses give \
             --tls-cert PEM --tls-key PEM (HTTPS), or --insecure-http to send tokens and \
             score vectors unencrypted anyway",
        ));
    }
    Ok(address)
}

/// Refuses the test-only seeds: a fixed `privacy.noise_seed` makes the noise reproducible (and
/// so subtractable by anyone who knows the seed), a fixed `privacy.sampling_seed` makes the
/// cohorts predictable, and either voids the guarantee the ledger states.
fn refuse_test_seeds(config: &RunConfig) -> Result<()> {
    let seeds = [
        ("privacy.noise_seed", config.privacy.noise_seed),
        ("privacy.sampling_seed", config.privacy.sampling_seed),
    ];
    for (key, seed) in seeds {
        if let Some(seed) = seed {
            return Err(ServerError::Run(RunError::ConfigValue {
                key: key.to_string(),
                value: seed.to_string(),
                fix: format!(
                    "no fixed seed: seeds are for tests and simulations only, and `fedsyn \
                     serve` releases to real people; remove `{key}` from the configuration \
                     (fresh OS randomness is then used)"
                ),
            }));
        }
    }
    Ok(())
}

/// Refuses a method `fedsyn serve` does not run yet: the server's round loop is POPri's, and
/// running it under a PE or DP-FedAvg configuration would label the run by a method it did not
/// run.
fn refuse_unserved_method(config: &RunConfig) -> Result<()> {
    match config.run.method {
        crate::config::Method::Popri => Ok(()),
        other => Err(ServerError::Run(RunError::ConfigValue {
            key: "run.method".into(),
            value: other.to_string(),
            fix: format!(
                "`fedsyn serve` runs POPri only; `{other}` runs in simulation (`fedsyn simulate \
                 --config FILE`); set run.method = \"popri\" to serve"
            ),
        })),
    }
}

/// The run directory and its configuration: created from `options.config` on first start,
/// reopened with its saved configuration afterwards.
fn open_run_dir(options: &ServeOptions) -> Result<(RunDir, RunConfig)> {
    match &options.config {
        Some(config) if !options.dir.join(DATABASE_FILE).exists() => {
            config.validate()?;
            refuse_test_seeds(config)?;
            refuse_unserved_method(config)?;
            let dir = RunDir::create(&options.dir, config)?;
            Ok((dir, config.clone()))
        }
        _ => {
            let dir = RunDir::open(&options.dir)?;
            let config = dir.load_config()?;
            config.validate()?;
            refuse_test_seeds(&config)?;
            refuse_unserved_method(&config)?;
            if let Some(given) = &options.config {
                if given != &config {
                    return Err(ServerError::Run(RunError::RunDir {
                        path: options.dir.clone(),
                        message: "holds a run of a different configuration; continue it with \
                                  `fedsyn serve --resume DIR`, or choose a new --out"
                            .into(),
                    }));
                }
            }
            Ok((dir, config))
        }
    }
}

/// The admin token of `FEDSYN_ADMIN_TOKEN`, if set, once it is strong enough.
fn admin_token_from_env() -> Result<Option<String>> {
    let Ok(token) = std::env::var(ADMIN_TOKEN_ENV) else {
        return Ok(None);
    };
    let token = token.trim().to_string();
    let bits = estimated_entropy_bits(&token);
    if bits < MIN_ADMIN_TOKEN_BITS {
        return Err(ServerError::argument(
            "FEDSYN_ADMIN_TOKEN",
            format!("(a secret of about {bits:.0} bits)"),
            format!(
                "a random secret of at least {MIN_ADMIN_TOKEN_BITS:.0} bits (32 bytes), e.g. \
                 64 hex characters from `openssl rand -hex 32`; or unset it and use the \
                 generated DIR/{ADMIN_TOKEN_FILE}"
            ),
        ));
    }
    Ok(Some(token))
}

/// The least entropy an operator-chosen admin token must have: that of the generated tokens.
const MIN_ADMIN_TOKEN_BITS: f64 = 256.0;

/// An upper estimate of a secret's entropy: length × log2(alphabet), where the alphabet is
/// the union of the character classes it uses (digits only: 10, hex: 16, base64url: 64, …).
/// Secrets of fewer than 8 distinct characters ("aaaa…") count as their distinct characters.
fn estimated_entropy_bits(secret: &str) -> f64 {
    let chars: Vec<char> = secret.chars().collect();
    let distinct = chars.iter().collect::<std::collections::HashSet<_>>().len();
    let has = |f: fn(&char) -> bool| chars.iter().any(f);
    let alphabet = if chars.iter().all(char::is_ascii_digit) {
        10
    } else if chars.iter().all(char::is_ascii_hexdigit) {
        16
    } else {
        let mut size = 0;
        size += if has(char::is_ascii_lowercase) { 26 } else { 0 };
        size += if has(char::is_ascii_uppercase) { 26 } else { 0 };
        size += if has(char::is_ascii_digit) { 10 } else { 0 };
        size += if has(|c| *c == '-' || *c == '_') {
            2
        } else {
            0
        };
        size += if has(|c| !c.is_ascii_alphanumeric() && *c != '-' && *c != '_') {
            32
        } else {
            0
        };
        size
    };
    // A random secret of 43+ characters uses far more than 8 distinct ones.
    let alphabet = if distinct < 8 { distinct } else { alphabet }.max(1);
    chars.len() as f64 * (alphabet as f64).log2()
}

/// Stores the admin token's hash: `token` (from `FEDSYN_ADMIN_TOKEN`) when given (every
/// start), else a fresh token written once to `DIR/admin-token` (0600).
fn set_up_admin_token(store: &Store, dir: &Path, token: Option<&str>) -> Result<()> {
    if let Some(token) = token {
        let hash = hex(&sha256(token.as_bytes()));
        return store.set_meta(http::ADMIN_HASH_KEY, &hash);
    }
    if store.meta(http::ADMIN_HASH_KEY)?.is_some() {
        return Ok(());
    }
    let token = auth::issue("a").token;
    write_secret(&dir.join(ADMIN_TOKEN_FILE), &format!("{token}\n"))?;
    store.set_meta(http::ADMIN_HASH_KEY, &hex(&sha256(token.as_bytes())))
}

/// Writes a file only its owner can read. The mode given to `open` applies only when the file
/// is created; an existing file (an earlier `--enrolment-tokens`, a copy made by hand) is
/// narrowed to 0600 before the secret is written into it.
pub fn write_secret(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(|e| ServerError::io(path, e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(|e| ServerError::io(path, e))?;
    }
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

/// A fresh, empty folder for the test `name` (`fedsyn-NAME-PID` in the system's temporary
/// folder; what an earlier run of the test left there is removed).
#[cfg(test)]
pub(crate) fn scratch_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("fedsyn-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_method_serve_does_not_run_is_refused_by_name() {
        let text = "[data]\ntrain = \"sotu\"\n[prompts]\ntopics = [\"taxes\"]\n";
        let mut config = RunConfig::from_toml(text, std::path::Path::new("/base")).unwrap();
        assert!(refuse_unserved_method(&config).is_ok());
        for method in [
            crate::config::Method::Pe,
            crate::config::Method::PeSft,
            crate::config::Method::DpFedavg,
        ] {
            config.run.method = method;
            let error = refuse_unserved_method(&config).unwrap_err();
            assert!(error.is_bad_input());
            let message = error.to_string();
            assert!(
                message.contains("run.method") && message.contains(method.as_str()),
                "{message}"
            );
        }
    }

    #[test]
    fn admin_tokens_need_256_bits() {
        let hex64 = "3f9a0c5e7b21d4f86a0e9c3b5d7f1a2c4e6b8d0f2a4c6e8b0d2f4a6c8e0b2d4f";
        assert!(estimated_entropy_bits(hex64) >= MIN_ADMIN_TOKEN_BITS);
        assert!(estimated_entropy_bits(&hex64[..60]) < MIN_ADMIN_TOKEN_BITS);
        let base64url = "Zq3_x9Lr-T0bW8vKp2mNc7YhJd5sFg1eAo4uRi6QkE0";
        assert_eq!(base64url.len(), 43);
        assert!(estimated_entropy_bits(base64url) >= MIN_ADMIN_TOKEN_BITS);
        for weak in [
            "operator-chosen-admin-secret",
            "correct horse battery staple",
            &"a".repeat(100),
            &"ab".repeat(60),
            &"1".repeat(70),
        ] {
            assert!(
                estimated_entropy_bits(weak) < MIN_ADMIN_TOKEN_BITS,
                "{weak}"
            );
        }
    }

    #[test]
    fn secrets_are_owner_only_on_every_write() {
        let dir = scratch_dir("secret");
        let path = dir.join(ENROLMENT_TOKENS_FILE);
        std::fs::write(&path, "old\n").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            write_secret(&path, "e1.secret\n").unwrap();
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "e1.secret\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
