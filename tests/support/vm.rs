//! Run a test binary inside a qemu VM booted with Debian's cloud kernel, for
//! kernel features the CI host lacks (IPVS, loadable modules, dummy links).
//!
//! `tests/vm/build-image.sh` downloads the kernel and busybox (`apt-get
//! download`) and builds a base initramfs into
//! `${SLICEPROXY_CACHE:-~/.cache/sliceproxy}/vm/image`; it is idempotent and
//! is called on every [`run`] (a no-op when the cache is warm). Each run then
//! appends a second cpio archive holding the test binary, its shared
//! libraries and its arguments; the kernel unpacks both archives into one
//! rootfs. The base image's `/init` runs `/test/bin`, prints
//! `<marker> <exit status>` on the serial console and powers off.
//!
//! Software emulation only (`-accel tcg`): the build machines' `/dev/kvm`
//! cannot boot a stock kernel. A missing qemu or a failed image build panics
//! with the package to install: a missing prerequisite is a failure, not a skip.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// What a VM run produced.
#[derive(Debug, Clone)]
pub struct VmResult {
    /// The test binary's exit status as `/init` reported it; `None` if the VM
    /// timed out or died before printing the marker.
    pub exit_code: Option<i32>,
    /// Everything on the serial console (kernel messages, the binary's
    /// stdout/stderr), with `\r` removed.
    pub console_output: String,
    /// Wall time from launching qemu to its exit.
    pub elapsed: Duration,
}

/// Debian packages the host needs for [`run`], for error messages and CI.
pub const HOST_PACKAGES: &str = "qemu-system-x86 kmod util-linux gzip";

const QEMU: &str = "qemu-system-x86_64";

/// The cache directory (`$SLICEPROXY_CACHE/vm` or `~/.cache/sliceproxy/vm`).
pub fn cache_dir() -> PathBuf {
    let base = std::env::var_os("SLICEPROXY_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/root"));
            home.join(".cache/sliceproxy")
        });
    base.join("vm")
}

/// Build the image if the cache is cold; returns the image directory.
pub fn ensure_image() -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vm/build-image.sh");
    let out = Command::new("bash")
        .arg(&script)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "{} failed ({}); it needs apt-get, dpkg-deb, depmod (kmod), flock, gzip:\n{}{}",
        script.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    cache_dir().join("image")
}

