//! The key/value cache: every layer's keys and values of the positions seen so far, in
//! buffers allocated once for the whole generation so that decoding never reallocates.

use tch::{Device, Kind, Tensor};

use super::config::LlamaConfig;
use crate::error::{ModelError, Result};

/// Keys and values of all layers for a batch of sequences, `[batch, kv_heads, capacity,
/// head_dim]` per layer. Slot `j` holds the same step of every row (prompts are left-padded,
/// so row r's real tokens start later); which slots a query may see is the attention mask's
/// business, not the cache's.
#[derive(Debug)]
pub struct KvCache {
    keys: Vec<Tensor>,
    values: Vec<Tensor>,
    /// Slots filled so far.
    len: i64,
    capacity: i64,
}

/// One layer's view of the cache for one forward call: where the new keys and values go.
#[derive(Debug)]
pub struct LayerCache<'a> {
    keys: &'a Tensor,
    values: &'a Tensor,
    start: i64,
}

/// What one layer's attention sees besides its new positions, and where their keys and values
/// go.
#[derive(Debug)]
pub(crate) enum LayerKv<'a> {
    /// The new positions alone.
    Fresh,
    /// The decoding cache: the new keys and values are written after the cached ones.
    Cache(LayerCache<'a>),
    /// The same, but attention reads the whole buffers, the pass's mask hiding the slots not
    /// filled yet (see `CausalLm::forward_hidden`).
    WholeCache(LayerCache<'a>),
    /// The new positions alone, whose (rotated) keys and values are kept: a prompt that later
    /// passes share.
    Record(&'a mut Vec<(Tensor, Tensor)>),
    /// A shared prompt's keys and values (one row per new row) in front of the new
    /// positions; gradients flow back into the prompt's pass.
    Prefix(&'a (Tensor, Tensor)),
}

impl LayerCache<'_> {
    /// Writes the new keys and values (`[batch, kv_heads, seq, head_dim]`) after the cached
    /// ones and returns views of everything cached so far, new slots included.
    pub fn append(self, keys: &Tensor, values: &Tensor) -> (Tensor, Tensor) {
        let filled = self.write(keys, values);
        (
            self.keys.narrow(2, 0, filled),
            self.values.narrow(2, 0, filled),
        )
    }

    /// As [`LayerCache::append`], but returns the whole buffers (`[batch, kv_heads, capacity,
    /// head_dim]`, dense): the slots after the filled ones hold zeros or stale values, which
    /// the caller masks.
    pub fn append_whole(self, keys: &Tensor, values: &Tensor) -> (Tensor, Tensor) {
        self.write(keys, values);
        (self.keys.shallow_clone(), self.values.shallow_clone())
    }

    /// Writes the new keys and values after the cached ones; the slots filled now.
    fn write(&self, keys: &Tensor, values: &Tensor) -> i64 {
        let seq = keys.size()[2];
        self.keys.narrow(2, self.start, seq).copy_(keys);
        self.values.narrow(2, self.start, seq).copy_(values);
        self.start + seq
    }
}

impl KvCache {
    /// An empty cache for `batch` sequences of up to `capacity` positions each.
    pub fn new(
        config: &LlamaConfig,
        batch: usize,
        capacity: usize,
        device: Device,
        kind: Kind,
    ) -> Result<KvCache> {
        if batch == 0 || capacity == 0 {
            return Err(ModelError::InvalidArgument {
                name: "cache size",
                message: format!("batch {batch} × capacity {capacity}; both must be ≥ 1"),
            });
        }
        let shape = [
            batch as i64,
            config.num_kv_heads as i64,
            capacity as i64,
            config.head_dim as i64,
        ];
        let buffers = || {
            (0..config.num_layers)
                .map(|_| Tensor::f_zeros(shape, (kind, device)))
                .collect::<std::result::Result<Vec<_>, _>>()
        };
        Ok(KvCache {
            keys: buffers()?,
            values: buffers()?,
            len: 0,
            capacity: capacity as i64,
        })
    }

    /// Slots filled so far.
    pub fn len(&self) -> i64 {
        self.len
    }

    /// Whether nothing has been cached yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The most slots the cache can hold.
    pub fn capacity(&self) -> i64 {
        self.capacity
    }

    /// Rows (sequences) in the cache.
    pub fn batch_size(&self) -> i64 {
        self.keys.first().map_or(0, |k| k.size()[0])
    }

    /// Fails unless `seq` more slots fit and the batch sizes agree.
    pub(crate) fn check_room(&self, batch: i64, seq: i64) -> Result<()> {
        if batch != self.batch_size() {
            return Err(ModelError::InvalidArgument {
                name: "cache",
                message: format!(
                    "it holds {} rows but the input has {batch}",
                    self.batch_size()
                ),
            });
        }
        if self.len + seq > self.capacity {
            return Err(ModelError::InvalidArgument {
                name: "cache",
                message: format!(
                    "{} slots are filled and {seq} more do not fit its capacity {}",
                    self.len, self.capacity
                ),
            });
        }
        Ok(())
    }

    /// The view layer `layer` writes into during the current forward call.
    pub(crate) fn layer(&self, layer: usize) -> LayerCache<'_> {
        LayerCache {
            keys: &self.keys[layer],
            values: &self.values[layer],
            start: self.len,
        }
    }

    /// Marks `seq` more slots as filled, once every layer has written them.
    pub(crate) fn advance(&mut self, seq: i64) {
        self.len += seq;
    }

    /// A cache over rows `start..start + rows` of this one that shares its buffers: what a
    /// forward call writes through it lands in this cache. Its slot count starts at this
    /// cache's and moves on its own; call [`KvCache::advance`] here once every part is
    /// filled.
    pub(crate) fn row_view(&self, start: i64, rows: i64) -> KvCache {
        let view = |buffers: &[Tensor]| buffers.iter().map(|b| b.narrow(0, start, rows)).collect();
        KvCache {
            keys: view(&self.keys),
            values: view(&self.values),
            len: self.len,
            capacity: self.capacity,
        }
    }

    /// Keeps only the rows listed in `rows` (an int64 tensor of row indices, in the new
    /// order), e.g. to stop computing sequences that have finished. Copies the filled slots.
    pub fn keep_rows(&mut self, rows: &Tensor) {
        let shrink = |buffer: &mut Tensor| {
            let kept = buffer.index_select(0, rows);
            *buffer = kept;
        };
        self.keys.iter_mut().for_each(shrink);
        self.values.iter_mut().for_each(shrink);
    }
}
