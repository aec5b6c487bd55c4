//! The ggml tensor data types and their block geometry.

use std::fmt;

/// A ggml tensor data type, with the numeric id it has in GGUF files.
///
/// Every type ggml defines is listed so that a file using any of them can be opened and its
/// tensors' sizes checked; only [`GgmlType::is_dequantisable`] ones can be turned into `f32`.
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    Q8_K,
    IQ2_XXS,
    IQ2_XS,
    IQ3_XXS,
    IQ1_S,
    IQ4_NL,
    IQ3_S,
    IQ2_S,
    IQ4_XS,
    I8,
    I16,
    I32,
    I64,
    F64,
    IQ1_M,
    BF16,
    TQ1_0,
    TQ2_0,
    MXFP4,
    NVFP4,
    Q1_0,
}

/// Id, name, values per block and bytes per block of every type, in one table so the three
/// cannot drift apart. Sizes follow ggml's `type_traits` (the `gguf` Python package agrees,
/// except for the never-stored runtime type Q8_1, whose current ggml block is 36 bytes).
const TYPE_TABLE: [(GgmlType, u32, &str, usize, usize); 34] = [
    (GgmlType::F32, 0, "F32", 1, 4),
    (GgmlType::F16, 1, "F16", 1, 2),
    (GgmlType::Q4_0, 2, "Q4_0", 32, 18),
    (GgmlType::Q4_1, 3, "Q4_1", 32, 20),
    (GgmlType::Q5_0, 6, "Q5_0", 32, 22),
    (GgmlType::Q5_1, 7, "Q5_1", 32, 24),
    (GgmlType::Q8_0, 8, "Q8_0", 32, 34),
    (GgmlType::Q8_1, 9, "Q8_1", 32, 36),
    (GgmlType::Q2_K, 10, "Q2_K", 256, 84),
    (GgmlType::Q3_K, 11, "Q3_K", 256, 110),
    (GgmlType::Q4_K, 12, "Q4_K", 256, 144),
    (GgmlType::Q5_K, 13, "Q5_K", 256, 176),
    (GgmlType::Q6_K, 14, "Q6_K", 256, 210),
    (GgmlType::Q8_K, 15, "Q8_K", 256, 292),
    (GgmlType::IQ2_XXS, 16, "IQ2_XXS", 256, 66),
    (GgmlType::IQ2_XS, 17, "IQ2_XS", 256, 74),
    (GgmlType::IQ3_XXS, 18, "IQ3_XXS", 256, 98),
    (GgmlType::IQ1_S, 19, "IQ1_S", 256, 50),
    (GgmlType::IQ4_NL, 20, "IQ4_NL", 32, 18),
    (GgmlType::IQ3_S, 21, "IQ3_S", 256, 110),
    (GgmlType::IQ2_S, 22, "IQ2_S", 256, 82),
    (GgmlType::IQ4_XS, 23, "IQ4_XS", 256, 136),
    (GgmlType::I8, 24, "I8", 1, 1),
    (GgmlType::I16, 25, "I16", 1, 2),
    (GgmlType::I32, 26, "I32", 1, 4),
    (GgmlType::I64, 27, "I64", 1, 8),
    (GgmlType::F64, 28, "F64", 1, 8),
    (GgmlType::IQ1_M, 29, "IQ1_M", 256, 56),
    (GgmlType::BF16, 30, "BF16", 1, 2),
    (GgmlType::TQ1_0, 34, "TQ1_0", 256, 54),
    (GgmlType::TQ2_0, 35, "TQ2_0", 256, 66),
    (GgmlType::MXFP4, 39, "MXFP4", 32, 17),
    (GgmlType::NVFP4, 40, "NVFP4", 64, 36),
    (GgmlType::Q1_0, 41, "Q1_0", 128, 18),
];

/// The types [`crate::gguf::dequantize`] can decode, in the order error messages list them.
pub const DEQUANTISABLE: [GgmlType; 9] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q8_0,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
];

impl GgmlType {
    /// The type with GGUF id `id`, or `None` for an id ggml does not (or no longer) define.
    pub fn from_id(id: u32) -> Option<GgmlType> {
        TYPE_TABLE.iter().find(|row| row.1 == id).map(|row| row.0)
    }

    fn row(self) -> &'static (GgmlType, u32, &'static str, usize, usize) {
        // Every variant has exactly one row; the unit test `table_covers_every_variant` checks it.
        TYPE_TABLE
            .iter()
            .find(|row| row.0 == self)
            .unwrap_or(&TYPE_TABLE[0])
    }

    /// The numeric id stored in GGUF files.
    pub fn id(self) -> u32 {
        self.row().1
    }

    /// The name ggml and llama.cpp print (`Q4_K`, `BF16`, …).
    pub fn name(self) -> &'static str {
        self.row().2
    }

    /// How many values one block encodes (1 for plain number types).
    pub fn block_size(self) -> usize {
        self.row().3
    }

    /// How many bytes one block occupies.
    pub fn type_size(self) -> usize {
        self.row().4
    }

    /// Bytes occupied by `n_values` values, or `None` when `n_values` is not a whole number of
    /// blocks (ggml requires every row to be) or the product overflows.
    pub fn bytes_for(self, n_values: u64) -> Option<u64> {
        let block = self.block_size() as u64;
        if !n_values.is_multiple_of(block) {
            return None;
        }
        (n_values / block).checked_mul(self.type_size() as u64)
    }

    /// Whether [`crate::gguf::dequantize`] can decode this type.
    pub fn is_dequantisable(self) -> bool {
        DEQUANTISABLE.contains(&self)
    }

    /// The dequantisable types as a comma-separated list, for error messages.
    pub fn dequantisable_list() -> String {
        DEQUANTISABLE
            .iter()
            .map(|t| t.name())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl fmt::Display for GgmlType {
    /// `Q2_K (10)`: the name and the id, as users see both in llama.cpp's output.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.id())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_covers_every_variant_once() {
        for (i, row) in TYPE_TABLE.iter().enumerate() {
            assert_eq!(row.0.id(), row.1, "{} has two rows", row.2);
            assert_eq!(GgmlType::from_id(row.1), Some(row.0));
            assert!(
                TYPE_TABLE[..i].iter().all(|other| other.1 != row.1),
                "id {} is listed twice",
                row.1
            );
        }
    }

    #[test]
    fn removed_ids_are_unknown() {
        // 4 and 5 were Q4_2/Q4_3, 31-33 and 36-38 the repacked ARM types: all removed from ggml.
        for id in [4, 5, 31, 32, 33, 36, 37, 38, 42, 1000] {
            assert_eq!(GgmlType::from_id(id), None, "id {id}");
        }
    }

    #[test]
    fn display_names_type_and_id() {
        assert_eq!(GgmlType::Q2_K.to_string(), "Q2_K (10)");
        assert_eq!(GgmlType::BF16.to_string(), "BF16 (30)");
    }

    #[test]
    fn bytes_for_rejects_partial_blocks() {
        assert_eq!(GgmlType::Q4_K.bytes_for(512), Some(288));
        assert_eq!(GgmlType::Q4_K.bytes_for(100), None);
        assert_eq!(GgmlType::F32.bytes_for(3), Some(12));
        assert_eq!(GgmlType::Q8_0.bytes_for(64), Some(68));
    }
}
