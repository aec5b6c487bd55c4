//! The binary form in which a server sends a round's candidate embeddings to its clients.
//!
//! ```text
//! offset size  field
//! 0      8     magic  b"FSCAND01"
//! 8      1     dtype: 1 = f32 LE, 2 = f16 LE (IEEE half)
//! 9      1     compression: 0 = none, 1 = deflate (zlib stream)
//! 10     2     reserved, 0
//! 12     8     round (u64 LE)
//! 20     4     rows  (u32 LE)  = J·K candidates, prompt-major
//! 24     4     dim   (u32 LE)  = embedding width
//! 28     8     clip  (f64 LE)
//! 36     32    SHA-256 of the uncompressed value bytes (rows·dim·sizeof(dtype))
//! 68     …     value bytes (compressed when compression = 1)
//! ```
//!
//! The server encodes each round's matrix once and serves the same bytes to every sampled
//! client. The client trusts nothing in them: [`decode_candidates`] checks every field, bounds
//! the size before allocating (a hostile header cannot make it reserve more than
//! [`MAX_VALUES`] values, and a compressed stream is never inflated past the size its header
//! promises), verifies the checksum and rejects non-finite values.

use std::io::{Read, Write};

use flate2::read::ZlibDecoder;
use flate2::write::ZlibEncoder;
use flate2::Compression;
use half::f16;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{ProtocolError, Result};

/// The first eight bytes of every candidate message; the digits are the format version.
pub const MAGIC: &[u8; 8] = b"FSCAND01";
/// The length of the fixed header before the value bytes.
pub const HEADER_LEN: usize = 68;
/// The most values (rows · dim) a message may hold: 2²⁸, 1 GiB as f32.
pub const MAX_VALUES: usize = 1 << 28;

const COMPRESSION_NONE: u8 = 0;
const COMPRESSION_DEFLATE: u8 = 1;

/// How the embedding values are stored on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum EmbeddingDtype {
    /// IEEE single precision, 4 bytes a value: exact.
    F32,
    /// IEEE half precision, 2 bytes a value: relative error ≤ 2⁻¹¹, plenty for cosine scores
    /// of unit vectors.
    F16,
}

impl EmbeddingDtype {
    /// The bytes one value takes.
    pub fn size(self) -> usize {
        match self {
            EmbeddingDtype::F32 => 4,
            EmbeddingDtype::F16 => 2,
        }
    }

    fn code(self) -> u8 {
        match self {
            EmbeddingDtype::F32 => 1,
            EmbeddingDtype::F16 => 2,
        }
    }

    fn from_code(code: u8) -> Option<EmbeddingDtype> {
        match code {
            1 => Some(EmbeddingDtype::F32),
            2 => Some(EmbeddingDtype::F16),
            _ => None,
        }
    }
}

/// A round's candidate embeddings and the clip bound the clients apply to their scores.
#[derive(Debug, Clone, PartialEq)]
pub struct CandidateMatrix {
    /// The round the candidates belong to.
    pub round: u64,
    /// The L2 bound on each client's score vector.
    pub clip: f64,
    /// The number of candidates (J·K, prompt-major).
    pub rows: usize,
    /// The embedding width.
    pub dim: usize,
    /// The embeddings, row-major, `rows × dim`.
    pub values: Vec<f32>,
}

