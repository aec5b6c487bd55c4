//! `fedsyn serve`: POPri with remote clients (users call it as
//! `fedsyn serve --config run.toml --out runs/live --enrolment-tokens 50`).

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;
use round_driver::Progress;
use runs::config::RunConfig;
use runs::RoundMetrics;
use server::serve::{serve, ServeOptions};
use server::simulate::round_line;

/// Arguments of `fedsyn serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The run's TOML configuration with a `[serve]` section (`[data]` is not used: the server
    /// never sees private data).
    #[arg(long, required_unless_present = "resume")]
    pub config: Option<PathBuf>,
    /// Override one configuration value, e.g. `--set serve.min_clients=50` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// The run directory (created on first start; the same --out again continues the run).
    #[arg(long, required_unless_present = "resume")]
    pub out: Option<PathBuf>,
    /// Continue the run in this directory after a crash or a kill (its saved configuration).
    #[arg(long, value_name = "RUN_DIR", conflicts_with_all = ["config", "out"])]
    pub resume: Option<PathBuf>,
    /// Listen on this address instead of `serve.bind` (port 0 picks a free port).
    #[arg(long, value_name = "ADDR:PORT")]
    pub bind: Option<String>,
    /// PEM certificate chain: serve HTTPS (needs --tls-key).
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Serve plain HTTP on an address other than loopback (refused without this flag: tokens
    /// and score vectors would cross the network unencrypted; prefer --tls-cert/--tls-key).
    #[arg(long)]
    pub insecure_http: bool,
    /// Create N one-time enrolment tokens, written to DIR/enrolment-tokens.txt (mode 0600).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub enrolment_tokens: usize,
    /// Exit (status 0) once the run is finished instead of serving its results on.
    #[arg(long)]
    pub exit_when_finished: bool,
}

/// Runs `fedsyn serve`.
pub fn run(args: &ServeArgs, json: bool) -> Result<()> {
    let (dir, config) = match (&args.resume, &args.config, &args.out) {
        (Some(dir), _, _) => (dir.clone(), None),
        (None, Some(path), Some(out)) => {
            (out.clone(), Some(RunConfig::load(path, &args.overrides)?))
        }
        _ => anyhow::bail!("give --config FILE --out DIR, or --resume DIR"),
    };
    let options = ServeOptions {
        dir: dir.clone(),
        config,
        bind: args.bind.clone(),
        tls: args.tls_cert.clone().zip(args.tls_key.clone()),
        insecure_http: args.insecure_http,
        enrolment_tokens: args.enrolment_tokens,
        exit_when_finished: args.exit_when_finished,
    };
    let on_listening = |url: &str| {
        // Tests and scripts read the port from this line: print it at once.
        println!("listening on {url}");
        let _ = std::io::stdout().flush();
        eprintln!(
            "run directory: {} (continue after a crash with `fedsyn serve --resume {}`)",
            dir.display(),
            dir.display()
        );
    };
    let on_round: Arc<dyn Fn(&RoundMetrics) + Send + Sync> = if json {
        Arc::new(|metrics: &RoundMetrics| {
            if let Ok(line) = serde_json::to_string(metrics) {
                println!("{line}");
                let _ = std::io::stdout().flush();
            }
        })
    } else {
        Arc::new(|metrics: &RoundMetrics| eprintln!("{}", round_line(metrics)))
    };
    serve(&options, Arc::new(PhaseLog), &on_listening, on_round)
        .with_context(|| format!("fedsyn serve of the run in {}", dir.display()))
}

/// One line on stderr per phase of a round (progress bars would interleave with the logs of a
/// long-running server).
struct PhaseLog;

impl Progress for PhaseLog {
    fn start(&self, phase: &'static str, total: u64) {
        eprintln!("{phase}: {total} item(s)");
    }
    fn advance(&self, _: u64) {}
    fn finish(&self) {}
}
