//! Batched generation with a key/value cache: prompts are left-padded so every row's next
//! token sits in the same column, each row carries its own positions and padding mask, rows
//! finish independently (end-of-sequence token, stop string or length), and finished rows are
//! dropped from the batch once enough of them have finished.

use std::path::Path;

use serde_json::Value;
use tch::{Device, Kind, Tensor};
use tokenizers::Tokenizer;

use super::chat::ChatTemplate;
use super::sampling::{Sampler, SamplingParams};
use super::{CausalLm, KvCache};
use crate::error::{ModelError, Result};
use crate::gguf::GgufFile;
use crate::tokenizer;

/// Why a row stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// It produced an end-of-sequence token (kept as the last id).
    Eos,
    /// Its text came to contain a stop string.
    StopString,
    /// It reached `max_new_tokens`.
    Length,
}

impl FinishReason {
    /// The lower-case name used in JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Eos => "eos",
            FinishReason::StopString => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// The new token ids of one row and why it stopped.
#[derive(Debug, Clone, PartialEq)]
pub struct GeneratedIds {
    /// Generated ids, the end-of-sequence token included when that ended the row.
    pub ids: Vec<u32>,
    /// Why generation stopped.
    pub finish: FinishReason,
    /// With `SamplingParams::logprobs`: each id's log-probability under the model's
    /// unfiltered next-token distribution; else empty.
    pub logprobs: Vec<f32>,
}

/// A row is dropped from the batch (its cache rows copied away) once the unfinished rows
/// are at most this fraction of the rows still computed; copying the cache for every single
/// finished row would cost more than it saves.
const COMPACT_BELOW: f64 = 0.75;

/// Generates continuations of `prompts` (token ids, each non-empty) in one batch.
///
/// `eos_ids` end a row (unless `params.ignore_eos`); `pad_id` fills the left padding (any id
/// works: padding is masked). `stopped(row, ids)` is asked after every new token of a row
/// and ends it when true (stop strings).
pub fn generate_ids(
    model: &CausalLm,
    prompts: &[Vec<u32>],
    params: &SamplingParams,
    eos_ids: &[u32],
    pad_id: u32,
    mut stopped: impl FnMut(usize, &[u32]) -> bool,
) -> Result<Vec<GeneratedIds>> {
    params.validate()?;
    let _no_grad = tch::no_grad_guard();
    // Rows with the same prompt (POPri and PE sample K completions of each) share one
    // prefill: its keys, values and next-token logits are computed once, then copied.
    let (distinct, row_of) = distinct_prompts(prompts);
    let batch = LeftPadded::new(
        &distinct,
        pad_id,
        params.max_new_tokens,
        model.max_positions(),
    )?;
    let device = model.device();
    let rows = prompts.len();
    let mut cache =
        model.new_cache(distinct.len(), batch.width as usize + params.max_new_tokens)?;
    let mut logits = prefill(model, &batch, &mut cache)?;
    let (mask, positions) = if distinct.len() < rows {
        let expand = Tensor::from_slice(&row_of);
        cache.keep_rows(&expand.to_device(device));
        logits = logits.index_select(0, &expand.to_device(logits.device()));
        (
            batch.mask.index_select(0, &expand),
            batch.positions.index_select(0, &expand),
        )
    } else {
        (batch.mask.shallow_clone(), batch.positions.shallow_clone())
    };
    // Decoding multiplies the same weights at every step: where MKL's packing is chosen
    // (FEDSYN_CPU_MATMUL=mkl-packed) pack them once; a no-op otherwise. Prefill, with its many
    // rows per prompt, keeps libtorch's products.
    let packed = model.pack_for_decoding(rows as i64);
    let mut sampler = Sampler::new(params, rows);
    // One mask for every slot the run can fill: prompt padding 0, everything else 1.
    let mut slot_mask = Tensor::ones([rows as i64, cache.capacity()], (Kind::Int64, device));
    slot_mask.narrow(1, 0, batch.width).copy_(&mask);
    let mut next_position = positions.select(1, batch.width - 1).to_device(device) + 1;

    // slot_rows[i]: the original row computed in batch slot i.
    let mut slot_rows: Vec<usize> = (0..rows).collect();
    let mut generated: Vec<Vec<u32>> = vec![Vec::new(); rows];
    let mut logprobs: Vec<Vec<f32>> = vec![Vec::new(); rows];
    let mut finish: Vec<Option<FinishReason>> = vec![None; rows];

    loop {
        let tokens = sampler.sample(&logits, &slot_rows);
        let host_tokens = Vec::<i64>::try_from(tokens.to_device(Device::Cpu))?;
        let host_logprobs = if params.logprobs {
            let chosen = logits
                .to_kind(Kind::Float)
                .log_softmax(-1, Kind::Float)
                .gather(1, &tokens.view([-1, 1]), false);
            Vec::<f32>::try_from(chosen.view([-1]).to_device(Device::Cpu))?
        } else {
            Vec::new()
        };
        for (slot, (&row, &token)) in slot_rows.iter().zip(&host_tokens).enumerate() {
            if finish[row].is_some() {
                continue;
            }
            let token = token as u32;
            generated[row].push(token);
            if let Some(&logprob) = host_logprobs.get(slot) {
                logprobs[row].push(logprob);
            }
            finish[row] = if !params.ignore_eos && eos_ids.contains(&token) {
                Some(FinishReason::Eos)
            } else if stopped(row, &generated[row]) {
                Some(FinishReason::StopString)
            } else if generated[row].len() >= params.max_new_tokens {
                Some(FinishReason::Length)
            } else {
                None
            };
        }
        let unfinished: Vec<i64> = (0..slot_rows.len() as i64)
            .filter(|&slot| finish[slot_rows[slot as usize]].is_none())
            .collect();
        if unfinished.is_empty() {
            break;
        }
        let mut tokens = tokens;
        if (unfinished.len() as f64) <= COMPACT_BELOW * slot_rows.len() as f64 {
            let keep = Tensor::from_slice(&unfinished).to_device(device);
            cache.keep_rows(&keep);
            slot_mask = slot_mask.index_select(0, &keep);
            next_position = next_position.index_select(0, &keep);
            tokens = tokens.index_select(0, &keep);
            slot_rows = unfinished
                .iter()
                .map(|&slot| slot_rows[slot as usize])
                .collect();
            packed.repack(slot_rows.len() as i64);
        }
        let step_mask = slot_mask.narrow(1, 0, cache.len() + 1);
        let hidden = model.forward_hidden(
            &tokens.view([-1, 1]),
            &next_position.view([-1, 1]),
            &step_mask,
            Some(&mut cache),
        )?;
        logits = model.logits(&hidden.squeeze_dim(1));
        next_position += 1;
    }
    Ok(generated
        .into_iter()
        .zip(finish)
        .zip(logprobs)
        .map(|((ids, finish), logprobs)| GeneratedIds {
            ids,
            finish: finish.unwrap_or(FinishReason::Length),
            logprobs,
        })
        .collect())
}

/// The distinct prompts, in order of first appearance, and for every row the index of its
/// prompt among them.
fn distinct_prompts(prompts: &[Vec<u32>]) -> (Vec<Vec<u32>>, Vec<i64>) {
    let mut index: std::collections::HashMap<&[u32], i64> = std::collections::HashMap::new();
    let mut distinct = Vec::new();
    let row_of = prompts
        .iter()
        .map(|prompt| {
            *index.entry(prompt.as_slice()).or_insert_with(|| {
                distinct.push(prompt.clone());
                distinct.len() as i64 - 1
            })
        })
        .collect();
    (distinct, row_of)
}

/// Rows of the prompt batch that are prefilled together. Prefill rows are independent, so a
/// large batch is run in slices: the activations of a slice are a quarter of a 64-row
/// batch's (lower peak memory), and the matrix products are still large enough to run at
/// full speed.
const PREFILL_ROWS: i64 = 16;

/// Runs the prompts through the model, filling `cache`, and returns the next-token logits
/// of every row (`[rows, vocab]`).
fn prefill(model: &CausalLm, batch: &LeftPadded, cache: &mut KvCache) -> Result<Tensor> {
    let rows = batch.ids.size()[0];
    let mut last_hidden = Vec::new();
    for start in (0..rows).step_by(PREFILL_ROWS as usize) {
        let count = PREFILL_ROWS.min(rows - start);
        let mut slice_cache = cache.row_view(start, count);
        let hidden = model.forward_hidden(
            &batch.ids.narrow(0, start, count),
            &batch.positions.narrow(0, start, count),
            &batch.mask.narrow(0, start, count),
            Some(&mut slice_cache),
        )?;
        last_hidden.push(hidden.select(1, batch.width - 1));
    }
    cache.advance(batch.width);
    Ok(model.logits(&Tensor::cat(&last_hidden, 0)))
}

/// Prompts padded on the left to a common width.
struct LeftPadded {
    /// `[rows, width]` token ids.
    ids: Tensor,
    /// `[rows, width]`, 1 for real tokens, 0 for padding.
    mask: Tensor,
    /// `[rows, width]` rotary positions: 0 at each row's first real token.
    positions: Tensor,
    width: i64,
}

impl LeftPadded {
    fn new(prompts: &[Vec<u32>], pad_id: u32, max_new: usize, max_positions: i64) -> Result<Self> {
        let invalid = |message: String| ModelError::InvalidArgument {
            name: "prompts",
            message,
        };
        if prompts.is_empty() {
            return Err(invalid("no prompts were given".to_string()));
        }
        if let Some(row) = prompts.iter().position(Vec::is_empty) {
            return Err(invalid(format!("prompt {row} has no tokens")));
        }
        let width = prompts.iter().map(Vec::len).max().unwrap_or(0);
        let longest = (width + max_new) as i64;
        if longest > max_positions {
            return Err(invalid(format!(
                "the longest prompt ({width} tokens) plus {max_new} new tokens exceeds the \
                 model's {max_positions} positions"
            )));
        }
        let mut ids = Vec::with_capacity(prompts.len() * width);
        let mut mask = Vec::with_capacity(prompts.len() * width);
        for prompt in prompts {
            let padding = width - prompt.len();
            ids.extend(std::iter::repeat_n(i64::from(pad_id), padding));
            ids.extend(prompt.iter().map(|&id| i64::from(id)));
            mask.extend(std::iter::repeat_n(0i64, padding));
            mask.extend(std::iter::repeat_n(1i64, prompt.len()));
        }
        let shape = [prompts.len() as i64, width as i64];
        let ids = Tensor::from_slice(&ids).view(shape);
        let mask = Tensor::from_slice(&mask).view(shape);
        let positions = (mask.cumsum(1, Kind::Int64) - 1).clamp_min(0);
        Ok(LeftPadded {
            ids,
            mask,
            positions,
            width: width as i64,
        })
    }
}

/// One finished prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    /// The generated text (special tokens dropped, cut before a stop string).
    pub text: String,
    /// The generated token ids.
    pub token_ids: Vec<u32>,
    /// How many tokens the prompt had (chat formatting included).
    pub prompt_tokens: usize,
    /// Why generation stopped.
    pub finish_reason: FinishReason,
    /// With `SamplingParams::logprobs`: each token's log-probability under the model's
    /// unfiltered distribution; else empty.
    pub logprobs: Vec<f32>,
}

