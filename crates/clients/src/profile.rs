//! Computing a client's profile (the sum of its texts' normalised embeddings) with the
//! sentence embedder, and storing it in the client's state folder where `fedsyn client` reads
//! it without libtorch ([`remote_client::profile`]). The embedder is loaded only when the
//! stored profile does not match the texts and the embedder, and dropped before returning.

use std::path::Path;

use models::SentenceEmbedder;
use remote_client::profile::{cached_profile, store_profile};
pub use remote_client::Profile;

use crate::embeddings::embed_cached;
use crate::error::{ClientsError, Result};

/// Texts per embedding batch.
const EMBED_BATCH: usize = 32;

/// The profile of `texts` under the embedder in `embedder_dir`: the stored one in
/// `state_dir`, else computed (the embedder loaded on the CPU, the texts embedded through the
/// [`embed_cached`] cache in `state_dir/embeddings`, summed) and stored.
pub fn client_profile(texts: &[String], embedder_dir: &Path, state_dir: &Path) -> Result<Profile> {
    if let Some(profile) = cached_profile(texts, Some(embedder_dir), state_dir).map_err(remote)? {
        return Ok(profile);
    }
    let embedder = SentenceEmbedder::load(embedder_dir, tch::Device::Cpu)?;
    let sum = embed_and_sum(texts, &embedder, state_dir)?;
    store_profile(texts, embedder_dir, state_dir, sum).map_err(remote)
}

/// [`client_profile`] with an embedder already loaded: prepares the state folders of many
/// clients in one process (one model load), e.g. before starting them on one machine.
pub fn client_profile_with(
    texts: &[String],
    embedder: &SentenceEmbedder,
    state_dir: &Path,
) -> Result<Profile> {
    let dir = embedder.dir();
    if let Some(profile) = cached_profile(texts, Some(dir), state_dir).map_err(remote)? {
        return Ok(profile);
    }
    let sum = embed_and_sum(texts, embedder, state_dir)?;
    store_profile(texts, dir, state_dir, sum).map_err(remote)
}

/// Embeds `texts` and sums the rows.
fn embed_and_sum(
    texts: &[String],
    embedder: &SentenceEmbedder,
    state_dir: &Path,
) -> Result<Vec<f32>> {
    let cache_dir = state_dir.join("embeddings");
    let embeddings = embed_cached(embedder, texts, &cache_dir, EMBED_BATCH, |_, _| {})?;
    let sum = embeddings.f_sum_dim_intlist([0i64].as_slice(), false, tch::Kind::Float)?;
    Ok(Vec::<f32>::try_from(sum)?)
}

/// A profile-file error as this crate's error (the remote crate's errors are files and
/// arguments).
fn remote(error: remote_client::RemoteError) -> ClientsError {
    match error {
        remote_client::RemoteError::Io { path, source } => ClientsError::Io { path, source },
        other => ClientsError::InvalidArgument {
            name: "client profile",
            message: other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedder_is_loaded_on_a_miss_only() {
        let dir = match models::Assets::discover().minilm_dir() {
            Ok(dir) => dir,
            Err(e) if std::env::var_os("CI").is_some() => panic!("CI must have MiniLM: {e}"),
            Err(e) => return eprintln!("skipping: {e}"),
        };
        let state = std::env::temp_dir().join(format!("fedsyn-profile-m-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&state);
        let texts = vec![
            "The Union is strong.".to_string(),
            "Taxes must fall.".to_string(),
        ];
        let first = client_profile(&texts, &dir, &state).unwrap();
        assert!(!first.cached);
        assert_eq!(first.embedding_sum.len(), 384);
        // Two unit vectors sum to a norm in (0, 2].
        let norm = first
            .embedding_sum
            .iter()
            .map(|v| v * v)
            .sum::<f32>()
            .sqrt();
        assert!(norm > 0.0 && norm <= 2.0 + 1e-5, "{norm}");
        let second = client_profile(&texts, &dir, &state).unwrap();
        assert!(second.cached);
        assert_eq!(second.embedding_sum, first.embedding_sum);
        // The same texts embedded by a caller's embedder, into another folder: the same sums.
        let embedder = SentenceEmbedder::load(&dir, tch::Device::Cpu).unwrap();
        let other = std::env::temp_dir().join(format!("fedsyn-profile-o-{}", std::process::id()));
        let third = client_profile_with(&texts, &embedder, &other).unwrap();
        assert!(!third.cached);
        assert_eq!(third.embedding_sum, first.embedding_sum);
        assert!(
            client_profile_with(&texts, &embedder, &other)
                .unwrap()
                .cached
        );
        assert!(!client_profile(&texts[..1], &dir, &state).unwrap().cached);
        std::fs::remove_dir_all(&other).unwrap();
        std::fs::remove_dir_all(&state).unwrap();
    }
}
