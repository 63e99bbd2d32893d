//! Network helpers: loopback only.

use std::net::{Ipv4Addr, TcpListener};

/// A TCP port on 127.0.0.1 that was free a moment ago, for a server a test
/// starts (a PostgreSQL cluster, a blob endpoint).
///
/// The port is released before it is returned, so another process could
/// take it in between; servers that can bind port 0 themselves should do
/// that instead.
///
/// # Panics
/// When no port can be bound on loopback at all.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap_or_else(|e| panic!("cannot bind a port on 127.0.0.1: {e}"));
    listener
        .local_addr()
        .unwrap_or_else(|e| panic!("cannot read the bound address: {e}"))
        .port()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_port_can_be_bound_again() {
        let port = free_port();
        assert_ne!(port, 0);
        TcpListener::bind((Ipv4Addr::LOCALHOST, port)).expect("the returned port is free");
    }
}
