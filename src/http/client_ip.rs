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
    Some(resolve(peer, forwarded_chain(req), trusted_proxies).to_string())
}

/// Every X-Forwarded-For address, in order (several headers are one list, RFC 9110 5.3);
/// `None` when any entry is not an address, which makes the whole header untrustworthy.
fn forwarded_chain(req: &HttpRequest) -> Option<Vec<IpAddr>> {
    let mut chain = Vec::new();
    for value in req.headers().get_all(X_FORWARDED_FOR) {
        for entry in value.to_str().ok()?.split(',') {
            chain.push(entry.trim().parse::<IpAddr>().ok()?);
        }
    }
    Some(chain)
}

/// Walks the chain from the nearest hop back, while each hop is a trusted proxy.
fn resolve(peer: IpAddr, chain: Option<Vec<IpAddr>>, trusted: &[ipnet::IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(&canonical(*ip)));
    if !is_trusted(&peer) {
        return peer;
    }
    let Some(chain) = chain else {
        return peer;
    };
    let mut client = peer;
    for hop in chain.into_iter().rev() {
        client = hop;
        if !is_trusted(&hop) {
            break;
        }
    }
    canonical(client)
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
        let chain = Some(vec![ip("203.0.113.9")]);
        assert_eq!(
            resolve(ip("198.51.100.1"), chain, &nets(&["10.0.0.0/8"])),
            ip("198.51.100.1")
        );
    }

    #[test]
    fn a_trusted_proxy_hands_over_the_nearest_untrusted_hop() {
        // client, spoofed entry it sent, then two proxies of ours.
        let chain = Some(vec![ip("192.0.2.66"), ip("203.0.113.9"), ip("10.0.0.2")]);
        assert_eq!(
            resolve(ip("10.0.0.1"), chain, &nets(&["10.0.0.0/8"])),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn a_trusted_proxy_without_a_usable_header_is_the_client() {
        let trusted = nets(&["10.0.0.1/32"]);
        assert_eq!(resolve(ip("10.0.0.1"), None, &trusted), ip("10.0.0.1"));
        assert_eq!(
            resolve(ip("10.0.0.1"), Some(vec![]), &trusted),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn mapped_ipv4_peers_match_ipv4_ranges() {
        let chain = Some(vec![ip("203.0.113.9")]);
        assert_eq!(
            resolve(ip("::ffff:10.0.0.1"), chain, &nets(&["10.0.0.0/8"])),
            ip("203.0.113.9")
        );
    }
}
