//! The client's address, for failure budgets and the audit trail. The TCP peer, unless the
//! peer is a configured trusted proxy: then the nearest address in X-Forwarded-For that is
//! not itself a trusted proxy. An untrusted peer's X-Forwarded-For is ignored, so a client
//! cannot pick the address its failures are counted against.

use std::net::IpAddr;

use actix_web::http::header::HeaderName;
use actix_web::HttpRequest;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

pub fn client_ip(req: &HttpRequest, trusted_proxies: &[ipnet::IpNet]) -> Option<String> {
    let peer = req.peer_addr()?.ip();
    let chain: Vec<&str> = req
        .headers()
        .get_all(X_FORWARDED_FOR)
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .collect();
    Some(resolve(peer, &chain, trusted_proxies).to_string())
}

/// Walks X-Forwarded-For from the nearest hop back (several headers are one list, RFC 9110
/// 5.3), while each hop is a trusted proxy. The client writes the left end of the list, so
/// the walk stops at the first untrusted hop, and an entry that is not an address stops it
/// at the last trusted one: garbage cannot move the count onto a proxy's address.
fn resolve(peer: IpAddr, chain: &[&str], trusted: &[ipnet::IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(&canonical(*ip)));
    let mut client = canonical(peer);
    if !is_trusted(&client) {
        return client;
    }
    for entry in chain.iter().rev() {
        let Some(hop) = parse_hop(entry) else {
            break;
        };
        client = canonical(hop);
        if !is_trusted(&client) {
            break;
        }
    }
    client
}

/// An address as proxies write them: `192.0.2.1`, `2001:db8::1`, and with a port,
/// `192.0.2.1:4711` or `[2001:db8::1]:4711`.
fn parse_hop(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<std::net::SocketAddr>().ok().map(|s| s.ip()))
}

/// An IPv4 peer on a dual-stack socket shows up as `::ffff:a.b.c.d`.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn nets(list: &[&str]) -> Vec<ipnet::IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_forwards() {
        assert_eq!(
            resolve(ip("198.51.100.1"), &["203.0.113.9"], &nets(&["10.0.0.0/8"])),
            ip("198.51.100.1")
        );
    }

    #[test]
    fn a_trusted_proxy_hands_over_the_nearest_untrusted_hop() {
        // A spoofed entry the client sent, the client as our first proxy saw it, our proxy.
        let chain = ["192.0.2.66", "203.0.113.9", "10.0.0.2"];
        assert_eq!(
            resolve(ip("10.0.0.1"), &chain, &nets(&["10.0.0.0/8"])),
            ip("203.0.113.9")
        );
        let with_ports = ["junk", "203.0.113.9:4711", "[2001:db8::2]:443"];
        assert_eq!(
            resolve(
                ip("10.0.0.1"),
                &with_ports,
                &nets(&["10.0.0.0/8", "2001:db8::/32"])
            ),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn a_trusted_proxy_without_a_usable_header_is_the_client() {
        let trusted = nets(&["10.0.0.1/32"]);
        assert_eq!(resolve(ip("10.0.0.1"), &[], &trusted), ip("10.0.0.1"));
    }

    #[test]
    fn garbage_the_client_sends_cannot_move_it_onto_a_proxy() {
        let trusted = nets(&["10.0.0.0/8"]);
        assert_eq!(
            resolve(ip("10.0.0.1"), &["junk", "203.0.113.1"], &trusted),
            ip("203.0.113.1"),
            "the client is the nearest untrusted hop, whatever it put in front"
        );
        assert_eq!(
            resolve(ip("10.0.0.1"), &["203.0.113.1", "10.0.0.7", "x"], &trusted),
            ip("10.0.0.1"),
            "garbage next to us stops the walk at the last trusted hop"
        );
    }

    #[test]
    fn mapped_ipv4_peers_match_ipv4_ranges() {
        assert_eq!(
            resolve(
                ip("::ffff:10.0.0.1"),
                &["203.0.113.9"],
                &nets(&["10.0.0.0/8"])
            ),
            ip("203.0.113.9")
        );
    }
}
