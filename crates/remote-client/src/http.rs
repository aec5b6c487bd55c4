//! One HTTP exchange with the server, retried with exponential backoff and jitter while the
//! server is unreachable, failing (5xx) or rate-limiting (429, honouring `Retry-After`), up to
//! the client's patience. Every other answer (2xx or 4xx) goes back to the caller, which knows
//! what each status means for its request.

use std::path::Path;
use std::time::{Duration, Instant};

use rand::Rng;
use ureq::http::Response;
use ureq::tls::{Certificate, RootCerts, TlsConfig};
use ureq::{Agent, Body};

use crate::error::{RemoteError, Result};

/// The first retry waits about this long; each further one twice as long, up to the cap.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// The longest wait between two tries.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A server-sent `Retry-After` longer than this is cut to it (a hostile or broken server must
/// not park the client for a day).
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);
/// Connecting to the server.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// One whole exchange, a candidate download included.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(300);
/// Problem details are cut to this many characters in messages.
const MAX_DETAIL_CHARS: usize = 500;

/// A server's answer that is not retried: its status and body.
#[derive(Debug)]
pub(crate) struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Reply {
    /// The `detail` (else `title`) of an `application/problem+json` body, or the body itself,
    /// shortened.
    pub fn detail(&self) -> String {
        let parsed: Option<serde_json::Value> = serde_json::from_slice(&self.body).ok();
        let field = |name: &str| {
            parsed
                .as_ref()
                .and_then(|v| v.get(name))
                .and_then(|v| v.as_str())
                .map(str::to_string)
        };
        let text = field("detail")
            .or_else(|| field("title"))
            .unwrap_or_else(|| String::from_utf8_lossy(&self.body).into_owned());
        text.chars().take(MAX_DETAIL_CHARS).collect()
    }
}

/// Why a try failed in a way worth another try.
enum Transient {
    /// No answer: connection refused or reset, timeout, …
    Unreachable(String),
    /// 5xx or 429, with the server's `Retry-After` when it sent one.
    Status {
        status: u16,
        retry_after: Option<Duration>,
    },
}

impl std::fmt::Display for Transient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Transient::Unreachable(reason) => f.write_str(reason),
            Transient::Status { status, .. } => write!(f, "HTTP {status}"),
        }
    }
}

/// A retry about to happen, for the caller's log.
#[derive(Debug, Clone, PartialEq)]
pub struct Retry {
    /// The request, e.g. `GET /v1/tasks/next`.
    pub request: String,
    /// Why the last try failed.
    pub reason: String,
    /// How long the client waits before the next try.
    pub delay: Duration,
    /// Tries failed so far in this exchange.
    pub failures: u32,
}

/// The HTTP side of a client: an agent for one server and the patience of its retries.
pub(crate) struct Http {
    agent: Agent,
    base: String,
    max_wait: Duration,
}

impl Http {
    /// A client of the server at `base` (checked by [`normalise_server_url`]), trusting only
    /// the PEM root certificate at `ca_cert` when given (else the public web roots).
    pub fn new(base: String, ca_cert: Option<&Path>, max_wait: Duration) -> Result<Http> {
        let mut tls = TlsConfig::builder();
        if let Some(path) = ca_cert {
            tls = tls.root_certs(RootCerts::new_with_certs(&[read_certificate(path)?]));
        }
        let agent: Agent = Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_global(Some(EXCHANGE_TIMEOUT))
            .max_redirects(0)
            .tls_config(tls.build())
            .build()
            .into();
        Ok(Http {
            agent,
            base,
            max_wait,
        })
    }

    /// The absolute URL of `path` (which starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `GET path` with the bearer `token`; the body is read up to `limit` bytes.
    pub fn get(
        &self,
        path: &str,
        token: &str,
        limit: u64,
        on_retry: &mut dyn FnMut(Retry),
    ) -> Result<Reply> {
        let url = self.url(path);
        let authorization = format!("Bearer {token}");
        self.exchange(&format!("GET {path}"), limit, on_retry, || {
            self.agent
                .get(&url)
                .header("Authorization", &authorization)
                .call()
        })
    }

