//! fp32 matrix products on the CPU through oneDNN instead of MKL, where that is faster.
//!
//! libtorch sends fp32 `linear` to MKL's sgemm, which on AMD processors runs its AVX2 kernels
//! (MKL chooses AVX-512 code only on Intel parts); oneDNN, also inside libtorch, dispatches on
//! the instruction set and runs AVX-512 there: about twice the fp32 throughput per core on the
//! Zen machines this project runs on, same IEEE fp32 arithmetic (only the summation order
//! differs). Where both run the same width, MKL is the faster of the two: on Intel processors
//! with AVX-512, and with both capped at AVX2 on a Xeon (BENCHMARKS.md), as on a processor
//! without AVX-512. [`onednn_runs_wider_than_mkl`] tells the cases apart. `mkldnn_linear` wants
//! its input in oneDNN's tensor layout; tch wraps every piece but the dense-to-oneDNN
//! conversion, which is called here through torch-sys.

use std::ffi::{c_char, c_void, CStr};

use tch::{Kind, TchError, Tensor};

extern "C" {
    /// The C library's `free`, for the error strings torch-sys hands over (allocated with
    /// `malloc` by its C wrapper).
    fn free(ptr: *mut c_void);
}

/// Whether oneDNN runs wider vector code here than MKL's sgemm: on an x86 processor with
/// AVX-512 that is not Intel's (MKL checks the vendor and runs AVX2 code on every other x86
/// processor; oneDNN runs AVX-512 wherever the processor has it).
pub(crate) fn onednn_runs_wider_than_mkl() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        // CPUID leaf 0 (the vendor string) exists on every x86-64 processor.
        // `unsafe` until Rust 1.94 made `__cpuid` safe; rust-version is 1.89.
        #[allow(unused_unsafe)]
        let leaf = unsafe { std::arch::x86_64::__cpuid(0) };
        let vendor: Vec<u8> = [leaf.ebx, leaf.edx, leaf.ecx]
            .iter()
            .flat_map(|r| r.to_le_bytes())
            .collect();
        vendor != b"GenuineIntel" && std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether this libtorch has oneDNN, so that [`linear`] can run.
pub(crate) fn available() -> bool {
    tch::utils::has_mkldnn()
}

/// Takes and clears the error torch-sys recorded for the last call, if any.
fn last_error() -> Option<String> {
    // SAFETY: torch-sys returns either null or a NUL-terminated string allocated with malloc
    // that the caller owns; it is read once and freed once.
    unsafe {
        let ptr: *mut c_char = torch_sys::get_and_reset_last_err();
        if ptr.is_null() {
            return None;
        }
        let message = CStr::from_ptr(ptr).to_string_lossy().into_owned();
        free(ptr.cast());
        Some(message)
    }
}

/// `x` (dense, fp32) as a oneDNN tensor.
fn to_onednn(x: &Tensor) -> Result<Tensor, TchError> {
    let mut out = [std::ptr::null_mut(); 1];
    // SAFETY: `x` outlives the call; the wrapper writes one new tensor handle into `out` (or
    // records an error and writes nothing), and that handle is owned by the returned Tensor.
    unsafe {
        torch_sys::c_generated::atg_to_mkldnn(out.as_mut_ptr(), x.as_ptr().cast_mut(), -1);
    }
    match last_error() {
        Some(message) => Err(TchError::Torch(message)),
        // SAFETY: no error was recorded, so `out[0]` is a valid tensor handle we now own.
        None => Ok(unsafe { Tensor::from_ptr(out[0]) }),
    }
}

/// `x Wᵀ + b` for fp32 CPU tensors: `x` is `[..., in]`, `weight` `[out, in]`, `bias` `[out]`.
pub(crate) fn linear(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
) -> Result<Tensor, TchError> {
    let mut shape = x.size();
    let features = shape.pop().unwrap_or(0);
    let rows = x.f_reshape([-1, features])?.f_contiguous()?;
    let product = to_onednn(&rows)?
        .f_mkldnn_linear(weight, bias)?
        .f_to_dense(Kind::Float, false)?;
    shape.push(weight.size()[0]);
    product.f_reshape(shape)
}

#[cfg(test)]
mod tests {
    use tch::Device;

    use super::*;

    /// The vendor check agrees with what the kernel reports for the first processor.
    #[test]
    fn onednn_is_wider_on_processors_with_avx512_but_not_intels() {
        use crate::test_support::{cpu_flag, cpuinfo_field};
        let (Some(vendor), Some(avx512)) = (cpuinfo_field("vendor_id"), cpu_flag("avx512f")) else {
            return;
        };
        let expected = vendor != "GenuineIntel" && avx512;
        assert_eq!(onednn_runs_wider_than_mkl(), expected);
    }

    #[test]
    fn onednn_linear_is_torch_linear() {
        if !available() {
            return;
        }
        let x = Tensor::randn([2, 3, 40], (Kind::Float, Device::Cpu));
        let w = Tensor::randn([24, 40], (Kind::Float, Device::Cpu));
        let b = Tensor::randn([24], (Kind::Float, Device::Cpu));
        let got = linear(&x, &w, Some(&b)).unwrap();
        assert_eq!(got.size(), [2, 3, 24]);
        let diff = f32::try_from((got - x.linear(&w, Some(&b))).abs().max()).unwrap();
        assert!(diff < 1e-4, "{diff}");
        // A non-contiguous input (a transposed view) is handled too.
        let xt = Tensor::randn([40, 5], (Kind::Float, Device::Cpu)).tr();
        let diff = f32::try_from(
            (linear(&xt, &w, None).unwrap() - xt.linear::<Tensor>(&w, None))
                .abs()
                .max(),
        )
        .unwrap();
        assert!(diff < 1e-4, "{diff}");
    }

    #[test]
    fn conversion_errors_are_reported_not_panics() {
        if !available() {
            return;
        }
        let ints = Tensor::from_slice(&[1i64, 2, 3]);
        assert!(to_onednn(&ints).is_err());
    }
}
