//! The pending-action queue: lower priority value first (as the REAPI spec
//! defines ExecutionPolicy.priority), then builds in turn (fair share by
//! tool_invocation_id), then FIFO within a build. A worker takes the first
//! action whose platform it matches; jobs are indexed by platform so that
//! costs nothing for the platforms it does not.
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::SystemTime;

use crate::action::PreparedAction;
use crate::operation::Operation;
use crate::platform::{PlatformMatcher, Properties};

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

/// Queued jobs of one platform, in the order above.
#[derive(Default)]
struct ShapeQueue {
    levels: BTreeMap<i32, Level>,
    len: usize,
    /// The next job's (priority, arrival), kept beside the platform so a
    /// worker compares platforms without reading their queues.
    head: Option<(i32, u64)>,
}

#[derive(Default)]
struct Level {
    /// Invocations in turn order; the one just served moves to the back.
    turn: VecDeque<String>,
    by_invocation: HashMap<String, VecDeque<Entry>>,
}

/// A job and its place in the order of arrival (the tie-break between
/// platforms a worker matches alike).
struct Entry {
    seq: u64,
    job: QueuedJob,
}

/// Queued jobs indexed by platform (the Action's properties, sorted): a
/// worker looks only at the platforms it matches and takes the head of the
/// best, so its cost grows with the number of distinct platforms queued,
/// not with the jobs of platforms it cannot run.
#[derive(Default)]
pub struct Queue {
    shapes: HashMap<Properties, ShapeQueue>,
    len: usize,
    next_seq: u64,
}

impl ShapeQueue {
    fn push(&mut self, entry: Entry) {
        let level = self.levels.entry(entry.job.priority).or_default();
        let q = level.by_invocation.entry(entry.job.request.invocation.clone()).or_default();
        if q.is_empty() {
            level.turn.push_back(entry.job.request.invocation.clone());
        }
        q.push_back(entry);
        self.len += 1;
        self.head = self.find_head();
    }

    fn find_head(&self) -> Option<(i32, u64)> {
        let (prio, level) = self.levels.first_key_value()?;
        let inv = level.turn.front()?;
        let entry = level.by_invocation.get(inv)?.front()?;
        Some((*prio, entry.seq))
    }

    fn pop(&mut self) -> Option<Entry> {
        let mut level = self.levels.first_entry()?;
        let l = level.get_mut();
        let inv = l.turn.pop_front()?;
        let q = l.by_invocation.get_mut(&inv).expect("turn lists only queued invocations");
        let entry = q.pop_front().expect("queued invocations have jobs");
        if q.is_empty() {
            l.by_invocation.remove(&inv);
        } else {
            l.turn.push_back(inv);
        }
        if l.turn.is_empty() {
            level.remove();
        }
        self.len -= 1;
        self.head = self.find_head();
        Some(entry)
    }

    fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.levels.values().flat_map(|l| l.by_invocation.values()).flatten()
    }

    fn remove(&mut self, name: &str) -> Option<Entry> {
        for (prio, level) in self.levels.iter_mut() {
            for (inv, q) in level.by_invocation.iter_mut() {
                let Some(pos) = q.iter().position(|e| e.job.op.name == name) else { continue };
                let entry = q.remove(pos).expect("position is valid");
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
                self.head = self.find_head();
                return Some(entry);
            }
        }
        None
    }
}