/// The wire form of `matrix`, its values stored as `dtype` and deflated when `compress`.
///
/// # Panics
/// When `matrix.values` does not hold `rows × dim` values or its shape does not fit the
/// header's u32 fields: a bug in the caller, never a property of received data.
pub fn encode_candidates(
    matrix: &CandidateMatrix,
    dtype: EmbeddingDtype,
    compress: bool,
) -> Vec<u8> {
    assert_eq!(
        Some(matrix.values.len()),
        matrix.rows.checked_mul(matrix.dim),
        "a candidate matrix must hold rows × dim values"
    );
    let rows = u32::try_from(matrix.rows).expect("candidate rows must fit in u32");
    let dim = u32::try_from(matrix.dim).expect("embedding width must fit in u32");
    let value_bytes = value_bytes(&matrix.values, dtype);
    let checksum: [u8; 32] = Sha256::digest(&value_bytes).into();

    let mut out = Vec::with_capacity(HEADER_LEN + value_bytes.len());
    out.extend_from_slice(MAGIC);
    out.push(dtype.code());
    out.push(if compress {
        COMPRESSION_DEFLATE
    } else {
        COMPRESSION_NONE
    });
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&matrix.round.to_le_bytes());
    out.extend_from_slice(&rows.to_le_bytes());
    out.extend_from_slice(&dim.to_le_bytes());
    out.extend_from_slice(&matrix.clip.to_le_bytes());
    out.extend_from_slice(&checksum);
    if compress {
        let mut encoder = ZlibEncoder::new(out, Compression::default());
        encoder
            .write_all(&value_bytes)
            .expect("writing into a Vec cannot fail");
        encoder.finish().expect("writing into a Vec cannot fail")
    } else {
        out.extend_from_slice(&value_bytes);
        out
    }
}

/// The values as little-endian bytes of `dtype`.
fn value_bytes(values: &[f32], dtype: EmbeddingDtype) -> Vec<u8> {
    match dtype {
        EmbeddingDtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        EmbeddingDtype::F16 => values
            .iter()
            .flat_map(|&v| f16::from_f32(v).to_le_bytes())
            .collect(),
    }
}

/// The candidate matrix in `bytes` (a message from [`encode_candidates`]).
///
/// Errors, naming the field, when the magic, dtype, compression or reserved bytes are not the
/// ones defined above, when rows or dim is 0 or rows · dim exceeds [`MAX_VALUES`], when the
/// clip bound is not a positive finite number, when the value bytes are truncated, too long,
/// not a valid zlib stream or fail the checksum, or when a value is NaN or infinite.
pub fn decode_candidates(bytes: &[u8]) -> Result<CandidateMatrix> {
    let header = Header::parse(bytes)?;
    let payload = &bytes[HEADER_LEN..];
    let expected_len = header.values * header.dtype.size();
    let value_bytes = if header.compressed {
        inflate_exactly(payload, expected_len)?
    } else if payload.len() == expected_len {
        payload.to_vec()
    } else {
        return Err(bad(
            "value bytes",
            format!(
                "{} bytes follow the header, but rows × dim × {} = {expected_len}",
                payload.len(),
                header.dtype.size()
            ),
        ));
    };
    let checksum: [u8; 32] = Sha256::digest(&value_bytes).into();
    if checksum != header.checksum {
        return Err(bad(
            "checksum",
            "the SHA-256 of the value bytes does not match the header: the message was corrupted \
             in transit"
                .to_string(),
        ));
    }
    let values = parse_values(&value_bytes, header.dtype)?;
    Ok(CandidateMatrix {
        round: header.round,
        clip: header.clip,
        rows: header.rows,
        dim: header.dim,
        values,
    })
}

/// The checked fixed-size header.
struct Header {
    dtype: EmbeddingDtype,
    compressed: bool,
    round: u64,
    rows: usize,
    dim: usize,
    /// rows · dim, ≤ [`MAX_VALUES`].
    values: usize,
    clip: f64,
    checksum: [u8; 32],
}

