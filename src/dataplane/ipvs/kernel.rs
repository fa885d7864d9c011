//! The seam between the IPVS backend and the kernel's IPVS table: a trait
//! over [`IpvsClient`], [`UnsupportedIpvs`] for a kernel without IPVS, and
//! the identity the kernel looks services up by. The strict in-memory fake
//! is in `ipvs::fake` (the `testing` feature).

use std::net::IpAddr;

use super::netlink::{IpvsClient, IpvsError, Protocol, RealServer, Result, Timeouts, VirtualService};

/// What the backend needs from IPVS. One call is one netlink request.
pub trait IpvsKernel: Send {
    /// Every virtual service (one dump request).
    fn list_services(&mut self) -> Result<Vec<VirtualService>>;
    /// Create a service.
    fn add_service(&mut self, svc: &VirtualService) -> Result<()>;
    /// Change a service's scheduler, flags, timeout or netmask.
    fn edit_service(&mut self, svc: &VirtualService) -> Result<()>;
    /// Delete a service and its real servers.
    fn delete_service(&mut self, svc: &VirtualService) -> Result<()>;
    /// The real servers of a service, with connection counters (one dump request).
    fn list_destinations(&mut self, svc: &VirtualService) -> Result<Vec<RealServer>>;
    /// Add a real server.
    fn add_destination(&mut self, svc: &VirtualService, dest: &RealServer) -> Result<()>;
    /// Change a real server's weight (or other settings).
    fn edit_destination(&mut self, svc: &VirtualService, dest: &RealServer) -> Result<()>;
    /// Remove a real server.
    fn delete_destination(&mut self, svc: &VirtualService, dest: &RealServer) -> Result<()>;
    /// Set the connection timeouts; a 0 field leaves that one unchanged.
    fn set_timeouts(&mut self, timeouts: &Timeouts) -> Result<()>;
    /// The current connection timeouts.
    fn get_timeouts(&mut self) -> Result<Timeouts>;
}

impl IpvsKernel for IpvsClient {
    fn list_services(&mut self) -> Result<Vec<VirtualService>> {
        IpvsClient::list_services(self)
    }
    fn add_service(&mut self, svc: &VirtualService) -> Result<()> {
        IpvsClient::add_service(self, svc)
    }
    fn edit_service(&mut self, svc: &VirtualService) -> Result<()> {
        IpvsClient::edit_service(self, svc)
    }
    fn delete_service(&mut self, svc: &VirtualService) -> Result<()> {
        IpvsClient::delete_service(self, svc)
    }
    fn list_destinations(&mut self, svc: &VirtualService) -> Result<Vec<RealServer>> {
        IpvsClient::list_destinations(self, svc)
    }
    fn add_destination(&mut self, svc: &VirtualService, dest: &RealServer) -> Result<()> {
        IpvsClient::add_destination(self, svc, dest)
    }
    fn edit_destination(&mut self, svc: &VirtualService, dest: &RealServer) -> Result<()> {
        IpvsClient::edit_destination(self, svc, dest)
    }
    fn delete_destination(&mut self, svc: &VirtualService, dest: &RealServer) -> Result<()> {
        IpvsClient::delete_destination(self, svc, dest)
    }
    fn set_timeouts(&mut self, timeouts: &Timeouts) -> Result<()> {
        IpvsClient::set_timeouts(self, timeouts)
    }
    fn get_timeouts(&mut self) -> Result<Timeouts> {
        IpvsClient::get_timeouts(self)
    }
}

/// The IPVS table of a kernel without IPVS: it lists nothing (nothing of
/// ours can be in it) and refuses every change with
/// [`IpvsError::NotSupported`]. `--cleanup` uses it on such a host, so the
/// IPVS mode's other state (ipsets, iptables layer, dummy interface) is
/// still removed.
#[derive(Debug, Clone, Copy, Default)]
pub struct UnsupportedIpvs;

impl IpvsKernel for UnsupportedIpvs {
    fn list_services(&mut self) -> Result<Vec<VirtualService>> {
        Ok(Vec::new())
    }
    fn add_service(&mut self, _: &VirtualService) -> Result<()> {
        Err(IpvsError::NotSupported)
    }
    fn edit_service(&mut self, _: &VirtualService) -> Result<()> {
        Err(IpvsError::NotSupported)
    }
    fn delete_service(&mut self, _: &VirtualService) -> Result<()> {
        Err(IpvsError::NotSupported)
    }
    fn list_destinations(&mut self, _: &VirtualService) -> Result<Vec<RealServer>> {
        Ok(Vec::new())
    }
    fn add_destination(&mut self, _: &VirtualService, _: &RealServer) -> Result<()> {
        Err(IpvsError::NotSupported)
    }
    fn edit_destination(&mut self, _: &VirtualService, _: &RealServer) -> Result<()> {
        Err(IpvsError::NotSupported)
    }
    fn delete_destination(&mut self, _: &VirtualService, _: &RealServer) -> Result<()> {
        Err(IpvsError::NotSupported)
    }
    fn set_timeouts(&mut self, _: &Timeouts) -> Result<()> {
        Err(IpvsError::NotSupported)
    }
    fn get_timeouts(&mut self) -> Result<Timeouts> {
        Err(IpvsError::NotSupported)
    }
}

/// Identity of a virtual service as the kernel looks it up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceId {
    /// Firewall mark, or 0.
    pub fwmark: u32,
    /// IP protocol number.
    pub protocol: u16,
    /// Address.
    pub addr: IpAddr,
    /// Port.
    pub port: u16,
}

impl ServiceId {
    /// The identity of `svc`.
    pub fn of(svc: &VirtualService) -> ServiceId {
        match svc.fwmark {
            Some(m) => ServiceId {
                fwmark: m,
                protocol: 0,
                addr: IpAddr::from([0u8; 4]),
                port: 0,
            },
            None => ServiceId {
                fwmark: 0,
                protocol: proto_number(svc.protocol),
                addr: svc.addr,
                port: svc.port,
            },
        }
    }
}

fn proto_number(p: Protocol) -> u16 {
    match p {
        Protocol::Tcp => 6,
        Protocol::Udp => 17,
        Protocol::Sctp => 132,
        Protocol::Other(n) => n,
    }
}
