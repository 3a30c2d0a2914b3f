//! Configuration: any TOML text for each section, parsed and resolved as the
//! server does at start (refused with a key and a reason, never a panic).
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|text: &str| {
    let data_dir = Path::new("/nonexistent/re-server-fuzz");
    if let Ok(mut c) = toml::from_str::<re_cas::CasConfig>(text) {
        let _ = c.resolve(data_dir);
    }
    if let Ok(mut c) = toml::from_str::<re_action_cache::ActionCacheConfig>(text) {
        let _ = c.resolve(data_dir);
    }
    if let Ok(mut c) = toml::from_str::<re_execution::ExecutionConfig>(text) {
        if let Err(e) = c.resolve(data_dir) {
            assert!(!e.reason.is_empty());
        }
    }
});
