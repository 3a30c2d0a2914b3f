//! The pending-action queue: lower priority value first (as the REAPI spec
//! defines ExecutionPolicy.priority), then builds in turn (fair share by
//! tool_invocation_id), then FIFO within a build. A worker takes the first
//! action whose platform it matches.
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::SystemTime;

use crate::action::PreparedAction;
use crate::operation::Operation;
use crate::platform::PlatformMatcher;

pub struct QueuedJob {
    pub op: Arc<Operation>,
    pub job: Arc<PreparedAction>,
    pub priority: i32,
    /// Who asked for it (the RequestMetadata header).
    pub request: RequestInfo,
    pub queued_at: SystemTime,
    /// Runs lost with their worker so far.
    pub attempts: u32,
}

/// What a client said about an Execute request (`RequestMetadata`).
#[derive(Debug, Clone, Default)]
pub struct RequestInfo {
    /// The build it belongs to (`tool_invocation_id`): fair share is per build.
    pub invocation: String,
    pub mnemonic: String,
    pub target: String,
}

#[derive(Default)]
struct Level {
    /// Invocations in turn order; the one just served moves to the back.
    turn: VecDeque<String>,
    by_invocation: HashMap<String, VecDeque<QueuedJob>>,
}

#[derive(Default)]
pub struct Queue {
    levels: BTreeMap<i32, Level>,
    len: usize,
}

impl Queue {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn push(&mut self, job: QueuedJob) {
        let level = self.levels.entry(job.priority).or_default();
        let q = level.by_invocation.entry(job.request.invocation.clone()).or_default();
        if q.is_empty() {
            level.turn.push_back(job.request.invocation.clone());
        }
        q.push_back(job);
        self.len += 1;
    }

    /// Takes the next job a worker with `props` can run.
    pub fn take_for(&mut self, matcher: &PlatformMatcher, props: &[(String, String)]) -> Option<QueuedJob> {
        let mut taken = None;
        for (prio, level) in self.levels.iter_mut() {
            for i in 0..level.turn.len() {
                let inv = &level.turn[i];
                let q = level.by_invocation.get_mut(inv).expect("turn lists only queued invocations");
                let Some(pos) = q.iter().position(|j| matcher.matches(props, &j.job.platform)) else { continue };
                let job = q.remove(pos).expect("position is valid");
                let inv = level.turn.remove(i).expect("index is valid");
                if q.is_empty() {
                    level.by_invocation.remove(&inv);
                } else {
                    level.turn.push_back(inv);
                }
                taken = Some((*prio, job));
                break;
            }
            if taken.is_some() {
                break;
            }
        }
        let (prio, job) = taken?;
        if self.levels.get(&prio).is_some_and(|l| l.turn.is_empty()) {
            self.levels.remove(&prio);
        }
        self.len -= 1;
        Some(job)
    }

    /// Queued jobs per priority, and when the oldest was queued.
    pub fn stats(&self) -> (std::collections::BTreeMap<i32, usize>, Option<SystemTime>) {
        let mut oldest: Option<SystemTime> = None;
        let mut by_priority = std::collections::BTreeMap::new();
        for (prio, level) in &self.levels {
            let jobs = level.by_invocation.values().flatten();
            let n = jobs.clone().count();
            by_priority.insert(*prio, n);
            for j in jobs {
                oldest = Some(oldest.map_or(j.queued_at, |o| o.min(j.queued_at)));
            }
        }
        (by_priority, oldest)
    }

    /// Takes every queued job out (shutdown).
    pub fn drain(&mut self) -> Vec<QueuedJob> {
        let levels = std::mem::take(&mut self.levels);
        self.len = 0;
        levels.into_values().flat_map(|l| l.by_invocation.into_values()).flatten().collect()
    }

