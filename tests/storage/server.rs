//! The server as configured: configuration errors and Capabilities.
use super::*;

#[test]
fn configuration_errors_exit_2_naming_file_and_key() {
    let cases = [
        ("[storage.cas]\nbackend = \"memory\"\nbogus_key = 1\n", "storage.cas", "bogus_key"),
        ("[storage.cas]\nbackend = \"tape\"\n", "storage.cas.backend", "tape"),
        ("[capabilities]\nmax_batch_total_size_bytes = 10\n", "capabilities.max_batch_total_size_bytes", "1024"),
        ("[storage.cas]\nmax_size_bytes = \"big\"\n", "storage.cas.max_size_bytes", ""),
        ("[capabilities]\nsupported_compressors = [\"LZ4\"]\n", "capabilities.supported_compressors", "LZ4"),
        ("[nonsense]\nx = 1\n", "", "nonsense"),
    ];
    for (config, key, mention) in cases {
        let out = common::run_to_exit(config, Duration::from_secs(30));
        assert_eq!(out.code, Some(2), "config {config:?}: stderr {}", out.stderr);
        let lines: Vec<&str> = out.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "one line for {config:?}: {}", out.stderr);
        let prefix = format!("re-server: configuration error: {}: ", out.config_path.display());
        assert!(lines[0].starts_with(&prefix), "{config:?}: {}", lines[0]);
        if !key.is_empty() {
            assert!(lines[0][prefix.len()..].starts_with(&format!("key `{key}")), "{config:?}: {}", lines[0]);
        }
        assert!(lines[0].contains(mention), "{config:?} should mention {mention:?}: {}", lines[0]);
    }
    // A file that cannot be read is a configuration error too.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_re-server"))
        .args(["--config", "/nonexistent/re-server.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/re-server.toml"));
}

#[tokio::test]
async fn capabilities_reflect_the_configuration() {
    let server = TestServer::start(
        &ServerConfig::memory().cache_only().capabilities("max_batch_total_size_bytes = 1048576").toml(),
    );
    let mut c = clients(&server).await;
    let caps = c.caps.get_capabilities(GetCapabilitiesRequest::default()).await.unwrap().into_inner();
    let low = caps.low_api_version.unwrap();
    let high = caps.high_api_version.unwrap();
    assert_eq!((low.major, low.minor), (2, 0));
    assert_eq!((high.major, high.minor), (2, 3));
    let cache = caps.cache_capabilities.unwrap();
    assert_eq!(cache.digest_functions, vec![DigestFunction::Sha256 as i32]);
    assert_eq!(cache.max_batch_total_size_bytes, 1_048_576);
    assert!(cache.action_cache_update_capabilities.unwrap().update_enabled);
    for want in [CompressorValue::Zstd, CompressorValue::Deflate] {
        assert!(cache.supported_compressors.contains(&(want as i32)), "{want:?} in {:?}", cache.supported_compressors);
        assert!(cache.supported_batch_update_compressors.contains(&(want as i32)));
    }
    let exec = caps.execution_capabilities.unwrap();
    assert!(!exec.exec_enabled, "exec_enabled = false in the config");
    assert_eq!(exec.digest_function, DigestFunction::Sha256 as i32);

    let server = TestServer::start(
        &ServerConfig::memory().cache_only().capabilities("supported_compressors = [\"ZSTD\"]").toml(),
    );
    let mut c = clients(&server).await;
    let cache =
        c.caps.get_capabilities(GetCapabilitiesRequest::default()).await.unwrap().into_inner().cache_capabilities;
    assert_eq!(cache.unwrap().supported_compressors, vec![CompressorValue::Zstd as i32]);
}
