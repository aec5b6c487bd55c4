//! AdamW, global gradient-norm clipping and learning-rate schedules, computed the way
//! `torch.optim.AdamW`, `torch.nn.utils.clip_grad_norm_` and transformers'
//! `get_*_schedule_with_warmup` compute them, so that a run here and a run of the Python stack
//! take the same steps.
//!
//! The optimiser's moments live in a safetensors file and its scalars in JSON
//! ([`AdamW::save`], [`AdamW::load`]), so that training stopped after any step resumes
//! exactly.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::error::{ModelError, Result};
pub use training_config::{AdamWConfig, LrSchedule, LrScheduler};

/// The moments of one parameter.
#[derive(Debug)]
struct Moments {
    /// Steps taken for this parameter (PyTorch counts per parameter: a parameter without a
    /// gradient is skipped and its count does not advance).
    step: u64,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
}

/// AdamW with decoupled weight decay and bias correction, updating parameters in place.
///
/// Parameters are named; each name's moments are created (as zeros) at its first step, so
/// the optimiser can be built before the parameters exist and restored from a file.
#[derive(Debug)]
pub struct AdamW {
    config: AdamWConfig,
    moments: BTreeMap<String, Moments>,
}

/// What `optimizer.json` holds besides the tensors.
#[derive(Debug, Serialize, Deserialize)]
struct SavedScalars {
    config: AdamWConfig,
    /// Per parameter name, the steps taken.
    steps: BTreeMap<String, u64>,
}

const MOMENTS_FILE: &str = "optimizer.safetensors";
const SCALARS_FILE: &str = "optimizer.json";

impl AdamW {
    /// An optimiser with no state yet.
    pub fn new(config: AdamWConfig) -> Result<AdamW> {
        config.validate()?;
        Ok(AdamW {
            config,
            moments: BTreeMap::new(),
        })
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &AdamWConfig {
        &self.config
    }

    /// The most steps any parameter has taken (0 before the first step).
    pub fn steps_taken(&self) -> u64 {
        self.moments.values().map(|m| m.step).max().unwrap_or(0)
    }

    /// One AdamW step at learning rate `lr` for every parameter that has a gradient, exactly
    /// as `torch.optim.AdamW` (single-tensor path, the one it takes on the CPU) does:
    ///
    /// ```text
    /// θ ← θ · (1 − lr·λ);  m ← lerp(m, g, 1 − β₁);  v ← β₂·v + (1 − β₂)·g²
    /// θ ← θ − lr/(1 − β₁ᵗ) · m / (√v / √(1 − β₂ᵗ) + ε)
    /// ```
    pub fn step(&mut self, params: &[(String, Tensor)], lr: f64) -> Result<()> {
        if !lr.is_finite() || lr < 0.0 {
            return Err(ModelError::invalid_argument(
                "learning rate",
                format!("{lr} is not ≥ 0"),
            ));
        }
        let _no_grad = tch::no_grad_guard();
        let AdamWConfig {
            betas: (beta1, beta2),
            eps,
            weight_decay,
        } = self.config;
        for (name, param) in params {
            let grad = param.grad();
            if !grad.defined() {
                continue;
            }
            let moments = self.moments_of(name, param)?;
            moments.step += 1;
            // In-place updates go through a second handle of the same storage.
            let mut param = param.shallow_clone();
            if weight_decay != 0.0 {
                let _ = param.f_mul_scalar_(1.0 - lr * weight_decay)?;
            }
            let _ = moments.exp_avg.f_lerp_(&grad, 1.0 - beta1)?;
            // PyTorch's `addcmul_(g, g, value=1 − β₂)` multiplies value · g first, then by g:
            // the same roundings as this product of (g · (1 − β₂)) and g.
            let _ = moments
                .exp_avg_sq
                .f_mul_scalar_(beta2)?
                .f_addcmul_(&(&grad * (1.0 - beta2)), &grad)?;
            let step = moments.step as f64;
            let bias_correction1 = 1.0 - beta1.powf(step);
            let bias_correction2_sqrt = (1.0 - beta2.powf(step)).sqrt();
            let step_size = lr / bias_correction1;
            let denominator =
                (moments.exp_avg_sq.f_sqrt()? / bias_correction2_sqrt).f_add_scalar_(eps)?;
            // As `addcdiv_(m, denominator, value=−step_size)`: value · m first, then the
            // division.
            let _ = param.f_addcdiv_(&(&moments.exp_avg * -step_size), &denominator)?;
        }
        Ok(())
    }

    /// The moments of `name`, created as zeros like `param` at its first step.
    fn moments_of(&mut self, name: &str, param: &Tensor) -> Result<&mut Moments> {
        let moments = self
            .moments
            .entry(name.to_string())
            .or_insert_with(|| Moments {
                step: 0,
                exp_avg: param.zeros_like(),
                exp_avg_sq: param.zeros_like(),
            });
        if moments.exp_avg.size() != param.size() {
            return Err(ModelError::invalid_argument(
                "parameters",
                format!(
                    "`{name}` has shape {:?}, but the optimiser state holds {:?} for it \
                     (state from another adapter configuration?)",
                    param.size(),
                    moments.exp_avg.size()
                ),
            ));
        }
        Ok(moments)
    }

    /// Writes the state into `dir`: the moments to `optimizer.safetensors` (tensors
    /// `exp_avg.NAME`, `exp_avg_sq.NAME`), the hyper-parameters and step counts to
    /// `optimizer.json`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let mut tensors = Vec::with_capacity(2 * self.moments.len());
        for (name, moments) in &self.moments {
            tensors.push((
                format!("exp_avg.{name}"),
                moments.exp_avg.to_device(Device::Cpu),
            ));
            tensors.push((
                format!("exp_avg_sq.{name}"),
                moments.exp_avg_sq.to_device(Device::Cpu),
            ));
        }
        Tensor::write_safetensors(&tensors, dir.join(MOMENTS_FILE))?;
        let scalars = SavedScalars {
            config: self.config,
            steps: self
                .moments
                .iter()
                .map(|(name, m)| (name.clone(), m.step))
                .collect(),
        };
        write_json(&dir.join(SCALARS_FILE), &scalars)
    }

