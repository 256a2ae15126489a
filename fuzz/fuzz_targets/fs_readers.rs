//! Fuzz target: `imaging::fuzzing::fs_readers` must never panic on any input.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    imaging::fuzzing::fs_readers(data);
});
