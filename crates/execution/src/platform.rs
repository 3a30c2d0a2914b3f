//! The scheduler's matching rule, in one place: which worker may run which action.
//!
//! Each worker advertises properties (key, value) — a key may appear several
//! times (e.g. ISA). An action runs only on a worker that satisfies every
//! property it asks for; an action with no properties runs anywhere. Per key
//! the mode is configurable:
//! - `exact` (default): the worker advertises that key with that value.
//!   `OSFamily` compares case-insensitively (platform.md says `linux`,
//!   RBE-style configs write `Linux`).
//! - `minimum`: numeric resource; the worker's value must be at least the action's.
//! - `ignore`: never constrains matching.
//!
//! A worker property whose value is [`ANY_VALUE`] (`*`) satisfies any wanted
//! value of that key in `exact` mode: the worker decides at run time (docker
//! workers advertise `container-image=*`, `dockerNetwork=*`, `dockerUser=*`
//! and check the action's values against their configuration). Workers that
//! do not advertise a key at all still never match it.
use std::collections::HashMap;

use serde::Deserialize;

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum MatchMode {
    #[default]
    Exact,
    Minimum,
    Ignore,
}

/// A worker property value meaning "any value of this key" (exact mode).
pub const ANY_VALUE: &str = "*";

/// A property list: (name, value) pairs, keys may repeat.
pub type Properties = Vec<(String, String)>;

#[derive(Debug, Clone, Default)]
pub struct PlatformMatcher {
    modes: HashMap<String, MatchMode>,
}

impl PlatformMatcher {
    pub fn new(modes: HashMap<String, MatchMode>) -> Self {
        Self { modes }
    }

    fn mode(&self, key: &str) -> MatchMode {
        self.modes.get(key).copied().unwrap_or_default()
    }

    /// Whether one wanted property is satisfied by a worker's properties.
    pub fn satisfies(&self, worker: &[(String, String)], key: &str, value: &str) -> bool {
        let mut offered = worker.iter().filter(|(k, _)| k == key).map(|(_, v)| v.as_str());
        match self.mode(key) {
            MatchMode::Ignore => true,
            MatchMode::Exact if key == "OSFamily" => offered.any(|v| v == ANY_VALUE || v.eq_ignore_ascii_case(value)),
            MatchMode::Exact => offered.any(|v| v == ANY_VALUE || v == value),
            MatchMode::Minimum => match value.trim().parse::<f64>() {
                Ok(want) => offered.any(|v| v.trim().parse::<f64>().is_ok_and(|have| have >= want)),
                Err(_) => false,
            },
        }
    }

