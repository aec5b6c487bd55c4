//! Round trips through the test writer, and the reader's errors on broken files.

use half::f16;

use super::test_writer::GgufWriter;
use super::*;

fn string(s: &str) -> GgufValue {
    GgufValue::String(s.to_string())
}

fn array(element_type: ValueType, items: Vec<GgufValue>) -> GgufValue {
    GgufValue::Array {
        element_type,
        items,
    }
}

/// One metadata entry of every value type, nested and empty arrays included.
fn every_value_type() -> Vec<(&'static str, GgufValue)> {
    vec![
        ("general.architecture", string("llama")),
        ("t.u8", GgufValue::U8(200)),
        ("t.i8", GgufValue::I8(-100)),
        ("t.u16", GgufValue::U16(60_000)),
        ("t.i16", GgufValue::I16(-30_000)),
        ("t.u32", GgufValue::U32(4_000_000_000)),
        ("t.i32", GgufValue::I32(-2_000_000_000)),
        ("t.f32", GgufValue::F32(1.0e-5)),
        ("t.bool", GgufValue::Bool(true)),
        ("t.string", string("héllo\nwörld")),
        ("t.u64", GgufValue::U64(u64::MAX)),
        ("t.i64", GgufValue::I64(i64::MIN)),
        ("t.f64", GgufValue::F64(-2.5e300)),
        (
            "t.tokens",
            array(
                ValueType::String,
                vec![string("<s>"), string("Ġt"), string("")],
            ),
        ),
        (
            "t.token_type",
            array(ValueType::I32, vec![GgufValue::I32(3), GgufValue::I32(1)]),
        ),
        (
            "t.scores",
            array(ValueType::F32, vec![GgufValue::F32(-1.5)]),
        ),
        ("t.empty", array(ValueType::U64, vec![])),
        (
            "t.nested",
            array(
                ValueType::Array,
                vec![
                    array(ValueType::U8, vec![GgufValue::U8(1), GgufValue::U8(2)]),
                    array(ValueType::String, vec![string("x")]),
                ],
            ),
        ),
    ]
}

fn q8_0_block(d: f32, q: i8) -> Vec<u8> {
    let mut block = f16::from_f32(d).to_bits().to_le_bytes().to_vec();
    block.extend([q as u8; 32]);
    block
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn sample_writer(version: u32) -> GgufWriter {
    let mut writer = GgufWriter::new(version);
    for (key, value) in every_value_type() {
        writer = writer.kv(key, value);
    }
    let norm: Vec<f32> = (0..5).map(|i| i as f32 * 0.5 - 1.0).collect();
    let mut q8 = q8_0_block(0.5, -3);
    q8.extend(q8_0_block(2.0, 7));
    writer
        .tensor("norm.weight", &[5], GgmlType::F32, f32_bytes(&norm))
        .tensor("proj.weight", &[32, 2], GgmlType::Q8_0, q8)
        .tensor("scalar", &[], GgmlType::F32, f32_bytes(&[42.0]))
}

#[test]
fn round_trip_of_header_metadata_and_tensors() {
    for version in [2, 3] {
        let writer = sample_writer(version);
        let gguf = GgufFile::from_bytes(writer.build(), "sample.gguf").expect("a valid file");
        assert_eq!(gguf.version(), version);
        assert_eq!(gguf.alignment(), DEFAULT_ALIGNMENT);
        assert_eq!(gguf.data_start() % DEFAULT_ALIGNMENT, 0);

        let expected = every_value_type();
        assert_eq!(gguf.metadata().len(), expected.len());
        for ((key, value), (want_key, want_value)) in gguf.metadata().iter().zip(&expected) {
            assert_eq!(key, want_key);
            assert_eq!(value, want_value, "value of {key}");
        }

        let names: Vec<_> = gguf.tensors().iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["norm.weight", "proj.weight", "scalar"]);
        let offsets: Vec<_> = gguf.tensors().iter().map(|t| t.offset).collect();
        assert_eq!(offsets, writer.offsets());
        let proj = gguf.tensor("proj.weight").unwrap();
        assert_eq!(proj.dims, [32, 2]);
        assert_eq!(proj.shape(), [2, 32]);
        assert_eq!(proj.byte_size(), 68);

        assert_eq!(
            gguf.dequantize("norm.weight").unwrap(),
            [-1.0, -0.5, 0.0, 0.5, 1.0]
        );
        let proj_values = gguf.dequantize("proj.weight").unwrap();
        assert_eq!(proj_values[..32], [-1.5; 32]);
        assert_eq!(proj_values[32..], [14.0; 32]);
        assert_eq!(gguf.dequantize("scalar").unwrap(), [42.0]);
    }
}

