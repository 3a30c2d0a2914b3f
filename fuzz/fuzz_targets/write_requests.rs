//! A ByteStream.Write body: gRPC messages split over HTTP/2 frames at any
//! place, decoded into WriteRequests without copying their data.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (Vec<Vec<u8>>, bool)| {
    let (frames, compressed_header) = input;
    re_cas::fuzzing::write_stream(frames, compressed_header);
});
