//! Input-tree validation: any Directory message and any paths. Whatever is
//! accepted must stay inside the input root.
#![no_main]
use libfuzzer_sys::fuzz_target;
use prost::Message;
use re_execution::{input_tree, paths};
use re_proto::reapi::Directory;

fuzz_target!(|input: (&[u8], &str, &str)| {
    let (message, path, target) = input;
    if let Ok(dir) = Directory::decode(message) {
        if input_tree::check_directory(&dir).is_ok() {
            let names = dir.files.iter().map(|f| &f.name).chain(dir.directories.iter().map(|d| &d.name));
            for name in names.chain(dir.symlinks.iter().map(|s| &s.name)) {
                assert!(!name.is_empty() && !name.contains('/') && name != "." && name != "..");
            }
        }
    }
    if let Ok(rel) = paths::relative_path(path, "fuzz", true) {
        assert!(rel.components().all(|c| matches!(c, std::path::Component::Normal(_))));
    }
    if paths::symlink_target(std::path::Path::new("a/b/link"), target).is_ok() {
        // Resolved from a/b, the target never climbs above the root.
        let mut depth: i64 = 2;
        for c in std::path::Path::new(target).components() {
            match c {
                std::path::Component::ParentDir => depth -= 1,
                std::path::Component::Normal(_) => depth += 1,
                _ => {}
            }
            assert!(depth >= 0);
        }
    }
});
