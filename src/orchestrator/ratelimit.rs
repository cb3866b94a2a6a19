//! Per-caller rate limits (design §5): keyed GCRA (`governor`), one limiter per class, keyed by
//! the principal (by client address for the anonymous dev-mode caller, who has no identity of
//! its own). Pure: the HTTP layer asks [`Limiter::check`] in a route layer after
//! authentication and renders a [`Refusal`] as a 429 with `Retry-After`.
//!
//! A key whose bucket has refilled is indistinguishable from a new one, so
//! [`Limiter::evict_idle`] drops it; sandboxd's housekeeping task calls it every few seconds,
//! which bounds the memory by the callers of the last few seconds, not by every caller ever
//! seen.

use std::fmt;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};

use super::auth::{AuthMethod, Principal};

/// A rate class: every API route group carries exactly one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    /// Creating things: `POST /sandboxes` (later executions, pool acquire, prepulls, template
    /// import).
    Create,
    /// Execution and batch submits.
    Exec,
    /// Every other API route.
    Read,
}

impl Class {
    /// The wire name (in messages and the `RateLimit` headers).
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Create => "create",
            Class::Exec => "exec",
            Class::Read => "read",
        }
    }

    fn index(self) -> usize {
        match self {
            Class::Create => 0,
            Class::Exec => 1,
            Class::Read => 2,
        }
    }
}

impl fmt::Display for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One class's setting.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Sustained requests per second (fractions allowed); 0 switches the class off.
    pub per_second: f64,
    /// Requests allowed at once (at least 1).
    pub burst: u32,
}

impl Rate {
    /// `per_second` sustained, `burst` at once.
    pub fn new(per_second: f64, burst: u32) -> Self {
        Self { per_second, burst }
    }

    /// The class switched off.
    pub fn off() -> Self {
        Self::new(0.0, 1)
    }

    /// The quota, or `None` when this rate switches the class off.
    fn quota(self) -> Option<Quota> {
        if !(self.per_second.is_finite() && self.per_second > 0.0) {
            return None;
        }
        let period = Duration::from_secs_f64(1.0 / self.per_second);
        Some(Quota::with_period(period)?.allow_burst(NonZeroU32::new(self.burst.max(1))?))
    }
}

/// The three classes' settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    /// `create`: default 10/s, burst 20.
    pub create: Rate,
    /// `exec`: default 20/s, burst 50.
    pub exec: Rate,
    /// `read`: default 100/s, burst 200.
    pub read: Rate,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            create: Rate::new(10.0, 20),
            exec: Rate::new(20.0, 50),
            read: Rate::new(100.0, 200),
        }
    }
}

/// What the `RateLimit-Policy` header says of a class: `q` requests per `w` seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// The burst: requests allowed at once.
    pub quota: u32,
    /// Seconds an empty bucket takes to refill, rounded up (at least 1).
    pub window: u64,
}

/// A refused request: which class, and when to come back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// The class whose bucket is empty.
    pub class: Class,
    /// Whole seconds until one request conforms again, rounded up, at least 1.
    pub retry_after: u64,
    /// The class's policy, for the headers.
    pub policy: Policy,
}

struct Bucket<C: Clock> {
    limiter: RateLimiter<String, DashMapStateStore<String>, C, NoOpMiddleware<C::Instant>>,
    policy: Policy,
}

/// The limiter of every class. `C` is the clock: the monotonic one in sandboxd, a fake one in
/// tests.
pub struct Limiter<C: Clock = DefaultClock> {
    buckets: [Option<Bucket<C>>; 3],
}

impl Limiter {
    /// A limiter on the monotonic clock.
    pub fn new(settings: Settings) -> Self {
        Self::with_clock(settings, DefaultClock::default())
    }
}

