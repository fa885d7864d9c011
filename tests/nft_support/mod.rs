//! Network namespaces for the nftables tests and benches: created with a
//! unique `nft-` name, used through `ip netns exec` or by moving a thread
//! into them, and deleted by name on drop (also when a test panics).
//! Nothing here gets a route to the host: namespaces start empty.

use std::fs::File;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use nix::sched::{CloneFlags, setns};
use sliceproxy::dataplane::nftables::netlink::Nft;

pub mod topology;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// One namespace, deleted on drop.
pub struct Netns {
    /// Its name under /run/netns.
    pub name: String,
}

impl Netns {
    /// Create `nft-<tag>-<pid>-<n>` with `lo` up.
    pub fn new(tag: &str) -> Netns {
        assert!(nix::unistd::geteuid().is_root(), "network namespace tests need root");
        reap_stale();
        let name = format!(
            "nft-{tag}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .expect("ip netns add");
        assert!(
            out.status.success(),
            "ip netns add {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ns = Netns { name };
        ns.must(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// Run a command inside.
    #[allow(dead_code)] // not every test binary runs commands unchecked
    pub fn exec(&self, cmd: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(cmd)
            .output()
            .expect("ip netns exec")
    }

    /// Run a command inside; panic with its stderr if it fails; stdout.
    pub fn must(&self, cmd: &[&str]) -> String {
        let out = self.exec(cmd);
        assert!(
            out.status.success(),
            "{} in {}: {}",
            cmd.join(" "),
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `nft -f -` with a script on stdin.
    #[allow(dead_code)] // only the parity test loads scripts
    pub fn nft_script(&self, script: &str) -> Result<(), String> {
        use std::io::Write;
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.name, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("nft");
        child.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Run `f` on a thread that entered this namespace (sockets it opens
    /// stay in the namespace).
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::scope(|s| {
            s.spawn(|| {
                let fd = File::open(&path).expect("open netns");
                setns(fd, CloneFlags::CLONE_NEWNET).expect("setns");
                f()
            })
            .join()
            .expect("namespace thread panicked")
        })
    }

    /// An nf_tables socket inside.
    pub fn nft(&self) -> Nft {
        self.enter(|| Nft::open().expect("nf_tables socket"))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        delete(&self.name);
    }
}

fn delete(name: &str) {
    // Kill what runs inside (by PID) before deleting the name.
    if let Ok(out) = Command::new("ip").args(["netns", "pids", name]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if let Ok(pid) = pid.parse::<i32>() {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            }
        }
    }
    let _ = Command::new("ip").args(["netns", "del", name]).status();
}

/// Delete `nft-*-<pid>-<n>` namespaces whose creating process is gone
/// (a test binary killed outright cannot run its destructors).
fn reap_stale() {
    let Ok(dir) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("nft-") {
            continue;
        }
        let parts: Vec<&str> = name.rsplitn(3, '-').collect();
        if let [_, pid, _] = parts[..]
            && let Ok(pid) = pid.parse::<u32>()
            && pid != std::process::id()
            && !std::path::Path::new(&format!("/proc/{pid}")).exists()
        {
            delete(&name);
        }
    }
}
