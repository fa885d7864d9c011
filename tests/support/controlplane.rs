//! A real etcd + kube-apiserver, started as local processes, for integration
//! tests (the same idea as controller-runtime's envtest).
//!
//! Binaries come from `tests/controlplane/build.sh` (see [`Binaries::locate`]).
//! Use [`shared()`] for one control plane per test binary, and
//! [`ControlPlane::new_namespace`] to isolate tests from each other. Tests that
//! disrupt the control plane (restarts, compaction) affect every test sharing
//! it; such tests can use a private [`ControlPlane::start()`] instead.
//!
//! # Process lifecycle
//!
//! The children must die with the test binary even when tests fail or panic,
//! and the two obvious tools do not work on their own:
//!
//! * the `static` holding the shared control plane is never dropped, so a
//!   `Drop` impl does not run at exit;
//! * `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits,
//!   not the process, and libtest runs each test on a short-lived thread.
//!
//! So:
//!
//! 1. every child is forked by one dedicated supervisor thread that blocks
//!    forever on a channel and therefore lives exactly as long as the process;
//!    the child sets `PR_SET_PDEATHSIG(SIGKILL)` in `pre_exec`. This is the
//!    backstop that also covers `SIGKILL`/`SIGTERM` of the test binary, aborts
//!    and `panic = "abort"`.
//! 2. the graceful path is a libc `atexit` handler (libtest ends with
//!    `exit()`, both when all tests pass and with status 101 when some
//!    fail), which sends SIGTERM, then SIGKILL after a grace period, reaps the
//!    children and removes the temp dir. Private control planes do the same in
//!    `Drop` (which also runs while unwinding from a failed assertion).
//! 3. if the binary was killed so that no exit handler ran, its temp dir
//!    (`$TMPDIR/sliceproxy-cp-<pid>-<n>`) is removed by the next run once
//!    `<pid>` no longer exists.
//!
//! Set `SLICEPROXY_KEEP_CONTROLPLANE=1` to keep the temp dir (logs, etcd data)
//! for debugging; its path is printed.
//!
//! # Forcing `410 Gone` on watches
//!
//! Observed with kube-apiserver v1.34.4, and again with v1.37.2 (the tests relying on it pass):
//!
//! * With the watch cache (the default, as in real clusters; it is also what
//!   sends BOOKMARK events and serves streaming lists), watches are served from
//!   memory, which keeps recent events regardless of etcd (at least 75 s), so
//!   compacting etcd alone does NOT break a watch from an old
//!   resourceVersion. Restarting kube-apiserver re-initialises the cache at
//!   etcd's current revision; a watch from an older resourceVersion then gets
//!   an `ERROR` event with status 410 ("too old resource version: 199 (204)").
//!   [`ControlPlane::expire_watches`] compacts *and* restarts, so that etcd
//!   agrees (lists at the old resourceVersion get 410 too, as they would in a
//!   real cluster).
//! * With `ControlPlane::start_with_args(&["--watch-cache=false"])` watches go
//!   straight to etcd, and [`ControlPlane::compact_etcd`] alone makes them fail
//!   with 410 ("The resourceVersion for the provided watch is too old."),
//!   without a restart.
//!
//! Either way the watch request itself returns HTTP 200 and the 410 arrives
//! as the first (`ERROR`) event, which is what `kube::runtime::watcher`
//! handles by re-listing.

use std::ffi::OsStr;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock, mpsc};
use std::time::{Duration, Instant};

/// `KEY=value` lines shared with `tests/controlplane/build.sh`, so that both
/// agree on the cache directory. Compiled in: changing it rebuilds the tests.
const VERSIONS_ENV: &str = include_str!("../controlplane/versions.env");

/// How long etcd and kube-apiserver may take to become ready. A cold
/// kube-apiserver on a loaded 2-core CI runner needs 10-30 s.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a process gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(15);
/// Lines of log printed when a process fails.
const LOG_TAIL_LINES: usize = 60;

/// Service CIDRs (dual-stack: IPv4 primary, IPv6 secondary).
pub const SERVICE_CIDRS: &str = "10.96.0.0/16,fd00:96::/108";

/// Paths of the three binaries.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// `kube-apiserver`
    pub kube_apiserver: PathBuf,
    /// `etcd`
    pub etcd: PathBuf,
    /// `kubectl`
    pub kubectl: PathBuf,
}

