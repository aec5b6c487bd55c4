//! Dequantisation of ggml tensor data to `f32`.
//!
//! Block layouts are ggml's (`ggml-common.h`); every multi-byte field is little-endian. Each
//! decoder evaluates its formula in the same order as ggml's reference `dequantize_row_*` so
//! results match it (and the `gguf` Python package) to the last bit in practice:
//!
//! | type | values/block | bytes | layout → value |
//! |------|-----|-----|----------------|
//! | Q8_0 | 32  | 34  | `d: f16, q: [i8; 32]` → `q·d` |
//! | Q4_0 | 32  | 18  | `d: f16, qs: [u8; 16]` → `(nibble − 8)·d`; low nibbles are values 0..16, high 16..32 |
//! | Q4_1 | 32  | 20  | `d: f16, m: f16, qs: [u8; 16]` → `nibble·d + m` |
//! | Q4_K | 256 | 144 | `d, dmin: f16, scales: [u8; 12], qs: [u8; 128]` → `(d·sc)·q − dmin·mn` with 6-bit `sc`, `mn` per 32 values |
//! | Q5_K | 256 | 176 | as Q4_K plus `qh: [u8; 32]` (before `qs`) giving each value a fifth bit |
//! | Q6_K | 256 | 210 | `ql: [u8; 128], qh: [u8; 64], scales: [i8; 16], d: f16` → `(d·sc)·(q − 32)`, 6-bit `q`, one `sc` per 16 values |

use half::{bf16, f16};

use crate::error::{ModelError, Result};

use super::ggml_type::GgmlType;

/// Values in one K-quant super-block.
const QK_K: usize = 256;

/// Decodes `n_values` values of type `ggml_type` from `bytes` (exactly their encoded size).
/// `tensor` names the data in errors.
pub fn dequantize(
    tensor: &str,
    ggml_type: GgmlType,
    bytes: &[u8],
    n_values: usize,
) -> Result<Vec<f32>> {
    check_size(tensor, ggml_type, bytes, n_values)?;
    let decode_block: fn(&[u8], &mut Vec<f32>) = match ggml_type {
        GgmlType::F32 => f32_block,
        GgmlType::F16 => f16_block,
        GgmlType::BF16 => bf16_block,
        GgmlType::Q8_0 => q8_0_block,
        GgmlType::Q4_0 => q4_0_block,
        GgmlType::Q4_1 => q4_1_block,
        GgmlType::Q4_K => q4_k_block,
        GgmlType::Q5_K => q5_k_block,
        GgmlType::Q6_K => q6_k_block,
        other => {
            return Err(ModelError::UnsupportedTensorType {
                tensor: tensor.to_string(),
                ggml_type: other,
                supported: GgmlType::dequantisable_list(),
            })
        }
    };
    let mut out = Vec::with_capacity(n_values);
    for block in bytes.chunks_exact(ggml_type.type_size()) {
        decode_block(block, &mut out);
    }
    Ok(out)
}

/// Fails unless `bytes` holds exactly `n_values` values of `ggml_type` in whole blocks.
fn check_size(tensor: &str, ggml_type: GgmlType, bytes: &[u8], n_values: usize) -> Result<()> {
    if !ggml_type.is_dequantisable() {
        return Err(ModelError::UnsupportedTensorType {
            tensor: tensor.to_string(),
            ggml_type,
            supported: GgmlType::dequantisable_list(),
        });
    }
    let block_size = ggml_type.block_size();
    if !n_values.is_multiple_of(block_size) {
        return Err(ModelError::PartialBlock {
            tensor: tensor.to_string(),
            ggml_type,
            n_values,
            block_size,
        });
    }
    let expected_bytes = n_values / block_size * ggml_type.type_size();
    if bytes.len() != expected_bytes {
        return Err(ModelError::DataSize {
            tensor: tensor.to_string(),
            ggml_type,
            n_values,
            expected_bytes,
            actual_bytes: bytes.len(),
        });
    }
    Ok(())
}