    /// `POST path` with the JSON `body` and the bearer `token` when given.
    pub fn post_json(
        &self,
        path: &str,
        token: Option<&str>,
        body: &[u8],
        on_retry: &mut dyn FnMut(Retry),
    ) -> Result<Reply> {
        let url = self.url(path);
        let authorization = token.map(|t| format!("Bearer {t}"));
        self.exchange(&format!("POST {path}"), 1 << 20, on_retry, || {
            let request = self.agent.post(&url).content_type("application/json");
            match &authorization {
                Some(value) => request.header("Authorization", value).send(body),
                None => request.send(body),
            }
        })
    }

    /// Tries `call` until it yields an answer that is not transient, waiting between tries;
    /// errors when the failures have lasted longer than `max_wait`, or the failure is not one
    /// another try can mend (TLS, an oversized answer, …).
    fn exchange(
        &self,
        request: &str,
        limit: u64,
        on_retry: &mut dyn FnMut(Retry),
        call: impl Fn() -> std::result::Result<Response<Body>, ureq::Error>,
    ) -> Result<Reply> {
        let started = Instant::now();
        let mut failures = 0u32;
        loop {
            let transient = match call().and_then(|response| read_reply(response, limit)) {
                Ok((reply, retry_after)) => match reply.status {
                    429 | 500..=599 => Transient::Status {
                        status: reply.status,
                        retry_after,
                    },
                    _ => return Ok(reply),
                },
                Err(error) if is_transient(&error) => Transient::Unreachable(error.to_string()),
                Err(error) => {
                    return Err(RemoteError::Protocol {
                        request: request.to_string(),
                        problem: error.to_string(),
                    })
                }
            };
            failures += 1;
            let delay = retry_delay(failures, &transient);
            if started.elapsed() + delay > self.max_wait {
                return Err(RemoteError::ServerUnreachable {
                    request: request.to_string(),
                    waited_seconds: started.elapsed().as_secs(),
                    last: transient.to_string(),
                });
            }
            on_retry(Retry {
                request: request.to_string(),
                reason: transient.to_string(),
                delay,
                failures,
            });
            std::thread::sleep(delay);
        }
    }
}

/// The status and body of `response` (at most `limit` bytes), and its `Retry-After`.
fn read_reply(
    mut response: Response<Body>,
    limit: u64,
) -> std::result::Result<(Reply, Option<Duration>), ureq::Error> {
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .with_config()
        .limit(limit)
        .read_to_vec()?;
    Ok((Reply { status, body }, retry_after))
}

/// Whether another try may succeed: everything but TLS, certificate, size and URL problems.
/// rustls reports a refused certificate or a failed handshake as an I/O error of kind
/// `InvalidData`; connection failures have other kinds (refused, reset, unexpected EOF, …).
fn is_transient(error: &ureq::Error) -> bool {
    if let ureq::Error::Io(io) = error {
        return io.kind() != std::io::ErrorKind::InvalidData;
    }
    !matches!(
        error,
        ureq::Error::Tls(_)
            | ureq::Error::Pem(_)
            | ureq::Error::Rustls(_)
            | ureq::Error::BadUri(_)
            | ureq::Error::BodyExceedsLimit(_)
            | ureq::Error::LargeResponseHeader(..)
            | ureq::Error::RequireHttpsOnly(_)
            | ureq::Error::TlsRequired
            | ureq::Error::TooManyRedirects
    )
}

/// The wait before try `failures + 1`: the server's `Retry-After` when it sent one (plus up
/// to 10 % jitter, so that a crowd told the same number does not return in one burst), else
/// exponential backoff with "equal jitter" (half fixed, half uniform).
fn retry_delay(failures: u32, transient: &Transient) -> Duration {
    let mut rng = rand::thread_rng();
    if let Transient::Status {
        retry_after: Some(after),
        ..
    } = transient
    {
        let after = (*after).min(MAX_RETRY_AFTER);
        return after + after.mul_f64(rng.gen_range(0.0..0.1));
    }
    let exponential = FIRST_BACKOFF.saturating_mul(1u32 << (failures - 1).min(16));
    let ceiling = exponential.min(MAX_BACKOFF);
    ceiling / 2 + ceiling.mul_f64(rng.gen_range(0.0..0.5))
}

/// A wait of `base` plus up to 10 % jitter (for the server's "wait" answers).
pub(crate) fn jittered(base: Duration) -> Duration {
    base + base.mul_f64(rand::thread_rng().gen_range(0.0..0.1))
}