impl Binaries {
    /// Finds the binaries: `SLICEPROXY_KUBE_APISERVER`, `SLICEPROXY_ETCD` and
    /// `SLICEPROXY_KUBECTL` override individual paths; otherwise they are taken
    /// from [`cache_bin_dir`]. Panics (never skips: a missing binary in CI is a
    /// failure) with instructions when one is missing.
    pub fn locate() -> Binaries {
        let dir = cache_bin_dir();
        let find = |var: &str, name: &str| -> PathBuf {
            let path = match std::env::var_os(var) {
                Some(p) if !p.is_empty() => PathBuf::from(p),
                _ => dir.join(name),
            };
            if !path.is_file() {
                panic!(
                    "control plane binary `{name}` not found at {}.\n\
                     Build the test control plane first:\n\n    \
                     tests/controlplane/build.sh\n\n\
                     (or set {var} to the path of a `{name}` binary)",
                    path.display()
                );
            }
            path
        };
        Binaries {
            kube_apiserver: find("SLICEPROXY_KUBE_APISERVER", "kube-apiserver"),
            etcd: find("SLICEPROXY_ETCD", "etcd"),
            kubectl: find("SLICEPROXY_KUBECTL", "kubectl"),
        }
    }
}

/// A value from `tests/controlplane/versions.env`.
pub fn pinned_version(key: &str) -> &'static str {
    VERSIONS_ENV
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .map(str::trim)
        .unwrap_or_else(|| panic!("tests/controlplane/versions.env does not set {key}"))
}

/// `${SLICEPROXY_CACHE:-$HOME/.cache/sliceproxy}/controlplane/<k8s>-<etcd>`,
/// exactly as `tests/controlplane/build.sh` computes it.
pub fn cache_bin_dir() -> PathBuf {
    let root = match std::env::var_os("SLICEPROXY_CACHE") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => {
            let home = std::env::var_os("HOME")
                .expect("neither SLICEPROXY_CACHE nor HOME is set; cannot find the control plane binaries");
            PathBuf::from(home).join(".cache/sliceproxy")
        }
    };
    root.join("controlplane").join(format!(
        "{}-{}",
        pinned_version("K8S_VERSION"),
        pinned_version("ETCD_VERSION")
    ))
}

// ---------------------------------------------------------------------------
// Process supervision

type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

/// Spawns `cmd` from the long-lived supervisor thread, with
/// `PR_SET_PDEATHSIG(SIGKILL)` so the kernel kills the child if the test
/// binary dies without running its exit handlers (see the module docs).
fn spawn_supervised(mut cmd: Command) -> io::Result<Child> {
    static SUPERVISOR: OnceLock<mpsc::Sender<SpawnRequest>> = OnceLock::new();
    let tx = SUPERVISOR.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("controlplane-supervisor".into())
            // The sender lives in a static and is never dropped, so this loop
            // (and the thread, which PDEATHSIG is tied to) runs until the
            // process exits.
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("cannot spawn the control plane supervisor thread");
        tx
    });

    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure only makes async-signal-safe syscalls (prctl,
    // getppid) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl: then nobody
            // would ever deliver the signal.
            if libc::getppid() != parent {
                return Err(io::Error::other("parent exited before exec"));
            }
            Ok(())
        });
    }
    let (reply_tx, reply_rx) = mpsc::channel();
    tx.send((cmd, reply_tx))
        .expect("control plane supervisor thread is gone");
    reply_rx
        .recv()
        .expect("control plane supervisor thread dropped a spawn request")
}

/// A running child process with its log file.
struct Proc {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL; always reaps the child.
    fn stop(&mut self, grace: Duration) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        // SAFETY: plain kill(2) on our own, not yet reaped, child: the PID
        // cannot have been reused.
        unsafe { libc::kill(self.pid() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_)) | Err(_)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        eprintln!(
            "controlplane: {} (pid {}) ignored SIGTERM for {grace:?}, sending SIGKILL",
            self.name,
            self.pid()
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Default)]
struct Procs {
    etcd: Option<Proc>,
    apiserver: Option<Proc>,
}

// ---------------------------------------------------------------------------
// The control plane

