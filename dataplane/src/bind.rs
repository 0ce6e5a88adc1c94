//! Listening sockets. The unspecified IPv6 address (`::`) means "every address of both
//! families": members bind it so that probes and traffic reach them whichever family the
//! pod's IP is (single-stack IPv4, single-stack IPv6, dual-stack). [`ConnInfo`] is what
//! the layers above learn about an accepted connection.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;

/// What the listener knows about a client connection.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ConnInfo {
    pub(crate) client: SocketAddr,
    pub(crate) tls: bool,
}

/// `EAFNOSUPPORT` on Linux: the kernel was started without IPv6.
const NO_IPV6: i32 = 97;

/// Binds a TCP listener on `addr` (with `SO_REUSEADDR`). On `[::]`, `IPV6_V6ONLY` is
/// turned off, so IPv4 clients connect too (as IPv4-mapped addresses) whatever the
/// node's `net.ipv6.bindv6only`; on a kernel without IPv6, `[::]` falls back to
/// `0.0.0.0`.
pub(crate) fn listen(addr: SocketAddr, backlog: i32) -> io::Result<TcpListener> {
    match listen_exactly(addr, backlog) {
        Err(e)
            if addr.ip() == IpAddr::V6(Ipv6Addr::UNSPECIFIED)
                && e.raw_os_error() == Some(NO_IPV6) =>
        {
            tracing::warn!(%addr, "no IPv6 on this host; listening on IPv4 only");
            listen_exactly(
                SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), addr.port()),
                backlog,
            )
        }
        r => r,
    }
}

fn listen_exactly(addr: SocketAddr, backlog: i32) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.ip() == IpAddr::V6(Ipv6Addr::UNSPECIFIED) {
        socket.set_only_v6(false)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    TcpListener::from_std(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn has_ipv6() -> bool {
        std::net::TcpListener::bind("[::1]:0").is_ok()
    }

    #[tokio::test]
    async fn the_unspecified_ipv6_address_takes_both_families() {
        let l = listen(SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), 0), 16).unwrap();
        let port = l.local_addr().unwrap().port();
        let v4 = tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await;
        assert!(v4.is_ok(), "IPv4 client refused: {v4:?}");
        if has_ipv6() {
            let v6 = tokio::net::TcpStream::connect((Ipv6Addr::LOCALHOST, port)).await;
            assert!(v6.is_ok(), "IPv6 client refused: {v6:?}");
        }
    }

    #[tokio::test]
    async fn other_addresses_bind_as_given() {
        let l = listen(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 0), 16).unwrap();
        assert_eq!(
            l.local_addr().unwrap().ip(),
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        );
    }
}
