//! Choosing where models run, `--device auto|cpu|cuda[:N]`, and in which floating-point type,
//! `--dtype auto|f32|bf16` (auto: bf16 on CUDA, fp32 on the CPU).

use std::str::FromStr;

use tch::{Cuda, Device, Kind};

use crate::error::{ModelError, Result};

/// What the user asked for on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// The first CUDA device when libtorch sees one, else the CPU.
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// CUDA device N.
    Cuda(usize),
}

impl FromStr for DeviceChoice {
    type Err = ModelError;

    fn from_str(text: &str) -> Result<Self> {
        match text.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" | "gpu" => Ok(DeviceChoice::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceChoice::Cuda)
                .ok_or_else(|| ModelError::UnknownDevice(text.to_string())),
        }
    }
}

impl std::fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceChoice::Auto => f.write_str("auto"),
            DeviceChoice::Cpu => f.write_str("cpu"),
            DeviceChoice::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl DeviceChoice {
    /// The libtorch device this choice means on this machine; a CUDA device libtorch cannot
    /// see is an error that says why, never a silent fallback to the CPU.
    pub fn resolve(self) -> Result<Device> {
        let available = cuda_device_count();
        match self {
            DeviceChoice::Cpu => Ok(Device::Cpu),
            DeviceChoice::Auto if available > 0 => Ok(Device::Cuda(0)),
            DeviceChoice::Auto => Ok(Device::Cpu),
            DeviceChoice::Cuda(n) if n < available => Ok(Device::Cuda(n)),
            DeviceChoice::Cuda(_) => Err(ModelError::DeviceUnavailable {
                asked: self.to_string(),
                available,
                hint: if cfg!(target_os = "linux") && !libtorch_has_cuda() {
                    ": this libtorch has no CUDA (libtorch_cuda is not loaded); use the CUDA \
                     wheel that scripts/setup.sh installs"
                } else {
                    ": check nvidia-smi and CUDA_VISIBLE_DEVICES, or use --device cpu"
                },
            }),
        }
    }
}

/// The floating-point type models compute in on `device`: bf16 on CUDA, fp32 on the CPU.
pub fn compute_kind(device: Device) -> Kind {
    match device {
        Device::Cuda(_) => Kind::BFloat16,
        _ => Kind::Float,
    }
}

/// The compute dtype the user asked for (`--dtype`, `model.generator_dtype`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DtypeChoice {
    /// The device's default ([`compute_kind`]): bf16 on CUDA, fp32 on the CPU.
    #[default]
    Auto,
    /// fp32 everywhere.
    F32,
    /// bf16 where the device computes it natively: CUDA, or a CPU with AVX512-BF16 (AMD Zen 4
    /// and later, Intel Cooper Lake and Sapphire Rapids and later, whose AMX units libtorch's
    /// oneDNN uses). On another CPU bf16 would be emulated, slower than fp32, so the choice
    /// falls back to fp32 and [`DtypeChoice::resolve`] says so.
    Bf16,
}

impl FromStr for DtypeChoice {
    type Err = ModelError;

    fn from_str(text: &str) -> Result<Self> {
        match text.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(DtypeChoice::Auto),
            "f32" | "fp32" | "float32" => Ok(DtypeChoice::F32),
            "bf16" | "bfloat16" => Ok(DtypeChoice::Bf16),
            _ => Err(ModelError::UnknownDtype(text.to_string())),
        }
    }
}

impl DtypeChoice {
    /// The dtype this choice means on `device`, and, when bf16 was asked for on a CPU without
    /// native bf16 instructions, the sentence that says it runs fp32 instead.
    pub fn resolve(self, device: Device) -> (Kind, Option<String>) {
        match self {
            DtypeChoice::Auto => (compute_kind(device), None),
            DtypeChoice::F32 => (Kind::Float, None),
            DtypeChoice::Bf16 if device != Device::Cpu || cpu_has_native_bf16() => {
                (Kind::BFloat16, None)
            }
            DtypeChoice::Bf16 => (
                Kind::Float,
                Some(
                    "bf16 was asked for, but this CPU has no AVX512-BF16 instructions (libtorch \
                     would emulate bf16, slower than fp32): computing in fp32"
                        .to_string(),
                ),
            ),
        }
    }
}

