//! `[server.tls]`: the gRPC port over TLS and mutual TLS, as grpcurl, a
//! tonic client and Bazel reach it; the certificate is swapped on SIGHUP
//! without dropping open connections. Certificates are made here with
//! `openssl`, never committed.
mod agent_support;
mod bazel_support;
mod common;
mod exec_support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use agent_support::Agent;
use common::{require_tool, ServerConfig, TestServer};
use exec_support::ActionSpec;
use re_proto::reapi::capabilities_client::CapabilitiesClient;
use re_proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient;
use re_proto::reapi::execution_client::ExecutionClient;
use re_proto::reapi::GetCapabilitiesRequest;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").args(args).current_dir(dir).output().expect("openssl");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// `NAME.pem` and `NAME.key` (PKCS#8, as Bazel wants) in `dir`, signed by
/// the CA `ca` (made first with `ca = None`).
fn make_cert(dir: &Path, name: &str, ca: Option<&str>, ext: &str) -> PathBuf {
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    let (key, pem) = (format!("{name}.key"), format!("{name}.pem"));
    let subj = format!("/CN={name}");
    match ca {
        None => {
            let args = [&["req", "-x509"][..], &ec, &["-keyout", &key, "-out", &pem, "-days", "2", "-subj", &subj]];
            openssl(dir, &args.concat());
        }
        Some(ca) => {
            let csr = format!("{name}.csr");
            let ext_file = format!("{name}.ext");
            std::fs::write(dir.join(&ext_file), ext).unwrap();
            openssl(dir, &[&["req"][..], &ec, &["-keyout", &key, "-out", &csr, "-subj", &subj]].concat());
            let (ca_pem, ca_key) = (format!("{ca}.pem"), format!("{ca}.key"));
            openssl(
                dir,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &csr,
                    "-CA",
                    &ca_pem,
                    "-CAkey",
                    &ca_key,
                    "-CAcreateserial",
                    "-out",
                    &pem,
                    "-days",
                    "2",
                    "-extfile",
                    &ext_file,
                ],
            );
        }
    }
    dir.join(pem)
}

const TOKEN: &str = "tls-test-0123456789abcdef";
const AGENT_TOKEN: &str = "tls-agent-0123456789abcd";
const SERVER_EXT: &str = "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n";
const CLIENT_EXT: &str = "extendedKeyUsage=clientAuth\n";

/// A CA, a server certificate and a client certificate in `dir`.
fn make_pki(dir: &Path) {
    make_cert(dir, "ca", None, "");
    make_cert(dir, "server", Some("ca"), SERVER_EXT);
    make_cert(dir, "client", Some("ca"), CLIENT_EXT);
}

fn tls_server(dir: &Path, mutual: bool) -> TestServer {
    let p = |f: &str| dir.join(f).display().to_string();
    let mut tls = format!("tls = {{ cert_file = \"{}\", key_file = \"{}\"", p("server.pem"), p("server.key"));
    if mutual {
        tls.push_str(&format!(", client_ca_file = \"{}\"", p("ca.pem")));
    }
    tls.push_str(" }");
    // Tokens too: health checks over TLS need none.
    std::fs::write(dir.join("tokens"), format!("{TOKEN} cache-read,cache-write,execute\n{AGENT_TOKEN} worker\n"))
        .unwrap();
    let auth = format!("auth = {{ tokens_file = \"{}\" }}", p("tokens"));
    let server = ServerConfig::filesystem().instance("main").server(&tls).server(&auth);
    TestServer::start(&server.host_workers(2).toml())
}

fn grpcurl(server: &TestServer, args: &[&str]) -> (bool, String) {
    let out = Command::new("grpcurl")
        .args(args)
        .args([server.addr.as_str(), "grpc.health.v1.Health/Check"])
        .output()
        .expect("grpcurl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

async fn tls_channel(server: &TestServer, ca: &Path) -> Result<Channel, tonic::transport::Error> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(ca).unwrap()))
        .domain_name("localhost");
    Endpoint::from_shared(format!("https://{}", server.addr)).unwrap().tls_config(tls)?.connect().await
}