impl Header {
    fn parse(bytes: &[u8]) -> Result<Header> {
        let Some(header) = bytes.get(..HEADER_LEN) else {
            return Err(bad(
                "header",
                format!(
                    "the message has {} bytes, fewer than the {HEADER_LEN}-byte header",
                    bytes.len()
                ),
            ));
        };
        let field = |at: usize, len: usize| &header[at..at + len];
        let u32_at = |at: usize| u32::from_le_bytes(field(at, 4).try_into().expect("4 bytes"));
        let u64_at = |at: usize| u64::from_le_bytes(field(at, 8).try_into().expect("8 bytes"));

        if field(0, 8) != MAGIC {
            return Err(bad(
                "magic",
                format!(
                    "the message starts with {:?}, not {:?}: not a fedsyn candidate message, or \
                     a newer format version",
                    String::from_utf8_lossy(field(0, 8)),
                    String::from_utf8_lossy(MAGIC)
                ),
            ));
        }
        let dtype = EmbeddingDtype::from_code(header[8]).ok_or_else(|| {
            bad(
                "dtype",
                format!("code {} is neither 1 (f32) nor 2 (f16)", header[8]),
            )
        })?;
        let compressed = match header[9] {
            COMPRESSION_NONE => false,
            COMPRESSION_DEFLATE => true,
            code => {
                return Err(bad(
                    "compression",
                    format!("code {code} is neither 0 (none) nor 1 (deflate)"),
                ))
            }
        };
        if field(10, 2) != [0, 0] {
            return Err(bad("reserved", "bytes 10..12 must be 0".to_string()));
        }
        let rows = u32_at(20) as usize;
        let dim = u32_at(24) as usize;
        if rows == 0 || dim == 0 {
            return Err(bad(
                "rows/dim",
                format!("{rows} rows × {dim} columns; both must be at least 1"),
            ));
        }
        let values = rows
            .checked_mul(dim)
            .filter(|&n| n <= MAX_VALUES)
            .ok_or_else(|| {
                bad(
                    "rows/dim",
                    format!("{rows} rows × {dim} columns exceed the limit of {MAX_VALUES} values"),
                )
            })?;
        let clip = f64::from_le_bytes(field(28, 8).try_into().expect("8 bytes"));
        if !(clip.is_finite() && clip > 0.0) {
            return Err(bad(
                "clip",
                format!("{clip} is not a positive finite number"),
            ));
        }
        Ok(Header {
            dtype,
            compressed,
            round: u64_at(12),
            rows,
            dim,
            values,
            clip,
            checksum: field(36, 32).try_into().expect("32 bytes"),
        })
    }
}

/// Inflates the zlib stream `compressed`, which must hold exactly `expected_len` bytes and
/// nothing after its end. Never inflates more than `expected_len + 1` bytes, so a small
/// hostile stream cannot expand into an unbounded allocation.
fn inflate_exactly(compressed: &[u8], expected_len: usize) -> Result<Vec<u8>> {
    let mut decoder = ZlibDecoder::new(compressed);
    let mut out = Vec::new();
    (&mut decoder)
        .take(expected_len as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| {
            bad(
                "value bytes",
                format!("not a valid zlib stream ({e}): the message was truncated or corrupted"),
            )
        })?;
    if out.len() != expected_len {
        return Err(bad(
            "value bytes",
            format!(
                "the zlib stream inflates to {}{} bytes, but rows × dim × value size = \
                 {expected_len}",
                if out.len() > expected_len {
                    "more than "
                } else {
                    ""
                },
                out.len().min(expected_len)
            ),
        ));
    }
    // The stream must also end here: a complete stream consumes every byte of the payload.
    let mut probe = [0u8; 1];
    let extra = decoder.read(&mut probe).map_err(|e| {
        bad(
            "value bytes",
            format!("not a valid zlib stream ({e}): the message was truncated or corrupted"),
        )
    })?;
    if extra != 0 || decoder.total_in() != compressed.len() as u64 {
        return Err(bad(
            "value bytes",
            "bytes follow the end of the zlib stream".to_string(),
        ));
    }
    Ok(out)
}

/// The values in `bytes` (little-endian `dtype`), as f32; errors at the first non-finite one.
fn parse_values(bytes: &[u8], dtype: EmbeddingDtype) -> Result<Vec<f32>> {
    let values: Vec<f32> = match dtype {
        EmbeddingDtype::F32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        EmbeddingDtype::F16 => bytes
            .chunks_exact(2)
            .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
    };
    match values.iter().position(|v| !v.is_finite()) {
        None => Ok(values),
        Some(index) => Err(bad(
            "values",
            format!(
                "value {index} is {}; candidate embeddings must be finite",
                values[index]
            ),
        )),
    }
}