impl<C: Clock + Clone> Limiter<C> {
    /// A limiter on `clock`.
    pub fn with_clock(settings: Settings, clock: C) -> Self {
        let bucket = |rate: Rate| {
            rate.quota().map(|quota| Bucket {
                limiter: RateLimiter::dashmap_with_clock(quota, clock.clone()),
                policy: Policy {
                    quota: quota.burst_size().get(),
                    window: ceil_secs(quota.burst_size_replenished_in()),
                },
            })
        };
        Self {
            buckets: [
                bucket(settings.create),
                bucket(settings.exec),
                bucket(settings.read),
            ],
        }
    }

    /// Takes one request of `class` from `key`'s bucket, or says how long until one conforms.
    /// A class that is off allows everything.
    pub fn check(&self, class: Class, key: &String) -> Result<(), Refusal> {
        let Some(bucket) = &self.buckets[class.index()] else {
            return Ok(());
        };
        bucket.limiter.check_key(key).map_err(|not_until| Refusal {
            class,
            retry_after: ceil_secs(not_until.wait_time_from(bucket.limiter.clock().now())),
            policy: bucket.policy,
        })
    }

    /// The policy of `class`, `None` when it is off.
    pub fn policy(&self, class: Class) -> Option<Policy> {
        self.buckets[class.index()].as_ref().map(|b| b.policy)
    }

    /// Drops every key whose bucket has refilled (it would behave exactly as a new one) and
    /// returns how many keys remain.
    pub fn evict_idle(&self) -> usize {
        self.buckets
            .iter()
            .flatten()
            .map(|b| {
                b.limiter.retain_recent();
                b.limiter.shrink_to_fit();
                b.limiter.len()
            })
            .sum()
    }

    /// Keys held, over every class.
    pub fn keys(&self) -> usize {
        self.buckets.iter().flatten().map(|b| b.limiter.len()).sum()
    }
}

/// Whose bucket a request takes from: the principal's, or, for the anonymous caller of the
/// dev mode (no API key configured, so every caller is the same `anonymous`) and a request
/// with no principal, the client address's. The prefixes keep an id from ever naming an
/// address's bucket.
pub fn key_of(principal: Option<&Principal>, client: Option<IpAddr>) -> String {
    match (principal, client) {
        (Some(p), _) if p.method != AuthMethod::Anonymous => format!("id:{}", p.id),
        (_, Some(ip)) => format!("ip:{ip}"),
        (Some(p), None) => format!("id:{}", p.id),
        (None, None) => "ip:unknown".to_owned(),
    }
}