    /// Reads a state written by [`AdamW::save`], placing the moments on `device` (fp32).
    pub fn load(dir: &Path, device: Device) -> Result<AdamW> {
        let scalars_path = dir.join(SCALARS_FILE);
        let scalars: SavedScalars = read_json(&scalars_path)?;
        scalars.config.validate()?;
        let moments_path = dir.join(MOMENTS_FILE);
        let mut tensors: BTreeMap<String, Tensor> = Tensor::read_safetensors(&moments_path)
            .map_err(|e| ModelError::TrainingState {
                path: moments_path.clone(),
                message: e.to_string(),
            })?
            .into_iter()
            .collect();
        let mut take = |key: String| {
            tensors
                .remove(&key)
                .map(|t| t.to_kind(Kind::Float).to_device(device))
                .ok_or_else(|| ModelError::TrainingState {
                    path: moments_path.clone(),
                    message: format!("no tensor `{key}`, which optimizer.json lists"),
                })
        };
        let mut moments = BTreeMap::new();
        for (name, step) in scalars.steps {
            let exp_avg = take(format!("exp_avg.{name}"))?;
            let exp_avg_sq = take(format!("exp_avg_sq.{name}"))?;
            moments.insert(
                name,
                Moments {
                    step,
                    exp_avg,
                    exp_avg_sq,
                },
            );
        }
        Ok(AdamW {
            config: scalars.config,
            moments,
        })
    }
}