fn bad(field: &'static str, problem: String) -> ProtocolError {
    ProtocolError::BadCandidates { field, problem }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A matrix of `rows × dim` values of both signs and varied magnitudes in [-1, 1].
    fn matrix(rows: usize, dim: usize) -> CandidateMatrix {
        let values = (0..rows * dim)
            .map(|i| ((i as f32 * 0.618_034).fract() * 2.0 - 1.0) * (1.0 + (i % 7) as f32) / 8.0)
            .collect();
        CandidateMatrix {
            round: 3,
            clip: 1.5,
            rows,
            dim,
            values,
        }
    }

    fn field_of(error: ProtocolError) -> &'static str {
        match error {
            ProtocolError::BadCandidates { field, .. } => field,
            other => panic!("expected BadCandidates, got {other:?}"),
        }
    }

    #[test]
    fn f32_round_trips_exactly_compressed_or_not() {
        let m = matrix(12, 5);
        for compress in [false, true] {
            let bytes = encode_candidates(&m, EmbeddingDtype::F32, compress);
            assert_eq!(decode_candidates(&bytes).unwrap(), m);
        }
        let plain = encode_candidates(&m, EmbeddingDtype::F32, false);
        assert_eq!(plain.len(), HEADER_LEN + 12 * 5 * 4);
        assert_eq!(&plain[..8], MAGIC);
    }

    #[test]
    fn f16_round_trips_within_half_precision() {
        let m = matrix(40, 6);
        for compress in [false, true] {
            let decoded =
                decode_candidates(&encode_candidates(&m, EmbeddingDtype::F16, compress)).unwrap();
            assert_eq!((decoded.round, decoded.rows, decoded.dim), (3, 40, 6));
            assert_eq!(decoded.clip, 1.5);
            for (got, want) in decoded.values.iter().zip(&m.values) {
                // Round to nearest: half a unit in the last of 11 significant bits.
                assert!((got - want).abs() <= want.abs() * 2f32.powi(-11) + 1e-7);
            }
        }
        let plain = encode_candidates(&m, EmbeddingDtype::F16, false);
        assert_eq!(plain.len(), HEADER_LEN + 40 * 6 * 2);
    }

    #[test]
    fn dtype_serialises_as_lowercase_names() {
        assert_eq!(
            serde_json::to_string(&EmbeddingDtype::F16).unwrap(),
            "\"f16\""
        );
        let parsed: EmbeddingDtype = serde_json::from_str("\"f32\"").unwrap();
        assert_eq!(parsed, EmbeddingDtype::F32);
    }

    #[test]
    fn every_corrupted_header_field_is_rejected_by_name() {
        let good = encode_candidates(&matrix(4, 3), EmbeddingDtype::F32, false);
        let corrupt = |at: usize, bytes: &[u8]| {
            let mut bad = good.clone();
            bad[at..at + bytes.len()].copy_from_slice(bytes);
            field_of(decode_candidates(&bad).unwrap_err())
        };
        assert_eq!(corrupt(0, b"FSCAND02"), "magic");
        assert_eq!(corrupt(8, &[0]), "dtype");
        assert_eq!(corrupt(8, &[3]), "dtype");
        assert_eq!(corrupt(9, &[2]), "compression");
        assert_eq!(corrupt(10, &[0, 1]), "reserved");
        assert_eq!(corrupt(20, &0u32.to_le_bytes()), "rows/dim");
        assert_eq!(corrupt(24, &0u32.to_le_bytes()), "rows/dim");
        assert_eq!(corrupt(28, &0f64.to_le_bytes()), "clip");
        assert_eq!(corrupt(28, &(-1f64).to_le_bytes()), "clip");
        assert_eq!(corrupt(28, &f64::NAN.to_le_bytes()), "clip");
        assert_eq!(corrupt(28, &f64::INFINITY.to_le_bytes()), "clip");
        assert_eq!(corrupt(36, &[0xff]), "checksum");
        assert_eq!(corrupt(HEADER_LEN + 1, &[0x55]), "checksum");
        // A header claiming more rows than the bytes that follow: a size mismatch.
        assert_eq!(corrupt(20, &5u32.to_le_bytes()), "value bytes");
        // f16 claimed over f32 bytes: twice as many bytes as expected.
        assert_eq!(corrupt(8, &[2]), "value bytes");
        assert_eq!(
            field_of(decode_candidates(&good[..HEADER_LEN - 1]).unwrap_err()),
            "header"
        );
        assert_eq!(field_of(decode_candidates(&[]).unwrap_err()), "header");
    }

    #[test]
    fn a_hostile_size_is_refused_before_anything_is_allocated() {
        let mut bytes = encode_candidates(&matrix(4, 3), EmbeddingDtype::F16, true);
        bytes[20..24].copy_from_slice(&u32::MAX.to_le_bytes());
        bytes[24..28].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(field_of(decode_candidates(&bytes).unwrap_err()), "rows/dim");
        // Exactly one value over the limit.
        bytes[20..24].copy_from_slice(&((MAX_VALUES / 2 + 1) as u32).to_le_bytes());
        bytes[24..28].copy_from_slice(&2u32.to_le_bytes());
        assert_eq!(field_of(decode_candidates(&bytes).unwrap_err()), "rows/dim");
    }

    #[test]
    fn a_stream_inflating_past_its_header_is_stopped_there() {
        // 1 MiB of zeros deflates to about 1 KiB; the header claims 4 × 3 f32 values.
        let mut bytes = encode_candidates(&matrix(4, 3), EmbeddingDtype::F32, false);
        bytes.truncate(HEADER_LEN);
        bytes[9] = COMPRESSION_DEFLATE;
        let mut encoder = ZlibEncoder::new(bytes, Compression::default());
        encoder.write_all(&vec![0u8; 1 << 20]).unwrap();
        let bytes = encoder.finish().unwrap();
        let error = decode_candidates(&bytes).unwrap_err();
        assert!(error.to_string().contains("more than 48"), "{error}");
    }

    #[test]
    fn truncated_or_extended_payloads_are_rejected() {
        for compress in [false, true] {
            let good = encode_candidates(&matrix(30, 4), EmbeddingDtype::F16, compress);
            for bad in [
                good[..good.len() - 1].to_vec(),
                good[..HEADER_LEN + 3].to_vec(),
                good[..HEADER_LEN].to_vec(),
                [good.as_slice(), &[0]].concat(),
            ] {
                assert_eq!(
                    field_of(decode_candidates(&bad).unwrap_err()),
                    "value bytes"
                );
            }
        }
        // A corrupted byte inside the zlib stream: invalid stream or wrong checksum.
        let mut flipped = encode_candidates(&matrix(30, 4), EmbeddingDtype::F16, true);
        let middle = HEADER_LEN + (flipped.len() - HEADER_LEN) / 2;
        flipped[middle] ^= 0x20;
        let field = field_of(decode_candidates(&flipped).unwrap_err());
        assert!(field == "value bytes" || field == "checksum", "{field}");
    }

    #[test]
    fn non_finite_values_are_rejected_even_with_a_valid_checksum() {
        for (dtype, bad) in [
            (EmbeddingDtype::F32, f32::NAN),
            (EmbeddingDtype::F32, f32::NEG_INFINITY),
            (EmbeddingDtype::F16, f32::NAN),
            // Finite in f32 but beyond f16's range: infinite once encoded.
            (EmbeddingDtype::F16, 1e6),
        ] {
            let mut m = matrix(3, 3);
            m.values[4] = bad;
            let error = decode_candidates(&encode_candidates(&m, dtype, true)).unwrap_err();
            assert!(error.to_string().contains("value 4"), "{error}");
            assert_eq!(field_of(error), "values");
        }
    }
}
