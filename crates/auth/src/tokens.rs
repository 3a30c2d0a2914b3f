//! `[server.auth] tokens_file`: one token per line, whitespace, then its
//! comma-separated roles; `#` starts a comment. Re-read on SIGHUP; a file
//! that no longer parses keeps the tokens loaded before.
//!
//! Tokens are kept as SHA-256 digests and looked up by the digest of what a
//! client sends, so how long a lookup takes says nothing about the secret.
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;
use sha2::{Digest, Sha256};

use crate::Role;

#[derive(Debug, Default)]
pub struct TokenTable {
    roles: HashMap<[u8; 32], BTreeSet<Role>>,
}

impl TokenTable {
    /// Parses the file's text; the error names the line and what is wrong.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut roles = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let at = |why: String| format!("line {}: {why}", n + 1);
            let mut fields = line.split_whitespace();
            let token = fields.next().unwrap_or_default();
            let Some(list) = fields.next() else {
                return Err(at("a token needs its roles after it (e.g. 'TOKEN cache-read,cache-write')".into()));
            };
            if fields.next().is_some() {
                return Err(at("roles are one comma-separated list without spaces".into()));
            }
            if token.len() < 16 {
                return Err(at("the token is shorter than 16 characters".into()));
            }
            let mut set = BTreeSet::new();
            for name in list.split(',').filter(|r| !r.is_empty()) {
                let role = Role::parse(name).ok_or_else(|| {
                    let known: Vec<&str> = Role::ALL.iter().map(|r| r.name()).collect();
                    at(format!("unknown role '{name}' (known: {})", known.join(", ")))
                })?;
                set.insert(role);
            }
            if roles.insert(digest(token), set).is_some() {
                return Err(at("this token is listed twice".into()));
            }
        }
        Ok(Self { roles })
    }

    /// The roles of `token`, if it is known.
    pub fn roles(&self, token: &str) -> Option<&BTreeSet<Role>> {
        self.roles.get(&digest(token))
    }

    pub fn len(&self) -> usize {
        self.roles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.roles.is_empty()
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The tokens file and what was last loaded from it.
pub struct TokensFile {
    path: PathBuf,
    table: RwLock<Arc<TokenTable>>,
}

impl TokensFile {
    pub fn load(path: &Path) -> Result<Self, String> {
        let table = read(path)?;
        Ok(Self { path: path.to_path_buf(), table: RwLock::new(Arc::new(table)) })
    }

    pub fn current(&self) -> Arc<TokenTable> {
        self.table.read().clone()
    }

    /// Re-reads the file (SIGHUP). On error the tokens loaded before stay.
    pub fn reload(&self) {
        match read(&self.path) {
            Ok(table) => {
                tracing::info!(tokens = table.len(), file = %self.path.display(), "tokens file reloaded");
                *self.table.write() = Arc::new(table);
            }
            Err(e) => tracing::error!("keeping the tokens loaded before: {e}"),
        }
    }
}

fn read(path: &Path) -> Result<TokenTable, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    TokenTable::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_give_tokens_their_roles() {
        let t = TokenTable::parse(
            "# readers\n0123456789abcdef0123 cache-read\n\nfedcba9876543210fedc cache-read,cache-write,execute # CI\n",
        )
        .unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t.roles("0123456789abcdef0123").unwrap().iter().copied().collect::<Vec<_>>(), [Role::CacheRead]);
        assert!(t.roles("fedcba9876543210fedc").unwrap().contains(&Role::Execute));
        assert!(t.roles("0123456789abcdef012").is_none());
    }

    #[test]
    fn mistakes_name_their_line() {
        for (text, why) in [
            ("0123456789abcdef0123\n", "line 1: a token needs its roles"),
            ("\n0123456789abcdef0123 cache-read,root\n", "line 2: unknown role 'root'"),
            ("short cache-read\n", "shorter than 16"),
            ("0123456789abcdef0123 cache-read\n0123456789abcdef0123 execute\n", "line 2: this token is listed twice"),
        ] {
            let e = TokenTable::parse(text).unwrap_err();
            assert!(e.contains(why), "{e}");
        }
    }
}
