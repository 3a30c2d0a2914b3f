//! spawn_floor: the in-process floor of a host worker's launch. Spawns
//! `/bin/true` and waits for it, N times, from a current-thread tokio runtime
//! (as a re-server worker thread does), and prints the median and p99 in ms
//! as JSON. Unlike a fork+exec from a tiny C or Python process, this pays
//! what any async server pays: tokio's process handling and pidfd wake-up.
//!
//! usage: spawn_floor [N]
use std::time::Instant;

fn main() {
    let n: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(1000);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let mut times: Vec<f64> = rt.block_on(async {
        let mut times = Vec::with_capacity(n);
        for i in 0..n + 50 {
            let t = Instant::now();
            let mut cmd = tokio::process::Command::new("/bin/true");
            cmd.env_clear().stdin(std::process::Stdio::null()).process_group(0).kill_on_drop(true);
            cmd.spawn().expect("spawn /bin/true").wait().await.expect("wait");
            if i >= 50 {
                times.push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
        times
    });
    times.sort_by(|a, b| a.total_cmp(b));
    let p = |q: f64| times[((times.len() - 1) as f64 * q) as usize];
    println!("{{\"tokio_spawn_wait_ms\": {:.3}, \"p99_ms\": {:.3}}}", p(0.5), p(0.99));
}