#[test]
fn typed_accessors_widen_and_name_keys() {
    let gguf = GgufFile::from_bytes(sample_writer(3).build(), "sample.gguf").unwrap();
    assert_eq!(gguf.metadata_str("general.architecture").unwrap(), "llama");
    assert_eq!(gguf.metadata_u32("t.u8").unwrap(), 200);
    assert_eq!(gguf.metadata_u32("t.u32").unwrap(), 4_000_000_000);
    assert_eq!(gguf.metadata_u64("t.u64").unwrap(), u64::MAX);
    assert_eq!(gguf.metadata_i64("t.i16").unwrap(), -30_000);
    assert_eq!(gguf.metadata_f32("t.f32").unwrap(), 1.0e-5);
    assert_eq!(gguf.metadata_f64("t.f64").unwrap(), -2.5e300);
    assert!(gguf.metadata_bool("t.bool").unwrap());
    assert_eq!(
        gguf.metadata_array_str("t.tokens").unwrap(),
        ["<s>", "Ġt", ""]
    );
    assert_eq!(gguf.metadata_array_i64("t.token_type").unwrap(), [3, 1]);
    assert_eq!(gguf.metadata_array_f32("t.scores").unwrap(), [-1.5]);
    assert!(gguf.metadata_array("t.empty").unwrap().is_empty());
    assert_eq!(gguf.metadata_array("t.nested").unwrap().len(), 2);

    let missing = gguf.metadata_u32("llama.block_count").unwrap_err();
    assert_eq!(
        missing.to_string(),
        "sample.gguf has no metadata key `llama.block_count`"
    );
    let negative = gguf.metadata_u32("t.i32").unwrap_err();
    assert_eq!(
        negative.to_string(),
        "metadata key `t.i32` in sample.gguf holds i32 -2000000000, but an integer in the u32 \
         range was expected"
    );
    assert!(matches!(
        gguf.metadata_array_str("t.token_type"),
        Err(ModelError::WrongType { .. })
    ));
    assert!(matches!(
        gguf.metadata_str("t.u8"),
        Err(ModelError::WrongType { .. })
    ));
    let no_tensor = gguf.dequantize("output.weight").unwrap_err();
    assert_eq!(
        no_tensor.to_string(),
        "sample.gguf has no tensor named `output.weight`"
    );
}

#[test]
fn custom_alignment_moves_the_data_section() {
    let bytes = GgufWriter::new(3)
        .kv(ALIGNMENT_KEY, GgufValue::U32(256))
        .tensor("a", &[3], GgmlType::F32, f32_bytes(&[1.0, 2.0, 3.0]))
        .tensor("b", &[2], GgmlType::F32, f32_bytes(&[4.0, 5.0]))
        .build();
    let gguf = GgufFile::from_bytes(bytes, "aligned.gguf").unwrap();
    assert_eq!(gguf.alignment(), 256);
    assert_eq!(gguf.data_start(), 256);
    assert_eq!(gguf.tensor("b").unwrap().offset, 256);
    assert_eq!(gguf.dequantize("b").unwrap(), [4.0, 5.0]);
}

#[test]
fn every_truncation_is_an_error_not_a_panic() {
    let bytes = sample_writer(3).build();
    for len in 0..bytes.len() {
        let result = GgufFile::from_bytes(bytes[..len].to_vec(), "cut.gguf");
        assert!(result.is_err(), "a file cut to {len} bytes was accepted");
    }
}