/// Reads the little-endian f16 at `bytes[at..at + 2]`.
fn f16_at(bytes: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([bytes[at], bytes[at + 1]])).to_f32()
}

fn f32_block(block: &[u8], out: &mut Vec<f32>) {
    out.push(f32::from_le_bytes([block[0], block[1], block[2], block[3]]));
}

fn f16_block(block: &[u8], out: &mut Vec<f32>) {
    out.push(f16_at(block, 0));
}

fn bf16_block(block: &[u8], out: &mut Vec<f32>) {
    out.push(bf16::from_bits(u16::from_le_bytes([block[0], block[1]])).to_f32());
}

fn q8_0_block(block: &[u8], out: &mut Vec<f32>) {
    let d = f16_at(block, 0);
    out.extend(block[2..34].iter().map(|&q| f32::from(q as i8) * d));
}

fn q4_0_block(block: &[u8], out: &mut Vec<f32>) {
    let d = f16_at(block, 0);
    let qs = &block[2..18];
    out.extend(qs.iter().map(|&q| f32::from((q & 0x0F) as i8 - 8) * d));
    out.extend(qs.iter().map(|&q| f32::from((q >> 4) as i8 - 8) * d));
}

fn q4_1_block(block: &[u8], out: &mut Vec<f32>) {
    let d = f16_at(block, 0);
    let m = f16_at(block, 2);
    let qs = &block[4..20];
    out.extend(qs.iter().map(|&q| f32::from(q & 0x0F) * d + m));
    out.extend(qs.iter().map(|&q| f32::from(q >> 4) * d + m));
}

/// The 6-bit scale and 6-bit min of sub-block `j` (0..8) of a Q4_K/Q5_K super-block.
///
/// The 12 bytes hold eight (scale, min) pairs: pairs 0..4 sit in the low 6 bits of bytes 0..4
/// (scales) and 4..8 (mins); pairs 4..8 take their low 4 bits from the nibbles of bytes 8..12
/// and their high 2 bits from the top bits of bytes 0..4 (scales) and 4..8 (mins).
fn k_scale_min(scales: &[u8], j: usize) -> (u8, u8) {
    if j < 4 {
        (scales[j] & 0x3F, scales[j + 4] & 0x3F)
    } else {
        let scale = (scales[j + 4] & 0x0F) | ((scales[j - 4] >> 6) << 4);
        let min = (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4);
        (scale, min)
    }
}

/// One of the 8 sub-blocks of 32 values of a Q4_K/Q5_K super-block: value l is
/// `scale · quant − min`, and the low 4 bits of its quant are bits `shift..shift + 4` of
/// `bytes[l]`.
struct KSubBlock<'a> {
    index: usize,
    shift: u8,
    scale: f32,
    min: f32,
    bytes: &'a [u8],
}

/// The sub-blocks of a Q4_K/Q5_K super-block whose low quant bits are `qs`, in value order.
/// Each 32-byte chunk of `qs` holds 64 values: low nibbles are sub-block 2c, high 2c + 1.
fn k_sub_blocks<'a>(block: &'a [u8], qs: &'a [u8]) -> impl Iterator<Item = KSubBlock<'a>> {
    let d = f16_at(block, 0);
    let dmin = f16_at(block, 2);
    let scales = &block[4..16];
    qs.chunks_exact(32)
        .enumerate()
        .flat_map(move |(chunk, bytes)| {
            [(2 * chunk, 0), (2 * chunk + 1, 4)].map(|(index, shift)| {
                let (sc, mn) = k_scale_min(scales, index);
                KSubBlock {
                    index,
                    shift,
                    scale: d * f32::from(sc),
                    min: dmin * f32::from(mn),
                    bytes,
                }
            })
        })
}

fn q4_k_block(block: &[u8], out: &mut Vec<f32>) {
    for sub in k_sub_blocks(block, &block[16..144]) {
        out.extend(
            sub.bytes
                .iter()
                .map(|&b| sub.scale * f32::from((b >> sub.shift) & 0x0F) - sub.min),
        );
    }
}

