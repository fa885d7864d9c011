//! A proxy process inside a node namespace and a cgroup, its output read
//! through pipes (so log writes are not charged to the proxy's memory group
//! as page cache) and kept with the wall-clock time each line arrived.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::cgroup::Cgroup;
use crate::netns::Netns;

/// One line of output.
#[derive(Clone, Debug)]
pub struct Line {
    /// The text, ANSI colour codes removed.
    pub text: String,
}

/// A running proxy.
pub struct ProxyProcess {
    child: Child,
    /// Wall-clock time just before the spawn.
    pub started: SystemTime,
    lines: Arc<Mutex<Vec<Line>>>,
}

impl ProxyProcess {
    /// Starts `program ARGS` in `ns` (via `ip netns exec`, which execs it, so
    /// the PID is the proxy's own), inside `cgroup`, logging to `log`.
    pub fn spawn(
        ns: &Netns,
        cgroup: &Cgroup,
        program: &Path,
        args: &[String],
        env: &[(&str, &str)],
        log: &Path,
    ) -> std::io::Result<ProxyProcess> {
        let procs = cgroup.procs_files();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns.name()])
            .arg(program)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: only async-signal-safe calls (open, write, close) between
        // fork and exec, on C strings built before the fork.
        unsafe {
            cmd.pre_exec(move || {
                for p in &procs {
                    let fd = libc::open(p.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                    if fd < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    // "0" moves the writing process itself (cgroup v1).
                    let n = libc::write(fd, b"0".as_ptr().cast(), 1);
                    libc::close(fd);
                    if n != 1 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let started = SystemTime::now();
        let mut child = cmd.spawn()?;
        let lines: Arc<Mutex<Vec<Line>>> = Arc::default();
        let file = Arc::new(Mutex::new(std::fs::File::create(log)?));
        let out = child.stdout.take().expect("piped stdout");
        let err = child.stderr.take().expect("piped stderr");
        for stream in [Box::new(out) as Box<dyn std::io::Read + Send>, Box::new(err)] {
            let (lines, file) = (lines.clone(), file.clone());
            std::thread::spawn(move || {
                for text in BufReader::new(stream).lines() {
                    let Ok(text) = text else { break };
                    let text = strip_ansi(&text);
                    let _ = writeln!(file.lock().unwrap_or_else(|p| p.into_inner()), "{text}");
                    lines.lock().unwrap_or_else(|p| p.into_inner()).push(Line { text });
                }
            });
        }
        Ok(ProxyProcess { child, started, lines })
    }

    /// The proxy's PID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `Some(status text)` once it has exited.
    pub fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(s)) => Some(s.to_string()),
            _ => None,
        }
    }

    /// A copy of the output so far.
    pub fn lines(&self) -> Vec<Line> {
        self.lines.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The last `n` lines, joined.
    pub fn tail(&self, n: usize) -> String {
        let l = self.lines();
        l[l.len().saturating_sub(n)..]
            .iter()
            .map(|l| l.text.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Peak RSS of the proxy process itself (`VmHWM`), bytes.
    pub fn vm_hwm(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    }

    /// SIGTERM, then SIGKILL after `grace`.
    pub fn stop(&mut self, grace: Duration) {
        if self.exited().is_some() {
            return;
        }
        // SAFETY: kill(2) on our own unreaped child.
        unsafe { libc::kill(self.pid() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if self.exited().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(10));
    }
}

/// Removes ANSI escape sequences (`ESC [ ... letter`).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
