//! fp32 products `x Wᵀ` with the weight packed once into MKL's internal layout.
//!
//! MKL's sgemm copies ("packs") both operands into its blocked layout at every call. In
//! decoding the same weights meet a new `[rows, d]` input at every step: packing the weight
//! once per generation and calling `cblas_sgemm_compute` removes that copy from every step
//! (`perf` put MKL's weight packing at 13 % of sampling's samples on a Xeon). The routines
//! are MKL's own (`cblas_sgemm_pack_get_size`, `cblas_sgemm_pack`, `cblas_sgemm_compute`),
//! inside the libtorch the process already runs; they are looked up at run time, so a
//! libtorch without MKL (ARM builds) simply never packs.

use std::alloc::{alloc, dealloc, Layout};
use std::ffi::{c_int, c_void, CStr};
use std::ptr::NonNull;
use std::sync::OnceLock;

use tch::{Device, Kind, Tensor};

// CBLAS enumerations, as mkl_cblas.h numbers them.
const ROW_MAJOR: c_int = 101;
const NO_TRANS: c_int = 111;
const TRANS: c_int = 112;
const B_MATRIX: c_int = 162;
const PACKED: c_int = 151;

/// MKL asks for 64-byte aligned buffers (`mkl_malloc`'s default) for its packed layout.
const ALIGNMENT: usize = 64;

type PackGetSize = unsafe extern "C" fn(c_int, c_int, c_int, c_int) -> usize;
type Pack = unsafe extern "C" fn(
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    f32,
    *const f32,
    c_int,
    *mut f32,
);
type Compute = unsafe extern "C" fn(
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    *const f32,
    c_int,
    *const f32,
    c_int,
    f32,
    *mut f32,
    c_int,
);

/// MKL's three packed-product routines (LP64: 32-bit integers).
struct Routines {
    get_size: PackGetSize,
    pack: Pack,
    compute: Compute,
}

/// The routines, when this process's libtorch exports them.
fn routines() -> Option<&'static Routines> {
    static ROUTINES: OnceLock<Option<Routines>> = OnceLock::new();
    ROUTINES
        .get_or_init(|| {
            let find = |name: &CStr| {
                // SAFETY: dlsym with RTLD_DEFAULT searches the libraries already loaded (libtorch_cpu
                // among them) and returns null or the symbol's address.
                let symbol = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
                (!symbol.is_null()).then_some(symbol)
            };
            let get_size = find(c"cblas_sgemm_pack_get_size")?;
            let pack = find(c"cblas_sgemm_pack")?;
            let compute = find(c"cblas_sgemm_compute")?;
            // SAFETY: the symbols are MKL's CBLAS routines, whose C signatures (LP64; the
            // ILP64 ones carry a `_64` suffix) are the function types above.
            unsafe {
                Some(Routines {
                    get_size: std::mem::transmute::<*mut c_void, PackGetSize>(get_size),
                    pack: std::mem::transmute::<*mut c_void, Pack>(pack),
                    compute: std::mem::transmute::<*mut c_void, Compute>(compute),
                })
            }
        })
        .as_ref()
}

/// Whether this process can pack weights (its libtorch has MKL's packed routines).
pub(crate) fn available() -> bool {
    routines().is_some()
}

/// A `[out, in]` fp32 weight in MKL's packed layout, ready to multiply `[rows, in]` inputs
/// by its transpose. Read-only once built; MKL forbids moving the buffer, which stays where
/// it was allocated until drop.
pub(crate) struct PackedWeight {
    buffer: NonNull<u8>,
    layout: Layout,
    out_features: i64,
    in_features: i64,
    /// The row count it was packed for, the only one it multiplies: MKL's documentation
    /// packs B for given m, n and k and promises nothing for another m, and PyTorch's own
    /// `mkl_linear` uses a packed weight only for its packing batch size. (In probes on a Xeon
    /// a weight packed for 96 rows also multiplied 1 and 16 rows correctly; that is not relied
    /// on.)
    rows: i64,
}

// SAFETY: the buffer is written once, in `new`, and only read afterwards (MKL's compute
// reads it), so sharing it between threads is sound.
unsafe impl Send for PackedWeight {}
unsafe impl Sync for PackedWeight {}

impl std::fmt::Debug for PackedWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedWeight")
            .field("out_features", &self.out_features)
            .field("in_features", &self.in_features)
            .field("rows", &self.rows)
            .field("bytes", &self.layout.size())
            .finish()
    }
}

impl PackedWeight {
    /// Packs `weight` (`[out, in]`, fp32, on the CPU) for products with inputs of exactly
    /// `rows` rows (see [`PackedWeight::fits`]). None where MKL's routines are missing or the
    /// weight does not qualify.
    pub(crate) fn new(weight: &Tensor, rows: i64) -> Option<PackedWeight> {
        let routines = routines()?;
        if weight.device() != Device::Cpu || weight.kind() != Kind::Float || weight.dim() != 2 {
            return None;
        }
        let weight = weight.contiguous();
        let (out_features, in_features) = (weight.size()[0], weight.size()[1]);
        let dims = [rows, out_features, in_features].map(c_int::try_from);
        let [Ok(m), Ok(n), Ok(k)] = dims else {
            return None;
        };
        if m < 1 {
            return None;
        }
        // SAFETY: a pure size query.
        let bytes = unsafe { (routines.get_size)(B_MATRIX, m, n, k) };
        let layout = Layout::from_size_align(bytes.max(1), ALIGNMENT).ok()?;
        // SAFETY: the layout has a non-zero size.
        let buffer = NonNull::new(unsafe { alloc(layout) })?;
        // SAFETY: `weight` is a contiguous row-major [n, k] fp32 matrix (leading dimension k),
        // used as op(B) = Wᵀ; the buffer has the size MKL asked for these dimensions.
        unsafe {
            (routines.pack)(
                ROW_MAJOR,
                B_MATRIX,
                TRANS,
                m,
                n,
                k,
                1.0,
                weight.data_ptr() as *const f32,
                k,
                buffer.as_ptr().cast(),
            );
        }
        Some(PackedWeight {
            buffer,
            layout,
            out_features,
            in_features,
            rows,
        })
    }

