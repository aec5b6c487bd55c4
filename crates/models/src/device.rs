//! Choosing where models run: `--device auto|cpu|cuda[:N]`, and the dtype that goes with it
//! (bf16 on CUDA, fp32 on CPU).

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
}
