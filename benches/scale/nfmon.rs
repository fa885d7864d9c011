//! Kernel-side cross-check: a listener on the nf_tables netlink event group
//! (`NFNLGRP_NFTABLES`) inside the node namespace. The kernel multicasts
//! every object a transaction added once the transaction commits, so the
//! first `NEWRULE`/`NEWSETELEM`/`NEWOBJ` event that carries an address is the
//! moment that address is programmed, whoever programmed it (iptables-nft
//! rules are nf_tables rules too; iptables-legacy is not covered).
//!
//! No nf_tables parsing is needed: every place an IPv4 address can sit in
//! such a message (a `cmp` on `ip saddr`/`daddr`, an `immediate` for `dnat`,
//! a set or map key, the `nf_nat_range` of an xtables `DNAT` target) starts
//! at a 4-byte aligned offset of the message, so the monitor compares each
//! aligned word with the addresses it watches. Watched addresses are fresh
//! (never used before the watch), so a match is the address being added.
//! Deletion events also carry the deleted object and are skipped.
//!
//! The listener exists for both proxies alike; the kernel then builds event
//! messages during each commit, in the committing process (its cgroup), a
//! small cost proportional to what the commit changes.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::SystemTime;

use crate::netns::Netns;

const NETLINK_NETFILTER: i32 = 12;
const NFNLGRP_NFTABLES: u32 = 7;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_NEWGEN: u16 = 15;
const NFT_MSG_NEWOBJ: u16 = 18;
const SOL_NETLINK: i32 = 270;
const NETLINK_ADD_MEMBERSHIP: i32 = 1;

/// What the monitor has seen.
#[derive(Default, Debug)]
pub struct State {
    /// Addresses still awaited for the cold start, with the time each was seen.
    pub cold_pending: HashSet<u32>,
    /// When the last address of the cold-start set appeared.
    pub cold_done: Option<SystemTime>,
    /// Watched churn addresses -> change ids.
    pub watch: HashMap<u32, usize>,
    /// Change id -> when its address appeared.
    pub seen: HashMap<usize, SystemTime>,
    /// Transactions committed (`NEWGEN` events).
    pub generations: u64,
    /// Add events read.
    pub add_events: u64,
    /// Times the socket overflowed (`ENOBUFS`: events were lost).
    pub overflows: u64,
}

/// The running monitor; stops on drop.
pub struct NfMonitor {
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl NfMonitor {
    /// Subscribes inside `ns`, awaiting `cold` (e.g. every ClusterIP).
    pub fn start(ns: &Netns, cold: impl IntoIterator<Item = Ipv4Addr>) -> std::io::Result<NfMonitor> {
        let fd = ns.run(open_socket)??;
        let state = Arc::new(Mutex::new(State {
            cold_pending: cold.into_iter().map(u32::from).collect(),
            ..State::default()
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        let thread = std::thread::spawn(move || read_loop(fd, &st, &sp));
        Ok(NfMonitor {
            state,
            stop,
            thread: Some(thread),
        })
    }

    /// Starts watching `ip` for change `id`.
    pub fn watch(&self, ip: Ipv4Addr, id: usize) {
        self.lock().watch.insert(u32::from(ip), id);
    }

    /// Locked view of the state.
    pub fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for NfMonitor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn open_socket() -> std::io::Result<i32> {
    // SAFETY: plain socket syscalls on a descriptor we own.
    unsafe {
        let fd = libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, NETLINK_NETFILTER);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut addr: libc::sockaddr_nl = std::mem::zeroed();
        addr.nl_family = libc::AF_NETLINK as u16;
        if libc::bind(
            fd,
            (&addr as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as u32,
        ) < 0
        {
            let e = std::io::Error::last_os_error();
            libc::close(fd);
            return Err(e);
        }
        let group = NFNLGRP_NFTABLES;
        let size: i32 = 512 << 20;
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 200_000,
        };
        for (level, opt, ptr, len) in [
            (
                SOL_NETLINK,
                NETLINK_ADD_MEMBERSHIP,
                (&group as *const u32).cast::<libc::c_void>(),
                4u32,
            ),
            (libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, (&size as *const i32).cast(), 4),
            (
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            ),
        ] {
            if libc::setsockopt(fd, level, opt, ptr, len) < 0 {
                let e = std::io::Error::last_os_error();
                libc::close(fd);
                return Err(e);
            }
        }
        Ok(fd)
    }
}

fn read_loop(fd: i32, state: &Mutex<State>, stop: &AtomicBool) {
    let mut buf = vec![0u8; 1 << 20];
    while !stop.load(Ordering::SeqCst) {
        // SAFETY: recv into our own buffer.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENOBUFS) {
                state.lock().unwrap_or_else(|p| p.into_inner()).overflows += 1;
            }
            continue;
        }
        let at = SystemTime::now();
        let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
        scan(&buf[..n as usize], at, &mut st);
    }
    // SAFETY: closing our own descriptor.
    unsafe { libc::close(fd) };
}

/// Walks the netlink messages of one datagram.
fn scan(mut data: &[u8], at: SystemTime, st: &mut State) {
    while data.len() >= 16 {
        let len = u32::from_ne_bytes(data[0..4].try_into().expect("4 bytes")) as usize;
        let ty = u16::from_ne_bytes(data[4..6].try_into().expect("2 bytes"));
        if len < 16 || len > data.len() {
            break;
        }
        let (subsys, msg) = (ty >> 8, ty & 0xff);
        if subsys == NFNL_SUBSYS_NFTABLES {
            match msg {
                NFT_MSG_NEWGEN => st.generations += 1,
                NFT_MSG_NEWRULE | NFT_MSG_NEWSETELEM | NFT_MSG_NEWOBJ => {
                    st.add_events += 1;
                    // nlmsghdr (16) + nfgenmsg (4), then attributes.
                    for w in data[20..len].chunks_exact(4) {
                        let ip = u32::from_be_bytes(w.try_into().expect("4 bytes"));
                        if !st.cold_pending.is_empty() && st.cold_pending.remove(&ip) && st.cold_pending.is_empty() {
                            st.cold_done = Some(at);
                        }
                        if let Some(id) = st.watch.remove(&ip) {
                            st.seen.entry(id).or_insert(at);
                        }
                    }
                }
                _ => {}
            }
        }
        let aligned = (len + 3) & !3;
        if aligned >= data.len() {
            break;
        }
        data = &data[aligned..];
    }
}
