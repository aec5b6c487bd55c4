//! AdamW, gradient clipping and learning-rate schedules against PyTorch and transformers
//! (crates/models/tests/fixtures/optim_reference.json, written by scripts/reference/dpo.py),
//! and the optimiser state's round trip through its files.

use models::train::{clip_grad_norm, AdamW, AdamWConfig, LrSchedule, LrScheduler};
use serde::Deserialize;
use tch::{Device, Tensor};

#[derive(Deserialize)]
struct Reference {
    adamw: AdamWReference,
    clip_grad_norm: ClipReference,
    schedules: SchedulesReference,
}

#[derive(Deserialize)]
struct AdamWReference {
    betas: (f64, f64),
    eps: f64,
    weight_decay: f64,
    shapes: Vec<Vec<i64>>,
    initial: Vec<Vec<f32>>,
    steps: Vec<AdamWStep>,
}

#[derive(Deserialize)]
struct AdamWStep {
    lr: f64,
    grads: Vec<Vec<f32>>,
    /// The parameters after the step.
    params: Vec<Vec<f32>>,
}

#[derive(Deserialize)]
struct ClipReference {
    max_norm: f64,
    grads: Vec<Vec<f32>>,
    norm: f64,
    clipped: Vec<Vec<f32>>,
}

#[derive(Deserialize)]
struct SchedulesReference {
    peak_lr: f64,
    warmup_steps: u64,
    total_steps: u64,
    lr_min: f64,
    lrs: std::collections::BTreeMap<String, Vec<f64>>,
}

fn reference() -> Reference {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/optim_reference.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).expect("fixture exists")).expect("parses")
}

/// Named leaf tensors with the given values.
fn parameters(shapes: &[Vec<i64>], values: &[Vec<f32>]) -> Vec<(String, Tensor)> {
    shapes
        .iter()
        .zip(values)
        .enumerate()
        .map(|(i, (shape, values))| {
            let leaf = Tensor::from_slice(values)
                .view(shape.as_slice())
                .set_requires_grad(true);
            (format!("p{i}"), leaf)
        })
        .collect()
}

/// Sets each parameter's gradient to `grads` (through a backward pass of Σ p·g).
fn set_grads(params: &[(String, Tensor)], grads: &[Vec<f32>]) {
    for (_, param) in params {
        param.shallow_clone().zero_grad();
    }
    let objective = params
        .iter()
        .zip(grads)
        .map(|((_, p), g)| {
            (p * Tensor::from_slice(g).view(p.size().as_slice())).sum(tch::Kind::Float)
        })
        .reduce(|a, b| a + b)
        .expect("parameters");
    objective.backward();
}

fn values(tensor: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(tensor.detach().reshape([-1])).expect("f32 values")
}

/// The largest |a − b| / max(|b|, 1e-3) over the entries.
fn max_relative_error(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(want)
        .map(|(&g, &w)| f64::from((g - w).abs()) / f64::from(w.abs()).max(1e-3))
        .fold(0.0, f64::max)
}

#[test]
fn adamw_takes_torch_adamw_steps() {
    let reference = reference().adamw;
    let params = parameters(&reference.shapes, &reference.initial);
    let mut optimizer = AdamW::new(AdamWConfig {
        betas: reference.betas,
        eps: reference.eps,
        weight_decay: reference.weight_decay,
    })
    .unwrap();
    for (index, step) in reference.steps.iter().enumerate() {
        set_grads(&params, &step.grads);
        optimizer.step(&params, step.lr).unwrap();
        for ((name, param), want) in params.iter().zip(&step.params) {
            let error = max_relative_error(&values(param), want);
            // Same libtorch kernels, same operation order: equal up to the last bit or two.
            assert!(
                error < 1e-6,
                "step {index}, {name}: relative error {error:e}"
            );
        }
    }
    assert_eq!(optimizer.steps_taken(), reference.steps.len() as u64);
}

#[test]
fn saved_optimizer_state_resumes_exactly() {
    let reference = reference().adamw;
    let config = AdamWConfig {
        betas: reference.betas,
        eps: reference.eps,
        weight_decay: reference.weight_decay,
    };
    let dir = std::env::temp_dir().join(format!("fedsyn-adamw-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (first, rest) = reference.steps.split_at(2);

    let straight = parameters(&reference.shapes, &reference.initial);
    let mut uninterrupted = AdamW::new(config).unwrap();
    for step in &reference.steps {
        set_grads(&straight, &step.grads);
        uninterrupted.step(&straight, step.lr).unwrap();
    }

    let resumed = parameters(&reference.shapes, &reference.initial);
    let mut before = AdamW::new(config).unwrap();
    for step in first {
        set_grads(&resumed, &step.grads);
        before.step(&resumed, step.lr).unwrap();
    }
    before.save(&dir).unwrap();
    drop(before);
    let mut after = AdamW::load(&dir, Device::Cpu).unwrap();
    assert_eq!(after.steps_taken(), 2);
    for step in rest {
        set_grads(&resumed, &step.grads);
        after.step(&resumed, step.lr).unwrap();
    }
    for ((_, a), (_, b)) in straight.iter().zip(&resumed) {
        assert_eq!(values(a), values(b));
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn clipping_matches_clip_grad_norm() {
    let reference = reference().clip_grad_norm;
    let shapes = [vec![3, 4], vec![5]];
    let zeros: Vec<Vec<f32>> = reference.grads.iter().map(|g| vec![0.0; g.len()]).collect();
    let params = parameters(&shapes, &zeros);
    set_grads(&params, &reference.grads);
    let norm = clip_grad_norm(&params, reference.max_norm).unwrap();
    assert!(
        (norm - reference.norm).abs() < 1e-6 * reference.norm,
        "{norm}"
    );
    for ((name, param), want) in params.iter().zip(&reference.clipped) {
        let error = max_relative_error(&values(&param.grad()), want);
        assert!(error < 1e-6, "{name}: {error:e}");
    }
}

#[test]
fn schedules_match_transformers() {
    let reference = reference().schedules;
    let kinds = [
        ("constant", LrSchedule::Constant),
        ("linear", LrSchedule::Linear),
        ("cosine", LrSchedule::Cosine),
        ("cosine_with_min_lr", LrSchedule::CosineWithMinLr),
    ];
    for (name, schedule) in kinds {
        let mut scheduler = LrScheduler::new(
            reference.peak_lr,
            schedule,
            reference.lr_min,
            reference.warmup_steps,
            reference.total_steps,
        );
        for (step, &want) in reference.lrs[name].iter().enumerate() {
            let got = scheduler.lr();
            assert!(
                (got - want).abs() <= 1e-12 * reference.peak_lr,
                "{name} step {step}: {got} vs {want}"
            );
            scheduler.advance();
        }
    }
}