/// A local etcd + kube-apiserver pair listening on 127.0.0.1.
pub struct ControlPlane {
    bins: Binaries,
    dir: PathBuf,
    etcd_client_url: String,
    etcd_peer_url: String,
    apiserver_port: u16,
    admin_token: String,
    kubeconfig: PathBuf,
    ca_cert: PathBuf,
    procs: Mutex<Procs>,
    counter: AtomicU64,
    shut_down: AtomicBool,
    extra_apiserver_args: Vec<String>,
}

static SHARED: OnceLock<ControlPlane> = OnceLock::new();

/// The control plane shared by all tests of this test binary, started on
/// first use and stopped when the process exits (see the module docs).
///
/// If starting fails, this panics, and so does every later call (each retries
/// the start).
pub fn shared() -> &'static ControlPlane {
    SHARED.get_or_init(|| {
        static REGISTER: std::sync::Once = std::sync::Once::new();
        REGISTER.call_once(|| {
            // SAFETY: registering a plain extern "C" fn with no captured state.
            if unsafe { libc::atexit(shutdown_shared_at_exit) } != 0 {
                panic!("atexit() failed to register the control plane cleanup");
            }
        });
        ControlPlane::start()
    })
}

extern "C" fn shutdown_shared_at_exit() {
    // Unwinding out of an extern "C" fn aborts; never let a panic escape.
    let _ = std::panic::catch_unwind(|| {
        if let Some(cp) = SHARED.get() {
            cp.shutdown();
        }
    });
}

impl ControlPlane {
    /// Starts a private control plane (fresh etcd and kube-apiserver, own
    /// temp dir). It is stopped when dropped. Prefer [`shared()`] unless the
    /// test disrupts the control plane.
    pub fn start() -> ControlPlane {
        Self::start_with_args(&[])
    }

    /// Like [`start()`](Self::start), with extra kube-apiserver flags (kept
    /// across restarts), e.g. `--watch-cache=false` or `--feature-gates=...`.
    /// A flag given here overrides the default one (the last occurrence of a
    /// flag wins).
    pub fn start_with_args(extra_apiserver_args: &[&str]) -> ControlPlane {
        let bins = Binaries::locate();
        remove_stale_dirs();
        let dir = create_temp_dir();
        let ports = free_ports(3);
        let cp = ControlPlane {
            bins,
            etcd_client_url: format!("http://127.0.0.1:{}", ports[0]),
            etcd_peer_url: format!("http://127.0.0.1:{}", ports[1]),
            apiserver_port: ports[2],
            admin_token: random_token(),
            kubeconfig: dir.join("admin.kubeconfig"),
            ca_cert: dir.join("ca.crt"),
            dir,
            procs: Mutex::new(Procs::default()),
            counter: AtomicU64::new(0),
            shut_down: AtomicBool::new(false),
            extra_apiserver_args: extra_apiserver_args.iter().map(|a| a.to_string()).collect(),
        };
        // From here on a panic unwinds through `cp`, whose Drop stops
        // whatever was started and removes the temp dir.
        cp.write_credentials();
        cp.start_etcd();
        cp.start_apiserver();
        cp
    }

