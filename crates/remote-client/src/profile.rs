//! A client's profile: the sum of its texts' normalised embeddings, the one thing its scores
//! depend on besides the candidates. It is computed once (by `clients::profile`, which loads
//! the sentence embedder) and kept in the state folder as `profile.bin`, under a key over the
//! embedder's files and the texts, with the embedder folder it was computed with. Reading it
//! back needs no model and no libtorch, so a client that restarts, or polls for hours, stays
//! small.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{io_error, RemoteError, Result};

/// The first bytes of a profile file; the digit is the format version.
const MAGIC: &[u8; 8] = b"FSPROF02";
/// The file name of the profile inside the state folder.
pub const PROFILE_FILE: &str = "profile.bin";
/// How much of each end of the weights file goes into the key.
const WEIGHTS_SAMPLE_BYTES: u64 = 64 << 10;

/// A client's embedding sum.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    /// Σ of the client's normalised text embeddings (length = the embedding width).
    pub embedding_sum: Vec<f32>,
    /// The number of texts summed.
    pub texts: usize,
    /// The sentence embedder's folder it was computed with.
    pub embedder_dir: PathBuf,
    /// True when read from the state folder, false when just computed.
    pub cached: bool,
}

/// The profile of `texts` stored in `state_dir`, or `None` when there is none for these texts
/// and this embedder. The embedder is `embedder_dir`, or when `None` the folder the stored
/// profile was computed with (whose files are hashed again: a changed model is a miss).
pub fn cached_profile(
    texts: &[String],
    embedder_dir: Option<&Path>,
    state_dir: &Path,
) -> Result<Option<Profile>> {
    check_texts(texts)?;
    let Some(stored) = read_profile(&state_dir.join(PROFILE_FILE)) else {
        return Ok(None);
    };
    let embedder_dir = embedder_dir.map_or(stored.embedder_dir.clone(), Path::to_path_buf);
    // An embedder folder that is gone or unreadable is a miss, not an error: recomputing
    // will name the problem if there is one.
    let Ok(key) = profile_key(&embedder_dir, texts) else {
        return Ok(None);
    };
    Ok(
        (key == stored.key && embedder_dir == stored.embedder_dir).then_some(Profile {
            embedding_sum: stored.embedding_sum,
            texts: texts.len(),
            embedder_dir,
            cached: true,
        }),
    )
}

/// Stores `embedding_sum` as the profile of `texts` under the embedder in `embedder_dir`,
/// atomically, and returns it.
pub fn store_profile(
    texts: &[String],
    embedder_dir: &Path,
    state_dir: &Path,
    embedding_sum: Vec<f32>,
) -> Result<Profile> {
    check_texts(texts)?;
    let key = profile_key(embedder_dir, texts)?;
    let dir = embedder_dir
        .to_str()
        .ok_or_else(|| RemoteError::InvalidArgument {
            name: "--embedder",
            message: format!("{} is not valid UTF-8", embedder_dir.display()),
        })?;
    let mut bytes = Vec::new();
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&key);
    bytes.extend_from_slice(&(dir.len() as u32).to_le_bytes());
    bytes.extend_from_slice(dir.as_bytes());
    bytes.extend(embedding_sum.iter().flat_map(|v| v.to_le_bytes()));
    write_atomically(&state_dir.join(PROFILE_FILE), &bytes)?;
    Ok(Profile {
        embedding_sum,
        texts: texts.len(),
        embedder_dir: embedder_dir.to_path_buf(),
        cached: false,
    })
}

fn check_texts(texts: &[String]) -> Result<()> {
    if texts.is_empty() {
        return Err(RemoteError::InvalidArgument {
            name: "--data",
            message: "holds no text; give at least one {\"text\": …} line".to_string(),
        });
    }
    Ok(())
}

/// A profile file's contents.
struct Stored {
    key: [u8; 32],
    embedder_dir: PathBuf,
    embedding_sum: Vec<f32>,
}

/// Magic, key, embedder folder (u32 length + UTF-8), then the f32 values (little-endian);
/// `None` when absent or malformed (then it is recomputed).
fn read_profile(path: &Path) -> Option<Stored> {
    let bytes = std::fs::read(path).ok()?;
    let rest = bytes.strip_prefix(MAGIC.as_slice())?;
    let (key, rest) = rest.split_at_checked(32)?;
    let (length, rest) = rest.split_at_checked(4)?;
    let length = u32::from_le_bytes(length.try_into().ok()?) as usize;
    let (dir, values) = rest.split_at_checked(length)?;
    if values.is_empty() || values.len() % 4 != 0 {
        return None;
    }
    let embedding_sum: Vec<f32> = values
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let embedder_dir = PathBuf::from(std::str::from_utf8(dir).ok()?);
    embedding_sum.iter().all(|v| v.is_finite()).then(|| Stored {
        key: key.try_into().expect("32 bytes"),
        embedder_dir,
        embedding_sum,
    })
}