/// Scales the gradients of `params` so that their global L2 norm is at most `max_norm`, and
/// returns the norm before scaling, as `torch.nn.utils.clip_grad_norm_` does: per-tensor
/// norms, the norm of those, then every gradient times `min(1, max_norm / (norm + 1e-6))`.
/// Parameters without a gradient are left out.
pub fn clip_grad_norm(params: &[(String, Tensor)], max_norm: f64) -> Result<f64> {
    let _no_grad = tch::no_grad_guard();
    let grads: Vec<Tensor> = params
        .iter()
        .map(|(_, p)| p.grad())
        .filter(Tensor::defined)
        .collect();
    if grads.is_empty() {
        return Ok(0.0);
    }
    // The norms stay on the gradients' device (one transfer at the end, not one per tensor).
    let device = grads[0].device();
    let norms: Vec<Tensor> = grads
        .iter()
        .map(|g| g.f_norm().map(|n| n.to_device(device)))
        .collect::<std::result::Result<_, _>>()?;
    let total = Tensor::f_stack(&norms, 0)?.f_norm()?;
    let coefficient = (max_norm / (&total + 1e-6)).f_clamp_max(1.0)?;
    for grad in &grads {
        let _ = grad
            .shallow_clone()
            .f_mul_(&coefficient.to_device(grad.device()))?;
    }
    Ok(f64::try_from(total.to_device(Device::Cpu))?)
}

/// Writes `value` as pretty JSON to `path`.
pub(crate) fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| ModelError::TrainingState {
        path: path.to_path_buf(),
        message: format!("cannot encode: {e}"),
    })?;
    std::fs::write(path, text + "\n").map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads JSON written by [`write_json`].
pub(crate) fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| ModelError::TrainingState {
        path: path.to_path_buf(),
        message: format!("{e}; the file was not written by this version of fedsyn"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scheduler(schedule: LrSchedule) -> LrScheduler {
        LrScheduler::new(2.0, schedule, 0.5, 2, 10)
    }

    #[test]
    fn warmup_starts_at_zero_and_schedules_end_where_named() {
        for schedule in [LrSchedule::Constant, LrSchedule::Linear, LrSchedule::Cosine] {
            let s = scheduler(schedule);
            assert_eq!(s.lr_at(0), 0.0);
            assert_eq!(s.lr_at(1), 1.0);
            assert_eq!(s.lr_at(2), 2.0);
        }
        assert_eq!(scheduler(LrSchedule::Constant).lr_at(10), 2.0);
        assert_eq!(scheduler(LrSchedule::Linear).lr_at(10), 0.0);
        assert!(scheduler(LrSchedule::Cosine).lr_at(10).abs() < 1e-15);
        let floor = scheduler(LrSchedule::CosineWithMinLr);
        assert!((floor.lr_at(10) - 0.5).abs() < 1e-15);
        assert!((floor.lr_at(6) - 1.25).abs() < 1e-15, "{}", floor.lr_at(6));
    }

    #[test]
    fn clipping_scales_only_when_the_norm_exceeds_the_bound() {
        let a = Tensor::from_slice(&[3.0f32, 0.0]).set_requires_grad(true);
        let b = Tensor::from_slice(&[4.0f32]).set_requires_grad(true);
        (a.square().sum(Kind::Float) * 0.5 + b.square().sum(Kind::Float) * 0.5).backward();
        let params = vec![("a".to_string(), a), ("b".to_string(), b)];
        let norm = clip_grad_norm(&params, 1.0).unwrap();
        assert!((norm - 5.0).abs() < 1e-6);
        let clipped = f64::try_from(params[1].1.grad()).unwrap();
        assert!((clipped - 4.0 / (5.0 + 1e-6)).abs() < 1e-6, "{clipped}");
        let again = clip_grad_norm(&params, 10.0).unwrap();
        assert!((again - 1.0).abs() < 1e-5);
        assert!((f64::try_from(params[1].1.grad()).unwrap() - clipped).abs() < 1e-7);
    }

    #[test]
    fn bad_hyper_parameters_are_named() {
        let config = AdamWConfig {
            betas: (0.9, 1.0),
            ..AdamWConfig::default()
        };
        let err = AdamW::new(config).unwrap_err().to_string();
        assert!(err.contains("beta2"), "{err}");
    }
}
