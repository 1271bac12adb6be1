//! Where a guest's outbound HTTP may not go on a wildcard grant: the
//! machine wisp runs on. `allow-outbound: ["*"]` means "the network", not
//! the gateway's own `/metrics`, the cloud's metadata service or a
//! database listening on loopback; reaching those takes an entry naming
//! the host.
//!
//! The host is resolved here and every address checked; the connection
//! then resolves it again (wasmtime-wasi-http's sender connects by name),
//! so a name whose records change between the two lookups (DNS rebinding
//! with a zero TTL) is the residual risk, noted in `docs/architecture.md`.

use std::net::{IpAddr, Ipv6Addr};

/// The first address `authority` resolves to that is this machine's
/// (loopback, link-local, unspecified, or one of its interfaces'), if any.
/// A name that does not resolve is left to the connection to report.
pub(super) async fn local_address(authority: &str, https: bool) -> Option<IpAddr> {
    let target = if has_port(authority) {
        authority.to_owned()
    } else {
        format!("{authority}:{}", if https { 443 } else { 80 })
    };
    let addrs: Vec<IpAddr> = tokio::net::lookup_host(target)
        .await
        .ok()?
        .map(|a| canonical(a.ip()))
        .collect();
    let own = own_addresses();
    addrs
        .into_iter()
        .find(|ip| is_machine_local(*ip) || own.contains(ip))
}

fn has_port(authority: &str) -> bool {
    match authority.rsplit_once(':') {
        // `[::1]` has colons but no port.
        Some((host, port)) => {
            !port.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit())
                && (!host.contains(':') || host.ends_with(']'))
        }
        None => false,
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:127.0.0.1`) as the IPv4 they are.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// Addresses that reach this machine (or its link) whatever its interfaces.
fn is_machine_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback() || v4.is_link_local() || v4.is_unspecified() || v4.is_broadcast()
        }
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_unicast_link_local()
                || is_site_local(v6)
        }
    }
}

/// `fec0::/10`, the deprecated site-local range, treated as link-local.
fn is_site_local(v6: Ipv6Addr) -> bool {
    v6.segments()[0] & 0xffc0 == 0xfec0
}

/// The addresses of this machine's interfaces (read each time: they change).
fn own_addresses() -> Vec<IpAddr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    addrs
        .filter_map(|ifaddr| ifaddr.address)
        .filter_map(|addr| {
            if let Some(v4) = addr.as_sockaddr_in() {
                Some(IpAddr::V4(v4.ip()))
            } else {
                addr.as_sockaddr_in6()
                    .map(|v6| canonical(IpAddr::V6(v6.ip())))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_machine_itself_is_local() {
        for ip in [
            "127.0.0.1",
            "127.8.9.10",
            "169.254.169.254",
            "0.0.0.0",
            "::1",
            "::",
            "fe80::1",
            "::ffff:127.0.0.1",
        ] {
            let ip = canonical(ip.parse().unwrap());
            assert!(is_machine_local(ip), "{ip}");
        }
        for ip in ["93.184.216.34", "10.1.2.3", "2606:4700::1111"] {
            assert!(!is_machine_local(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn ports_are_told_from_ipv6_colons() {
        assert!(has_port("example.com:8080"));
        assert!(has_port("[::1]:8080"));
        assert!(!has_port("[::1]"));
        assert!(!has_port("::1"));
        assert!(!has_port("example.com"));
    }

    #[tokio::test]
    async fn names_and_literals_of_this_machine_are_found() {
        assert!(local_address("localhost", false).await.is_some());
        assert!(local_address("127.0.0.1:9", false).await.is_some());
        assert!(local_address("[::1]:443", true).await.is_some());
        let own = own_addresses();
        if let Some(ip) = own.iter().find(|ip| !is_machine_local(**ip)) {
            let authority = match ip {
                IpAddr::V4(v4) => format!("{v4}:80"),
                IpAddr::V6(v6) => format!("[{v6}]:80"),
            };
            assert_eq!(local_address(&authority, false).await, Some(*ip));
        }
    }
}