/// SHA-256 over the embedder's configuration, tokenizer and weights (size and both ends) and
/// every text in order, each part length-prefixed.
fn profile_key(embedder_dir: &Path, texts: &[String]) -> Result<[u8; 32]> {
    let mut hasher = Sha256::new();
    let mut part = |bytes: &[u8]| {
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(bytes);
    };
    part(b"fedsyn client profile v1");
    for small_file in ["config.json", "tokenizer.json"] {
        let path = embedder_dir.join(small_file);
        part(&std::fs::read(&path).map_err(io_error(&path))?);
    }
    let (size, head, tail) = file_ends(&embedder_dir.join("model.safetensors"))?;
    part(&size.to_le_bytes());
    part(&head);
    part(&tail);
    part(&(texts.len() as u64).to_le_bytes());
    for text in texts {
        part(text.as_bytes());
    }
    Ok(hasher.finalize().into())
}

/// The size of the file at `path` and its first and last [`WEIGHTS_SAMPLE_BYTES`] bytes (the
/// weights are ~90 MB; their size and ends identify them well enough for a cache key).
fn file_ends(path: &Path) -> Result<(u64, Vec<u8>, Vec<u8>)> {
    let mut file = File::open(path).map_err(io_error(path))?;
    let size = file.metadata().map_err(io_error(path))?.len();
    let mut head = Vec::new();
    (&mut file)
        .take(WEIGHTS_SAMPLE_BYTES)
        .read_to_end(&mut head)
        .map_err(io_error(path))?;
    let mut tail = Vec::new();
    file.seek(SeekFrom::Start(size.saturating_sub(WEIGHTS_SAMPLE_BYTES)))
        .map_err(io_error(path))?;
    file.read_to_end(&mut tail).map_err(io_error(path))?;
    Ok((size, head, tail))
}

/// Writes `bytes` to a temporary file next to `path`, flushed, then renames it over `path`.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io_error(parent))?;
    }
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp-{}", std::process::id()));
    let temporary = path.with_file_name(name);
    // The profile is a function of the client's private texts: owner-only, like the
    // credentials (0600 on every write, not only when the file is created).
    let written = crate::credentials::write_private(&temporary, bytes)
        .and_then(|()| std::fs::rename(&temporary, path).map_err(io_error(path)));
    if written.is_err() {
        // Best effort: the error that matters is the one returned.
        let _ = std::fs::remove_file(&temporary);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake embedder folder: the key reads only these three files.
    fn fake_embedder(dir: &Path, weights: &[u8]) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("config.json"), "{}").unwrap();
        std::fs::write(dir.join("tokenizer.json"), "{}").unwrap();
        std::fs::write(dir.join("model.safetensors"), weights).unwrap();
    }

    #[test]
    fn a_profile_reads_back_only_for_its_texts_and_embedder() {
        let root = std::env::temp_dir().join(format!("fedsyn-profile-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let (embedder, state) = (root.join("minilm"), root.join("state"));
        fake_embedder(&embedder, b"weights");
        let texts = vec!["a".to_string(), "b".to_string()];
        assert_eq!(
            cached_profile(&texts, Some(&embedder), &state).unwrap(),
            None
        );
        let sum = vec![0.5f32, -1.25, 3.0];
        store_profile(&texts, &embedder, &state, sum.clone()).unwrap();
        for dir in [Some(embedder.as_path()), None] {
            let hit = cached_profile(&texts, dir, &state).unwrap().unwrap();
            assert_eq!(
                (hit.embedding_sum.clone(), hit.texts, hit.cached),
                (sum.clone(), 2, true)
            );
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let path = state.join(PROFILE_FILE);
            assert_eq!(
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        assert_eq!(cached_profile(&texts[..1], None, &state).unwrap(), None);
        // Other weights in the same folder: a miss.
        fake_embedder(&embedder, b"other weights");
        assert_eq!(cached_profile(&texts, None, &state).unwrap(), None);
        // A truncated file: a miss.
        fake_embedder(&embedder, b"weights");
        let path = state.join(PROFILE_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.pop();
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(cached_profile(&texts, None, &state).unwrap(), None);
        assert!(cached_profile(&[], None, &state).is_err());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