    /// Whether `x` (`[..., in]`) has the row count this weight was packed for.
    pub(crate) fn fits(&self, x: &Tensor) -> bool {
        let size = x.size();
        size.last() == Some(&self.in_features)
            && size[..size.len() - 1].iter().product::<i64>() == self.rows
    }

    /// `x Wᵀ + b` for an fp32 CPU input `x` (`[..., in]`) with the row count packed for
    /// ([`PackedWeight::fits`]), without autograd: the caller checks both.
    pub(crate) fn linear(&self, x: &Tensor, bias: Option<&Tensor>) -> Tensor {
        let routines = routines().expect("a PackedWeight exists only where MKL packs");
        let mut shape = x.size();
        shape.pop();
        let input = x.reshape([-1, self.in_features]).contiguous();
        let rows = input.size()[0];
        assert_eq!(
            rows, self.rows,
            "a packed weight multiplies the row count it was packed for"
        );
        let n = self.out_features;
        // C := A·op(B) + beta·C: with a bias, C starts as a copy of the bias on every row
        // (beta 1). A copy, always: with one row a contiguous view would be the bias itself,
        // which MKL would then overwrite.
        let (output, beta) = match bias {
            Some(bias) => (bias.repeat([rows, 1]), 1.0),
            None => (Tensor::empty([rows, n], (Kind::Float, Device::Cpu)), 0.0),
        };
        // All three fitted c_int when packing.
        let (m, n, k) = (rows as c_int, n as c_int, self.in_features as c_int);
        // SAFETY: `input` is a contiguous [m, k] fp32 matrix and `output` a contiguous [m, n]
        // one, both alive for the call; the packed buffer holds op(B) for these n and k.
        unsafe {
            (routines.compute)(
                ROW_MAJOR,
                NO_TRANS,
                PACKED,
                m,
                n,
                k,
                input.data_ptr() as *const f32,
                k,
                self.buffer.as_ptr().cast(),
                k,
                beta,
                output.data_ptr() as *mut f32,
                n,
            );
        }
        shape.push(self.out_features);
        output.reshape(shape)
    }
}

impl Drop for PackedWeight {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout, freed once.
        unsafe { dealloc(self.buffer.as_ptr(), self.layout) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The packed product is libtorch's `linear`, for several row counts, with and without a
    /// bias, and for non-contiguous 3-d inputs.
    #[test]
    fn packed_products_match_linear() {
        if !available() {
            return;
        }
        let _no_grad = tch::no_grad_guard();
        let options = (Kind::Float, Device::Cpu);
        let weight = Tensor::randn([200, 96], options);
        let bias = Tensor::randn([200], options);
        let bias_before = bias.copy();
        for rows in [1, 5, 48, 97] {
            let packed = PackedWeight::new(&weight, rows).expect("fp32 CPU weights pack");
            let x = Tensor::randn([rows, 96], options);
            assert!(packed.fits(&x) && !packed.fits(&Tensor::randn([rows + 1, 96], options)));
            for bias in [None, Some(&bias)] {
                let got = packed.linear(&x, bias);
                let want = x.linear(&weight, bias);
                let diff = f32::try_from((&got - &want).abs().max()).unwrap();
                assert!(diff < 1e-4, "rows {rows}: {diff}");
            }
        }
        assert!(bias.equal(&bias_before), "the bias is left as it was");
        let x = Tensor::randn([3, 96, 4], options).transpose(1, 2);
        let packed = PackedWeight::new(&weight, 12).unwrap();
        assert!(packed.fits(&x));
        let diff = f32::try_from(
            (packed.linear(&x, None) - x.linear::<Tensor>(&weight, None))
                .abs()
                .max(),
        )
        .unwrap();
        assert!(diff < 1e-4, "{diff}");
    }

    /// The PyPI libtorch for x86-64 Linux (what scripts/setup.sh installs) carries MKL.
    #[test]
    fn x86_64_linux_libtorch_has_the_packed_routines() {
        if cfg!(all(target_arch = "x86_64", target_os = "linux")) {
            assert!(available());
        }
    }

    #[test]
    fn only_fp32_cpu_matrices_pack() {
        let weight = Tensor::randn([4, 4], (Kind::Float, Device::Cpu));
        assert!(PackedWeight::new(&weight.to_kind(Kind::BFloat16), 2).is_none());
        assert!(PackedWeight::new(&weight.view([16]), 2).is_none());
        assert_eq!(PackedWeight::new(&weight, 2).is_some(), available());
    }
}
