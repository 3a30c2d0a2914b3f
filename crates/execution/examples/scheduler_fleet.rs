//! The scheduler at fleet size: 1,000 simulated workers of 20 platform
//! shapes take actions from a queue kept at 1,000 or 100,000 actions of
//! mixed priorities and 50 builds (fair share on); each dispatch takes the
//! queue lock, takes the worker's next action and queues a new one of the
//! same shape. Reports dispatches per second and take latency under the
//! lock, and the floor: the same loop through a plain FIFO under the same
//! lock (no matching, no priorities).
//!
//! cargo run --release -p re-execution --example scheduler_fleet
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;
use re_execution::action::PreparedAction;
use re_execution::operation::Operation;
use re_execution::platform::{PlatformMatcher, Properties};
use re_execution::queue::{Queue, QueuedJob, RequestInfo};
use re_proto::DigestInfo;

const WORKERS: usize = 1000;
const SHAPES: usize = 20;
const BUILDS: usize = 50;
const DISPATCHES: usize = 200_000;

/// A small deterministic generator (xorshift), so runs are comparable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 as usize
    }
}

fn shape(s: usize) -> Properties {
    vec![("OSFamily".into(), "linux".into()), ("pool".into(), format!("p{s}"))]
}

fn job(i: usize, shape_of: usize, rng: &mut Rng) -> QueuedJob {
    let d = DigestInfo::new([(i % 251) as u8; 32], i as u64);
    QueuedJob {
        op: Operation::new(d),
        job: Arc::new(PreparedAction {
            action_digest: d,
            action: Default::default(),
            command: Default::default(),
            inputs: Default::default(),
            platform: shape(shape_of),
            timeout: Duration::from_secs(600),
            blobs: vec![],
            working_directory: Default::default(),
            outputs: vec![],
        }),
        priority: (rng.next() % 3) as i32 - 1,
        request: RequestInfo { invocation: format!("build-{}", rng.next() % BUILDS), ..Default::default() },
        queued_at: SystemTime::now(),
        attempts: 0,
    }
}

struct Figures {
    per_second: f64,
    p50: Duration,
    p99: Duration,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

/// Runs DISPATCHES dispatches through `take` / `put` under one lock.
fn measure<Q>(
    queue: &Mutex<Q>,
    rng: &mut Rng,
    mut take: impl FnMut(&mut Q, usize) -> Option<QueuedJob>,
    mut put: impl FnMut(&mut Q, QueuedJob),
) -> Figures {
    let mut latencies = Vec::with_capacity(DISPATCHES);
    let mut busy = Duration::ZERO;
    let mut done = 0;
    // New actions are made ahead, outside the timed part.
    let mut fresh: Vec<QueuedJob> = Vec::new();
    let mut n = 10_000_000;
    while done < DISPATCHES {
        if fresh.is_empty() {
            fresh = (0..10_000)
                .map(|_| {
                    n += 1;
                    job(n, 0, rng)
                })
                .collect();
        }
        let worker = rng.next() % WORKERS;
        let started = Instant::now();
        let mut q = queue.lock();
        let taken = take(&mut q, worker);
        let took = started.elapsed();
        if let Some(t) = taken {
            // The same shape again, so the mix stays as it was.
            let mut next = fresh.pop().expect("made above");
            Arc::get_mut(&mut next.job).expect("not shared").platform = t.job.platform.clone();
            put(&mut q, next);
            drop(q);
            busy += started.elapsed();
            latencies.push(took);
            done += 1;
        }
    }
    latencies.sort_unstable();
    Figures {
        per_second: done as f64 / busy.as_secs_f64(),
        p50: percentile(&latencies, 0.50),
        p99: percentile(&latencies, 0.99),
    }
}

fn run(queued: usize) -> (Figures, Figures) {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let matcher = PlatformMatcher::default();
    let workers: Vec<Properties> = (0..WORKERS)
        .map(|w| {
            let mut p = shape(w % SHAPES);
            p.insert(0, ("Arch".into(), "amd64".into()));
            p
        })
        .collect();
    let queue = Mutex::new(Queue::default());
    for i in 0..queued {
        let s = rng.next() % SHAPES;
        queue.lock().push(job(i, s, &mut rng));
    }
    let indexed = measure(&queue, &mut rng, |q, w| q.take_for(&matcher, &workers[w]), |q, j| q.push(j));
    assert_eq!(queue.lock().len(), queued);

    let fifo = Mutex::new(VecDeque::new());
    for i in 0..queued {
        let s = rng.next() % SHAPES;
        fifo.lock().push_back(job(i, s, &mut rng));
    }
    let floor = measure(&fifo, &mut rng, |q, _| q.pop_front(), |q, j| q.push_back(j));
    (indexed, floor)
}

fn main() {
    println!("| queued | dispatches/s | p50 take | p99 take | floor (FIFO) dispatches/s | floor p99 |");
    println!("|---|---|---|---|---|---|");
    let mut at = Vec::new();
    for queued in [1_000, 100_000] {
        let (f, floor) = run(queued);
        println!(
            "| {queued} | {:.0} | {:.2} µs | {:.2} µs | {:.0} | {:.2} µs |",
            f.per_second,
            f.p50.as_secs_f64() * 1e6,
            f.p99.as_secs_f64() * 1e6,
            floor.per_second,
            floor.p99.as_secs_f64() * 1e6
        );
        at.push(f);
    }
    println!(
        "\nratio 100,000 / 1,000 queued: p99 take {:.2}, dispatch rate {:.2}",
        at[1].p99.as_secs_f64() / at[0].p99.as_secs_f64(),
        at[0].per_second / at[1].per_second
    );
}