/// Boot the VM, run `binary args...` as its only program, and return its
/// exit status and the console. Panics if a prerequisite is missing.
pub fn run(binary: &Path, args: &[&str], timeout: Duration) -> VmResult {
    match Command::new(QEMU).arg("--version").output() {
        Ok(o) if o.status.success() => {}
        _ => panic!("{QEMU} not found: apt-get install {HOST_PACKAGES}"),
    }
    let image = ensure_image();
    let work = scratch_dir();
    let marker = format!(
        "SLICEPROXY-VM-EXIT-{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    );

    let initrd = work.join("initrd.img");
    build_initrd(&image.join("base.cpio.gz"), binary, args, &marker, &work, &initrd);

    let started = Instant::now();
    let mut child = Command::new(QEMU)
        .args(["-accel", "tcg", "-cpu", "max", "-m", "1024", "-smp", "1"])
        .arg("-kernel")
        .arg(image.join("vmlinuz"))
        .arg("-initrd")
        .arg(&initrd)
        // panic=-1 + -no-reboot: if /init dies, qemu exits instead of hanging.
        .args([
            "-append",
            "console=ttyS0 panic=-1 quiet",
            "-nographic",
            "-no-reboot",
            "-nic",
            "none",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {QEMU}: {e}"));

    let console = Arc::new(Mutex::new(Vec::new()));
    let readers: Vec<_> = [
        child.stdout.take().map(|s| Box::new(s) as Box<dyn Read + Send>),
        child.stderr.take().map(|s| Box::new(s) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    .map(|mut stream| {
        let console = console.clone();
        thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = stream.read(&mut buf) {
                if n == 0 {
                    break;
                }
                console
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend_from_slice(&buf[..n]);
            }
        })
    })
    .collect();

    let deadline = started + timeout;
    let mut timed_out = false;
    loop {
        if child.try_wait().ok().flatten().is_some() {
            break;
        }
        if Instant::now() >= deadline {
            timed_out = true;
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
    let elapsed = started.elapsed();
    for r in readers {
        let _ = r.join();
    }
    let raw = console.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let console_output = String::from_utf8_lossy(&raw).replace('\r', "");
    let _ = fs::remove_dir_all(&work);

    let exit_code = console_output.lines().find_map(|line| {
        let at = line.find(&marker)?;
        line[at + marker.len()..].trim().parse::<i32>().ok()
    });
    if timed_out && exit_code.is_none() {
        eprintln!("VM timed out after {timeout:?}");
    }
    VmResult {
        exit_code,
        console_output,
        elapsed,
    }
}

fn scratch_dir() -> PathBuf {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "sliceproxy-vm-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("create VM scratch dir");
    dir
}

/// base.cpio.gz (padded to 4 bytes: the kernel looks for the next archive
/// at a 4-byte boundary and reports "invalid magic" otherwise) followed by
/// an uncompressed newc archive with /test/{bin,args,marker} and libraries.
fn build_initrd(base: &Path, binary: &Path, args: &[&str], marker: &str, work: &Path, out: &Path) {
    let mut image = fs::read(base).unwrap_or_else(|e| panic!("read {}: {e}", base.display()));
    while !image.len().is_multiple_of(4) {
        image.push(0);
    }

    // Strip debug info: test binaries carry hundreds of MB of it, and the
    // whole initramfs lives in guest RAM.
    let stripped = work.join("bin");
    let strip_ok = Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(&stripped)
        .arg(binary)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !strip_ok {
        fs::copy(binary, &stripped).unwrap_or_else(|e| panic!("copy {}: {e}", binary.display()));
    }

    let mut cpio = Newc::default();
    cpio.dir("test");
    cpio.file("test/bin", 0o755, &fs::read(&stripped).expect("read test binary"));
    let arg_lines: String = args.iter().map(|a| format!("{a}\n")).collect();
    cpio.file("test/args", 0o644, arg_lines.as_bytes());
    cpio.file("test/marker", 0o644, format!("{marker}\n").as_bytes());
    for lib in shared_libraries(binary) {
        let rel = lib.to_string_lossy().trim_start_matches('/').to_owned();
        let mut parent = PathBuf::new();
        for part in Path::new(&rel).parent().into_iter().flat_map(|p| p.components()) {
            parent.push(part);
            cpio.dir(&parent.to_string_lossy());
        }
        let data = fs::read(&lib).unwrap_or_else(|e| panic!("read {}: {e}", lib.display()));
        cpio.file(&rel, 0o755, &data);
    }
    image.extend_from_slice(&cpio.finish());
    let mut f = fs::File::create(out).expect("create initrd");
    f.write_all(&image).expect("write initrd");
}

/// The binary's shared libraries and loader, per `ldd` (resolved paths).
fn shared_libraries(binary: &Path) -> Vec<PathBuf> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .expect("ldd (package libc-bin) is required");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut libs = Vec::new();
    for line in text.lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
        let path = line.split_whitespace().find(|w| w.starts_with('/'));
        if let Some(p) = path {
            libs.push(PathBuf::from(p));
        }
    }
    libs
}

/// A minimal writer for the "newc" cpio format the kernel unpacks.
#[derive(Default)]
struct Newc {
    buf: Vec<u8>,
    ino: u32,
    dirs: Vec<String>,
}

impl Newc {
    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.ino += 1;
        let namesize = name.len() + 1;
        let header = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            data.len(),
            0,
            0,
            0,
            0,
            namesize,
            0
        );
        self.buf.extend_from_slice(header.as_bytes());
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        self.pad();
        self.buf.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    fn dir(&mut self, name: &str) {
        if !self.dirs.iter().any(|d| d == name) {
            self.dirs.push(name.to_owned());
            self.entry(name, 0o040755, &[]);
        }
    }

    fn file(&mut self, name: &str, perm: u32, data: &[u8]) {
        self.entry(name, 0o100000 | perm, data);
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[]);
        self.buf
    }
}

/// The whole pattern of a VM test, in one place: inside the VM (the
/// `SLICEPROXY_IN_VM` variable is set) run `scenario`; on the host, boot the
/// VM with this very test binary selecting `test_name`, then require a
/// console line `<prefix> <check> ok` for every check and a clean exit.
pub fn run_checks(test_name: &str, prefix: &str, checks: &[&str], timeout: Duration, scenario: impl FnOnce()) {
    if std::env::var_os("SLICEPROXY_IN_VM").is_some() {
        scenario();
        return;
    }
    let exe = std::env::current_exe().expect("current_exe");
    let result = run(
        &exe,
        &["--exact", test_name, "--nocapture", "--test-threads=1"],
        timeout,
    );
    let report = || format!("VM console:\n{}", result.console_output);
    eprintln!("VM boot-to-poweroff: {:.2?}", result.elapsed);
    for check in checks {
        let ok = format!("{prefix} {check} ok");
        assert!(
            result.console_output.lines().any(|l| l.trim_end().ends_with(&ok)),
            "missing `{ok}`\n{}",
            report()
        );
    }
    assert_eq!(result.exit_code, Some(0), "in-VM test binary failed\n{}", report());
}
