//! The bounded slice of fuzzing that runs with every test run: each target replays every input
//! kept under `regressions/<target>/` (crashes the fuzzer found, one file each), then a few
//! thousand pseudo-random inputs mutated from `seeds/<target>/` and those regressions, from a
//! fixed seed so that a failure here fails the same way on every machine.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

/// Pseudo-random inputs per target: enough to catch a regression in a harness's reach, few
/// enough that the slowest target (`config`, which writes a file per input) stays well under a
/// second in a debug build.
const RANDOM_INPUTS: usize = 3000;

/// The seed of the pseudo-random slice; any fixed value will do.
const SEED: u64 = 0x1de4_f022_2026_1127;

/// Bytes that open or close the structures the targets parse.
const INTERESTING: &[u8] = b"/%.\\\"'{}[]:,=#*?-_~0123456789aAfFzZ \t\n\x00\x7f\xc3\xa9";

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The files in `dir`, sorted by name; none if it does not exist.
fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|entry| entry.expect("a readable directory entry").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    files
}

fn target(name: &str) -> idem_fuzz::Target {
    idem_fuzz::TARGETS
        .iter()
        .find(|(target, _)| *target == name)
        .unwrap_or_else(|| panic!("no target named {name}"))
        .1
}

/// Runs `input` through the target, naming the input if an invariant breaks.
fn run(name: &str, input: &[u8], origin: &str) {
    if catch_unwind(AssertUnwindSafe(|| target(name)(input))).is_err() {
        panic!(
            "{name}: an invariant broke on {origin}: b\"{}\"; keep it as a file under \
             crates/idem-fuzz/regressions/{name}/",
            input.escape_ascii()
        );
    }
}

fn replay_regressions(name: &str) {
    for file in files(&crate_dir().join("regressions").join(name)) {
        let input = std::fs::read(&file).expect("a readable regression input");
        run(name, &input, &file.display().to_string());
    }
}

/// xorshift64*: small, seedable, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, bound: usize) -> usize {
        usize::try_from(self.next() % bound as u64).expect("below a usize")
    }

    fn byte(&mut self) -> u8 {
        if self.below(2) == 0 {
            INTERESTING[self.below(INTERESTING.len())]
        } else {
            self.next().to_le_bytes()[0]
        }
    }
}

/// A sample (or random bytes), then a few random mutations: flipped, inserted, removed,
/// duplicated or spliced bytes, as a mutational fuzzer makes them.
fn mutated(rng: &mut Rng, samples: &[Vec<u8>]) -> Vec<u8> {
    let mut input = if samples.is_empty() || rng.below(8) == 0 {
        (0..rng.below(64)).map(|_| rng.byte()).collect()
    } else {
        samples[rng.below(samples.len())].clone()
    };
    for _ in 0..rng.below(8) {
        let at = rng.below(input.len() + 1);
        match rng.below(6) {
            0 if at < input.len() => input[at] = rng.byte(),
            1 if at < input.len() => {
                input.remove(at);
            }
            2 => input.truncate(at),
            3 if !samples.is_empty() => {
                let other = &samples[rng.below(samples.len())];
                let from = rng.below(other.len() + 1);
                let to = from + rng.below(other.len() - from + 1);
                input.splice(at..at, other[from..to].iter().copied());
            }
            4 => {
                let to = at + rng.below(input.len() - at + 1);
                let copy = input[at..to].to_vec();
                input.splice(at..at, copy);
            }
            _ => input.insert(at, rng.byte()),
        }
    }
    input
}

fn random_slice(name: &str) {
    let dirs = [
        crate_dir().join("seeds").join(name),
        crate_dir().join("regressions").join(name),
    ];
    let samples: Vec<Vec<u8>> = dirs
        .iter()
        .flat_map(|dir| files(dir))
        .map(|file| std::fs::read(file).expect("a readable sample"))
        .collect();
    let mut rng = Rng(SEED
        ^ name.bytes().fold(0_u64, |hash, byte| {
            hash.wrapping_mul(31).wrapping_add(u64::from(byte))
        }));
    for index in 0..RANDOM_INPUTS {
        let input = mutated(&mut rng, &samples);
        run(name, &input, &format!("random input {index}"));
    }
}

macro_rules! target_tests {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn every_kept_regression_input_holds_the_invariants() {
                super::replay_regressions(stringify!($name));
            }

            #[test]
            fn a_seeded_slice_of_random_inputs_holds_the_invariants() {
                super::random_slice(stringify!($name));
            }
        }
    )*};
}

target_tests!(
    key,
    canonical_json,
    path,
    routes,
    config,
    redis_record,
    postgres_record,
    embedded_record,
);

/// A target missing from this file, from `fuzz/` or from `TARGETS` would silently never run.
#[test]
fn every_target_has_a_fuzz_binary_and_tests_and_nothing_else_does() {
    let mut names: Vec<&str> = idem_fuzz::TARGETS.iter().map(|(name, _)| *name).collect();
    names.sort_unstable();
    let binaries = crate_dir().join("../../fuzz/fuzz_targets");
    let mut fuzzed: Vec<String> = files(&binaries)
        .iter()
        .filter_map(|file| Some(file.file_stem()?.to_str()?.to_owned()))
        .collect();
    fuzzed.sort_unstable();
    assert_eq!(fuzzed, names, "fuzz/fuzz_targets/*.rs against TARGETS");
    let this_file = include_str!("replay.rs");
    for name in &names {
        assert!(
            this_file.contains(&format!("    {name},\n")),
            "{name} is missing from target_tests!"
        );
    }
    for dir in ["seeds", "regressions"] {
        for entry in std::fs::read_dir(crate_dir().join(dir))
            .into_iter()
            .flatten()
        {
            let entry = entry.expect("a readable directory entry");
            let name = entry.file_name();
            let name = name.to_string_lossy();
            assert!(
                names.contains(&&*name) || name.starts_with('.') || name.ends_with(".md"),
                "{dir}/{name} names no target"
            );
        }
    }
}
