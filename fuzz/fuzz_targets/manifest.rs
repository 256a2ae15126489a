//! Fuzz target: `imaging::fuzzing::manifest` must never panic on any input.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    imaging::fuzzing::manifest(data);
});
