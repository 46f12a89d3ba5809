//! Replays the committed fuzz corpus (`tests/fuzz/corpus/<target>/`) through the fuzz
//! targets' bodies on the stable toolchain: every input libFuzzer ever kept or found
//! failing stays a regression test. The fuzzers themselves run with
//! `cargo +nightly fuzz run --fuzz-dir tests/fuzz <target>` (README, "Fuzzing").

#[path = "fuzz/targets.rs"]
mod targets;

use std::path::Path;

fn replay(name: &str, target: fn(&[u8])) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz/corpus")
        .join(name);
    let mut inputs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("a corpus entry").path())
        .collect();
    inputs.sort();
    for input in &inputs {
        let data = std::fs::read(input).expect("a corpus file");
        let outcome = std::panic::catch_unwind(|| target(&data));
        assert!(outcome.is_ok(), "{name}: {} fails", input.display());
    }
    inputs.len()
}

#[test]
fn every_target_has_a_corpus_and_every_input_passes() {
    for (name, target) in targets::TARGETS {
        let n = replay(name, *target);
        assert!(
            n >= 10,
            "{name}: only {n} corpus inputs; seed it (tests/fuzz/seed.py)"
        );
    }
}

#[test]
fn every_target_is_a_cargo_fuzz_binary() {
    let manifest = include_str!("fuzz/Cargo.toml");
    for (name, _) in targets::TARGETS {
        assert!(
            manifest.contains(&format!("path = \"fuzz_targets/{name}.rs\"")),
            "{name} has no [[bin]] in tests/fuzz/Cargo.toml"
        );
        let file = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fuzz/fuzz_targets")
            .join(format!("{name}.rs"));
        let text = std::fs::read_to_string(&file).expect("the target's file");
        assert!(text.contains(&format!("sessiongate_fuzz::{name}(")));
    }
}
