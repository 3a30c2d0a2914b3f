//! A unary gRPC request body, in frames the fuzzer cuts, collected as the
//! hand-framed FindMissingBlobs and ByteStream.Read collect theirs.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (Vec<Vec<u8>>, u16)| {
    let (frames, limit) = input;
    if let Some(len) = re_cas::fuzzing::unary(frames, limit as usize) {
        assert!(len <= limit as usize);
    }
});
