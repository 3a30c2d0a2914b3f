//! ByteStream resource names and digests: parsed names round-trip, and a
//! digest accepted once is accepted again from its own rendering only.
#![no_main]
use libfuzzer_sys::fuzz_target;
use re_cas::resource_name::ResourceName;
use re_proto::DigestInfo;

fuzz_target!(|input: (&str, &[u8], i64)| {
    let (name, hash, size) = input;
    for parsed in [ResourceName::parse_read(name), ResourceName::parse_write(name)].into_iter().flatten() {
        // The digest a name yields renders back to the same hash and size.
        let again = DigestInfo::from_hex(&parsed.digest.hash_hex(), parsed.digest.size as i64).unwrap();
        assert_eq!(again, parsed.digest);
        assert!(name.contains(&parsed.digest.hash_hex()));
    }
    if let Ok(d) = DigestInfo::from_hex_bytes(hash, size) {
        assert_eq!(d.hash_hex().as_bytes(), hash, "only the one lower-case rendering is accepted");
        assert_eq!(d.size as i64, size);
    }
    let _ = re_proto::check_digest_function(size as i32);
});
