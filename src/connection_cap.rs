//! Standalone: at most so many open connections per source address
//! (`BROKER_MAX_CONNECTIONS_PER_SOURCE`), so one client holding slow
//! connections cannot use up the server's connection slots
//! (`BROKER_MAX_CONNECTIONS`) and starve health checks and other callers.
//!
//! Counted at accept, by the socket peer: a connection over the cap is
//! answered `429` and closed at once, before any request is read, so it
//! holds no slot. Peers inside `BROKER_TRUSTED_PROXIES` are not capped (every
//! client behind the proxy arrives from its address). Under the Functions host
//! the host is the only peer and the cap is off.

use std::collections::HashMap;
use std::net::{IpAddr, Shutdown};
use std::sync::{Arc, Mutex, PoisonError};

use crate::domain::source::IpBlock;

/// What a refused connection is told before it is closed.
const REFUSED: &[u8] = b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: 105\r\n\r\n{\"error\":\"too_many_connections\",\"error_description\":\"too many open connections from this address; retry\"}";

/// Open connections per source address.
#[derive(Debug)]
pub struct ConnectionCap {
    per_source: usize,
    exempt: Vec<IpBlock>,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One admitted connection; dropped with the connection, which frees its place.
#[derive(Debug)]
pub struct Slot {
    cap: Arc<ConnectionCap>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.cap.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = open.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

impl ConnectionCap {
    pub fn new(per_source: usize, exempt: Vec<IpBlock>) -> Arc<Self> {
        Arc::new(Self {
            per_source,
            exempt,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// A place for one more connection from `ip`, or `None` when it has its share.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Option<Slot>> {
        let ip = canonical(ip);
        if self.exempt.iter().any(|b| b.contains(ip)) {
            return Some(None);
        }
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let n = open.entry(ip).or_insert(0);
        if *n >= self.per_source {
            return None;
        }
        *n += 1;
        Some(Some(Slot {
            cap: Arc::clone(self),
            ip,
        }))
    }

    /// The server's `on_connect` hook: counts the connection, or answers 429
    /// and closes it.
    pub fn on_connect(
        self: &Arc<Self>,
        io: &dyn std::any::Any,
        ext: &mut actix_web::dev::Extensions,
    ) {
        let Some(stream) = io.downcast_ref::<actix_web::rt::net::TcpStream>() else {
            return;
        };
        let Ok(peer) = stream.peer_addr() else {
            return;
        };
        match self.admit(peer.ip()) {
            Some(Some(slot)) => {
                ext.insert(Arc::new(slot));
            }
            Some(None) => {}
            None => {
                tracing::warn!(
                    source = %canonical(peer.ip()),
                    limit = self.per_source,
                    "connection refused: too many open connections from this address"
                );
                let socket = socket2::SockRef::from(stream);
                // Best effort: a small answer fits the send buffer of a new socket.
                let _ = socket.send(REFUSED);
                let _ = socket.shutdown(Shutdown::Both);
            }
        }
    }
}

/// IPv4-mapped IPv6 addresses count as their IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_source_gets_its_share_and_a_closed_connection_frees_its_place() {
        let cap = ConnectionCap::new(2, vec![IpBlock::parse("10.0.0.0/8").unwrap()]);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let one = cap.admit(a).unwrap();
        let two = cap.admit(a).unwrap();
        assert!(
            cap.admit(a).is_none(),
            "the third from one source is refused"
        );
        assert!(
            cap.admit("::ffff:192.0.2.1".parse().unwrap()).is_none(),
            "IPv4-mapped is the same source"
        );
        assert!(cap.admit(b).is_some(), "another source is not affected");
        drop(one);
        assert!(
            cap.admit(a).is_some(),
            "a closed connection frees its place"
        );
        drop(two);
        for _ in 0..10 {
            assert!(
                matches!(cap.admit("10.1.2.3".parse().unwrap()), Some(None)),
                "trusted proxies are not capped"
            );
        }
    }

    #[test]
    fn the_refusal_is_a_complete_http_answer() {
        let text = std::str::from_utf8(REFUSED).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(
            head.contains(&format!("Content-Length: {}", body.len())),
            "{head}"
        );
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"], "too_many_connections");
    }
}
