//! The one shape of a configuration problem: the key as written in the file
//! (`execution.pool.workers[1].memory_limit`) and why its value is refused.
//! Each crate validates its own section and returns this; the binary adds
//! the file name and stops with exit code 2.
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted path of the key; empty for a problem with the file as a whole.
    pub key: String,
    pub reason: String,
}

impl ConfigError {
    pub fn new(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self { key: key.into(), reason: reason.into() }
    }

    /// The same problem, seen from the table that holds the key.
    pub fn within(self, table: &str) -> Self {
        let key = if self.key.is_empty() { table.to_string() } else { format!("{table}.{}", self.key) };
        Self { key, reason: self.reason }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            f.write_str(&self.reason)
        } else {
            write!(f, "key `{}`: {}", self.key, self.reason)
        }
    }
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_nest_from_the_inside_out() {
        let e = ConfigError::new("memory_limit", "too small").within("workers[1]").within("execution.pool");
        assert_eq!(e.key, "execution.pool.workers[1].memory_limit");
        assert_eq!(e.to_string(), "key `execution.pool.workers[1].memory_limit`: too small");
    }
}
