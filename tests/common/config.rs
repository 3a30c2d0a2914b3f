//! The server TOML a test starts with, built instead of written by hand:
//!
//! ```ignore
//! ServerConfig::memory().instance("main").cache_only().toml()
//! ServerConfig::memory().pool("max_queue_size = 2").host_workers(1).toml()
//! ```
//!
//! Extra keys are TOML lines for that section; a key given again replaces the
//! earlier value (e.g. `.cas("max_size_bytes = 65536")` on `memory()`).

/// Sections of one server config; `toml()` writes them out.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    instance: Option<String>,
    shutdown_grace_seconds: u64,
    server: Vec<String>,
    cas: Vec<String>,
    action_cache: Vec<String>,
    capabilities: Vec<String>,
    pool: Vec<String>,
    /// Whole `[[execution.pool.workers]]` tables, in the order given.
    workers: Vec<String>,
}

impl ServerConfig {
    /// Memory CAS (1 GiB) and memory action cache.
    pub fn memory() -> Self {
        Self::with_backends(&["backend = \"memory\"", "max_size_bytes = 1073741824"], "memory")
    }

    /// Filesystem CAS and action cache under the server's data directory.
    pub fn filesystem() -> Self {
        Self::with_backends(&["backend = \"filesystem\""], "filesystem")
    }

    fn with_backends(cas: &[&str], action_cache: &str) -> Self {
        Self {
            instance: None,
            shutdown_grace_seconds: 3,
            server: Vec::new(),
            cas: cas.iter().map(|l| l.to_string()).collect(),
            action_cache: vec![format!("backend = \"{action_cache}\"")],
            capabilities: Vec::new(),
            pool: Vec::new(),
            workers: Vec::new(),
        }
    }

    /// `[server] shutdown_grace_seconds`.
    pub fn shutdown_grace(mut self, seconds: u64) -> Self {
        self.shutdown_grace_seconds = seconds;
        self
    }

    /// `[server] instance_name`.
    pub fn instance(mut self, name: &str) -> Self {
        self.instance = Some(name.to_string());
        self
    }

    /// More `[server]` keys.
    pub fn server(mut self, keys: &str) -> Self {
        self.server.extend(keys.lines().map(str::to_string));
        self
    }

    /// More `[storage.cas]` keys.
    pub fn cas(mut self, keys: &str) -> Self {
        set_keys(&mut self.cas, keys);
        self
    }

    /// More `[capabilities]` keys.
    pub fn capabilities(mut self, keys: &str) -> Self {
        set_keys(&mut self.capabilities, keys);
        self
    }

    /// Storage only: the server advertises and serves no execution.
    pub fn cache_only(self) -> Self {
        self.capabilities("exec_enabled = false")
    }

    /// More `[execution.pool]` keys (sub-tables such as
    /// `[execution.pool.platform_match]` may follow them).
    pub fn pool(mut self, keys: &str) -> Self {
        set_keys(&mut self.pool, keys);
        self
    }

    /// Worker groups written out as given (whole `[[execution.pool.workers]]` tables).
    pub fn workers(mut self, tables: &str) -> Self {
        self.workers.push(tables.trim().to_string());
        self
    }

    /// A group of `count` host workers.
    pub fn host_workers(self, count: u32) -> Self {
        self.workers(&format!("[[execution.pool.workers]]\ntype = \"host\"\ncount = {count}"))
    }

    /// A docker worker group on `image`; `keys` may end with its volumes tables.
    pub fn docker_workers(self, image: &str, keys: &str) -> Self {
        self.workers(&format!("[[execution.pool.workers]]\ntype = \"docker\"\nimage = \"{image}\"\n{keys}"))
    }

    pub fn toml(&self) -> String {
        let mut out = String::new();
        let mut section = |header: &str, lines: &[String]| {
            out.push_str(header);
            out.push('\n');
            for line in lines {
                out.push_str(line);
                out.push('\n');
            }
        };
        // SIGTERM (TestServer::stop) gives running actions 3 s, not a minute.
        let mut server = vec![format!("shutdown_grace_seconds = {}", self.shutdown_grace_seconds)];
        if let Some(name) = &self.instance {
            server.push(format!("instance_name = \"{name}\""));
        }
        set_keys(&mut server, &self.server.join("\n"));
        section("[server]", &server);
        section("[storage.cas]", &self.cas);
        section("[storage.action_cache]", &self.action_cache);
        if !self.capabilities.is_empty() {
            section("[capabilities]", &self.capabilities);
        }
        if !self.workers.is_empty() || !self.pool.is_empty() {
            // A fast scheduler tick: tests wait on it between every two actions.
            let mut pool = Vec::new();
            if !self.workers.is_empty() {
                pool.push("scheduler_interval_ms = 20".to_string());
            }
            set_keys(&mut pool, &self.pool.join("\n"));
            section("[execution.pool]", &pool);
        }
        for table in &self.workers {
            out.push_str(table);
            out.push('\n');
        }
        out
    }
}

/// Adds `keys` (TOML lines) to a section, replacing a key it already has.
/// Only the section's own keys are replaced, not those of a sub-table in it.
fn set_keys(lines: &mut Vec<String>, keys: &str) {
    fn key_of(line: &str) -> Option<&str> {
        line.split_once('=').map(|(k, _)| k.trim()).filter(|k| !k.starts_with('['))
    }
    for line in keys.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let own = lines.iter().position(|l| l.starts_with('[')).unwrap_or(lines.len());
        match key_of(line).and_then(|k| lines[..own].iter().position(|l| key_of(l) == Some(k))) {
            Some(i) => lines[i] = line.to_string(),
            None => lines.push(line.to_string()),
        }
    }
}
