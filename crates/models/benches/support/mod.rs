//! What the benchmarks share: reading their command-line flags, the State of the Union
//! prompts of the generator benchmarks, and this process's memory figures. Included by each
//! benchmark with `mod support;` (cargo builds only the top-level files of benches/ as
//! benchmarks).

#![allow(dead_code)] // each benchmark uses some of these

use std::fmt::Debug;
use std::path::PathBuf;
use std::str::FromStr;

use std::time::Instant;

use models::llama::Generator;
use models::{Assets, DeviceChoice, DtypeChoice};
use tch::{Device, Kind};

/// The benchmark's command line, read flag by flag: `--flag value` pairs.
pub struct Flags {
    args: std::iter::Skip<std::env::Args>,
    /// The flag last returned by [`Flags::next_flag`], for the messages about its value.
    flag: String,
}

impl Flags {
    /// The flags this process was started with.
    pub fn from_env() -> Flags {
        Flags {
            args: std::env::args().skip(1),
            flag: String::new(),
        }
    }

    /// The next flag, or `None` at the end. The `--bench` that cargo bench passes to
    /// harness = false targets is skipped.
    pub fn next_flag(&mut self) -> Option<String> {
        let flag = self.args.find(|arg| arg != "--bench")?;
        self.flag.clone_from(&flag);
        Some(flag)
    }

    /// The value after the current flag; panics when there is none.
    pub fn value(&mut self) -> String {
        let flag = &self.flag;
        self.args
            .next()
            .unwrap_or_else(|| panic!("{flag} needs a value"))
    }

    /// The value after the current flag as a path.
    pub fn path(&mut self) -> PathBuf {
        PathBuf::from(self.value())
    }

    /// The value after the current flag parsed as `T`; panics with the flag and `usage` (what
    /// it takes, e.g. `N`) when it does not parse.
    pub fn parse<T: FromStr>(&mut self, usage: &str) -> T
    where
        T::Err: Debug,
    {
        let value = self.value();
        let flag = &self.flag;
        value
            .parse()
            .unwrap_or_else(|e| panic!("{flag} {usage}: {e:?}"))
    }
}

/// The flags every benchmark takes: how many torch threads, on which device, in which dtype.
pub struct Runtime {
    pub threads: i32,
    pub device: DeviceChoice,
    pub dtype: DtypeChoice,
}

impl Default for Runtime {
    /// 2 threads on the CPU, the setting of the published comparisons.
    fn default() -> Runtime {
        Runtime {
            threads: 2,
            device: DeviceChoice::Cpu,
            dtype: DtypeChoice::Auto,
        }
    }
}

impl Runtime {
    /// Reads `flag` (`--threads N`, `--device auto|cpu|cuda[:N]` or `--dtype auto|f32|bf16`),
    /// the benchmark's own flags having been tried first; panics on any other flag.
    pub fn read_shared_flag(&mut self, flag: &str, flags: &mut Flags) {
        match flag {
            "--threads" => self.threads = flags.parse("N"),
            "--device" => self.device = flags.parse("auto|cpu|cuda[:N]"),
            "--dtype" => self.dtype = flags.parse("auto|f32|bf16"),
            other => panic!("unknown option {other}"),
        }
    }

    /// Sets torch's thread count and returns the device, which must be available.
    pub fn start(&self) -> Device {
        tch::set_num_threads(self.threads);
        self.device.resolve().expect("device")
    }

    /// The compute dtype on `device` (bf16 falls back to fp32, saying so, on a CPU without
    /// native bf16).
    pub fn kind(&self, device: Device) -> Kind {
        let (kind, notice) = self.dtype.resolve(device);
        if let Some(notice) = notice {
            eprintln!("note: {notice}");
        }
        kind
    }
}

/// SmolLM2-135M-Instruct from its GGUF file (scripts/setup.sh) on `device`, computing in
/// `kind`: the file, the generator and the seconds loading took.
pub fn load_smollm2(device: Device, kind: Kind) -> (PathBuf, Generator, f64) {
    let path = Assets::discover()
        .smollm2_gguf()
        .expect("the SmolLM2 GGUF (scripts/setup.sh)");
    let started = Instant::now();
    let generator = Generator::load_as(&path, device, kind).expect("loads");
    (path, generator, started.elapsed().as_secs_f64())
}

/// The token ids of `count` State of the Union addresses (file-name order, cycling when
/// `count` exceeds the files), each cut to its first `length` tokens.
pub fn address_ids(generator: &Generator, count: usize, length: usize) -> Vec<Vec<u32>> {
    let dir = Assets::discover()
        .sotu_dir()
        .expect("the State of the Union texts (scripts/setup.sh)");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("readable SOTU folder")
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "txt"))
        .collect();
    files.sort();
    (0..count)
        .map(|i| {
            let file = &files[i % files.len()];
            let text = std::fs::read_to_string(file).expect("readable address");
            // Enough characters for `length` tokens (English BPE: ≥ 2 characters per token).
            let head: String = text.chars().take(length * 8).collect();
            let ids = generator.encode_prompt(&head, false).expect("tokenises");
            assert!(ids.len() >= length, "{} is too short", file.display());
            ids[..length].to_vec()
        })
        .collect()
}

/// A memory figure of this process from /proc/self/status in MiB (`VmHWM`: peak resident
/// set; `VmRSS`: current resident set; `RssAnon`/`RssFile`: current anonymous / file-backed
/// resident memory), or `None` where /proc is unavailable (not Linux).
pub fn status_mib(field: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib = status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))?;
    let kib: f64 = kib.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib / 1024.0)
}

/// The process's peak resident set so far, in MiB (see [`status_mib`]).
pub fn peak_rss_mib() -> Option<f64> {
    status_mib("VmHWM")
}
