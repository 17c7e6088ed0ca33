//! Turns off Nagle's algorithm on the ZooKeeper client's sockets.
//!
//! zookeeper-client 0.11.2 neither sets `TCP_NODELAY` nor exposes its socket. With Nagle on, a
//! small request written while an earlier one is unacknowledged waits for that ACK, which the
//! server may delay (up to 40 ms on Linux): a change would then reach Redis tens of
//! milliseconds late. The mirror therefore finds, after each (re)connect, the sockets of this
//! process whose peer is one of the configured ZooKeeper servers and sets the option on them.
//! Only those sockets are touched, so an application embedding the mirror keeps its own.

use std::collections::HashSet;
use std::net::SocketAddr;

/// Resolves `host:port[,host:port...]` (the connect string) to addresses.
pub async fn resolve(servers: &str) -> HashSet<SocketAddr> {
    let mut addrs = HashSet::new();
    for server in servers.split(',') {
        let server = server.trim();
        let host_port = server.split_once("://").map_or(server, |(_, rest)| rest);
        let host_port = host_port.split('/').next().unwrap_or(host_port);
        if let Ok(found) = tokio::net::lookup_host(host_port).await {
            addrs.extend(found);
        }
    }
    addrs
}

/// Sets `TCP_NODELAY` on every socket of this process connected to one of `peers`; returns how
/// many it set. Best effort: a socket that vanished meanwhile is skipped.
#[cfg(target_os = "linux")]
pub fn set_on_sockets_to(peers: &HashSet<SocketAddr>) -> usize {
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else { return 0 };
    let mut set = 0;
    for entry in entries.flatten() {
        let Some(fd) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        let is_socket = std::fs::read_link(entry.path()).is_ok_and(|t| t.to_string_lossy().starts_with("socket:"));
        if is_socket && peer_of(fd).is_some_and(|peer| peers.contains(&peer)) && set_nodelay(fd) {
            set += 1;
        }
    }
    set
}

#[cfg(not(target_os = "linux"))]
pub fn set_on_sockets_to(_peers: &HashSet<SocketAddr>) -> usize {
    0
}

#[cfg(target_os = "linux")]
fn peer_of(fd: i32) -> Option<SocketAddr> {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};
    // SAFETY: getpeername writes at most `len` bytes into the zeroed storage we own.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let rc = unsafe { libc::getpeername(fd, &mut storage as *mut _ as *mut libc::sockaddr, &mut len) };
    if rc != 0 {
        return None;
    }
    match storage.ss_family as i32 {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let a: libc::sockaddr_in = unsafe { *(&storage as *const _ as *const libc::sockaddr_in) };
            let ip = Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be(a.sin_port))))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let a: libc::sockaddr_in6 = unsafe { *(&storage as *const _ as *const libc::sockaddr_in6) };
            let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(ip, u16::from_be(a.sin6_port), a.sin6_flowinfo, a.sin6_scope_id)))
        }
        _ => None,
    }
}

#[cfg(target_os = "linux")]
fn set_nodelay(fd: i32) -> bool {
    let one: libc::c_int = 1;
    // SAFETY: a plain setsockopt with a pointer to a live c_int of the size given.
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            &one as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        ) == 0
    }
}
