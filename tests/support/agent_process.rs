//! The real `sliceproxy` binary running as the agent inside a test network
//! namespace (`ip netns exec`), as it runs on a node: its own iptables,
//! its own conntrack, the API server reached through a loopback forwarder.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running agent process; stopped (SIGTERM, then SIGKILL) on drop.
pub struct AgentProcess {
    child: Option<Child>,
    netns: String,
    args: Vec<String>,
    log: PathBuf,
    starts: usize,
}

impl AgentProcess {
    /// Start `sliceproxy ARGS` inside `netns`, logging to `log`.
    pub fn start(netns: &str, args: &[&str], log: &Path) -> AgentProcess {
        let mut agent = AgentProcess {
            child: None,
            netns: netns.to_string(),
            args: args.iter().map(|a| a.to_string()).collect(),
            log: log.to_path_buf(),
            starts: 0,
        };
        agent.spawn();
        agent
    }

    fn spawn(&mut self) {
        let out = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("agent log file");
        let err = out.try_clone().expect("agent log file");
        // `ip netns exec` execs the program after entering the namespace, so
        // the PID we hold is the agent's own.
        let child = Command::new("ip")
            .args(["netns", "exec", &self.netns, env!("CARGO_BIN_EXE_sliceproxy")])
            .args(&self.args)
            .env("RUST_LOG", "info,sliceproxy=debug")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("start sliceproxy");
        self.child = Some(child);
        self.starts += 1;
    }

    /// The agent's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Lines of the log containing `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.log().lines().filter(|l| l.contains(needle)).count()
    }

    /// Wait until the log holds at least `n` lines containing `needle`.
    pub fn wait_for_log(&mut self, needle: &str, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.count(needle) < n {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("agent exited with {status}:\n{}", tail(&self.log()));
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {n}x {needle:?} in the agent log:\n{}",
                tail(&self.log())
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stop with SIGTERM (as the kubelet does) and wait; rules stay.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = child.id() as i32;
            let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Start again with the same arguments.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// How often the process was started.
    pub fn starts(&self) -> usize {
        self.starts
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The last 60 lines of a log.
pub fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}