/// Whether this CPU multiplies bf16 natively (AVX512-BF16; the processors with AMX have it
/// too). Decided by the processor's feature flags, at run time.
pub fn cpu_has_native_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The short name of a compute dtype, as `--dtype` and `model.generator_dtype` spell it
/// (`f32`, `bf16`, `f16`; `other` for a kind that is not a compute dtype).
pub fn dtype_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Float => "f32",
        Kind::BFloat16 => "bf16",
        Kind::Half => "f16",
        _ => "other",
    }
}

/// How many CUDA devices libtorch sees (0 without CUDA).
pub fn cuda_device_count() -> usize {
    if Cuda::is_available() {
        usize::try_from(Cuda::device_count()).unwrap_or(0)
    } else {
        0
    }
}

/// Whether libtorch's CUDA library is mapped into this process (Linux: read from
/// /proc/self/maps). If the linker dropped it, CUDA is unavailable even on a GPU machine.
pub fn libtorch_has_cuda() -> bool {
    std::fs::read_to_string("/proc/self/maps")
        .map(|maps| maps.contains("libtorch_cuda"))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_choices_parse() {
        assert_eq!("auto".parse::<DeviceChoice>().unwrap(), DeviceChoice::Auto);
        assert_eq!("CPU".parse::<DeviceChoice>().unwrap(), DeviceChoice::Cpu);
        assert_eq!(
            "cuda".parse::<DeviceChoice>().unwrap(),
            DeviceChoice::Cuda(0)
        );
        assert_eq!(
            "cuda:3".parse::<DeviceChoice>().unwrap(),
            DeviceChoice::Cuda(3)
        );
        let err = "tpu".parse::<DeviceChoice>().unwrap_err().to_string();
        assert!(err.contains("tpu") && err.contains("cuda:N"), "{err}");
        assert!("cuda:x".parse::<DeviceChoice>().is_err());
    }

    #[test]
    fn cpu_resolves_and_uses_fp32() {
        let device = DeviceChoice::Cpu.resolve().unwrap();
        assert_eq!(device, Device::Cpu);
        assert_eq!(compute_kind(device), Kind::Float);
        let auto = DeviceChoice::Auto.resolve().unwrap();
        assert_eq!(auto == Device::Cpu, cuda_device_count() == 0);
    }

    #[test]
    fn missing_cuda_devices_are_an_error_not_a_fallback() {
        let beyond = DeviceChoice::Cuda(cuda_device_count());
        let err = beyond.resolve().unwrap_err().to_string();
        assert!(err.contains("CUDA device"), "{err}");
    }

    #[test]
    fn dtype_choices_parse_and_resolve() {
        assert_eq!("BF16".parse::<DtypeChoice>().unwrap(), DtypeChoice::Bf16);
        assert_eq!("fp32".parse::<DtypeChoice>().unwrap(), DtypeChoice::F32);
        let err = "f16".parse::<DtypeChoice>().unwrap_err().to_string();
        assert!(err.contains("f16") && err.contains("bf16"), "{err}");
        assert_eq!(DtypeChoice::Auto.resolve(Device::Cpu), (Kind::Float, None));
        assert_eq!(
            DtypeChoice::Auto.resolve(Device::Cuda(0)),
            (Kind::BFloat16, None)
        );
        assert_eq!(DtypeChoice::F32.resolve(Device::Cuda(0)).0, Kind::Float);
        // bf16 on this CPU: native where the processor says it has AVX512-BF16, else fp32
        // with the reason.
        if let Some(native) = crate::test_support::cpu_flag("avx512_bf16") {
            if cfg!(target_arch = "x86_64") {
                assert_eq!(cpu_has_native_bf16(), native);
            }
        }
        let (kind, notice) = DtypeChoice::Bf16.resolve(Device::Cpu);
        if cpu_has_native_bf16() {
            assert_eq!((kind, notice), (Kind::BFloat16, None));
        } else {
            assert_eq!(kind, Kind::Float);
            assert!(notice.unwrap().contains("AVX512-BF16"));
        }
    }
}
