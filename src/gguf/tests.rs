use super::*;
use crate::quant::GgmlType;

fn sample_file() -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.set("general.architecture", Value::String("llama".into()))
        .set("llama.block_count", Value::U32(2))
        .set("some.f32", Value::F32(1.5))
        .set("some.bool", Value::Bool(true))
        .set("some.i64", Value::I64(-7))
        .set("tokens", Value::string_array(["a", "b", "c"]))
        .set(
            "nested",
            Value::Array(
                ValueType::Array,
                vec![
                    Value::Array(ValueType::U8, vec![Value::U8(1), Value::U8(2)]),
                    Value::Array(ValueType::U8, vec![]),
                ],
            ),
        );
    w.add_tensor("a", &[4, 2], GgmlType::F32, vec![7u8; 32]);
    w.add_tensor("b", &[32], GgmlType::Q8_0, vec![9u8; 34]);
    let mut out = Vec::new();
    w.write(&mut out).unwrap();
    out
}

#[test]
fn round_trips_metadata_and_tensors() {
    let f = GgufFile::from_bytes("mem.gguf", sample_file()).unwrap();
    assert_eq!(f.version, 3);
    assert_eq!(f.str("general.architecture").unwrap(), "llama");
    assert_eq!(f.u64("llama.block_count").unwrap(), 2);
    assert_eq!(f.f32_or("some.f32", 0.0).unwrap(), 1.5);
    assert_eq!(f.get("some.bool").unwrap().as_bool(), Some(true));
    assert_eq!(f.get("some.i64").unwrap().as_i64(), Some(-7));
    assert_eq!(f.array("tokens").unwrap().len(), 3);
    let nested = f.array("nested").unwrap();
    assert_eq!(nested[0].as_array().unwrap().len(), 2);
    assert!(nested[1].as_array().unwrap().is_empty());
    let a = f.tensor("a").unwrap();
    assert_eq!((a.row_len(), a.n_rows(), a.n_bytes), (4, 2, 32));
    assert!(f.tensor_data(a).iter().all(|&b| b == 7));
    let b = f.tensor("b").unwrap();
    assert_eq!(b.offset % 32, 0);
    assert!(f.tensor_data(b).iter().all(|&b| b == 9));
    assert!(f
        .u64("missing")
        .unwrap_err()
        .to_string()
        .contains("'missing' is missing"));
    assert!(f.u64("some.f32").is_err());
}

#[test]
fn every_truncation_is_a_clean_error() {
    let bytes = sample_file();
    let full = GgufFile::from_bytes("x", bytes.clone()).unwrap();
    let b = full.tensor("b").unwrap();
    // Trailing padding after the last tensor may go; anything more is missing data.
    let needed = (full.data_offset + b.offset + b.n_bytes) as usize;
    assert!(GgufFile::from_bytes("x", bytes[..needed].to_vec()).is_ok());
    for len in 0..needed {
        let err = GgufFile::from_bytes("cut.gguf", bytes[..len].to_vec());
        assert!(err.is_err(), "truncated at {len} parsed");
        assert!(err.err().unwrap().to_string().contains("cut.gguf"));
    }
}

#[test]
fn every_flipped_header_byte_is_handled() {
    let bytes = sample_file();
    let header_len = GgufFile::from_bytes("x", bytes.clone())
        .unwrap()
        .data_offset as usize;
    for i in 0..header_len {
        for flip in [0x01u8, 0x80, 0xff] {
            let mut b = bytes.clone();
            b[i] ^= flip;
            // Either a clean error or a file that still parses; never a panic.
            let _ = GgufFile::from_bytes("flip.gguf", b);
        }
    }
}

fn patch_u64(bytes: &mut [u8], at: usize, v: u64) {
    bytes[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

#[test]
fn absurd_counts_are_refused_without_allocating() {
    let bytes = sample_file();
    for at in [8usize, 16] {
        for v in [u64::MAX, u64::MAX / 2, 1 << 40] {
            let mut b = bytes.clone();
            patch_u64(&mut b, at, v);
            let msg = GgufFile::from_bytes("big.gguf", b)
                .err()
                .unwrap()
                .to_string();
            assert!(
                msg.contains("cannot fit") || msg.contains("ends early"),
                "{msg}"
            );
        }
    }
    // The first key's string length.
    let mut b = bytes.clone();
    patch_u64(&mut b, 24, u64::MAX);
    assert!(GgufFile::from_bytes("s.gguf", b).is_err());
}

#[test]
fn header_errors_name_the_problem() {
    let mut b = sample_file();
    b[0] = b'X';
    let e = GgufFile::from_bytes("m.gguf", b).err().unwrap().to_string();
    assert!(e.contains("not a GGUF file"), "{e}");
    let mut b = sample_file();
    b[4] = 9;
    let e = GgufFile::from_bytes("v.gguf", b).err().unwrap().to_string();
    assert!(e.contains("unsupported GGUF version 9"), "{e}");
}

fn tensor_table_offset(bytes: &[u8]) -> usize {
    // The tensor table starts right after the last metadata value; find "a" info by its name.
    let needle = [1u8, 0, 0, 0, 0, 0, 0, 0, b'a', 2, 0, 0, 0];
    bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap()
}

#[test]
fn tensor_errors_name_the_tensor() {
    let bytes = sample_file();
    let t = tensor_table_offset(&bytes);
    // Layout of tensor "a": name len u64, 'a', n_dims u32, dims 2 x u64, type u32, offset u64.
    let type_at = t + 8 + 1 + 4 + 16;
    let offset_at = type_at + 4;

    let mut b = bytes.clone();
    b[type_at..type_at + 4].copy_from_slice(&16u32.to_le_bytes());
    let e = GgufFile::from_bytes("t.gguf", b).err().unwrap().to_string();
    assert!(e.contains("tensor 'a'") && e.contains("IQ2_XXS"), "{e}");

    let mut b = bytes.clone();
    b[type_at..type_at + 4].copy_from_slice(&77u32.to_le_bytes());
    let e = GgufFile::from_bytes("t.gguf", b).err().unwrap().to_string();
    assert!(e.contains("unknown tensor type id 77"), "{e}");

    let mut b = bytes.clone();
    patch_u64(&mut b, offset_at, 1 << 30);
    let e = GgufFile::from_bytes("t.gguf", b).err().unwrap().to_string();
    assert!(e.contains("past the end of the file"), "{e}");

    let mut b = bytes.clone();
    patch_u64(&mut b, offset_at, 3);
    let e = GgufFile::from_bytes("t.gguf", b).err().unwrap().to_string();
    assert!(e.contains("not aligned"), "{e}");

    let mut b = bytes.clone();
    patch_u64(&mut b, t + 13, u64::MAX);
    let e = GgufFile::from_bytes("t.gguf", b).err().unwrap().to_string();
    assert!(e.contains("overflow"), "{e}");
}