impl Queue {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn push(&mut self, job: QueuedJob) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.shapes.entry(job.job.platform.clone()).or_default().push(Entry { seq, job });
        self.len += 1;
    }

    /// Takes the next job a worker with `props` can run: among the
    /// platforms it matches, the lowest priority value, then the earliest
    /// queued head (each platform's head is its builds' turn).
    pub fn take_for(&mut self, matcher: &PlatformMatcher, props: &[(String, String)]) -> Option<QueuedJob> {
        let best = self
            .shapes
            .iter()
            .filter_map(|(shape, q)| Some((q.head?, shape)))
            .filter(|(_, shape)| matcher.matches(props, shape))
            .min_by_key(|(head, _)| *head)
            .map(|(_, shape)| shape.clone())?;
        let q = self.shapes.get_mut(&best).expect("chosen among the queued platforms");
        let entry = q.pop().expect("a platform with a head has a job");
        if q.len == 0 {
            self.shapes.remove(&best);
        }
        self.len -= 1;
        Some(entry.job)
    }

    /// Queued jobs per priority, and when the oldest was queued.
    pub fn stats(&self) -> (BTreeMap<i32, usize>, Option<SystemTime>) {
        let mut oldest: Option<SystemTime> = None;
        let mut by_priority = BTreeMap::new();
        for q in self.shapes.values() {
            for (prio, level) in &q.levels {
                let jobs = level.by_invocation.values().flatten();
                *by_priority.entry(*prio).or_insert(0) += jobs.clone().count();
                for e in jobs {
                    oldest = Some(oldest.map_or(e.job.queued_at, |o| o.min(e.job.queued_at)));
                }
            }
        }
        (by_priority, oldest)
    }

    /// Takes every queued job out (shutdown).
    pub fn drain(&mut self) -> Vec<QueuedJob> {
        let shapes = std::mem::take(&mut self.shapes);
        self.len = 0;
        let mut entries: Vec<Entry> = shapes
            .into_values()
            .flat_map(|q| q.levels.into_values())
            .flat_map(|l| l.by_invocation.into_values())
            .flatten()
            .collect();
        entries.sort_by_key(|e| e.seq);
        entries.into_iter().map(|e| e.job).collect()
    }

    /// Names of queued operations of the platforms for which `platform`
    /// holds and whose job `job` holds: `platform` runs once per platform.
    pub fn names_where(
        &self,
        mut platform: impl FnMut(&Properties) -> bool,
        mut job: impl FnMut(&QueuedJob) -> bool,
    ) -> Vec<String> {
        let wanted = self.shapes.iter().filter(|(shape, _)| platform(shape)).flat_map(|(_, q)| q.entries());
        wanted.filter(|e| job(&e.job)).map(|e| e.job.op.name.clone()).collect()
    }

    /// Removes a queued operation (cancellation).
    pub fn remove(&mut self, name: &str) -> Option<QueuedJob> {
        let (shape, entry) = self.shapes.iter_mut().find_map(|(shape, q)| Some((shape.clone(), q.remove(name)?)))?;
        if self.shapes.get(&shape).is_some_and(|q| q.len == 0) {
            self.shapes.remove(&shape);
        }
        self.len -= 1;
        Some(entry.job)
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
    fn across_platforms_a_worker_matches_priority_then_arrival_decide() {
        let mut q = Queue::default();
        q.push(job(0, "a", 1, &[("pool", "gpu")]));
        q.push(job(0, "a", 2, &[]));
        q.push(job(-1, "b", 3, &[("pool", "gpu")]));
        q.push(job(0, "c", 4, &[("pool", "cpu")]));
        q.push(job(0, "a", 5, &[]));
        let gpu: Vec<(String, String)> = vec![("pool".into(), "gpu".into())];
        assert_eq!(order(&mut q, &gpu), vec![3, 1, 2, 5]);
        assert_eq!(q.len(), 1);
    }

    #[test]
    fn stranded_jobs_are_found_by_platform_first() {
        let mut q = Queue::default();
        for n in 0..50 {
            q.push(job(0, "a", n, &[("pool", if n % 2 == 0 { "even" } else { "odd" })]));
        }
        let mut platforms_checked = 0;
        let names = q.names_where(
            |p| {
                platforms_checked += 1;
                p[0].1 == "odd"
            },
            |_| true,
        );
        assert_eq!((platforms_checked, names.len()), (2, 25));
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
