//! The per-client limit on new sessions (`session.new_sessions_per_minute`,
//! `session.new_session_burst`): a token bucket per client address (governor's GCRA).
//!
//! A session is only worth something to a client that keeps its cookie; one that
//! creates sessions faster than a person could (a flood, a crawler that drops cookies)
//! gets 429 on the responses that would create one. Those responses cannot be served
//! without a session: passing them on would hand the app's session cookie to the browser.
//!
//! The client is the peer address, or in `forwarded = "append"` mode (behind a trusted
//! load balancer) the last `X-Forwarded-For` hop, the one that balancer appended. IPv6
//! clients are counted per /64, the smallest block a site is usually given, so that one
//! host cannot spread itself over 2^64 addresses. The number of clients tracked is
//! bounded too: past [`MAX_CLIENTS`], idle buckets are dropped, and if every bucket is
//! busy (a distributed flood) new clients share one bucket until some go idle.

use std::net::{IpAddr, Ipv6Addr};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use http::HeaderMap;

use crate::config::{CreationQuota, ForwardedMode};

/// Clients tracked at most (about 100 bytes each).
pub const MAX_CLIENTS: usize = 200_000;

/// Stands for every client that arrives while [`MAX_CLIENTS`] are being tracked.
const OVERFLOW: IpAddr = IpAddr::V6(Ipv6Addr::UNSPECIFIED);

#[derive(Debug)]
pub struct CreationLimit {
    limiter: Option<DefaultKeyedRateLimiter<IpAddr>>,
    clock: DefaultClock,
}

impl CreationLimit {
    /// `None`: no limit.
    pub fn new(quota: Option<CreationQuota>) -> CreationLimit {
        CreationLimit {
            limiter: quota.map(|q| {
                RateLimiter::dashmap(Quota::per_minute(q.per_minute).allow_burst(q.burst))
            }),
            clock: DefaultClock::default(),
        }
    }

    /// Takes one new session from the client's bucket, or says how long until one is
    /// there.
    pub fn admit(&self, client: IpAddr) -> Result<(), Duration> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        let mut key = client_key(client);
        if limiter.len() >= MAX_CLIENTS {
            limiter.retain_recent();
            if limiter.len() >= MAX_CLIENTS {
                key = OVERFLOW;
            }
        }
        limiter
            .check_key(&key)
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// Drops the buckets of clients that are full again (called by the sweeper).
    pub fn forget_idle(&self) {
        if let Some(limiter) = &self.limiter {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

/// The address a request's client is counted under.
pub fn client_address(mode: ForwardedMode, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
    if mode != ForwardedMode::Append {
        return peer;
    }
    // The trusted balancer appends its peer last; every hop before it is the client's
    // own claim. A missing or unreadable last hop counts as the balancer itself.
    headers
        .get_all(http::header::HeaderName::from_static("x-forwarded-for"))
        .iter()
        .next_back()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').next())
        .and_then(|hop| hop.trim().parse::<IpAddr>().ok())
        .unwrap_or(peer)
}

/// IPv4 as is (also when mapped into IPv6); IPv6 by its /64.
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use std::num::NonZeroU32;

    fn quota(per_minute: u32, burst: u32) -> Option<CreationQuota> {
        Some(CreationQuota {
            per_minute: NonZeroU32::new(per_minute).expect("non-zero"),
            burst: NonZeroU32::new(burst).expect("non-zero"),
        })
    }

    #[test]
    fn a_client_gets_its_burst_then_waits_and_others_are_unaffected() {
        let limit = CreationLimit::new(quota(60, 3));
        let a: IpAddr = "192.0.2.1".parse().expect("ip");
        let b: IpAddr = "192.0.2.2".parse().expect("ip");
        for _ in 0..3 {
            assert!(limit.admit(a).is_ok());
        }
        let wait = limit.admit(a).expect_err("past the burst");
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        assert!(limit.admit(b).is_ok());
    }

    #[test]
    fn ipv6_clients_count_per_64_and_mapped_ipv4_as_ipv4() {
        let limit = CreationLimit::new(quota(60, 1));
        assert!(limit.admit("2001:db8::1".parse().expect("ip")).is_ok());
        assert!(limit.admit("2001:db8::2:2".parse().expect("ip")).is_err());
        assert!(limit.admit("2001:db8:0:1::1".parse().expect("ip")).is_ok());
        assert!(limit.admit("192.0.2.9".parse().expect("ip")).is_ok());
        assert!(limit
            .admit("::ffff:192.0.2.9".parse().expect("ip"))
            .is_err());
    }

    #[test]
    fn no_quota_admits_everyone() {
        let limit = CreationLimit::new(None);
        let a: IpAddr = "192.0.2.1".parse().expect("ip");
        assert!((0..1000).all(|_| limit.admit(a).is_ok()));
    }

    #[test]
    fn only_the_appended_hop_is_trusted_and_only_in_append_mode() {
        let peer: IpAddr = "10.0.0.1".parse().expect("ip");
        let mut h = HeaderMap::new();
        h.append(
            "x-forwarded-for",
            HeaderValue::from_static("1.1.1.1, 203.0.113.7"),
        );
        let client: IpAddr = "203.0.113.7".parse().expect("ip");
        assert_eq!(client_address(ForwardedMode::Append, peer, &h), client);
        assert_eq!(client_address(ForwardedMode::Replace, peer, &h), peer);
        assert_eq!(client_address(ForwardedMode::None, peer, &h), peer);
        h.append("x-forwarded-for", HeaderValue::from_static("junk"));
        assert_eq!(client_address(ForwardedMode::Append, peer, &h), peer);
    }
}
