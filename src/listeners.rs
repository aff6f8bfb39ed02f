//! Listening sockets kept across reloads. Inputs bind through [`Listeners::bind`]: the first
//! bind of an address opens the socket and keeps one descriptor of it here; a later bind of the
//! same address (the input restarted by a reload with new settings) gets another descriptor
//! of the same socket. The socket therefore never closes while the old input stops and the
//! new one starts: connections arriving meanwhile wait in its backlog instead of being refused.
//! After a reload, sockets no running input uses are closed ([`Listeners::retain`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Sockets waiting for connections, by the address they were bound to.
#[derive(Clone, Default)]
pub struct Listeners(Arc<Mutex<HashMap<String, std::net::TcpListener>>>);

/// Pending connections a socket holds while no accept loop takes them.
const BACKLOG: u32 = 1024;

impl Listeners {
    /// A listener on `address`: the kept socket when there is one, a new one otherwise.
    pub fn bind(&self, address: &str) -> std::io::Result<tokio::net::TcpListener> {
        let mut kept = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(socket) = kept.get(address) {
            return tokio::net::TcpListener::from_std(socket.try_clone()?);
        }
        let addr: std::net::SocketAddr = address.parse().map_err(|e| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{address}: {e}"))
        })?;
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        let listener = socket.listen(BACKLOG)?.into_std()?;
        let ours = listener.try_clone()?;
        kept.insert(address.to_string(), listener);
        tokio::net::TcpListener::from_std(ours)
    }

    /// Closes the kept sockets of every address not in `used` (an input whose address
    /// changed, or that is gone; or all of them at shutdown, with `used` empty).
    pub fn retain(&self, used: &[String]) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|address, _| used.contains(address));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_second_bind_shares_the_socket_and_it_outlives_the_first_listener() {
        let listeners = Listeners::default();
        // A fixed port (as a pipeline file gives): take a free one.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let fixed = addr.to_string();
        let first = listeners.bind(&fixed).unwrap();
        let one = listeners.bind(&fixed).unwrap();
        drop(first);
        let two = listeners.bind(&fixed).unwrap();
        drop(one);
        // The socket stayed open: a client connects and the new listener accepts it.
        let client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (_conn, peer) = two.accept().await.unwrap();
        assert_eq!(peer, client.local_addr().unwrap());
        drop(two);
        listeners.retain(&[]);
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "closed once unused"
        );
    }
}
