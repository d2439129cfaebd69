//! Rate limits and the client address they are keyed on.
//!
//! Fixed windows of `WEBHOOK_RATE_LIMIT_WINDOW_SEC` allowing
//! `WEBHOOK_RATE_LIMIT_MAX_REQUESTS` each, kept per client address and per
//! token. The tables are bounded ([`MAX_BUCKETS`]): expired windows are
//! evicted when a table fills, and if it is still full the table is reset —
//! the MVP's buckets grew without bound.
//!
//! The client address is the TCP peer, except when the peer is one of
//! `TRUSTED_PROXIES`: then `X-Forwarded-For` is walked from the right and
//! the first address that is not a trusted proxy is the client (the entries
//! to its left were written by the client and prove nothing). IPv6 clients
//! are keyed by their /64, the block one subscriber typically controls.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most keys one table holds.
pub const MAX_BUCKETS: usize = 65_536;

/// A parsed `TRUSTED_PROXIES`: addresses and CIDR blocks.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies {
    nets: Vec<(IpAddr, u8)>,
}

impl TrustedProxies {
    /// Parses entries like `10.0.0.1`, `10.0.0.0/8`, `::1`, `fd00::/8`.
    /// Returns the first bad entry on error.
    pub fn parse(items: &[String]) -> Result<Self, String> {
        let mut nets = Vec::new();
        for item in items {
            let (addr, len) = match item.split_once('/') {
                Some((a, l)) => (a, Some(l)),
                None => (item.as_str(), None),
            };
            let ip: IpAddr = addr.trim().parse().map_err(|_| item.clone())?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let len = match len {
                None => max,
                Some(l) => match l.trim().parse::<u8>() {
                    Ok(n) if n <= max => n,
                    _ => return Err(item.clone()),
                },
            };
            nets.push((ip, len));
        }
        Ok(Self { nets })
    }

    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.nets
            .iter()
            .any(|&(net, len)| in_net(ip, canonical(net), len))
    }

    /// The client of a request from `peer` carrying `forwarded_for`.
    pub fn client(&self, peer: IpAddr, forwarded_for: Option<&str>) -> IpAddr {
        let peer = canonical(peer);
        if !self.contains(peer) {
            return peer;
        }
        let Some(xff) = forwarded_for else {
            return peer;
        };
        let mut client = peer;
        for hop in xff.rsplit(',') {
            match hop.trim().parse::<IpAddr>() {
                Ok(ip) => {
                    client = canonical(ip);
                    if !self.contains(client) {
                        return client;
                    }
                }
                // Garbage from here on was written by someone we do not
                // trust: stop at the last trusted hop.
                Err(_) => return client,
            }
        }
        client
    }
}

/// IPv4-mapped IPv6 addresses are the IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

fn in_net(ip: IpAddr, net: IpAddr, len: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            u32::from(a) & mask == u32::from(b) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            let mask = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len)
            };
            u128::from(a) & mask == u128::from(b) & mask
        }
        _ => false,
    }
}

/// The rate-limit key of a client address.
pub fn client_key(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & (u128::MAX << 64);
            format!("{}/64", Ipv6Addr::from(prefix))
        }
    }
}

/// Outcome of charging a bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// Over the limit; retry after this many seconds.
    Limited {
        retry_after: u64,
    },
}

struct Bucket {
    start: Instant,
    count: u64,
}

/// One table of fixed-window counters.
pub struct Limiter {
    window: Duration,
    max: u64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl Limiter {
    pub fn new(window: Duration, max: u64) -> Self {
        Self {
            window,
            max,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one request against `key`.
    pub fn charge(&self, key: &str) -> Verdict {
        self.check(key, true)
    }

    /// Whether `key` is currently over the limit, without counting.
    pub fn peek(&self, key: &str) -> Verdict {
        self.check(key, false)
    }

    fn check(&self, key: &str, count: bool) -> Verdict {
        let now = Instant::now();
        let mut map = match self.buckets.lock() {
            Ok(m) => m,
            // A panic elsewhere while holding the lock cannot leave the map
            // inconsistent (every update is one assignment): keep going.
            Err(poisoned) => poisoned.into_inner(),
        };
        if !map.contains_key(key) {
            if !count {
                return Verdict::Allowed;
            }
            if map.len() >= MAX_BUCKETS {
                let window = self.window;
                map.retain(|_, b| now.duration_since(b.start) < window);
                if map.len() >= MAX_BUCKETS {
                    tracing::warn!(
                        buckets = map.len(),
                        "rate-limit table full of live windows; resetting it"
                    );
                    map.clear();
                }
            }
            map.insert(
                key.to_owned(),
                Bucket {
                    start: now,
                    count: 0,
                },
            );
        }
        let Some(b) = map.get_mut(key) else {
            return Verdict::Allowed;
        };
        if now.duration_since(b.start) >= self.window {
            b.start = now;
            b.count = 0;
        }
        if b.count >= self.max {
            let left = self.window.saturating_sub(now.duration_since(b.start));
            return Verdict::Limited {
                retry_after: left.as_secs_f64().ceil().max(1.0) as u64,
            };
        }
        if count {
            b.count += 1;
        }
        Verdict::Allowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let t = TrustedProxies::parse(&["10.0.0.0/8".into(), "::1".into()]).unwrap();
        assert_eq!(t.client(ip("192.0.2.1"), Some("1.2.3.4")), ip("192.0.2.1"));
        assert_eq!(t.client(ip("10.1.1.1"), Some("1.2.3.4")), ip("1.2.3.4"));
        // A client-supplied entry left of the real one is ignored.
        assert_eq!(
            t.client(ip("10.1.1.1"), Some("6.6.6.6, 1.2.3.4, 10.2.2.2")),
            ip("1.2.3.4")
        );
        assert_eq!(t.client(ip("10.1.1.1"), Some("junk")), ip("10.1.1.1"));
        assert_eq!(t.client(ip("::1"), Some("2001:db8::1")), ip("2001:db8::1"));
        assert!(TrustedProxies::parse(&["10.0.0.0/33".into()]).is_err());
        assert!(TrustedProxies::parse(&["nope".into()]).is_err());
    }

    #[test]
    fn ipv6_is_keyed_by_prefix() {
        assert_eq!(
            client_key(ip("2001:db8:1:2:3:4:5:6")),
            client_key(ip("2001:db8:1:2:ffff::1"))
        );
        assert_eq!(client_key(ip("192.0.2.7")), "192.0.2.7");
    }

    #[test]
    fn limits_and_recovers() {
        let l = Limiter::new(Duration::from_millis(50), 2);
        assert_eq!(l.peek("k"), Verdict::Allowed);
        assert_eq!(l.charge("k"), Verdict::Allowed);
        assert_eq!(l.charge("k"), Verdict::Allowed);
        assert!(matches!(l.charge("k"), Verdict::Limited { retry_after: 1 }));
        assert!(matches!(l.peek("k"), Verdict::Limited { .. }));
        assert_eq!(l.charge("other"), Verdict::Allowed);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(l.charge("k"), Verdict::Allowed);
    }

    #[test]
    fn table_is_bounded() {
        let l = Limiter::new(Duration::from_secs(60), 1);
        for i in 0..MAX_BUCKETS + 10 {
            l.charge(&i.to_string());
        }
        assert!(l.buckets.lock().unwrap().len() <= MAX_BUCKETS);
    }
}
