//! A client's side of DP-FedAvg (McMahan et al. 2018): train the global LoRA adapter on the
//! client's own texts for a few steps, and send the change of the adapter, clipped to L2 norm
//! ≤ C. The clip is the whole of a client's privacy protection (the server adds the noise), so
//! it lives here, once, and the norm is measured again after scaling.
//!
//! The update Δ is flattened over every adapter tensor and handled in f64: its norm, the
//! clipping and the server's sum never lose the small differences of a few local steps.

use models::train::{CausalLmConfig, CausalLmTrainer};
use models::CausalLm;
use tch::{Kind, Tensor};

use crate::error::{ClientsError, Result};

/// The clip is applied as `clip · CLIP_MARGIN`, so that the norm measured after scaling (which
/// f64 rounding may move by a few ulps) is ≤ `clip`.
const CLIP_MARGIN: f64 = 1.0 - 1e-12;

/// A client's update, clipped: what leaves the client.
#[derive(Debug)]
pub struct ClippedUpdate {
    /// Δ per adapter tensor (f64), in the order of [`CausalLm::lora_parameters`], of L2 norm
    /// ≤ the clip bound over all tensors together.
    pub delta: Vec<Tensor>,
    /// ‖Δ‖ before clipping (a non-private diagnostic: not sent in a deployment).
    pub pre_clip_norm: f64,
    /// Whether clipping scaled Δ down.
    pub clipped: bool,
}

/// Scales `delta` (any float kind; returned as f64) to global L2 norm ≤ `clip`:
/// Δ · min(1, C / ‖Δ‖). Errors when `clip` is not finite and positive, when Δ holds a
/// non-finite value, or when the measured norm after scaling exceeds `clip`.
pub fn clip_update(delta: Vec<Tensor>, clip: f64) -> Result<ClippedUpdate> {
    if !(clip.is_finite() && clip > 0.0) {
        return Err(ClientsError::InvalidArgument {
            name: "clip",
            message: format!("{clip}: the clip bound must be finite and > 0"),
        });
    }
    let delta: Vec<Tensor> = delta.iter().map(|t| t.to_kind(Kind::Double)).collect();
    let pre_clip_norm = global_norm(&delta)?;
    if !pre_clip_norm.is_finite() {
        return Err(ClientsError::NonFinite {
            what: "the local model update",
        });
    }
    let factor = (clip * CLIP_MARGIN / pre_clip_norm).min(1.0);
    let clipped = factor < 1.0;
    let delta: Vec<Tensor> = if clipped {
        delta.iter().map(|t| t * factor).collect()
    } else {
        delta
    };
    let norm = global_norm(&delta)?;
    if norm > clip {
        return Err(ClientsError::SensitivityViolated {
            what: "the clipped local model update",
            norm,
            bound: clip,
        });
    }
    Ok(ClippedUpdate {
        delta,
        pre_clip_norm,
        clipped,
    })
}

/// √(Σ over tensors of Σ x²), in f64.
pub fn global_norm(tensors: &[Tensor]) -> Result<f64> {
    let mut sum_sq = 0.0;
    for tensor in tensors {
        let t = tensor.to_kind(Kind::Double);
        sum_sq += f64::try_from((&t * &t).sum(Kind::Double))?;
    }
    Ok(sum_sq.sqrt())
}

/// How a client trains locally.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalTraining {
    /// Optimiser steps per round (each on `config.batch_size` of the client's sequences, in a
    /// seeded order, cycling when the client has fewer).
    pub steps: u64,
    /// AdamW, fresh each round (clients keep no state between rounds), at a constant rate.
    pub config: CausalLmConfig,
}

/// The result of one client's round.
#[derive(Debug)]
pub struct LocalUpdate {
    /// The clipped update.
    pub update: ClippedUpdate,
    /// Mean training loss of the local steps (a non-private diagnostic).
    pub mean_loss: f64,
}