async fn capabilities(ch: &Channel) -> Result<(), tonic::Status> {
    let mut req = tonic::Request::new(GetCapabilitiesRequest { instance_name: "main".into() });
    req.metadata_mut().insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    CapabilitiesClient::new(ch.clone()).get_capabilities(req).await.map(drop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_grpcurl_and_tonic_and_a_new_certificate_on_sighup() {
    if !require_tool("openssl") || !require_tool("grpcurl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    make_pki(dir.path());
    let server = tls_server(dir.path(), false);
    let ca = dir.path().join("ca.pem");
    let (ok, out) = grpcurl(&server, &["-cacert", ca.to_str().unwrap()]);
    assert!(ok && out.contains("SERVING"), "{out}");
    let (ok, out) = grpcurl(&server, &["-plaintext"]);
    assert!(!ok, "plaintext was answered: {out}");

    let open = tls_channel(&server, &ca).await.expect("TLS connection");
    capabilities(&open).await.expect("GetCapabilities over TLS");

    // A new CA and server certificate; the old connection stays up.
    let next = dir.path().join("next");
    std::fs::create_dir(&next).unwrap();
    make_cert(&next, "ca", None, "");
    make_cert(&next, "server", Some("ca"), SERVER_EXT);
    for f in ["server.pem", "server.key"] {
        std::fs::copy(next.join(f), dir.path().join(f)).unwrap();
    }
    // SAFETY: a plain signal to the child process this test started.
    unsafe { libc::kill(server.pid().unwrap() as i32, libc::SIGHUP) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server.logs().contains("TLS certificate reloaded") && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(server.logs().contains("TLS certificate reloaded"), "{}", server.logs());
    capabilities(&open).await.expect("the connection opened before the reload still works");
    let fresh = tls_channel(&server, &next.join("ca.pem")).await.expect("a new connection gets the new certificate");
    capabilities(&fresh).await.unwrap();
    let stale = match tls_channel(&server, &ca).await {
        Ok(ch) => capabilities(&ch).await.is_err(),
        Err(_) => true,
    };
    assert!(stale, "a new connection still got the old certificate");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_needs_a_client_certificate() {
    if !require_tool("openssl") || !require_tool("grpcurl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    make_pki(dir.path());
    let server = tls_server(dir.path(), true);
    let f = |n: &str| dir.path().join(n).display().to_string();
    let (ok, out) = grpcurl(&server, &["-cacert", &f("ca.pem")]);
    assert!(!ok, "answered without a client certificate: {out}");
    let (ok, out) = grpcurl(&server, &["-cacert", &f("ca.pem"), "-cert", &f("client.pem"), "-key", &f("client.key")]);
    assert!(ok && out.contains("SERVING"), "{out}");
}

#[test]
fn bazel_builds_over_mutual_tls() {
    if !require_tool("openssl") || !require_tool("bazel") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    make_pki(dir.path());
    let server = tls_server(dir.path(), true);
    let f = |n: &str| dir.path().join(n).display().to_string();
    let ws = bazel_support::BazelWorkspace::new();
    let flags = [
        format!("--remote_executor=grpcs://{}", server.addr),
        format!("--tls_certificate={}", f("ca.pem")),
        format!("--tls_client_certificate={}", f("client.pem")),
        format!("--tls_client_key={}", f("client.key")),
        "--remote_instance_name=main".into(),
        "--spawn_strategy=remote".into(),
        "--remote_local_fallback=false".into(),
        "--remote_default_exec_properties=OSFamily=linux".into(),
        format!("--remote_header=authorization=Bearer {TOKEN}"),
    ];
    let args: Vec<&str> = std::iter::once("//...").chain(flags.iter().map(String::as_str)).collect();
    let r = ws.run("build", &args);
    // Debian's Bazel 4.2.3 (bazel-bootstrap, on the system's netty) cannot
    // open any TLS channel: it stops before connecting. That is the client's
    // limit, not the server's; told loudly, never passed off as a success.
    let client_limit = "JDK provider does not support ALPN protocol";
    if !r.success && ws.java_log().contains(client_limit) {
        eprintln!("SKIPPED: this Bazel cannot speak TLS at all ('{client_limit}' in its java.log)");
        assert!(!server.logs().contains("TLS handshake"), "the server refused Bazel: {}", server.logs());
        return;
    }
    assert!(r.success, "build over mutual TLS failed:\n{}\nserver logs:\n{}", r.output, server.logs());
    assert!(r.processes().get("remote").copied().unwrap_or(0) >= 10, "{}", r.summary_line());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_agent_serves_over_mutual_tls() {
    if !require_tool("openssl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    make_pki(dir.path());
    let server = tls_server(dir.path(), true);
    let f = |n: &str| dir.path().join(n).display().to_string();
    let url = format!("grpcs://localhost:{}", server.port);
    let keys = format!("instance_name = \"main\"\ntls_ca_file = \"{}\"\n", f("ca.pem"));
    let with_cert = format!(
        "{keys}tls_client_cert_file = \"{}\"\ntls_client_key_file = \"{}\"\n",
        f("client.pem"),
        f("client.key")
    );
    let table = "[[execution.pool.workers]]\ntype = \"host\"\nproperties = { pool = \"agents\" }\n";
    // Without a client certificate the handshake fails: no session opens.
    let refused = Agent::start_with(&url, "nocert", Some(AGENT_TOKEN), &[], &keys, table);
    let agent = Agent::start_with(&url, "tls-agent", Some(AGENT_TOKEN), &[], &with_cert, table);
    assert!(agent.wait_for_log("session open", Duration::from_secs(30)), "{}", agent.logs());
    assert!(!refused.logs().contains("session open"), "{}", refused.logs());

    let identity = tonic::transport::Identity::from_pem(
        std::fs::read(f("client.pem")).unwrap(),
        std::fs::read(f("client.key")).unwrap(),
    );
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(f("ca.pem")).unwrap()))
        .identity(identity)
        .domain_name("localhost");
    let endpoint = Endpoint::from_shared(format!("https://{}", server.addr)).unwrap();
    let ch = endpoint.tls_config(tls).unwrap().connect().await.unwrap();
    let mut spec = ActionSpec::sh("echo over-mtls");
    spec.platform = vec![("pool".into(), "agents".into())];
    let digest = {
        let (action, _, blobs) = spec.messages();
        let mut all = blobs;
        let action_bytes = bytes::Bytes::from(prost::Message::encode_to_vec(&action));
        let d = common::digest(&action_bytes);
        all.push((d.clone(), action_bytes));
        let req = common::batch_update_request("main", &all);
        let mut req = tonic::Request::new(req);
        req.metadata_mut().insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
        ContentAddressableStorageClient::new(ch.clone()).batch_update_blobs(req).await.unwrap();
        d
    };
    let mut req = exec_support::execute_request("main", &digest, &Default::default());
    req.metadata_mut().insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    let stream = ExecutionClient::new(ch.clone()).execute(req).await.unwrap().into_inner();
    let ops = exec_support::drain(stream).await.unwrap();
    let resp = exec_support::response_of(ops.last().unwrap());
    let result = resp.result.expect("result");
    assert_eq!(result.exit_code, 0, "{:?}", resp.status);
    assert_eq!(result.execution_metadata.unwrap().worker, "tls-agent/host-worker-1");
}
