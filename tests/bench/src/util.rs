//! Measurement helpers: child-process resource usage, /proc readings, percentiles, tables.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The release binaries the benchmarks run.
pub fn release_binary(name: &str) -> anyhow::Result<PathBuf> {
    let path = repo().join("target/release").join(name);
    if !path.exists() {
        bail!(
            "{} is missing: run `cargo build --release --bins --workspace` first",
            path.display()
        );
    }
    Ok(path)
}

/// What a finished child used.
#[derive(Clone, Copy, Debug, Default)]
pub struct Usage {
    pub wall: Duration,
    pub cpu: Duration,
    pub max_rss_kib: u64,
    pub exit_code: i32,
}

/// Runs a command to completion and reads its own rusage (wait4), not its siblings'.
pub fn run_measured(command: &mut Command) -> anyhow::Result<(Usage, Vec<u8>)> {
    let started = Instant::now();
    let child = command
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("spawning the measured command")?;
    let pid = child.id() as libc::pid_t;
    let mut stdout = child.stdout.expect("piped");
    let reader = std::thread::spawn(move || {
        let mut buffer = Vec::new();
        std::io::Read::read_to_end(&mut stdout, &mut buffer).map(|_| buffer)
    });
    // ru_maxrss would count the benchmark's own memory at fork time: read the child's
    // high-water mark from /proc while it runs instead (it only rises).
    let peak_rss = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sampler = {
        let peak_rss = peak_rss.clone();
        let pid = pid as u32;
        std::thread::spawn(move || {
            while let Ok(kib) = process_peak_rss_kib(pid) {
                peak_rss.fetch_max(kib, std::sync::atomic::Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid, and wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    if waited != pid {
        bail!("wait4 failed: {}", std::io::Error::last_os_error());
    }
    let wall = started.elapsed();
    let _ = sampler.join();
    let output = reader
        .join()
        .expect("reader thread")
        .context("reading stdout")?;
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    Ok((
        Usage {
            wall,
            cpu: tv(usage.ru_utime) + tv(usage.ru_stime),
            max_rss_kib: peak_rss.load(std::sync::atomic::Ordering::Relaxed),
            exit_code: libc::WEXITSTATUS(status),
        },
        output,
    ))
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}

/// CPU time (user + system) a running process has used so far.
pub fn process_cpu(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    let after_name = &stat[stat.rfind(')').context("malformed stat")? + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the name.
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    Ok(Duration::from_secs_f64(ticks / clock_ticks()))
}

/// Peak resident memory of a running process (VmHWM), KiB.
pub fn process_peak_rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .context("no VmHWM")
}

pub fn percentile(sorted_ms: &[f64], p: f64) -> f64 {
    if sorted_ms.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted_ms.len() - 1) as f64).round() as usize;
    sorted_ms[rank.min(sorted_ms.len() - 1)]
}

/// An aligned text table.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:>w$}"))
            .collect::<Vec<_>>()
            .join("  ")
    };
    let mut out = line(headers.iter().map(|h| h.to_string()).collect()) + "\n";
    for row in rows {
        out.push_str(&line(row.clone()));
        out.push('\n');
    }
    out
}

/// Writes a benchmark's JSON summary to target/bench/<name>.json and says where.
pub fn write_summary(name: &str, value: &serde_json::Value) -> anyhow::Result<()> {
    let dir = repo().join("target/bench");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_string_pretty(value)?)?;
    println!("summary: {}", path.display());
    Ok(())
}

/// The loopback peers from the test harness, started into a fresh directory.
pub struct Peers {
    pub dir: PathBuf,
}

impl Peers {
    pub fn start(which: &str) -> anyhow::Result<Peers> {
        let dir = std::env::temp_dir().join(format!("netreach-bench-peers-{}", std::process::id()));
        let status = Command::new("bash")
            .arg(repo().join("tests/peers/start.sh"))
            .arg(&dir)
            .env("PEERS", which)
            .stdout(std::process::Stdio::null())
            .status()?;
        if !status.success() {
            bail!("starting the peers failed (run tests/peers/install.sh first)");
        }
        Ok(Peers { dir })
    }

    pub fn pid(&self, name: &str) -> anyhow::Result<u32> {
        let pids = std::fs::read_to_string(self.dir.join("peers.pids"))?;
        pids.lines()
            .find_map(|l| {
                l.strip_prefix(&format!("{name} "))
                    .and_then(|p| p.trim().parse().ok())
            })
            .with_context(|| format!("no pid for {name}"))
    }

    pub fn file(&self, relative: &str) -> PathBuf {
        self.dir.join(relative)
    }
}

impl Drop for Peers {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(repo().join("tests/peers/stop.sh"))
            .arg(&self.dir)
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A child killed when dropped.
pub struct Guard(pub Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn wait_for_file(path: &Path, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while !path.exists() {
        if Instant::now() > deadline {
            bail!("{} did not appear", path.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}