#[test]
fn wrong_magic_and_versions_are_named() {
    let mut bytes = sample_writer(3).build();
    bytes[..4].copy_from_slice(b"GGML");
    let err = GgufFile::from_bytes(bytes, "old.bin").unwrap_err();
    assert!(err.to_string().starts_with("old.bin is not a GGUF file"));

    let err = GgufFile::from_bytes(sample_writer(1).build(), "v1.gguf").unwrap_err();
    assert!(matches!(
        err,
        ModelError::UnsupportedVersion { version: 1, .. }
    ));

    let mut big_endian = sample_writer(3).build();
    big_endian[4..8].copy_from_slice(&3u32.to_be_bytes());
    let err = GgufFile::from_bytes(big_endian, "be.gguf").unwrap_err();
    assert!(err.to_string().contains("big-endian"), "{err}");
}

#[test]
fn corrupt_structures_are_rejected() {
    let unsupported = GgufWriter::new(3)
        .tensor("w", &[256], GgmlType::Q2_K, vec![0; 84])
        .build();
    let gguf = GgufFile::from_bytes(unsupported, "q2k.gguf").unwrap();
    let err = gguf.dequantize("w").unwrap_err();
    assert!(err.to_string().starts_with(
        "tensor w has type Q2_K (10), which fedsyn cannot dequantise; supported: F32"
    ));

    let partial_row = GgufWriter::new(3)
        .tensor("w", &[16, 2], GgmlType::Q8_0, vec![0; 34])
        .build();
    let err = GgufFile::from_bytes(partial_row, "rows.gguf").unwrap_err();
    assert!(
        err.to_string()
            .contains("not a multiple of the Q8_0 block size 32"),
        "{err}"
    );

    let mut past_end = GgufWriter::new(3)
        .tensor("w", &[4], GgmlType::F32, f32_bytes(&[1.0; 4]))
        .build();
    past_end.truncate(past_end.len() - 1);
    let err = GgufFile::from_bytes(past_end, "short.gguf").unwrap_err();
    assert!(err.to_string().contains("tensor `w`"), "{err}");

    let bad_alignment = GgufWriter::new(3)
        .kv(ALIGNMENT_KEY, GgufValue::U32(24))
        .build();
    let err = GgufFile::from_bytes(bad_alignment, "a.gguf").unwrap_err();
    assert!(err.to_string().contains("power of two"), "{err}");

    let duplicate = GgufWriter::new(3)
        .kv("k", GgufValue::U8(1))
        .kv("k", GgufValue::U8(2))
        .build();
    let err = GgufFile::from_bytes(duplicate, "dup.gguf").unwrap_err();
    assert!(err.to_string().contains("`k` appears twice"), "{err}");
}

#[test]
fn huge_counts_fail_before_allocating() {
    let mut bytes = GgufWriter::new(3)
        .kv("t", array(ValueType::U64, vec![GgufValue::U64(1)]))
        .build();
    // The array count sits after magic, version, two counts, the key and the two type ids.
    let count_at = 4 + 4 + 8 + 8 + (8 + 1) + 4 + 4;
    bytes[count_at..count_at + 8].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
    let err = GgufFile::from_bytes(bytes, "huge.gguf").unwrap_err();
    assert!(matches!(err, ModelError::Truncated { .. }), "{err}");
}

#[test]
fn open_reads_a_file_from_disk() {
    let path = std::env::temp_dir().join(format!("fedsyn-gguf-{}.gguf", std::process::id()));
    std::fs::write(&path, sample_writer(3).build()).unwrap();
    let opened = GgufFile::open(&path);
    std::fs::remove_file(&path).unwrap();
    let gguf = opened.unwrap();
    assert_eq!(gguf.path(), Some(path.as_path()));
    assert_eq!(gguf.dequantize("scalar").unwrap(), [42.0]);

    let err = GgufFile::open(path.with_extension("missing")).unwrap_err();
    assert!(matches!(err, ModelError::Io { .. }));
}
