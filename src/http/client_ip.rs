//! Who the client is, for per-IP limits and logs.
//!
//! The TCP peer is the client unless it is one of the configured trusted
//! proxies (`STOWAGE_TRUSTED_PROXIES`). Only then is `X-Forwarded-For`
//! read, from the right: each proxy appends the address it received the
//! request from, so the rightmost entries are the ones our own proxies
//! wrote, and the first entry that is not a trusted proxy is the client.
//! Anything left of it was written by the client itself and proves nothing.
//!
//! Limits key IPv6 clients by their /64: one subscriber usually holds a
//! whole /64 and can rotate through its addresses at will, so counting
//! single addresses would let one client pose as billions.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use axum::http::{header::HeaderName, HeaderMap};

use crate::config::IpNet;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The client's address as the limits and logs see it; set on every
/// request by the server (see [`crate::http::server`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

impl std::fmt::Display for ClientIp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// True when `ip` is one of the trusted proxies.
pub fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    trusted.iter().any(|n| n.contains(ip))
}

/// The client address for a request that came from `peer`.
///
/// Walks `X-Forwarded-For` (all its headers, in order) from the right,
/// skipping trusted hops. A malformed entry ends the walk: the hop that
/// wrote it (the last trusted address seen) is taken as the client, so a
/// garbled header cannot make a proxy's clients share one anonymous key
/// or pick an arbitrary one. When every entry is trusted, the leftmost is
/// the client.
pub fn resolve(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let peer = canonical(peer);
    if trusted.is_empty() || !is_trusted(peer, trusted) {
        return peer;
    }
    let mut client = peer;
    let values: Vec<&[u8]> = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .map(|v| v.as_bytes())
        .collect();
    for value in values.iter().rev() {
        for entry in value.rsplit(|b| *b == b',') {
            let Some(ip) = parse_entry(entry) else {
                return client;
            };
            client = ip;
            if !is_trusted(ip, trusted) {
                return client;
            }
        }
    }
    client
}

/// One `X-Forwarded-For` entry: an address, optionally with a port
/// (`1.2.3.4:80`, `[2001:db8::1]:80`).
fn parse_entry(raw: &[u8]) -> Option<IpAddr> {
    let s = std::str::from_utf8(raw).ok()?.trim();
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Some(canonical(sa.ip()));
    }
    let inner = s.strip_prefix('[')?.strip_suffix(']')?;
    inner
        .parse::<Ipv6Addr>()
        .ok()
        .map(|v6| canonical(v6.into()))
}

/// IPv4-mapped IPv6 (`::ffff:1.2.3.4`, from a dual-stack socket) as the
/// IPv4 address it is.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// The key a per-client limit counts under: the address itself for IPv4,
/// its /64 for IPv6.
pub fn limit_key(ip: IpAddr) -> IpAddr {
    match canonical(ip) {
        IpAddr::V6(v6) => {
            let net = u128::from(v6) & !(u128::MAX >> 64);
            IpAddr::V6(Ipv6Addr::from(net))
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| IpNet::parse(s).unwrap()).collect()
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(&X_FORWARDED_FOR, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_claims() {
        let h = xff(&["9.9.9.9"]);
        assert_eq!(resolve(ip("1.2.3.4"), &h, &[]), ip("1.2.3.4"));
        let t = nets(&["10.0.0.0/8"]);
        assert_eq!(resolve(ip("1.2.3.4"), &h, &t), ip("1.2.3.4"));
    }

    #[test]
    fn behind_trusted_proxies_the_first_untrusted_hop_from_the_right_is_the_client() {
        let t = nets(&["10.0.0.0/8", "::1"]);
        // The client forged "6.6.6.6"; proxy 10.0.0.2 received from 7.7.7.7
        // and handed to proxy 10.0.0.1, our peer.
        let h = xff(&["6.6.6.6, 7.7.7.7", "10.0.0.2"]);
        assert_eq!(resolve(ip("10.0.0.1"), &h, &t), ip("7.7.7.7"));
        // Ports and brackets as some proxies write them.
        let h = xff(&["[2001:db8::5]:443, 10.0.0.9:80"]);
        assert_eq!(resolve(ip("::1"), &h, &t), ip("2001:db8::5"));
        // No header: the proxy itself.
        assert_eq!(
            resolve(ip("10.0.0.1"), &HeaderMap::new(), &t),
            ip("10.0.0.1")
        );
        // Every hop trusted: the leftmost.
        let h = xff(&["10.1.1.1, 10.2.2.2"]);
        assert_eq!(resolve(ip("10.0.0.1"), &h, &t), ip("10.1.1.1"));
    }

    #[test]
    fn a_malformed_entry_stops_at_the_hop_that_wrote_it() {
        let t = nets(&["10.0.0.0/8"]);
        let h = xff(&["7.7.7.7, garbage, 10.0.0.3"]);
        assert_eq!(resolve(ip("10.0.0.1"), &h, &t), ip("10.0.0.3"));
        let h = xff(&["unknown"]);
        assert_eq!(resolve(ip("10.0.0.1"), &h, &t), ip("10.0.0.1"));
    }

    #[test]
    fn ipv4_mapped_peers_count_as_ipv4() {
        let t = nets(&["10.0.0.0/8"]);
        let h = xff(&["7.7.7.7"]);
        assert_eq!(resolve(ip("::ffff:10.0.0.1"), &h, &t), ip("7.7.7.7"));
        assert_eq!(limit_key(ip("::ffff:1.2.3.4")), ip("1.2.3.4"));
    }

    #[test]
    fn ipv6_clients_share_a_key_per_64() {
        assert_eq!(
            limit_key(ip("2001:db8:1:2:aaaa:bbbb:cccc:dddd")),
            ip("2001:db8:1:2::")
        );
        assert_eq!(
            limit_key(ip("2001:db8:1:2::1")),
            limit_key(ip("2001:db8:1:2:ffff::9"))
        );
        assert_ne!(
            limit_key(ip("2001:db8:1:2::1")),
            limit_key(ip("2001:db8:1:3::1"))
        );
        assert_eq!(limit_key(ip("1.2.3.4")), ip("1.2.3.4"));
    }
}
