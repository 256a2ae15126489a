//! Fuzz target: `imaging::fuzzing::table` must never panic on any input.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    imaging::fuzzing::table(data);
});