/// A model with its tokenizer, chat template and end-of-sequence ids: text in, text out.
#[derive(Debug)]
pub struct Generator {
    model: CausalLm,
    tokenizer: Tokenizer,
    chat_template: Option<ChatTemplate>,
    eos_ids: Vec<u32>,
    pad_id: u32,
    /// A token to put before plain (non-chat) prompts, for GGUF files that ask for it.
    plain_prefix: Option<u32>,
    /// Whether plain prompts are encoded with the tokenizer's own special tokens (a
    /// `tokenizer.json` post-processor that adds BOS).
    plain_special_tokens: bool,
}

impl Generator {
    /// Loads a GGUF file or a Hugging Face folder, whichever `path` is.
    pub fn load(path: &Path, device: Device) -> Result<Generator> {
        Generator::load_as(path, device, crate::compute_kind(device))
    }

    /// As [`Generator::load`], computing in `kind` (f32 or bf16) instead of the device's
    /// default.
    pub fn load_as(path: &Path, device: Device, kind: Kind) -> Result<Generator> {
        if path.is_dir() {
            Generator::from_hf_dir_as(path, device, kind)
        } else {
            Generator::from_gguf_as(path, device, kind)
        }
    }

    /// Loads the model and the tokenizer stored in a GGUF file.
    pub fn from_gguf(path: &Path, device: Device) -> Result<Generator> {
        Generator::from_gguf_as(path, device, crate::compute_kind(device))
    }

