//! Generates Rust code for the REAPI and google.* protos in ../../proto with the
//! protoc shipped inside `protoc-bin-vendored`, so no system protoc is needed.
use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "build/bazel/remote/execution/v2/remote_execution.proto",
    "build/bazel/semver/semver.proto",
    "google/bytestream/bytestream.proto",
    "google/longrunning/operations.proto",
    "google/rpc/status.proto",
    "google/rpc/code.proto",
    "google/rpc/error_details.proto",
    "re_server/v1/resource_usage.proto",
    "re_server/v1/input_fetch.proto",
    "google/devtools/remoteworkers/v1test2/bots.proto",
    "google/devtools/remoteworkers/v1test2/worker.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read at run time: a build-script binary may be reused for another checkout.
    let proto_root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; prost-build reads PROTOC.
    unsafe { std::env::set_var("PROTOC", protoc) };
    let wkt = protoc_bin_vendored::include_path()?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);

    let files: Vec<PathBuf> = PROTOS.iter().map(|p| proto_root.join(p)).collect();
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("reapi_descriptor.bin"))
        .bytes(".")
        .compile_protos(&files, &[proto_root, wkt])?;
    Ok(())
}
