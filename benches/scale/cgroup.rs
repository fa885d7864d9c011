//! A cgroup v1 `cpuacct` + `memory` pair per proxy run: CPU time and peak
//! memory of the proxy *and every child it execs* (`iptables-restore`,
//! `nft`, `ipset`), which per-process accounting would miss.
//!
//! The proxy joins both groups in `pre_exec` (before exec, so even its first
//! instruction is accounted), by writing `0` to each `cgroup.procs`.

use std::ffi::CString;
use std::io;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const CPUACCT: &str = "/sys/fs/cgroup/cpuacct";
const MEMORY: &str = "/sys/fs/cgroup/memory";

/// The two groups of one run.
pub struct Cgroup {
    cpu: PathBuf,
    mem: PathBuf,
}

impl Cgroup {
    /// Creates `<name>` under both hierarchies (fails if cgroup v1 `cpuacct`
    /// or `memory` is not mounted where this machine has them).
    pub fn create(name: &str) -> io::Result<Cgroup> {
        let cpu = PathBuf::from(CPUACCT).join(name);
        let mem = PathBuf::from(MEMORY).join(name);
        for d in [&cpu, &mem] {
            match std::fs::create_dir(d) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io::Error::other(format!("cannot create cgroup {}: {e}", d.display()))),
            }
        }
        Ok(Cgroup { cpu, mem })
    }

    /// `cgroup.procs` paths, as C strings for use between fork and exec.
    pub fn procs_files(&self) -> Vec<CString> {
        [&self.cpu, &self.mem]
            .iter()
            .map(|d| CString::new(d.join("cgroup.procs").to_string_lossy().into_owned()).expect("no NUL in path"))
            .collect()
    }

    /// CPU time of every task that ever ran in the group (user + system).
    pub fn cpu(&self) -> Duration {
        Duration::from_nanos(read_u64(&self.cpu.join("cpuacct.usage")).unwrap_or(0))
    }

    /// `memory.max_usage_in_bytes`: peak of user memory, page cache and the
    /// kernel memory charged to the group (nf_tables objects are allocated
    /// with `GFP_KERNEL_ACCOUNT`, so rules a child commits count here).
    pub fn mem_peak(&self) -> u64 {
        read_u64(&self.mem.join("memory.max_usage_in_bytes")).unwrap_or(0)
    }

    /// `memory.kmem.max_usage_in_bytes`: the kernel-memory part of the peak.
    pub fn kmem_peak(&self) -> u64 {
        read_u64(&self.mem.join("memory.kmem.max_usage_in_bytes")).unwrap_or(0)
    }

    /// PIDs still in the group.
    pub fn pids(&self) -> Vec<i32> {
        std::fs::read_to_string(self.mem.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // Everything in the group was started by the proxy we started.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let pids = self.pids();
            if pids.is_empty() || Instant::now() > deadline {
                break;
            }
            for pid in pids {
                // SAFETY: kill(2) on a process in a group we created.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = std::fs::remove_dir(&self.cpu);
        let _ = std::fs::remove_dir(&self.mem);
    }
}

fn read_u64(path: &std::path::Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}