/// `d` in whole seconds, rounded up, at least 1 (what `Retry-After` may say).
fn ceil_secs(d: Duration) -> u64 {
    let nanos = d.as_nanos().div_ceil(1_000_000_000);
    u64::try_from(nanos).unwrap_or(u64::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use governor::clock::FakeRelativeClock;

    use super::*;
    use crate::orchestrator::auth::Role;

    fn limiter(create: Rate) -> (Limiter<FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        let settings = Settings {
            create,
            ..Settings::default()
        };
        (Limiter::with_clock(settings, clock.clone()), clock)
    }

    fn user(id: &str) -> Principal {
        Principal {
            id: id.into(),
            role: Role::User,
            method: AuthMethod::Bearer,
            token_id: None,
            expires_at: None,
        }
    }

    #[test]
    fn a_burst_then_one_more_is_refused_until_the_retry_after_has_passed() {
        // 0.5/s: one request every 2 s once the burst of 3 is spent.
        let (l, clock) = limiter(Rate::new(0.5, 3));
        let key = key_of(Some(&user("u1")), None);
        for _ in 0..3 {
            assert_eq!(l.check(Class::Create, &key), Ok(()));
        }
        let refused = l.check(Class::Create, &key).unwrap_err();
        assert_eq!(refused.class, Class::Create);
        assert_eq!(refused.retry_after, 2);
        assert_eq!(refused.policy, Policy { quota: 3, window: 6 });
        // Just short of the wait: still refused, and the wait it names has shrunk.
        clock.advance(Duration::from_millis(1500));
        assert_eq!(l.check(Class::Create, &key).unwrap_err().retry_after, 1);
        clock.advance(Duration::from_millis(500));
        assert_eq!(l.check(Class::Create, &key), Ok(()));
        assert!(
            l.check(Class::Create, &key).is_err(),
            "one token, not a new burst"
        );
    }

    #[test]
    fn retry_after_is_at_least_one_second_even_for_fast_classes() {
        let (l, _) = limiter(Rate::new(1000.0, 1));
        let key = "id:u1".to_owned();
        l.check(Class::Create, &key).unwrap();
        let refused = l.check(Class::Create, &key).unwrap_err();
        assert_eq!(refused.retry_after, 1, "1 ms rounds up to 1 s");
        assert_eq!(refused.policy, Policy { quota: 1, window: 1 });
    }

    #[test]
    fn two_principals_have_independent_buckets() {
        let (l, _) = limiter(Rate::new(1.0, 2));
        let (a, b) = (key_of(Some(&user("a")), None), key_of(Some(&user("b")), None));
        l.check(Class::Create, &a).unwrap();
        l.check(Class::Create, &a).unwrap();
        assert!(l.check(Class::Create, &a).is_err());
        l.check(Class::Create, &b).unwrap();
        l.check(Class::Create, &b).unwrap();
        assert!(l.check(Class::Create, &b).is_err());
    }

    #[test]
    fn classes_have_independent_buckets_and_zero_switches_one_off() {
        let clock = FakeRelativeClock::default();
        let settings = Settings {
            create: Rate::new(1.0, 1),
            exec: Rate::off(),
            read: Rate::new(1.0, 1),
        };
        let l = Limiter::with_clock(settings, clock);
        let key = "id:u".to_owned();
        l.check(Class::Create, &key).unwrap();
        assert!(l.check(Class::Create, &key).is_err());
        l.check(Class::Read, &key).unwrap();
        for _ in 0..1000 {
            l.check(Class::Exec, &key).unwrap();
        }
        assert_eq!(l.policy(Class::Exec), None);
        assert_eq!(l.keys(), 2, "an off class keeps no keys");
    }

    #[test]
    fn the_anonymous_caller_is_keyed_by_address_and_ids_never_collide_with_addresses() {
        let ip = |s: &str| Some(s.parse().unwrap());
        let anon = Principal::anonymous();
        assert_eq!(key_of(Some(&anon), ip("127.0.0.2")), "ip:127.0.0.2");
        assert_ne!(
            key_of(Some(&anon), ip("127.0.0.1")),
            key_of(Some(&anon), ip("127.0.0.2"))
        );
        assert_eq!(key_of(Some(&anon), None), "id:anonymous");
        assert_eq!(key_of(None, ip("10.0.0.1")), "ip:10.0.0.1");
        assert_eq!(key_of(Some(&Principal::root()), ip("127.0.0.1")), "id:root");
        assert_ne!(
            key_of(Some(&user("127.0.0.1")), None),
            key_of(Some(&anon), ip("127.0.0.1"))
        );
    }

    #[test]
    fn idle_keys_are_evicted_once_their_bucket_has_refilled() {
        let (l, clock) = limiter(Rate::new(10.0, 20));
        for i in 0..1000 {
            l.check(Class::Create, &format!("id:u{i}")).unwrap();
        }
        assert_eq!(l.keys(), 1000);
        assert_eq!(l.evict_idle(), 1000, "buckets not yet refilled stay");
        // A bucket 1 token short refills in 100 ms; governor keeps a key one emission interval
        // longer than that.
        clock.advance(Duration::from_millis(150));
        assert_eq!(l.evict_idle(), 1000, "not yet");
        clock.advance(Duration::from_millis(50));
        l.check(Class::Create, &"id:busy".to_owned()).unwrap();
        assert_eq!(l.evict_idle(), 1, "only the recent caller is kept");
    }
}