    /// `https://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.apiserver_port)
    }

    /// The etcd client URL (`http://127.0.0.1:<port>`, no TLS, no auth).
    pub fn etcd_url(&self) -> &str {
        &self.etcd_client_url
    }

    /// Bearer token of an admin user in group `system:masters`.
    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// Kubeconfig for the admin token.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// PEM file of the CA that signed the apiserver's serving certificate.
    pub fn ca_cert_path(&self) -> &Path {
        &self.ca_cert
    }

    /// Temp dir holding logs (`etcd.log`, `kube-apiserver.log`), etcd data and
    /// credentials.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The binaries in use.
    pub fn binaries(&self) -> &Binaries {
        &self.bins
    }

    /// Writes a kubeconfig authenticating with `token` (e.g. a ServiceAccount
    /// token from the TokenRequest API) and returns its path (in the temp dir).
    pub fn kubeconfig_for_token(&self, token: &str) -> PathBuf {
        let path = self.dir.join(format!("user-{}.kubeconfig", self.next_id()));
        write_file(&path, &self.kubeconfig_yaml(token));
        path
    }

    /// Writes a kubeconfig for `token` that reaches the API server through
    /// `server` (e.g. a proxy on another loopback port; the serving
    /// certificate is for 127.0.0.1, so any loopback port verifies).
    pub fn kubeconfig_via(&self, server: &str, token: &str) -> PathBuf {
        let path = self.dir.join(format!("via-{}.kubeconfig", self.next_id()));
        let yaml = self
            .kubeconfig_yaml(token)
            .replace(&format!("server: {}\n", self.url()), &format!("server: {server}\n"));
        assert!(yaml.contains(server), "kubeconfig server was not replaced");
        write_file(&path, &yaml);
        path
    }

    /// A client authenticated as the admin user.
    ///
    /// A new client per call, on purpose: a `kube::Client` spawns its
    /// connection tasks on the tokio runtime it was created on, and every
    /// `#[tokio::test]` has its own runtime, so a client cannot be cached
    /// across tests.
    pub async fn client(&self) -> kube::Client {
        client_from_kubeconfig(&self.kubeconfig).await
    }

    /// A client authenticated with `token`.
    pub async fn client_for_token(&self, token: &str) -> kube::Client {
        client_from_kubeconfig(&self.kubeconfig_for_token(token)).await
    }

    /// Runs kubectl with the admin kubeconfig (`KUBECONFIG`) and a discovery
    /// cache in the temp dir (`KUBECACHEDIR`, so nothing is written to
    /// `$HOME`). Pass `--kubeconfig` to use another identity.
    pub fn kubectl<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Command::new(&self.bins.kubectl)
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("KUBECACHEDIR", self.dir.join("kubectl-cache"))
            .stdin(Stdio::null())
            .output()
            .expect("cannot run kubectl")
    }

    /// [`kubectl`](Self::kubectl), panicking with its stderr unless it
    /// succeeds; returns stdout.
    pub fn kubectl_ok<I, S>(&self, args: I) -> String
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_os_string()).collect();
        let out = self.kubectl(&args);
        if !out.status.success() {
            panic!(
                "kubectl {:?} failed ({}):\n{}{}",
                args,
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        String::from_utf8(out.stdout).expect("kubectl printed non-UTF-8 output")
    }

    /// Creates a namespace with a unique name starting with `prefix` and
    /// returns the name. Use one per test. Namespaces are never deleted:
    /// without kube-controller-manager they would stay `Terminating` anyway.
    pub fn new_namespace(&self, prefix: &str) -> String {
        let mut p: String = prefix
            .chars()
            .map(|c| c.to_ascii_lowercase())
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .take(40)
            .collect();
        p = p.trim_matches('-').to_string();
        if p.is_empty() {
            p = "test".into();
        }
        let name = format!("{p}-{}-{}", self.next_id(), random_suffix());
        self.kubectl_ok(["create", "namespace", &name]);
        name
    }

    /// Stops kube-apiserver (SIGTERM, SIGKILL after a grace period); etcd
    /// keeps running. Open watches end.
    pub fn stop_apiserver(&self) {
        let mut procs = self.lock_procs();
        if let Some(mut p) = procs.apiserver.take() {
            p.stop(STOP_GRACE);
        }
    }

    /// Starts kube-apiserver (on the same port, against the same etcd, with
    /// the same credentials) and waits until `/readyz` passes. Panics if it is
    /// already running or does not become ready.
    pub fn start_apiserver(&self) {
        let mut procs = self.lock_procs();
        assert!(procs.apiserver.is_none(), "kube-apiserver is already running");
        let log = self.dir.join("kube-apiserver.log");
        let mut cmd = Command::new(&self.bins.kube_apiserver);
        cmd.args(self.apiserver_args());
        let mut proc = self.spawn("kube-apiserver", cmd, log);
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Ok(Some(status)) = proc.child.try_wait() {
                panic!(
                    "kube-apiserver exited during startup ({status})\n{}",
                    log_tail(&proc.log)
                );
            }
            // kubectl rather than the kube client: this runs in sync code that
            // may itself be called from inside a tokio runtime.
            let out = self.kubectl(["get", "--raw=/readyz", "--request-timeout=5s"]);
            if out.status.success() {
                break;
            }
            if Instant::now() > deadline {
                proc.stop(Duration::from_secs(1));
                panic!(
                    "kube-apiserver not ready within {STARTUP_TIMEOUT:?}; last /readyz: {}{}\n{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr),
                    log_tail(&proc.log)
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        procs.apiserver = Some(proc);
    }

    /// [`stop_apiserver`](Self::stop_apiserver) then
    /// [`start_apiserver`](Self::start_apiserver). Affects every test using
    /// this control plane.
    pub fn restart_apiserver(&self) {
        self.stop_apiserver();
        self.start_apiserver();
    }

    /// The current etcd revision (the highest resourceVersion handed out).
    pub fn etcd_revision(&self) -> i64 {
        let resp = self.etcd_post("/v3/kv/range", r#"{"key":"AA=="}"#);
        parse_revision(&resp)
    }

    /// Compacts etcd at its current revision (physically, i.e. waits until
    /// done) through etcd's gRPC gateway (`/v3/kv/compaction`) and returns the
    /// revision. With the watch cache on (the default) this alone does NOT
    /// make watches fail: see [`expire_watches`](Self::expire_watches) and the
    /// module docs.
    pub fn compact_etcd(&self) -> i64 {
        let rev = self.etcd_revision();
        // int64 fields are strings in protobuf's JSON mapping.
        self.etcd_post(
            "/v3/kv/compaction",
            &format!(r#"{{"revision":"{rev}","physical":true}}"#),
        );
        rev
    }

    /// Makes every watch from a resourceVersion older than now fail with
    /// `410 Gone`: compacts etcd, then restarts kube-apiserver so that its
    /// watch cache forgets the history. Returns the compaction revision.
    pub fn expire_watches(&self) -> i64 {
        let rev = self.compact_etcd();
        self.restart_apiserver();
        rev
    }

    /// Stops both processes and removes the temp dir (unless
    /// `SLICEPROXY_KEEP_CONTROLPLANE` is set). Idempotent; called by `Drop`
    /// and, for [`shared()`], at process exit.
    pub fn shutdown(&self) {
        if self.shut_down.swap(true, Ordering::SeqCst) {
            return;
        }
        // At process exit a test thread might still hold the lock (a test that
        // timed out): do not deadlock; PDEATHSIG kills the children anyway.
        let mut procs = match try_lock_for(&self.procs, Duration::from_secs(5)) {
            Some(p) => p,
            None => return,
        };
        if let Some(mut p) = procs.apiserver.take() {
            p.stop(STOP_GRACE);
        }
        if let Some(mut p) = procs.etcd.take() {
            p.stop(STOP_GRACE);
        }
        if std::env::var_os("SLICEPROXY_KEEP_CONTROLPLANE").is_some_and(|v| !v.is_empty()) {
            eprintln!("controlplane: keeping {}", self.dir.display());
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }

    // -- internals ----------------------------------------------------------

    fn next_id(&self) -> u64 {
        self.counter.fetch_add(1, Ordering::Relaxed)
    }

    fn lock_procs(&self) -> MutexGuard<'_, Procs> {
        assert!(!self.shut_down.load(Ordering::SeqCst), "control plane was shut down");
        // A panicking test must not poison the control plane for the others.
        self.procs.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn spawn(&self, name: &'static str, mut cmd: Command, log: PathBuf) -> Proc {
        let file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", log.display()));
        let file2 = file.try_clone().expect("cannot dup log file handle");
        cmd.stdin(Stdio::null())
            .stdout(file)
            .stderr(file2)
            .current_dir(&self.dir);
        let child = spawn_supervised(cmd).unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc { name, child, log }
    }

    fn start_etcd(&self) {
        let data_dir = self.dir.join("etcd");
        let mut cmd = Command::new(&self.bins.etcd);
        cmd.args([
            "--name=sliceproxy-test".to_string(),
            format!("--data-dir={}", data_dir.display()),
            format!("--listen-client-urls={}", self.etcd_client_url),
            format!("--advertise-client-urls={}", self.etcd_client_url),
            format!("--listen-peer-urls={}", self.etcd_peer_url),
            format!("--initial-advertise-peer-urls={}", self.etcd_peer_url),
            format!("--initial-cluster=sliceproxy-test={}", self.etcd_peer_url),
            // Throwaway data: skip fsync (much faster on CI disks).
            "--unsafe-no-fsync=true".into(),
            "--log-level=warn".into(),
        ]);
        let mut proc = self.spawn("etcd", cmd, self.dir.join("etcd.log"));
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Ok(Some(status)) = proc.child.try_wait() {
                panic!("etcd exited during startup ({status})\n{}", log_tail(&proc.log));
            }
            match http_request(&self.etcd_client_url, "GET", "/health", "") {
                Ok((200, body)) if body.contains(r#""health":"true""#) => break,
                _ if Instant::now() > deadline => {
                    proc.stop(Duration::from_secs(1));
                    panic!("etcd not healthy within {STARTUP_TIMEOUT:?}\n{}", log_tail(&proc.log));
                }
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
        self.lock_procs().etcd = Some(proc);
    }

    fn apiserver_args(&self) -> Vec<String> {
        let d = |f: &str| self.dir.join(f).display().to_string();
        let mut args = vec![
            format!("--etcd-servers={}", self.etcd_client_url),
            "--bind-address=127.0.0.1".into(),
            format!("--secure-port={}", self.apiserver_port),
            // Without it the apiserver advertises the host's first non-loopback IP.
            "--advertise-address=127.0.0.1".into(),
            format!("--tls-cert-file={}", d("serving.crt")),
            format!("--tls-private-key-file={}", d("serving.key")),
            // Only used if the files above are missing; keep it out of /var/run.
            format!("--cert-dir={}", d("certs")),
            format!("--token-auth-file={}", d("tokens.csv")),
            format!("--service-account-key-file={}", d("sa.pub")),
            format!("--service-account-signing-key-file={}", d("sa.key")),
            format!("--service-account-issuer={}", self.url()),
            "--authorization-mode=Node,RBAC".into(),
            // No kubelets/nodes: nothing would maintain the `kubernetes`
            // Service's endpoints, and the lease reconciler only adds churn.
            "--endpoint-reconciler-type=none".into(),
            format!("--service-cluster-ip-range={SERVICE_CIDRS}"),
            // The ServiceAccount admission plugin rejects Pods until the
            // `default` ServiceAccount exists, which kube-controller-manager
            // (not running here) would create.
            "--disable-admission-plugins=ServiceAccount".into(),
            "--profiling=false".into(),
            "--v=0".into(),
        ];
        args.extend(self.extra_apiserver_args.iter().cloned());
        args
    }

    fn write_credentials(&self) {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "sliceproxy-test-ca");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate().expect("cannot generate CA key");
        let ca_cert = ca_params.self_signed(&ca_key).expect("cannot self-sign CA");
        let issuer = Issuer::new(ca_params, ca_key);

        let mut params = CertificateParams::new(vec![
            "127.0.0.1".to_string(),
            "localhost".to_string(),
            "kubernetes.default.svc".to_string(),
        ])
        .expect("serving cert params");
        params.distinguished_name.push(DnType::CommonName, "kube-apiserver");
        let key = KeyPair::generate().expect("cannot generate serving key");
        let cert = params.signed_by(&key, &issuer).expect("cannot sign serving cert");

        write_file(&self.ca_cert, &ca_cert.pem());
        write_file(&self.dir.join("serving.crt"), &cert.pem());
        write_file(&self.dir.join("serving.key"), &key.serialize_pem());
        // ECDSA P-256 (ES256). The private key is PKCS#8 ("PRIVATE KEY"),
        // which --service-account-key-file cannot derive a public key from
        // (it only does that for "RSA/EC PRIVATE KEY"), so write the public
        // key (PKIX) separately.
        let sa_key = KeyPair::generate().expect("cannot generate service account key");
        write_file(&self.dir.join("sa.key"), &sa_key.serialize_pem());
        write_file(&self.dir.join("sa.pub"), &sa_key.public_key_pem());
        // token,user,uid,"group1,group2"
        write_file(
            &self.dir.join("tokens.csv"),
            &format!(
                "{},sliceproxy-admin,sliceproxy-admin,\"system:masters\"\n",
                self.admin_token
            ),
        );
        write_file(&self.kubeconfig, &self.kubeconfig_yaml(&self.admin_token));
    }

    fn kubeconfig_yaml(&self, token: &str) -> String {
        assert!(
            token.chars().all(|c| c.is_ascii_graphic() && c != '\'' && c != '"'),
            "token contains characters that need YAML escaping"
        );
        format!(
            "apiVersion: v1\n\
             kind: Config\n\
             clusters:\n\
             - name: sliceproxy-test\n  \
               cluster:\n    \
                 server: {server}\n    \
                 certificate-authority: '{ca}'\n\
             users:\n\
             - name: sliceproxy-test\n  \
               user:\n    \
                 token: '{token}'\n\
             contexts:\n\
             - name: sliceproxy-test\n  \
               context:\n    \
                 cluster: sliceproxy-test\n    \
                 user: sliceproxy-test\n\
             current-context: sliceproxy-test\n",
            server = self.url(),
            ca = self.ca_cert.display(),
        )
    }

    fn etcd_post(&self, path: &str, body: &str) -> String {
        match http_request(&self.etcd_client_url, "POST", path, body) {
            Ok((200, resp)) => resp,
            Ok((status, resp)) => panic!("etcd {path} returned HTTP {status}: {resp}"),
            Err(e) => panic!("etcd {path} failed: {e}"),
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Builds a client from a kubeconfig file.
pub async fn client_from_kubeconfig(path: &Path) -> kube::Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(path)
        .unwrap_or_else(|e| panic!("cannot read kubeconfig {}: {e}", path.display()));
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default())
        .await
        .unwrap_or_else(|e| panic!("invalid kubeconfig {}: {e}", path.display()));
    kube::Client::try_from(config).expect("cannot build kube client")
}

// ---------------------------------------------------------------------------
// Helpers

fn parse_revision(resp: &str) -> i64 {
    let v: serde_json::Value = serde_json::from_str(resp).unwrap_or_else(|e| panic!("bad etcd response {resp:?}: {e}"));
    v["header"]["revision"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no header.revision in etcd response {resp}"))
}

/// Minimal HTTP/1.0 client for etcd's plain-HTTP gRPC gateway (HTTP/1.0 so
/// the server closes the connection and never uses chunked encoding).
fn http_request(base: &str, method: &str, path: &str, body: &str) -> io::Result<(u16, String)> {
    let addr = base.strip_prefix("http://").expect("etcd URL must be http://");
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let status = resp
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| io::Error::other(format!("malformed HTTP response: {resp:?}")))?;
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// `n` distinct free ports on 127.0.0.1. All listeners are held until every
/// port is chosen (so they differ), then released for the servers to bind.
/// Racy by nature, like every "free port" helper; collisions show up as
/// "address already in use" in the logs.
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("cannot bind a loopback port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("listener has no address").port())
        .collect()
}

const DIR_PREFIX: &str = "sliceproxy-cp-";

fn create_temp_dir() -> PathBuf {
    let pid = std::process::id();
    for n in 0.. {
        let dir = std::env::temp_dir().join(format!("{DIR_PREFIX}{pid}-{n}"));
        match fs::create_dir(&dir) {
            Ok(()) => {
                use std::os::unix::fs::PermissionsExt;
                // etcd refuses a data dir (and we do not want credentials)
                // readable by others.
                fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
                    .expect("cannot chmod control plane temp dir");
                return dir;
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => panic!("cannot create {}: {e}", dir.display()),
        }
    }
    unreachable!()
}

/// Removes temp dirs left by test binaries that were killed before their exit
/// handlers ran (their processes were killed by PDEATHSIG already).
fn remove_stale_dirs() {
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(DIR_PREFIX))
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !process_alive(pid) {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// Whether `pid` exists and is not a zombie (in containers whose PID 1 does
/// not reap orphans, a killed test binary stays a zombie forever).
fn process_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // "pid (comm) S ...": the state follows the last ')'.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

fn write_file(path: &Path, contents: &str) {
    fs::write(path, contents).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

fn log_tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_else(|e| format!("(cannot read: {e})"));
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n");
    format!("--- last {LOG_TAIL_LINES} lines of {} ---\n{tail}\n---", path.display())
}

fn try_lock_for<T>(m: &Mutex<T>, timeout: Duration) -> Option<MutexGuard<'_, T>> {
    let deadline = Instant::now() + timeout;
    loop {
        match m.try_lock() {
            Ok(g) => return Some(g),
            Err(std::sync::TryLockError::Poisoned(e)) => return Some(e.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(std::sync::TryLockError::WouldBlock) => return None,
        }
    }
}

/// 32 hex chars from the kernel's CSPRNG (no `rand` dependency).
fn random_token() -> String {
    let mut buf = [0u8; 16];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .expect("cannot read /dev/urandom");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// 5 random base-36 chars, so that namespace names are unique even across
/// control planes.
fn random_suffix() -> String {
    let mut n = u64::from_str_radix(&random_token()[..12], 16).expect("random_token is hex");
    (0..5)
        .map(|_| {
            let c = b"0123456789abcdefghijklmnopqrstuvwxyz"[(n % 36) as usize] as char;
            n /= 36;
            c
        })
        .collect()
}
