//! `fedsyn client`: joins a `fedsyn serve` run as one federated client. It embeds its own
//! texts locally (once; kept in its state folder), then polls the server for round tasks,
//! scores the candidates against its texts and submits the clipped score vector, until the
//! server says the run is finished. Its texts and embeddings never leave the machine.
//!
//! This command runs in `fedsyn`, which does not link libtorch: a polling client then holds a
//! few MB instead of the ~400 MB (RSS) every libtorch process starts with. Only when its texts
//! are not embedded yet does it run `fedsyn-ml client-embed` once, as a child process.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use remote_client::{
    cached_profile, normalise_server_url, read_client_texts, ClientEvent, Profile, RemoteClient,
    RemoteConfig,
};

use fedsyn::exit_status::EXIT_BAD_INPUT;
use fedsyn::torch_commands::torch_command;

/// Arguments of `fedsyn client`.
#[derive(Debug, Args)]
pub struct ClientArgs {
    /// The server's base URL, e.g. http://127.0.0.1:8080.
    #[arg(long, value_name = "URL")]
    pub server: String,
    /// The one-time enrolment token from the server's operator (needed on the first start
    /// only; later starts use the credentials in --state-dir).
    #[arg(long, value_name = "TOKEN")]
    pub enroll: Option<String>,
    /// This client's private texts: one {"text": …} object per line.
    #[arg(long, value_name = "JSONL")]
    pub data: PathBuf,
    /// Where the client keeps its credentials (client.json, mode 0600) and embeddings.
    #[arg(long, value_name = "DIR", default_value = ".fedsyn-client")]
    pub state_dir: PathBuf,
    /// A PEM root certificate to trust instead of the public web roots (a server with its own
    /// certificate authority).
    #[arg(long, value_name = "PEM")]
    pub ca_cert: Option<PathBuf>,
    /// Give up when the server has been unreachable or failing this long in a row.
    #[arg(long, value_name = "S", default_value_t = 600)]
    pub max_wait_seconds: u64,
    /// The sentence embedder's folder (default: the installed all-MiniLM-L6-v2); it must be
    /// the one the server embeds its candidates with.
    #[arg(long, value_name = "DIR")]
    pub embedder: Option<PathBuf>,
}

/// Runs `fedsyn client`.
pub fn run(args: &ClientArgs, json: bool) -> Result<()> {
    // Everything the user gave is checked before the one-time token is spent.
    normalise_server_url(&args.server)?;
    let texts = read_client_texts(&args.data)?;
    let profile = profile(args, &texts)?;
    drop(texts);
    eprintln!(
        "{} texts of {} embedded (state in {})",
        profile.texts,
        args.data.display(),
        args.state_dir.display()
    );
    let config = RemoteConfig {
        server: args.server.clone(),
        enrolment_token: args.enroll.clone(),
        state_dir: args.state_dir.clone(),
        ca_cert: args.ca_cert.clone(),
        max_wait: Duration::from_secs(args.max_wait_seconds),
    };
    let mut log = |event: ClientEvent| eprintln!("{}", describe(&event));
    let mut client = RemoteClient::connect(&config, &mut log)?;
    let summary = client.run(&profile.embedding_sum, &mut log)?;
    if json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        println!(
            "run finished: client {} submitted {} round(s), {} refused, {} retried request(s)",
            summary.client_id,
            summary.rounds_submitted.len(),
            summary.rounds_refused.len(),
            summary.retries
        );
    }
    Ok(())
}

/// The client's profile from its state folder (for `--embedder`, or the embedder it was
/// computed with), computed first by `fedsyn-ml client-embed` when it is not there: the only
/// step that loads libtorch, in a child process that exits when done.
fn profile(args: &ClientArgs, texts: &[String]) -> Result<Profile> {
    let embedder = args.embedder.as_deref();
    if let Some(profile) = cached_profile(texts, embedder, &args.state_dir)? {
        return Ok(profile);
    }
    let mut command = torch_command();
    let binary = PathBuf::from(command.get_program());
    command
        .arg("client-embed")
        .arg("--data")
        .arg(&args.data)
        .arg("--state-dir")
        .arg(&args.state_dir);
    if let Some(dir) = embedder {
        command.arg("--embedder").arg(dir);
    }
    let status = command
        .status()
        .with_context(|| format!("cannot run {} to embed the texts", binary.display()))?;
    match status.code() {
        Some(0) => {}
        // The child printed the problem; it is the user's to fix, so exit as it did.
        Some(code) if code == i32::from(EXIT_BAD_INPUT) => std::process::exit(code),
        _ => bail!(
            "embedding the texts of {} failed ({status})",
            args.data.display()
        ),
    }
    cached_profile(texts, embedder, &args.state_dir)?.with_context(|| {
        format!(
            "`{} client-embed` finished but left no profile in {}",
            binary.display(),
            args.state_dir.display()
        )
    })
}

/// One log line for `event`.
fn describe(event: &ClientEvent) -> String {
    match event {
        ClientEvent::Enrolled { client_id } => format!("enrolled as client {client_id}"),
        ClientEvent::Resumed { client_id } => {
            format!("resuming as client {client_id} (credentials from an earlier start)")
        }
        ClientEvent::Task {
            round,
            attempt,
            candidates,
        } => format!("round {round} (attempt {attempt}): scoring {candidates} candidates"),
        ClientEvent::Submitted {
            round,
            receipt,
            replay,
        } => format!(
            "round {round}: scores accepted{} (receipt {})",
            if *replay { " (already received)" } else { "" },
            &receipt[..receipt.len().min(16)]
        ),
        ClientEvent::Refused {
            round,
            status,
            detail,
        } => format!("round {round}: the server refused (HTTP {status}): {detail}"),
        ClientEvent::LeftSession { round, reason } => {
            format!("round {round}: left the secure-aggregation session: {reason}")
        }
        ClientEvent::Retrying(retry) => format!(
            "{}: {}; retry {} in {:.1} s",
            retry.request,
            retry.reason,
            retry.failures,
            retry.delay.as_secs_f64()
        ),
    }
}
