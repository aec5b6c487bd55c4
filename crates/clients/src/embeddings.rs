//! Client texts embedded once and kept on disk: private texts never change between rounds, so
//! re-embedding them every round (as the reference does) is wasted work.
//!
//! A cache file is named by a 128-bit FNV-1a key over the embedder's identity (its
//! `config.json`, `tokenizer.json`, the size and first and last MiB of `model.safetensors`,
//! the compute dtype, the sequence limit) and the texts in order. Its header records the key,
//! the shape and a checksum of the values; a file whose header, length or checksum does not
//! match is recomputed and replaced, never trusted.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use models::SentenceEmbedder;
use tch::Tensor;

use crate::error::{io_error, ClientsError, Result};
use crate::files::write_atomically;
use crate::hash::{fnv1a_64, Fnv128};

/// The first bytes of every cache file; the digit is the format version.
const MAGIC: &[u8; 8] = b"FSEMBED1";
/// Magic, key (u128), rows (u64), dim (u64), checksum (u64); little-endian.
const HEADER_LEN: usize = 8 + 16 + 8 + 8 + 8;
/// How much of each end of the weights file goes into the identity.
const WEIGHTS_SAMPLE_BYTES: u64 = 1 << 20;
/// Texts embedded between two progress reports (at least; a multiple of the batch size
/// keeps the embedder's length-sorted batches full).
const PROGRESS_CHUNK_TEXTS: usize = 4096;

/// The embeddings of `texts` (`[texts, dim]`, f32 on the CPU, row i for `texts[i]`), read from
/// `cache_dir` when a valid cache file for this embedder and these texts is there, else
/// computed `batch` texts at a time and written there. `progress(done, total)` is called as
/// texts are embedded (once with `(total, total)` on a cache hit).
pub fn embed_cached<S: AsRef<str>>(
    embedder: &SentenceEmbedder,
    texts: &[S],
    cache_dir: &Path,
    batch: usize,
    mut progress: impl FnMut(usize, usize),
) -> Result<Tensor> {
    let dim = embedder.dim();
    let key = cache_key(embedder_identity(embedder)?, texts);
    let path = cache_path(cache_dir, key);
    let values = match read_cache(&path, key, texts.len(), dim) {
        Some(values) => {
            progress(texts.len(), texts.len());
            values
        }
        None => {
            let values = embed_all(embedder, texts, batch, &mut progress)?;
            write_cache(&path, key, texts.len(), dim, &values)?;
            values
        }
    };
    Ok(Tensor::f_from_slice(&values)?.f_view([texts.len() as i64, dim as i64])?)
}

/// Embeds every text, reporting progress after each chunk; the values row after row.
fn embed_all<S: AsRef<str>>(
    embedder: &SentenceEmbedder,
    texts: &[S],
    batch: usize,
    progress: &mut impl FnMut(usize, usize),
) -> Result<Vec<f32>> {
    if batch == 0 {
        return Err(ClientsError::InvalidArgument {
            name: "embedding batch size",
            message: "must be at least 1".to_string(),
        });
    }
    let chunk_len = PROGRESS_CHUNK_TEXTS.div_ceil(batch) * batch;
    let mut values = Vec::with_capacity(texts.len() * embedder.dim());
    for chunk in texts.chunks(chunk_len) {
        let embedded = embedder.embed_tensor(chunk, batch)?;
        values.extend(Vec::<f32>::try_from(embedded.f_flatten(0, -1)?)?);
        progress(values.len() / embedder.dim().max(1), texts.len());
    }
    Ok(values)
}

/// What makes two embedders produce the same vectors, hashed.
fn embedder_identity(embedder: &SentenceEmbedder) -> Result<Fnv128> {
    let dir = embedder.dir();
    let mut hasher = Fnv128::new();
    hasher.write_part(b"fedsyn sentence embeddings v1");
    for small_file in ["config.json", "tokenizer.json"] {
        let path = dir.join(small_file);
        hasher.write_part(&std::fs::read(&path).map_err(io_error(&path))?);
    }
    let weights = dir.join("model.safetensors");
    let (size, head, tail) = file_ends(&weights, WEIGHTS_SAMPLE_BYTES)?;
    hasher.write_part(&size.to_le_bytes());
    hasher.write_part(&head);
    hasher.write_part(&tail);
    hasher.write_part(format!("{:?}", embedder.kind()).as_bytes());
    hasher.write_part(&(embedder.max_seq_length() as u64).to_le_bytes());
    hasher.write_part(&(embedder.dim() as u64).to_le_bytes());
    Ok(hasher)
}

/// The size of the file at `path` and its first and last `sample` bytes.
fn file_ends(path: &Path, sample: u64) -> Result<(u64, Vec<u8>, Vec<u8>)> {
    let mut file = File::open(path).map_err(io_error(path))?;
    let size = file.metadata().map_err(io_error(path))?.len();
    let mut head = Vec::new();
    (&mut file)
        .take(sample)
        .read_to_end(&mut head)
        .map_err(io_error(path))?;
    let mut tail = Vec::new();
    file.seek(SeekFrom::Start(size.saturating_sub(sample)))
        .map_err(io_error(path))?;
    file.read_to_end(&mut tail).map_err(io_error(path))?;
    Ok((size, head, tail))
}

/// The cache key: the embedder's identity followed by every text, in order.
fn cache_key<S: AsRef<str>>(mut identity: Fnv128, texts: &[S]) -> u128 {
    identity.write_part(&(texts.len() as u64).to_le_bytes());
    for text in texts {
        identity.write_part(text.as_ref().as_bytes());
    }
    identity.finish()
}

fn cache_path(cache_dir: &Path, key: u128) -> PathBuf {
    cache_dir.join(format!("{key:032x}.emb"))
}