fn q5_k_block(block: &[u8], out: &mut Vec<f32>) {
    let qh = &block[16..48];
    // As Q4_K; sub-block s takes its fifth bit from bit s of the qh byte at the same position.
    for sub in k_sub_blocks(block, &block[48..176]) {
        out.extend(sub.bytes.iter().zip(qh).map(|(&low, &high)| {
            let fifth = ((high >> sub.index) & 1) << 4;
            sub.scale * f32::from(((low >> sub.shift) & 0x0F) | fifth) - sub.min
        }));
    }
}

fn q6_k_block(block: &[u8], out: &mut Vec<f32>) {
    let ql = &block[0..128];
    let qh = &block[128..192];
    let scales = &block[192..208];
    let d = f16_at(block, 208);
    let mut values = [0f32; QK_K];
    // Each half (128 values) uses 64 bytes of ql, 32 of qh and 8 scales. Within a half, value
    // 32·g + l (g = 0..4) takes its low 4 bits from nibble g / 2 of ql[l + 32·(g % 2)] and its
    // high 2 bits from bits 2g..2g + 2 of qh[l]; its scale is the one for its 16 values.
    for half in 0..2 {
        let ql = &ql[64 * half..64 * half + 64];
        let qh = &qh[32 * half..32 * half + 32];
        for group in 0..4 {
            let low_byte = &ql[32 * (group % 2)..32 * (group % 2) + 32];
            let low_shift = 4 * (group / 2);
            for l in 0..32 {
                let low = (low_byte[l] >> low_shift) & 0x0F;
                let high = (qh[l] >> (2 * group)) & 0x03;
                let q = i32::from(low | (high << 4)) - 32;
                let index = 128 * half + 32 * group + l;
                let scale = d * f32::from(scales[index / 16] as i8);
                values[index] = scale * q as f32;
            }
        }
    }
    out.extend_from_slice(&values);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f16_bytes(x: f32) -> [u8; 2] {
        f16::from_f32(x).to_bits().to_le_bytes()
    }

    /// Dequantises one block and checks the value count.
    fn decode(ggml_type: GgmlType, block: &[u8]) -> Vec<f32> {
        let n = ggml_type.block_size();
        let values = dequantize("test", ggml_type, block, n).expect("a valid block");
        assert_eq!(values.len(), n);
        values
    }

    #[test]
    fn plain_float_types() {
        let mut f32_bytes = Vec::new();
        for x in [1.5f32, -0.25, 3.0e7] {
            f32_bytes.extend_from_slice(&x.to_le_bytes());
        }
        assert_eq!(
            dequantize("t", GgmlType::F32, &f32_bytes, 3).unwrap(),
            [1.5, -0.25, 3.0e7]
        );
        // f16 0x3C00 = 1.0, 0xC000 = -2.0, 0x3555 ≈ 0.33325; bf16 0x3FC0 = 1.5, 0xC2F7 = -123.5.
        let f16_data = [0x00, 0x3C, 0x00, 0xC0, 0x55, 0x35];
        let v = dequantize("t", GgmlType::F16, &f16_data, 3).unwrap();
        assert_eq!(v[..2], [1.0, -2.0]);
        assert!((v[2] - 0.333_251_95).abs() < 1e-7);
        let bf16_data = [0xC0, 0x3F, 0xF7, 0xC2];
        assert_eq!(
            dequantize("t", GgmlType::BF16, &bf16_data, 2).unwrap(),
            [1.5, -123.5]
        );
    }

    #[test]
    fn q8_0_is_scale_times_signed_byte() {
        let d = 0.5f32;
        let mut block = f16_bytes(d).to_vec();
        let qs: Vec<i8> = (0..32).map(|i| (i * 8 - 128) as i8).collect();
        block.extend(qs.iter().map(|&q| q as u8));
        let values = decode(GgmlType::Q8_0, &block);
        for (i, v) in values.iter().enumerate() {
            assert_eq!(*v, f32::from(qs[i]) * d, "value {i}");
        }
        assert_eq!(values[0], -64.0);
    }

    #[test]
    fn q4_0_splits_low_then_high_nibbles() {
        let d = 0.25f32;
        let mut block = f16_bytes(d).to_vec();
        // Byte j holds value j in its low nibble (j) and value j + 16 in its high one (15 − j).
        block.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let values = decode(GgmlType::Q4_0, &block);
        for j in 0..16 {
            assert_eq!(values[j], (j as f32 - 8.0) * d, "value {j}");
            assert_eq!(
                values[j + 16],
                ((15 - j) as f32 - 8.0) * d,
                "value {}",
                j + 16
            );
        }
    }

    #[test]
    fn q4_1_adds_the_min() {
        let (d, m) = (0.125f32, -1.0f32);
        let mut block = f16_bytes(d).to_vec();
        block.extend(f16_bytes(m));
        block.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let values = decode(GgmlType::Q4_1, &block);
        for j in 0..16 {
            assert_eq!(values[j], j as f32 * d + m);
            assert_eq!(values[j + 16], (15 - j) as f32 * d + m);
        }
    }

    /// Packs eight 6-bit (scale, min) pairs the way ggml's K-quant quantisers do.
    fn pack_k_scales(scales: [u8; 8], mins: [u8; 8]) -> [u8; 12] {
        let mut packed = [0u8; 12];
        for j in 0..4 {
            packed[j] = scales[j] | ((scales[j + 4] >> 4) << 6);
            packed[j + 4] = mins[j] | ((mins[j + 4] >> 4) << 6);
            packed[j + 8] = (scales[j + 4] & 0x0F) | ((mins[j + 4] & 0x0F) << 4);
        }
        packed
    }

    const K_SCALES: [u8; 8] = [1, 7, 18, 33, 40, 51, 60, 63];
    const K_MINS: [u8; 8] = [63, 2, 29, 16, 5, 48, 0, 37];

    #[test]
    fn k_scale_min_unpacks_all_eight_pairs() {
        let packed = pack_k_scales(K_SCALES, K_MINS);
        for j in 0..8 {
            assert_eq!(
                k_scale_min(&packed, j),
                (K_SCALES[j], K_MINS[j]),
                "pair {j}"
            );
        }
    }

    /// The 4-bit quant of value i in the Q4_K/Q5_K tests: varied, and covering 0 and 15.
    fn nibble(i: usize) -> u8 {
        ((i * 7 + i / 32) % 16) as u8
    }

    /// Packs 256 4-bit quants in Q4_K order: chunk c of 32 bytes holds sub-blocks 2c (low
    /// nibbles) and 2c + 1 (high nibbles).
    fn pack_k_nibbles(q: impl Fn(usize) -> u8) -> Vec<u8> {
        let mut qs = vec![0u8; 128];
        for i in 0..256 {
            let (sub, l) = (i / 32, i % 32);
            qs[32 * (sub / 2) + l] |= q(i) << (4 * (sub % 2));
        }
        qs
    }

    /// The start of a Q4_K/Q5_K super-block: `d`, `dmin` and the packed [`K_SCALES`] and
    /// [`K_MINS`].
    fn k_block_header(d: f32, dmin: f32) -> Vec<u8> {
        let mut block = f16_bytes(d).to_vec();
        block.extend(f16_bytes(dmin));
        block.extend(pack_k_scales(K_SCALES, K_MINS));
        block
    }

    /// Checks every value of a super-block of `kind` whose header is `k_block_header(d,
    /// dmin)`: value i is `d · scale · quant(i) − dmin · min` with its sub-block's scale and
    /// min, `d` and `dmin` rounded to f16 as the block stores them.
    fn assert_k_values(
        kind: GgmlType,
        block: &[u8],
        d: f32,
        dmin: f32,
        quant: impl Fn(usize) -> u8,
    ) {
        let (d, dmin) = (f16::from_f32(d).to_f32(), f16::from_f32(dmin).to_f32());
        let values = decode(kind, block);
        for (i, v) in values.iter().enumerate() {
            let sub = i / 32;
            let expected =
                d * f32::from(K_SCALES[sub]) * f32::from(quant(i)) - dmin * f32::from(K_MINS[sub]);
            assert_eq!(*v, expected, "value {i}");
        }
    }

    #[test]
    fn q4_k_matches_the_formula() {
        let (d, dmin) = (0.01f32, 0.002f32);
        let mut block = k_block_header(d, dmin);
        block.extend(pack_k_nibbles(nibble));
        assert_k_values(GgmlType::Q4_K, &block, d, dmin, nibble);
    }

    #[test]
    fn q5_k_adds_a_fifth_bit() {
        let (d, dmin) = (0.03f32, 0.5f32);
        let fifth = |i: usize| (i * 5 + i / 64).is_multiple_of(3) as u8;
        let quant = |i: usize| nibble(i) | (fifth(i) << 4);
        let mut block = k_block_header(d, dmin);
        // qh[l] bit s is the fifth bit of value 32·s + l.
        let mut qh = [0u8; 32];
        for i in 0..256 {
            qh[i % 32] |= fifth(i) << (i / 32);
        }
        block.extend(qh);
        block.extend(pack_k_nibbles(nibble));
        assert_k_values(GgmlType::Q5_K, &block, d, dmin, quant);
        assert!((0..256).any(|i| quant(i) >= 16));
    }

    #[test]
    fn q6_k_matches_the_formula() {
        let d = 0.004f32;
        // 6-bit quants 0..64 (value q − 32) and signed scales, one per 16 values.
        let quant = |i: usize| ((i * 13 + i / 16) % 64) as u8;
        let scales: Vec<i8> = (0..16).map(|s| (s as i8 - 8) * 15).collect();
        let mut ql = [0u8; 128];
        let mut qh = [0u8; 64];
        for i in 0..256 {
            let (half, r) = (i / 128, i % 128);
            let (group, l) = (r / 32, r % 32);
            let q = quant(i);
            ql[64 * half + 32 * (group % 2) + l] |= (q & 0x0F) << (4 * (group / 2));
            qh[32 * half + l] |= (q >> 4) << (2 * group);
        }
        let mut block = ql.to_vec();
        block.extend(qh);
        block.extend(scales.iter().map(|&s| s as u8));
        block.extend(f16_bytes(d));
        let d = f16::from_f32(d).to_f32();
        let values = decode(GgmlType::Q6_K, &block);
        for (i, v) in values.iter().enumerate() {
            let expected = d * f32::from(scales[i / 16]) * (f32::from(quant(i)) - 32.0);
            assert_eq!(*v, expected, "value {i}");
        }
    }

    #[test]
    fn several_blocks_decode_in_order() {
        let mut data = Vec::new();
        for d in [1.0f32, 2.0] {
            data.extend(f16_bytes(d));
            data.extend([1u8; 32]);
        }
        let values = dequantize("t", GgmlType::Q8_0, &data, 64).unwrap();
        assert_eq!(values[..32], [1.0; 32]);
        assert_eq!(values[32..], [2.0; 32]);
    }

    #[test]
    fn unsupported_type_is_named_with_the_supported_list() {
        let err = dequantize("blk.0.ffn_up.weight", GgmlType::Q2_K, &[0; 84], 256).unwrap_err();
        assert_eq!(
            err.to_string(),
            "tensor blk.0.ffn_up.weight has type Q2_K (10), which fedsyn cannot dequantise; \
             supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K"
        );
    }

    #[test]
    fn wrong_sizes_are_rejected() {
        let err = dequantize("x", GgmlType::Q8_0, &[0; 33], 32).unwrap_err();
        assert!(matches!(
            err,
            ModelError::DataSize {
                expected_bytes: 34,
                actual_bytes: 33,
                ..
            }
        ));
        let err = dequantize("x", GgmlType::Q4_K, &[0; 144], 100).unwrap_err();
        assert!(matches!(
            err,
            ModelError::PartialBlock {
                block_size: 256,
                ..
            }
        ));
    }
}