    fn from_gguf_as(path: &Path, device: Device, kind: Kind) -> Result<Generator> {
        let file = GgufFile::open(path)?;
        let model = CausalLm::from_open_gguf_as(&file, path, device, kind)?;
        let gguf_tokenizer = tokenizer::from_gguf(&file)?;
        let token_text = |id: Option<u32>| {
            id.and_then(|id| gguf_tokenizer.tokenizer.id_to_token(id))
                .unwrap_or_default()
        };
        let chat_template = gguf_tokenizer
            .chat_template
            .as_deref()
            .map(|template| {
                ChatTemplate::new(
                    template,
                    &path.display().to_string(),
                    &token_text(gguf_tokenizer.bos_id),
                    &token_text(gguf_tokenizer.eos_id),
                )
            })
            .transpose()?;
        let padding = match file.metadata_value("tokenizer.ggml.padding_token_id") {
            Some(_) => Some(file.metadata_u32("tokenizer.ggml.padding_token_id")?),
            None => None,
        };
        Ok(Generator {
            model,
            chat_template,
            eos_ids: gguf_tokenizer.eos_id.into_iter().collect(),
            pad_id: padding.or(gguf_tokenizer.eos_id).unwrap_or(0),
            plain_prefix: gguf_tokenizer.bos_id.filter(|_| gguf_tokenizer.add_bos),
            plain_special_tokens: false,
            tokenizer: gguf_tokenizer.tokenizer,
        })
    }