/// Trains `model`'s adapter, starting from `global` (values of [`CausalLm::lora_parameters`],
/// in order), on `sequences` (the client's token ids), and returns the clipped change. The
/// adapter holds `global` again when this returns (also on error).
pub fn local_update(
    model: &CausalLm,
    global: &[Tensor],
    sequences: &[Vec<u32>],
    training: &LocalTraining,
    clip: f64,
) -> Result<LocalUpdate> {
    set_adapter(model, global)?;
    let trained = CausalLmTrainer::new(training.config.clone(), training.steps)
        .and_then(|mut trainer| trainer.train_steps(model, sequences, training.steps));
    let delta: Vec<Tensor> = model
        .lora_parameters()
        .iter()
        .zip(global)
        .map(|((_, local), start)| {
            local.detach().to_kind(Kind::Double) - start.to_kind(Kind::Double)
        })
        .collect();
    set_adapter(model, global)?;
    let stats = trained?;
    Ok(LocalUpdate {
        update: clip_update(delta, clip)?,
        mean_loss: stats.mean_loss,
    })
}

/// Copies `values` into `model`'s adapter tensors (in [`CausalLm::lora_parameters`] order).
pub fn set_adapter(model: &CausalLm, values: &[Tensor]) -> Result<()> {
    let params = model.lora_parameters();
    if params.len() != values.len() {
        return Err(ClientsError::InvalidArgument {
            name: "adapter values",
            message: format!(
                "{} tensors for an adapter of {}; the model and the global adapter differ",
                values.len(),
                params.len()
            ),
        });
    }
    let _no_grad = tch::no_grad_guard();
    for ((name, param), value) in params.iter().zip(values) {
        if param.size() != value.size() {
            return Err(ClientsError::InvalidArgument {
                name: "adapter values",
                message: format!("{name}: shape {:?} for {:?}", value.size(), param.size()),
            });
        }
        param.shallow_clone().copy_(value);
    }
    Ok(())
}

/// Copies of `model`'s adapter tensors (in [`CausalLm::lora_parameters`] order).
pub fn adapter_values(model: &CausalLm) -> Vec<Tensor> {
    let _no_grad = tch::no_grad_guard();
    model
        .lora_parameters()
        .iter()
        .map(|(_, t)| t.detach().copy())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensors(values: &[&[f64]]) -> Vec<Tensor> {
        values.iter().map(|v| Tensor::from_slice(v)).collect()
    }

    #[test]
    fn long_updates_are_scaled_to_the_bound_and_short_ones_kept() {
        // ‖(3, 4, 12)‖ = 13 over two tensors.
        let update = clip_update(tensors(&[&[3.0, 4.0], &[12.0]]), 1.0).unwrap();
        assert!(update.clipped);
        assert_eq!(update.pre_clip_norm, 13.0);
        let norm = global_norm(&update.delta).unwrap();
        assert!(norm <= 1.0 && norm > 1.0 - 1e-9, "{norm}");
        let first = Vec::<f64>::try_from(&update.delta[0]).unwrap();
        assert!(
            (first[1] / first[0] - 4.0 / 3.0).abs() < 1e-12,
            "direction kept"
        );
        let short = clip_update(tensors(&[&[0.3], &[0.4]]), 1.0).unwrap();
        assert!(!short.clipped);
        assert_eq!(Vec::<f64>::try_from(&short.delta[1]).unwrap(), [0.4]);
    }

    #[test]
    fn clipped_norms_never_exceed_the_bound() {
        // Many sizes and scales: the measured norm after clipping is ≤ C every time.
        for n in [1usize, 7, 1000, 100_000] {
            for (k, scale) in [1e-3, 0.7, 1.0, 3.0, 1e6].into_iter().enumerate() {
                let values: Vec<f64> = (0..n)
                    .map(|i| scale * ((i * 31 + k * 7) as f64).sin())
                    .collect();
                for clip in [0.1, 1.0, 2.5] {
                    let update = clip_update(vec![Tensor::from_slice(&values)], clip).unwrap();
                    let norm = global_norm(&update.delta).unwrap();
                    assert!(norm <= clip, "n {n} scale {scale} clip {clip}: {norm}");
                }
            }
        }
    }

    #[test]
    fn bad_bounds_and_non_finite_updates_are_refused() {
        assert!(clip_update(tensors(&[&[1.0]]), 0.0).is_err());
        assert!(clip_update(tensors(&[&[1.0]]), f64::NAN).is_err());
        let error = clip_update(tensors(&[&[f64::NAN, 1.0]]), 1.0).unwrap_err();
        assert!(matches!(error, ClientsError::NonFinite { .. }), "{error}");
    }
}
