//! Writing files so that a reader never sees half of one.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{io_error, Result};

/// Writes `bytes` to `path` atomically: into a temporary file next to it, flushed to disk,
/// then renamed over `path`. An interrupted run leaves the old file (or none), never a
/// truncated one. The parent folder is created if needed.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io_error(parent))?;
    }
    let temporary = temporary_path(path);
    let written = write_and_sync(&temporary, bytes)
        .and_then(|()| std::fs::rename(&temporary, path).map_err(io_error(path)));
    if written.is_err() {
        // Best effort: the error that matters is the one returned.
        let _ = std::fs::remove_file(&temporary);
    }
    written
}

fn write_and_sync(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = std::fs::File::create(path).map_err(io_error(path))?;
    file.write_all(bytes).map_err(io_error(path))?;
    file.sync_all().map_err(io_error(path))
}

/// `<path>.tmp-<pid>-<n>`: unique per process and call, so two writers filling the same
/// cache never write into each other's temporary file.
fn temporary_path(path: &Path) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp-{}-{n}", std::process::id()));
    path.with_file_name(name)
}
