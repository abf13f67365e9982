//! Where the machine's CPU went during a run, from Linux's `/proc`: how busy both cores were
//! and how many microseconds of CPU each request cost each process. A rate on a machine the
//! client shares is only understood next to these: at 95% busy the rate is what a request
//! costs, at 60% something else waits.

use std::fmt;

/// Clock ticks per second of `/proc`'s CPU times (`USER_HZ`: 100 on every Linux ABI).
const TICKS_PER_SECOND: f64 = 100.0;

/// The CPU times at the start of a run.
pub struct CpuClock {
    machine: MachineTicks,
    processes: Vec<(&'static str, u32, u64)>,
}

/// One run's CPU: the machine's busy share and each process's CPU per request.
pub struct CpuUse {
    busy: f64,
    per_request_us: f64,
    processes: Vec<(&'static str, f64)>,
}

#[derive(Clone, Copy)]
struct MachineTicks {
    busy: u64,
    total: u64,
}

impl CpuClock {
    /// Starts counting for `processes` (a name and a pid each); None where `/proc` cannot be read.
    pub fn start(processes: &[(&'static str, u32)]) -> Option<CpuClock> {
        let processes =
            processes.iter().map(|&(name, pid)| Some((name, pid, process_ticks(pid)?))).collect::<Option<_>>()?;
        Some(CpuClock { machine: machine_ticks()?, processes })
    }

    /// The CPU spent since the start, over `requests` requests.
    pub fn stop(self, requests: usize) -> Option<CpuUse> {
        let machine = machine_ticks()?;
        let seconds = |ticks: u64| ticks as f64 / TICKS_PER_SECOND;
        let per_request_us = |ticks: u64| seconds(ticks) * 1e6 / requests.max(1) as f64;
        let (busy, total) =
            (machine.busy.saturating_sub(self.machine.busy), machine.total.saturating_sub(self.machine.total));
        let processes = self
            .processes
            .iter()
            .map(|&(name, pid, before)| Some((name, per_request_us(process_ticks(pid)?.saturating_sub(before)))))
            .collect::<Option<_>>()?;
        Some(CpuUse {
            busy: if total == 0 { 0.0 } else { busy as f64 / total as f64 },
            per_request_us: per_request_us(busy),
            processes,
        })
    }
}

impl CpuUse {
    /// Microseconds of the machine's CPU (every process) per request.
    pub fn per_request_us(&self) -> f64 {
        self.per_request_us
    }
}

impl fmt::Display for CpuUse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "machine {:.0}% busy, {:.0} µs of CPU a request (", self.busy * 100.0, self.per_request_us)?;
        let named: f64 = self.processes.iter().map(|(_, us)| us).sum();
        for (name, us) in &self.processes {
            write!(f, "{name} {us:.0}, ")?;
        }
        write!(f, "others {:.0})", (self.per_request_us - named).max(0.0))
    }
}

/// The first line of `/proc/stat`: user, nice, system, idle, iowait, irq, softirq, steal ticks
/// summed over every core. Busy is everything but idle, iowait and steal (another machine's).
fn machine_ticks() -> Option<MachineTicks> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let ticks: Vec<u64> =
        stat.lines().next()?.split_whitespace().skip(1).take(8).map(|t| t.parse().ok()).collect::<Option<_>>()?;
    let [user, nice, system, idle, iowait, irq, softirq, steal] = ticks.try_into().ok()?;
    let busy = user + nice + system + irq + softirq;
    Some(MachineTicks { busy, total: busy + idle + iowait + steal })
}

/// A process's user and system ticks (`/proc/<pid>/stat` fields 14 and 15, counted after the
/// parenthesized command name, which may hold spaces).
fn process_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut fields = stat.get(stat.rfind(')')? + 1..)?.split_whitespace().skip(11);
    Some(fields.next()?.parse::<u64>().ok()? + fields.next()?.parse::<u64>().ok()?)
}
