//! Summaries of latency samples, and small helpers shared by the measurements.

use serde_json::{Value, json};
use std::time::Duration;

/// Median, p99 and friends of a set of samples, in microseconds.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    pub n: usize,
    pub median_us: f64,
    pub p99_us: f64,
    pub mean_us: f64,
    pub min_us: f64,
    pub max_us: f64,
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// The nearest-rank percentile `p` (0 < p ≤ 100) of sorted samples.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

impl Summary {
    /// Summarises `samples` (sorted in place). `None` when there are none.
    pub fn of(samples: &mut [Duration]) -> Option<Summary> {
        if samples.is_empty() {
            return None;
        }
        samples.sort_unstable();
        let total: Duration = samples.iter().sum();
        Some(Summary {
            n: samples.len(),
            median_us: us(percentile(samples, 50.0)),
            p99_us: us(percentile(samples, 99.0)),
            mean_us: us(total) / samples.len() as f64,
            min_us: us(samples[0]),
            max_us: us(samples[samples.len() - 1]),
        })
    }

    pub fn to_json(self) -> Value {
        json!({
            "n": self.n,
            "median_us": self.median_us,
            "p99_us": self.p99_us,
            "mean_us": self.mean_us,
            "min_us": self.min_us,
            "max_us": self.max_us,
        })
    }
}

/// The summary of `samples` as JSON (`null` when there are none).
pub fn summary_json(samples: &mut [Duration]) -> Value {
    Summary::of(samples).map_or(Value::Null, Summary::to_json)
}

/// Pins the calling thread to one CPU (`None`: leaves it free on every CPU).
pub fn pin_to(cpu: Option<usize>) -> std::io::Result<()> {
    let Some(cpu) = cpu else {
        return Ok(());
    };
    // SAFETY: cpu_set_t is plain data; CPU_ZERO and CPU_SET only write into the local set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above, on a set we own.
    unsafe {
        libc::CPU_ZERO(&mut set);
        libc::CPU_SET(cpu, &mut set);
    }
    // SAFETY: pid 0 is the calling thread; the set is valid for its size.
    let r = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// CPU time of this process so far (user + system), from getrusage.
pub fn self_cpu() -> Duration {
    // SAFETY: rusage is plain data, filled in by getrusage.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a local rusage.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// `usage_usec` of a cgroup v2 directory's `cpu.stat` (its processes' CPU time), if readable.
pub fn cgroup_cpu(dir: Option<&std::path::Path>) -> Option<Duration> {
    let text = std::fs::read_to_string(dir?.join("cpu.stat")).ok()?;
    let usec = text
        .lines()
        .find_map(|l| l.strip_prefix("usage_usec "))?
        .trim()
        .parse::<u64>()
        .ok()?;
    Some(Duration::from_micros(usec))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut v: Vec<Duration> = (1..=100).rev().map(Duration::from_micros).collect();
        let s = Summary::of(&mut v).expect("samples");
        assert_eq!(s.n, 100);
        assert_eq!(s.median_us.round() as u64, 50);
        assert_eq!(s.p99_us.round() as u64, 99);
        assert_eq!(s.min_us.round() as u64, 1);
        assert_eq!(s.max_us.round() as u64, 100);
        let mut one = vec![Duration::from_micros(7)];
        let s = Summary::of(&mut one).expect("one sample");
        assert_eq!(s.p99_us.round() as u64, 7);
        assert!(Summary::of(&mut []).is_none());
    }
}
