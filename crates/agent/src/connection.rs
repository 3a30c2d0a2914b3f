//! The agent's one channel to the server (`grpc://` or `grpcs://`), and the
//! token every call carries.
use std::path::Path;
use std::time::Duration;

use re_proto::{Error, Result};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::config::AgentConfig;

/// Adds `authorization: Bearer TOKEN` to every call when there is a token.
#[derive(Clone)]
pub struct BearerToken(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for BearerToken {
    fn call(&mut self, mut req: tonic::Request<()>) -> std::result::Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

pub type ServerChannel = InterceptedService<Channel, BearerToken>;

/// Reads the token (first line of the file).
pub fn bearer_token(file: Option<&Path>) -> Result<BearerToken> {
    let Some(path) = file else { return Ok(BearerToken(None)) };
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    let token = text.lines().next().unwrap_or("").trim();
    if token.is_empty() {
        return Err(Error::InvalidArgument(format!("{}: the first line holds no token", path.display())));
    }
    let value = format!("Bearer {token}")
        .parse()
        .map_err(|_| Error::InvalidArgument(format!("{}: the token is not printable ASCII", path.display())))?;
    Ok(BearerToken(Some(value)))
}

/// A lazily connecting channel: the agent starts even while the server is
/// down, and every call reconnects as needed.
pub fn channel(server: &str, agent: &AgentConfig) -> Result<Channel> {
    let bad = |why: String| Error::InvalidArgument(format!("--server {server}: {why}"));
    let (uri, tls) = if let Some(rest) = server.strip_prefix("grpc://") {
        (format!("http://{rest}"), false)
    } else if let Some(rest) = server.strip_prefix("grpcs://") {
        (format!("https://{rest}"), true)
    } else {
        return Err(bad("must start with grpc:// or grpcs://".into()));
    };
    let mut endpoint = Endpoint::from_shared(uri)
        .map_err(|e| bad(e.to_string()))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(10))
        .initial_stream_window_size(Some(16 << 20))
        .initial_connection_window_size(Some(16 << 20));
    if tls {
        let mut config = ClientTlsConfig::new().with_native_roots();
        let read = |p: &Path| std::fs::read(p).map_err(|e| Error::io(format!("reading {}", p.display()), e));
        if let Some(ca) = &agent.tls_ca_file {
            config = config.ca_certificate(Certificate::from_pem(read(ca)?));
        }
        if let (Some(cert), Some(key)) = (&agent.tls_client_cert_file, &agent.tls_client_key_file) {
            config = config.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        endpoint = endpoint.tls_config(config).map_err(|e| bad(e.to_string()))?;
    }
    Ok(endpoint.connect_lazy())
}
