//! Helpers shared by the unit tests of several modules.

use std::path::PathBuf;

/// A field of the first processor in /proc/cpuinfo (`vendor_id`, `flags`, …), trimmed; None
/// where the file is unreadable (not Linux) or has no such field.
pub(crate) fn cpuinfo_field(name: &str) -> Option<String> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    cpuinfo
        .lines()
        .find(|line| line.starts_with(name))
        .and_then(|line| line.split(':').nth(1))
        .map(|value| value.trim().to_string())
}

/// Whether the first processor's /proc/cpuinfo flags include `flag`; None where unreadable.
pub(crate) fn cpu_flag(flag: &str) -> Option<bool> {
    cpuinfo_field("flags").map(|flags| flags.split_whitespace().any(|f| f == flag))
}

/// The folder `fedsyn-{label}-{process id}` in the temporary directory, created if need be
/// (one per test process, so that concurrent runs of the tests do not share files).
pub(crate) fn scratch_dir(label: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("fedsyn-{label}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a scratch folder in the temporary directory");
    dir
}