    /// Names of the queued operations for which `pred` holds.
    pub fn names_where(&self, mut pred: impl FnMut(&QueuedJob) -> bool) -> Vec<String> {
        let jobs = self.levels.values().flat_map(|l| l.by_invocation.values()).flatten();
        jobs.filter(|j| pred(j)).map(|j| j.op.name.clone()).collect()
    }

    /// Removes a queued operation (cancellation).
    pub fn remove(&mut self, name: &str) -> Option<QueuedJob> {
        for (prio, level) in self.levels.iter_mut() {
            for (inv, q) in level.by_invocation.iter_mut() {
                if let Some(pos) = q.iter().position(|j| j.op.name == name) {
                    let job = q.remove(pos).expect("position is valid");
                    if q.is_empty() {
                        let inv = inv.clone();
                        level.by_invocation.remove(&inv);
                        level.turn.retain(|i| *i != inv);
                    }
                    let prio = *prio;
                    if self.levels.get(&prio).is_some_and(|l| l.turn.is_empty()) {
                        self.levels.remove(&prio);
                    }
                    self.len -= 1;
                    return Some(job);
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input_tree::InputTree;
    use re_proto::DigestInfo;
    use std::time::Duration;

    fn job(priority: i32, invocation: &str, n: u8, platform: &[(&str, &str)]) -> QueuedJob {
        let d = DigestInfo::new([n; 32], n as u64);
        QueuedJob {
            op: Operation::new(d),
            job: Arc::new(PreparedAction {
                action_digest: d,
                action: Default::default(),
                command: Default::default(),
                inputs: InputTree::default(),
                platform: platform.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
                timeout: Duration::from_secs(1),
                blobs: vec![],
                working_directory: Default::default(),
                outputs: vec![],
            }),
            priority,
            request: RequestInfo { invocation: invocation.into(), ..Default::default() },
            queued_at: SystemTime::now(),
            attempts: 0,
        }
    }

    fn order(q: &mut Queue, props: &[(String, String)]) -> Vec<u8> {
        let m = PlatformMatcher::default();
        std::iter::from_fn(|| q.take_for(&m, props)).map(|j| j.job.action_digest.hash[0]).collect()
    }

    #[test]
    fn lower_priority_value_first_then_fifo() {
        let mut q = Queue::default();
        q.push(job(0, "a", 1, &[]));
        q.push(job(5, "a", 2, &[]));
        q.push(job(-5, "a", 3, &[]));
        q.push(job(0, "a", 4, &[]));
        assert_eq!(order(&mut q, &[]), vec![3, 1, 4, 2]);
        assert!(q.is_empty());
    }

    #[test]
    fn builds_take_turns_within_a_priority() {
        let mut q = Queue::default();
        for n in 1..=4 {
            q.push(job(0, "big", n, &[]));
        }
        q.push(job(0, "small", 10, &[]));
        q.push(job(0, "small", 11, &[]));
        assert_eq!(order(&mut q, &[]), vec![1, 10, 2, 11, 3, 4]);
    }

    #[test]
    fn workers_only_take_what_they_match() {
        let mut q = Queue::default();
        q.push(job(0, "a", 1, &[("pool", "gpu")]));
        q.push(job(0, "a", 2, &[]));
        let cpu: Vec<(String, String)> = vec![("pool".into(), "cpu".into())];
        assert_eq!(order(&mut q, &cpu), vec![2]);
        assert_eq!(q.len(), 1);
        let gpu: Vec<(String, String)> = vec![("pool".into(), "gpu".into())];
        assert_eq!(order(&mut q, &gpu), vec![1]);
    }

    #[test]
    fn remove_takes_a_job_out() {
        let mut q = Queue::default();
        let j = job(0, "a", 1, &[]);
        let name = j.op.name.clone();
        q.push(j);
        q.push(job(0, "b", 2, &[]));
        assert!(q.remove(&name).is_some());
        assert!(q.remove(&name).is_none());
        assert_eq!(order(&mut q, &[]), vec![2]);
    }
}
