//! `fedsyn doctor`: what this installation runs on and where it found the default models, with
//! the fix for anything missing.

use std::path::{Path, PathBuf};

use anyhow::Result;
use models::device::{cuda_device_count, libtorch_has_cuda};
use models::llama::MatmulBackend;
use models::Assets;
use serde::Serialize;

/// One installed asset and whether it was found.
#[derive(Debug, Serialize)]
struct AssetCheck {
    name: &'static str,
    path: Option<PathBuf>,
    problem: Option<String>,
}

/// libgomp's idle-thread settings from the environment.
#[derive(Debug, Serialize)]
struct OpenMpWait {
    omp_wait_policy: Option<String>,
    gomp_spincount: Option<String>,
}

/// Everything `doctor` reports.
#[derive(Debug, Serialize)]
struct Report {
    fedsyn_version: &'static str,
    libtorch_version: Option<String>,
    libtorch_dir: Option<PathBuf>,
    threads: i32,
    /// libgomp's idle-thread settings as this process got them (`OMP_WAIT_POLICY`,
    /// `GOMP_SPINCOUNT`; `fedsyn` sets the spin when neither is given).
    openmp_wait: OpenMpWait,
    /// What runs fp32 matrix products on the CPU: `torch` (libtorch's `linear`: MKL, packing
    /// the weight at every call) or `onednn`, chosen from the processor, or `mkl-packed` (the
    /// same as `torch`, with decoding's weights packed once per generation), opted into with
    /// `FEDSYN_CPU_MATMUL=torch|mkl-packed|onednn`.
    cpu_fp32_matmul: &'static str,
    libtorch_cuda_loaded: bool,
    cuda_devices: usize,
    cudnn: bool,
    models_env: Option<PathBuf>,
    assets: Vec<AssetCheck>,
}

/// Prints the report; fails (exit 1) when a default model or the demo data is missing.
pub fn run(json: bool) -> Result<()> {
    let report = collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    let missing: Vec<&str> = report
        .assets
        .iter()
        .filter(|a| a.problem.is_some())
        .map(|a| a.name)
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("missing: {}; run scripts/setup.sh", missing.join(", "))
    }
}

fn collect() -> Report {
    let libtorch_dir = mapped_libtorch_dir();
    let assets = Assets::discover();
    let check = |name, found: models::Result<PathBuf>| match found {
        Ok(path) => AssetCheck {
            name,
            path: Some(path),
            problem: None,
        },
        Err(error) => AssetCheck {
            name,
            path: None,
            problem: Some(error.to_string()),
        },
    };
    Report {
        fedsyn_version: env!("CARGO_PKG_VERSION"),
        libtorch_version: libtorch_dir.as_deref().and_then(libtorch_version),
        libtorch_dir,
        threads: tch::get_num_threads(),
        openmp_wait: OpenMpWait {
            omp_wait_policy: std::env::var("OMP_WAIT_POLICY").ok(),
            gomp_spincount: std::env::var("GOMP_SPINCOUNT").ok(),
        },
        cpu_fp32_matmul: MatmulBackend::cpu_fp32().name(),
        libtorch_cuda_loaded: libtorch_has_cuda(),
        cuda_devices: cuda_device_count(),
        cudnn: tch::Cuda::cudnn_is_available(),
        models_env: assets.source().map(Path::to_path_buf),
        assets: vec![
            check(
                "generator (SmolLM2-135M-Instruct GGUF)",
                assets.smollm2_gguf(),
            ),
            check("embedder (all-MiniLM-L6-v2)", assets.minilm_dir()),
            check("demo data (State of the Union)", assets.sotu_dir()),
        ],
    }
}

fn print_table(report: &Report) {
    let or_unknown = |v: Option<String>| v.unwrap_or_else(|| "unknown".into());
    println!("fedsyn          {}", report.fedsyn_version);
    println!(
        "libtorch        {} ({})",
        or_unknown(report.libtorch_version.clone()),
        or_unknown(
            report
                .libtorch_dir
                .as_ref()
                .map(|d| d.display().to_string())
        )
    );
    println!("threads         {}", report.threads);
    let wait = &report.openmp_wait;
    println!(
        "openmp wait     OMP_WAIT_POLICY={}, GOMP_SPINCOUNT={}",
        wait.omp_wait_policy.as_deref().unwrap_or("unset"),
        wait.gomp_spincount.as_deref().unwrap_or("unset")
    );
    println!(
        "cpu fp32 matmul {} (FEDSYN_CPU_MATMUL=torch|mkl-packed|onednn forces one)",
        report.cpu_fp32_matmul
    );
    let cuda = match (report.libtorch_cuda_loaded, report.cuda_devices) {
        (false, _) => "not available: this libtorch has no CUDA library loaded".to_string(),
        (true, 0) => "libtorch_cuda loaded, no CUDA device visible (CPU only)".to_string(),
        (true, n) => format!("{n} device(s), cuDNN {}", report.cudnn),
    };
    println!("cuda            {cuda}");
    match &report.models_env {
        Some(path) => println!("models.env      {}", path.display()),
        None => println!("models.env      not found (run scripts/setup.sh)"),
    }
    for asset in &report.assets {
        match (&asset.path, &asset.problem) {
            (Some(path), _) => println!("ok       {:<40} {}", asset.name, path.display()),
            (None, Some(problem)) => println!("MISSING  {:<40} {problem}", asset.name),
            (None, None) => {}
        }
    }
}

/// The folder of the libtorch this process loaded (the parent of its `lib/`), from
/// /proc/self/maps.
fn mapped_libtorch_dir() -> Option<PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    let lib = maps
        .lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .find(|path| path.ends_with("/libtorch_cpu.so"))?;
    Path::new(lib).parent()?.parent().map(Path::to_path_buf)
}

/// The version the PyPI wheel records in `torch/version.py` (`__version__ = '2.11.0+cu130'`).
fn libtorch_version(libtorch_dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(libtorch_dir.join("version.py")).ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix("__version__"))
        .map(|rest| {
            rest.trim_start_matches([' ', '='])
                .trim()
                .trim_matches(['\'', '"'])
        })
        .map(str::to_string)
}
