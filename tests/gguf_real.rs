//! The GGUF reader on a real model file, cut and damaged: every case is a clean error (or,
//! for damage that leaves a valid file, a clean parse), never a panic or a huge allocation.

use vibrant::gguf::GgufFile;

fn smollm2_bytes() -> Vec<u8> {
    let path = vibrant::catalog::models_dir().join("smollm2-135m.gguf");
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run `python3 scripts/fetch_model.py smollm2-135m` first",
            path.display()
        )
    })
}

#[test]
fn a_real_file_cut_anywhere_is_a_clean_error() {
    let bytes = smollm2_bytes();
    let whole = GgufFile::from_bytes("smollm2.gguf", bytes.clone()).expect("the real file parses");
    let data = whole.data_offset as usize;
    // Every 997th offset through the header, then through the tensor data.
    let cuts = (0..data)
        .step_by(997)
        .chain((data..bytes.len() - 1).step_by(bytes.len() / 50));
    let mut checked = 0;
    for len in cuts {
        match GgufFile::from_bytes("cut.gguf", bytes[..len].to_vec()) {
            Err(e) => assert!(e.to_string().contains("cut.gguf"), "{e}"),
            Ok(_) => panic!("a file cut at byte {len} of {} parsed", bytes.len()),
        }
        checked += 1;
    }
    assert!(checked > 100, "only {checked} cuts");
}

#[test]
fn damaged_header_bytes_never_panic() {
    let bytes = smollm2_bytes();
    let data = GgufFile::from_bytes("x", bytes.clone())
        .unwrap()
        .data_offset as usize;
    let header = bytes[..data].to_vec();
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..400 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let at = (state % header.len() as u64) as usize;
        let mut damaged = header.clone();
        damaged[at] ^= (state >> 32) as u8 | 1;
        damaged.extend_from_slice(&bytes[data..data + 4096]);
        // A clean error or a parse: either is fine, a panic is not.
        let _ = GgufFile::from_bytes("damaged.gguf", damaged);
    }
}

#[test]
fn absurd_counts_in_a_real_header_are_refused() {
    let bytes = smollm2_bytes();
    for (at, what) in [(8, "tensor count"), (16, "metadata count")] {
        let mut damaged = bytes[..1 << 20].to_vec();
        damaged[at..at + 8].copy_from_slice(&(u64::MAX / 3).to_le_bytes());
        let e = GgufFile::from_bytes("absurd.gguf", damaged)
            .err()
            .expect("refused");
        assert!(e.to_string().contains(what), "{e}");
    }
}
