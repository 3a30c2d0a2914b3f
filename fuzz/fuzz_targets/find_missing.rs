//! A FindMissingBlobsRequest decoded by hand, and its answer made of the
//! client's own Digest bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|message: &[u8]| {
    re_cas::fuzzing::find_missing(message);
});