    /// Loads a Hugging Face folder: the model (`config.json`, `*.safetensors`), its
    /// `tokenizer.json`, and from `tokenizer_config.json` / `chat_template.jinja` /
    /// `generation_config.json` the chat template and end-of-sequence ids.
    pub fn from_hf_dir(dir: &Path, device: Device) -> Result<Generator> {
        Generator::from_hf_dir_as(dir, device, crate::compute_kind(device))
    }

    fn from_hf_dir_as(dir: &Path, device: Device, kind: Kind) -> Result<Generator> {
        let model = CausalLm::from_hf_dir_as(dir, device, kind)?;
        let tokenizer = tokenizer::from_tokenizer_json(&dir.join("tokenizer.json"))?;
        let tokenizer_config = read_optional_json(&dir.join("tokenizer_config.json"))?;
        let special = |key: &str| -> Option<String> {
            let value = tokenizer_config.as_ref()?.get(key)?;
            value
                .as_str()
                .or_else(|| value.get("content").and_then(Value::as_str))
                .map(str::to_string)
        };
        let (bos_token, eos_token) = (special("bos_token"), special("eos_token"));
        let template_file = dir.join("chat_template.jinja");
        let template = if template_file.is_file() {
            Some(
                std::fs::read_to_string(&template_file).map_err(|source| ModelError::Io {
                    path: template_file.clone(),
                    source,
                })?,
            )
        } else {
            tokenizer_config
                .as_ref()
                .and_then(|config| config.get("chat_template"))
                .and_then(default_chat_template)
        };
        let chat_template = template
            .map(|template| {
                ChatTemplate::new(
                    &template,
                    &dir.display().to_string(),
                    bos_token.as_deref().unwrap_or_default(),
                    eos_token.as_deref().unwrap_or_default(),
                )
            })
            .transpose()?;
        // End-of-sequence ids: generation_config.json's, else config.json's, else the
        // tokenizer's eos_token.
        let mut eos_ids = Vec::new();
        for file in ["generation_config.json", "config.json"] {
            if let Some(json) = read_optional_json(&dir.join(file))? {
                eos_ids.extend(token_ids(json.get("eos_token_id")));
            }
            if !eos_ids.is_empty() {
                break;
            }
        }
        if eos_ids.is_empty() {
            eos_ids.extend(eos_token.as_deref().and_then(|t| tokenizer.token_to_id(t)));
        }
        let config = read_optional_json(&dir.join("config.json"))?;
        let pad_id = token_ids(config.as_ref().and_then(|c| c.get("pad_token_id")))
            .first()
            .or(eos_ids.first())
            .copied()
            .unwrap_or(0);
        Ok(Generator {
            model,
            tokenizer,
            chat_template,
            eos_ids,
            pad_id,
            plain_prefix: None,
            plain_special_tokens: true,
        })
    }

    /// The model.
    pub fn model(&self) -> &CausalLm {
        &self.model
    }

    /// The model, mutable: to add, load, merge or train its LoRA adapters.
    pub fn model_mut(&mut self) -> &mut CausalLm {
        &mut self.model
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The ids that end a row.
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    /// The chat template, when the model has one.
    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.chat_template.as_ref()
    }

    /// The text the model sees for `prompt`: the chat-formatted single user turn when `chat`
    /// is set, else the prompt itself.
    pub fn format_prompt(&self, prompt: &str, chat: bool) -> Result<String> {
        if !chat {
            return Ok(prompt.to_string());
        }
        let template = self
            .chat_template
            .as_ref()
            .ok_or_else(|| ModelError::ChatTemplate {
                source_name: "the model".to_string(),
                message: "it has no chat template; run without --chat".to_string(),
            })?;
        template.render_user_prompt(prompt)
    }