    /// The wanted properties this worker does not satisfy (empty = it matches).
    pub fn unmatched<'a>(
        &self,
        worker: &[(String, String)],
        wanted: &'a [(String, String)],
    ) -> Vec<&'a (String, String)> {
        wanted.iter().filter(|(k, v)| !self.satisfies(worker, k, v)).collect()
    }

    pub fn matches(&self, worker: &[(String, String)], wanted: &[(String, String)]) -> bool {
        wanted.iter().all(|(k, v)| self.satisfies(worker, k, v))
    }

    /// `None` if some worker matches; otherwise the properties to blame: those
    /// no worker offers at all, or, if each is offered somewhere, all of them.
    pub fn never_matchable<'a>(
        &self,
        workers: &[&Properties],
        wanted: &'a [(String, String)],
    ) -> Option<Vec<&'a (String, String)>> {
        if workers.iter().any(|w| self.matches(w, wanted)) {
            return None;
        }
        let unsatisfiable: Vec<_> =
            wanted.iter().filter(|(k, v)| !workers.iter().any(|w| self.satisfies(w, k, v))).collect();
        Some(if unsatisfiable.is_empty() { wanted.iter().collect() } else { unsatisfiable })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(p: &[(&str, &str)]) -> Properties {
        p.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn matcher(m: &[(&str, MatchMode)]) -> PlatformMatcher {
        PlatformMatcher::new(m.iter().map(|(k, v)| (k.to_string(), *v)).collect())
    }

    #[test]
    fn empty_platform_runs_anywhere() {
        assert!(PlatformMatcher::default().matches(&props(&[]), &[]));
        assert!(PlatformMatcher::default().matches(&props(&[("OSFamily", "linux")]), &[]));
    }

    #[test]
    fn exact_needs_every_property() {
        let m = PlatformMatcher::default();
        let w = props(&[("OSFamily", "linux"), ("pool", "fast")]);
        assert!(m.matches(&w, &props(&[("pool", "fast")])));
        assert!(m.matches(&w, &props(&[("OSFamily", "Linux"), ("pool", "fast")])));
        assert!(!m.matches(&w, &props(&[("pool", "slow")])));
        assert!(!m.matches(&w, &props(&[("pool", "FAST")])), "only OSFamily ignores case");
        assert!(!m.matches(&w, &props(&[("gpu", "1")])));
    }

    #[test]
    fn repeated_keys_are_and_ed() {
        let m = PlatformMatcher::default();
        let w = props(&[("ISA", "x86-64"), ("ISA", "x86-avx2")]);
        assert!(m.matches(&w, &props(&[("ISA", "x86-64"), ("ISA", "x86-avx2")])));
        assert!(!m.matches(&w, &props(&[("ISA", "x86-64"), ("ISA", "x86-avx512")])));
    }

    #[test]
    fn minimum_compares_numbers() {
        let m = matcher(&[("cores", MatchMode::Minimum)]);
        let w = props(&[("cores", "8")]);
        assert!(m.matches(&w, &props(&[("cores", "4")])));
        assert!(m.matches(&w, &props(&[("cores", "8")])));
        assert!(!m.matches(&w, &props(&[("cores", "16")])));
        assert!(!m.matches(&w, &props(&[("cores", "many")])));
        assert!(!m.matches(&props(&[]), &props(&[("cores", "1")])));
    }

    #[test]
    fn ignore_never_constrains() {
        let m = matcher(&[("label", MatchMode::Ignore)]);
        assert!(m.matches(&props(&[]), &props(&[("label", "anything")])));
    }

    #[test]
    fn star_worker_values_match_any_value() {
        let m = PlatformMatcher::default();
        let docker = props(&[("OSFamily", "linux"), ("container-image", "*"), ("dockerNetwork", "*")]);
        let host = props(&[("OSFamily", "linux")]);
        let wanted = props(&[("container-image", "docker://ubuntu:22.04"), ("dockerNetwork", "off")]);
        assert!(m.matches(&docker, &wanted));
        assert!(!m.matches(&host, &wanted), "a worker without the key never matches it");
        assert!(m.never_matchable(&[&host, &docker], &wanted).is_none());
        assert!(m.never_matchable(&[&host], &wanted).is_some());
        // Only the worker side is a wildcard: an action asking for `*` wants that literal value.
        assert!(!m.matches(&props(&[("pool", "a")]), &props(&[("pool", "*")])));
        // Minimum and ignore modes are unchanged.
        let m = matcher(&[("cores", MatchMode::Minimum)]);
        assert!(!m.matches(&props(&[("cores", "*")]), &props(&[("cores", "2")])));
    }

    #[test]
    fn never_matchable_names_the_culprits() {
        let m = PlatformMatcher::default();
        let (a, b) = (props(&[("pool", "a"), ("OSFamily", "linux")]), props(&[("pool", "b")]));
        let workers = vec![&a, &b];
        assert!(m.never_matchable(&workers, &props(&[("pool", "b")])).is_none());
        let wanted = props(&[("pool", "a"), ("container-image", "x")]);
        let blame = m.never_matchable(&workers, &wanted).unwrap();
        assert_eq!(blame, vec![&("container-image".to_string(), "x".to_string())]);
        // Each offered somewhere, never together: blame the combination.
        let wanted = props(&[("pool", "b"), ("OSFamily", "linux")]);
        assert_eq!(m.never_matchable(&workers, &wanted).unwrap().len(), 2);
    }
}
