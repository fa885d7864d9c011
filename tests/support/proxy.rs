//! A TCP proxy on loopback with a gate: `cut()` drops every open connection
//! and refuses new ones until `restore()`. Tests put it between the agent and
//! kube-apiserver to take the agent's watches down while objects change.

use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

/// The proxy; it runs until the test binary exits.
pub struct GatedProxy {
    addr: SocketAddr,
    open: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl GatedProxy {
    /// Listen on a free loopback port and forward to `upstream`.
    pub fn start(upstream: SocketAddr) -> GatedProxy {
        GatedProxy::serve(TcpListener::bind("127.0.0.1:0").expect("bind proxy"), upstream)
    }

    /// Listen on a loopback port *inside* the network namespace at
    /// `netns` and forward to `upstream` on the host's loopback. An agent
    /// running in a test namespace reaches the API server through it: its
    /// 127.0.0.1 is not the host's, and no route from the namespace to the
    /// host is ever added. Only the listening socket lives in the namespace.
    pub fn start_in_netns(netns: &std::path::Path, upstream: SocketAddr) -> GatedProxy {
        let path = netns.to_path_buf();
        let listener = thread::spawn(move || -> io::Result<TcpListener> {
            let f = std::fs::File::open(&path)?;
            nix::sched::setns(std::os::fd::AsFd::as_fd(&f), nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(io::Error::from)?;
            TcpListener::bind("127.0.0.1:0")
        })
        .join()
        .expect("listener thread")
        .expect("bind proxy inside the namespace");
        GatedProxy::serve(listener, upstream)
    }

    fn serve(listener: TcpListener, upstream: SocketAddr) -> GatedProxy {
        let addr = listener.local_addr().expect("proxy address");
        let open = Arc::new(AtomicBool::new(true));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (open2, conns2) = (open.clone(), conns.clone());
        thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if !open2.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(upstream) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                let mut list = conns2.lock().unwrap_or_else(|p| p.into_inner());
                for s in [&client, &server] {
                    if let Ok(c) = s.try_clone() {
                        list.push(c);
                    }
                }
                drop(list);
                pipe(&client, &server);
                pipe(&server, &client);
            }
        });
        GatedProxy { addr, open, conns }
    }

    /// `https://127.0.0.1:PORT` of the proxy.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Drop every connection and refuse new ones.
    pub fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        for c in self.conns.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }

    /// Accept connections again.
    pub fn restore(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

fn pipe(from: &TcpStream, to: &TcpStream) {
    let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else {
        return;
    };
    thread::spawn(move || -> io::Result<()> {
        let result = io::copy(&mut from, &mut to);
        let _ = to.shutdown(Shutdown::Both);
        let _ = from.shutdown(Shutdown::Both);
        result.map(|_| ())
    });
}