    /// The token ids of `prompt`, chat-formatted when `chat` is set (special tokens in the
    /// rendered template are matched as such, as transformers does).
    pub fn encode_prompt(&self, prompt: &str, chat: bool) -> Result<Vec<u32>> {
        let text = self.format_prompt(prompt, chat)?;
        let add_special = !chat && self.plain_special_tokens;
        let encoding = self
            .tokenizer
            .encode(text.as_str(), add_special)
            .map_err(|e| tokenizer_error(e.to_string()))?;
        let prefix = if chat { None } else { self.plain_prefix };
        Ok(prefix
            .into_iter()
            .chain(encoding.get_ids().iter().copied())
            .collect())
    }

    /// Generates one completion per prompt, all in one batch.
    pub fn generate(
        &self,
        prompts: &[String],
        chat: bool,
        params: &SamplingParams,
    ) -> Result<Vec<Completion>> {
        let ids = prompts
            .iter()
            .map(|prompt| self.encode_prompt(prompt, chat))
            .collect::<Result<Vec<_>>>()?;
        self.generate_from_ids(&ids, params)
    }

    /// Generates one completion per tokenised prompt, all in one batch.
    pub fn generate_from_ids(
        &self,
        prompts: &[Vec<u32>],
        params: &SamplingParams,
    ) -> Result<Vec<Completion>> {
        params.validate()?;
        let decode = |ids: &[u32]| -> Result<String> {
            self.tokenizer
                .decode(ids, true)
                .map_err(|e| tokenizer_error(e.to_string()))
        };
        let stops = &params.stop_strings;
        // Each new token is checked as it arrives, so a stop string can only end in the newest
        // token: decoding the last few tokens suffices (every token but a skipped special one
        // adds at least one byte, and the margin keeps the stop string clear of the window's
        // first token, whose decoding may differ at its start). Decoding the whole row every
        // step would cost O(T²).
        let window = stops.iter().map(String::len).max().unwrap_or(0) + 4;
        let mut decode_failure = None;
        let generated = generate_ids(
            &self.model,
            prompts,
            params,
            &self.eos_ids,
            self.pad_id,
            |_, ids| {
                if stops.is_empty() {
                    return false;
                }
                match decode(&ids[ids.len().saturating_sub(window)..]) {
                    Ok(text) => stops.iter().any(|stop| text.contains(stop.as_str())),
                    Err(e) => {
                        decode_failure.get_or_insert(e);
                        true
                    }
                }
            },
        )?;
        if let Some(e) = decode_failure {
            return Err(e);
        }
        generated
            .into_iter()
            .zip(prompts)
            .map(|(row, prompt)| {
                let mut text = decode(&row.ids)?;
                if let Some(cut) = stops
                    .iter()
                    .filter_map(|stop| text.find(stop.as_str()))
                    .min()
                {
                    text.truncate(cut);
                }
                Ok(Completion {
                    text,
                    token_ids: row.ids,
                    prompt_tokens: prompt.len(),
                    finish_reason: row.finish,
                    logprobs: row.logprobs,
                })
            })
            .collect()
    }
}

fn tokenizer_error(message: String) -> ModelError {
    ModelError::Tokenizer {
        source_name: "the generator's tokenizer".to_string(),
        message,
    }
}

fn read_optional_json(path: &Path) -> Result<Option<Value>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| ModelError::ModelConfig {
            file: path.to_path_buf(),
            message: format!("not valid JSON: {e}"),
        })
}

/// A token id or list of ids (`eos_token_id` may be either).
fn token_ids(value: Option<&Value>) -> Vec<u32> {
    let as_id = |v: &Value| v.as_u64().and_then(|id| u32::try_from(id).ok());
    match value {
        Some(Value::Array(items)) => items.iter().filter_map(as_id).collect(),
        Some(v) => as_id(v).into_iter().collect(),
        None => Vec::new(),
    }
}

/// `chat_template` is a string, or a list of `{name, template}` of which `default` is used.
fn default_chat_template(value: &Value) -> Option<String> {
    match value {
        Value::String(template) => Some(template.clone()),
        Value::Array(named) => named
            .iter()
            .find(|entry| entry.get("name").and_then(Value::as_str) == Some("default"))
            .and_then(|entry| entry.get("template"))
            .and_then(Value::as_str)
            .map(str::to_string),
        _ => None,
    }
}