/// The PEM certificate at `path`.
fn read_certificate(path: &Path) -> Result<Certificate<'static>> {
    let pem = std::fs::read(path).map_err(|source| RemoteError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Certificate::from_pem(&pem).map_err(|e| RemoteError::InvalidArgument {
        name: "--ca-cert",
        message: format!(
            "{} holds no PEM certificate ({e}); give the server's CA certificate in PEM form",
            path.display()
        ),
    })
}

/// `url` without a trailing `/`, checked to be `http://` or `https://` with a host and no
/// path, query or fragment: the client builds every request URL from it.
pub fn normalise_server_url(url: &str) -> Result<String> {
    let bad = |problem: &str| RemoteError::InvalidArgument {
        name: "--server",
        message: format!(
            "`{url}` {problem}; give the server's base URL, e.g. http://127.0.0.1:8080"
        ),
    };
    let uri: ureq::http::Uri = url.parse().map_err(|_| bad("is not a URL"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(bad("does not start with http:// or https://")),
    }
    let authority = uri.authority().ok_or_else(|| bad("names no host"))?;
    if authority.host().is_empty() || authority.as_str().contains('@') {
        return Err(bad("names no host (or holds a user name)"));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() || url.contains('#') {
        return Err(bad("has a path, query or fragment"));
    }
    Ok(url.trim_end_matches('/').to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls_are_checked_and_normalised() {
        assert_eq!(
            normalise_server_url("http://127.0.0.1:8080/").unwrap(),
            "http://127.0.0.1:8080"
        );
        assert_eq!(
            normalise_server_url("https://fedsyn.example").unwrap(),
            "https://fedsyn.example"
        );
        for bad in [
            "127.0.0.1:8080",
            "ftp://host",
            "http://",
            "http://host/v1",
            "http://host/?a=1",
            "http://user@host",
            "not a url",
        ] {
            let error = normalise_server_url(bad).unwrap_err();
            assert!(error.to_string().contains("--server"), "{bad}: {error}");
        }
    }

    #[test]
    fn backoff_grows_to_its_cap_with_jitter_and_honours_retry_after() {
        let unreachable = Transient::Unreachable("refused".to_string());
        for failures in 1..=20 {
            let ceiling = FIRST_BACKOFF
                .saturating_mul(1 << (failures - 1).min(16))
                .min(MAX_BACKOFF);
            let delay = retry_delay(failures, &unreachable);
            assert!(
                delay >= ceiling / 2 && delay <= ceiling,
                "{failures}: {delay:?}"
            );
        }
        let told = Transient::Status {
            status: 429,
            retry_after: Some(Duration::from_secs(2)),
        };
        let delay = retry_delay(1, &told);
        assert!(delay >= Duration::from_secs(2) && delay <= Duration::from_millis(2200));
        let huge = Transient::Status {
            status: 503,
            retry_after: Some(Duration::from_secs(86_400)),
        };
        assert!(retry_delay(1, &huge) <= MAX_RETRY_AFTER.mul_f64(1.1));
    }

    #[test]
    fn problem_details_are_read_from_problem_json() {
        let reply = |body: &str| Reply {
            status: 409,
            body: body.as_bytes().to_vec(),
        };
        let problem = r#"{"type":"about:blank","title":"Conflict","status":409,"detail":"x"}"#;
        assert_eq!(reply(problem).detail(), "x");
        assert_eq!(reply(r#"{"title":"Conflict"}"#).detail(), "Conflict");
        assert_eq!(reply("plain").detail(), "plain");
        assert_eq!(reply(&"y".repeat(2000)).detail().len(), MAX_DETAIL_CHARS);
    }

    #[test]
    fn an_unreachable_server_is_retried_until_the_patience_runs_out() {
        // A port that was free a moment ago: connections are refused.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let http = Http::new(
            format!("http://127.0.0.1:{port}"),
            None,
            Duration::from_millis(1200),
        )
        .unwrap();
        let mut retries = Vec::new();
        let error = http
            .get("/v1/tasks/next", "t", 1024, &mut |r| retries.push(r))
            .unwrap_err();
        assert!(
            matches!(error, RemoteError::ServerUnreachable { .. }),
            "{error}"
        );
        assert!(retries.len() >= 2, "{retries:?}");
        assert!(retries
            .windows(2)
            .all(|w| w[1].failures == w[0].failures + 1));
    }
}