/// Writes `values` (`rows × dim`) under `key`, atomically.
fn write_cache(path: &Path, key: u128, rows: usize, dim: usize, values: &[f32]) -> Result<()> {
    let payload: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let mut bytes = Vec::with_capacity(HEADER_LEN + payload.len());
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&key.to_le_bytes());
    bytes.extend_from_slice(&(rows as u64).to_le_bytes());
    bytes.extend_from_slice(&(dim as u64).to_le_bytes());
    bytes.extend_from_slice(&fnv1a_64(&payload).to_le_bytes());
    bytes.extend_from_slice(&payload);
    write_atomically(path, &bytes)
}

/// The values cached at `path`, or `None` when the file is absent, unreadable, truncated,
/// for another key or shape, or fails its checksum.
fn read_cache(path: &Path, key: u128, rows: usize, dim: usize) -> Option<Vec<f32>> {
    let bytes = std::fs::read(path).ok()?;
    let (header, payload) = bytes.split_at_checked(HEADER_LEN)?;
    let field = |range: std::ops::Range<usize>| header.get(range);
    let u64_at = |at: usize| Some(u64::from_le_bytes(field(at..at + 8)?.try_into().ok()?));
    let header_ok = field(0..8)? == MAGIC
        && u128::from_le_bytes(field(8..24)?.try_into().ok()?) == key
        && u64_at(24)? == rows as u64
        && u64_at(32)? == dim as u64
        && payload.len() == rows.checked_mul(dim)?.checked_mul(4)?
        && u64_at(40)? == fnv1a_64(payload);
    header_ok.then(|| {
        payload
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("fedsyn-clients-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_cache_file_reads_back_only_for_its_key_and_shape() {
        let dir = temp_dir("roundtrip");
        let path = dir.join("x.emb");
        let values: Vec<f32> = (0..12).map(|i| i as f32 * 0.25 - 1.0).collect();
        write_cache(&path, 42, 3, 4, &values).unwrap();
        assert_eq!(read_cache(&path, 42, 3, 4), Some(values));
        assert_eq!(read_cache(&path, 43, 3, 4), None);
        assert_eq!(read_cache(&path, 42, 4, 3), None);
        assert_eq!(read_cache(&dir.join("absent.emb"), 42, 3, 4), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn truncated_or_altered_cache_files_are_rejected() {
        let dir = temp_dir("corrupt");
        let path = dir.join("x.emb");
        let values = vec![0.5f32; 8];
        write_cache(&path, 7, 2, 4, &values).unwrap();
        let good = std::fs::read(&path).unwrap();
        let mut flipped = good.clone();
        flipped[HEADER_LEN + 5] ^= 0x10;
        for bad in [
            good[..good.len() - 1].to_vec(),
            good[..HEADER_LEN - 3].to_vec(),
            [good.as_slice(), &[0]].concat(),
            flipped,
        ] {
            std::fs::write(&path, bad).unwrap();
            assert_eq!(read_cache(&path, 7, 2, 4), None);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn keys_depend_on_every_text_and_their_order() {
        let key = |texts: &[&str]| cache_key(Fnv128::new(), texts);
        let base = key(&["a", "b"]);
        assert_eq!(base, key(&["a", "b"]));
        assert_ne!(base, key(&["b", "a"]));
        assert_ne!(base, key(&["ab"]));
        assert_ne!(base, key(&["a", "b", ""]));
    }

    /// The installed MiniLM, or `None` (skipping) when absent outside CI.
    fn installed_embedder() -> Option<SentenceEmbedder> {
        match models::Assets::discover().minilm_dir() {
            Ok(dir) => Some(SentenceEmbedder::load(&dir, tch::Device::Cpu).unwrap()),
            Err(e) if std::env::var_os("CI").is_some() => panic!("CI must have MiniLM: {e}"),
            Err(e) => {
                eprintln!("skipping: {e}");
                None
            }
        }
    }

    #[test]
    fn embeddings_are_cached_reused_and_recomputed_when_corrupt() {
        let Some(embedder) = installed_embedder() else {
            return;
        };
        let dir = temp_dir("minilm");
        let texts: Vec<String> = ["The Union is strong.", "Taxes must fall.", "A third text."]
            .map(String::from)
            .to_vec();
        let direct =
            Vec::<f32>::try_from(embedder.embed_tensor(&texts, 2).unwrap().flatten(0, -1)).unwrap();
        let cached_values = |calls: &mut Vec<(usize, usize)>| {
            let tensor = embed_cached(&embedder, &texts, &dir, 2, |d, t| calls.push((d, t)));
            let tensor = tensor.unwrap();
            assert_eq!(tensor.size(), [3, embedder.dim() as i64]);
            Vec::<f32>::try_from(tensor.flatten(0, -1)).unwrap()
        };

        // Miss: computed and written.
        let mut calls = Vec::new();
        assert_eq!(cached_values(&mut calls), direct);
        assert_eq!(calls, [(3, 3)]);
        let key = cache_key(embedder_identity(&embedder).unwrap(), &texts);
        let path = cache_path(&dir, key);
        assert!(read_cache(&path, key, 3, embedder.dim()).is_some());

        // Hit: a valid file under the key is what comes back (here, planted values).
        let planted = vec![0.25f32; direct.len()];
        write_cache(&path, key, 3, embedder.dim(), &planted).unwrap();
        assert_eq!(cached_values(&mut Vec::new()), planted);

        // Corrupt: one flipped byte and the values are recomputed and the file replaced.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[HEADER_LEN + 1] ^= 0x01;
        std::fs::write(&path, bytes).unwrap();
        assert_eq!(cached_values(&mut Vec::new()), direct);
        assert_eq!(read_cache(&path, key, 3, embedder.dim()), Some(direct));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
