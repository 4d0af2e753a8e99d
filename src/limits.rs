//! Rate limits: separate budgets per client IP, per account and per user for the things a
//! hostile client would repeat (whole requests, password guesses, registrations, sends,
//! expensive reads). Each budget is a keyed GCRA limiter (`governor`); over it the caller
//! gets how long to wait, which the API reports as `RATE_LIMITED` with
//! `extensions.retryAfterMs` (HTTP 429 when the whole request is refused).
//!
//! The keyed limiters forget keys that are back to a full budget, so their memory stays
//! bounded by the clients active within one refill period.

use std::fmt;
use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use parley_domain::UserId;

/// A budget: `count` actions per `per`, of which up to `burst` at once. Written
/// `N/UNIT` (burst N) or `N/UNIT burst B`, UNIT one of `s`, `min`, `h`; or `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    pub count: u32,
    pub per: Duration,
    pub burst: u32,
}

/// A budget that may be switched off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget(pub Option<Rate>);

impl Budget {
    pub const OFF: Self = Self(None);

    pub const fn new(count: u32, per: Duration, burst: u32) -> Self {
        Self(Some(Rate { count, per, burst }))
    }

    pub const fn per_minute(count: u32, burst: u32) -> Self {
        Self::new(count, Duration::from_secs(60), burst)
    }
}

impl fmt::Display for Budget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(rate) = self.0 else {
            return f.write_str("off");
        };
        let unit = match rate.per.as_secs() {
            1 => "s",
            60 => "min",
            _ => "h",
        };
        write!(f, "{}/{unit}", rate.count)?;
        if rate.burst != rate.count {
            write!(f, " burst {}", rate.burst)?;
        }
        Ok(())
    }
}

impl FromStr for Budget {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("off") {
            return Ok(Self::OFF);
        }
        let usage = || {
            format!("{s:?} is not a rate: expected N/s, N/min, N/h (optionally `burst B`) or off")
        };
        let (rate, burst) = match s.split_once("burst") {
            Some((rate, burst)) => (rate.trim(), Some(burst.trim())),
            None => (s, None),
        };
        let (count, unit) = rate.split_once('/').ok_or_else(usage)?;
        let count: u32 = count.trim().parse().map_err(|_| usage())?;
        let per = match unit.trim() {
            "s" | "sec" => Duration::from_secs(1),
            "m" | "min" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            _ => return Err(usage()),
        };
        let burst = match burst {
            Some(b) => b.parse().map_err(|_| usage())?,
            None => count,
        };
        if count == 0 || burst == 0 {
            return Err(format!(
                "{s:?}: the count and the burst must be at least 1 (or say off)"
            ));
        }
        Ok(Self::new(count, per, burst))
    }
}

/// Every budget, as configured (`PARLEY_RATE_*`, see the README).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateLimitConfig {
    /// Whole GraphQL requests (HTTP) and WebSocket upgrades per client IP.
    pub requests_per_ip: Budget,
    /// Password checks against one account, from anywhere.
    pub logins_per_account: Budget,
    /// Password checks from one IP, against any account.
    pub logins_per_ip: Budget,
    /// Accounts created from one IP.
    pub registrations_per_ip: Budget,
    /// Messages sent by one user.
    pub sends_per_user: Budget,
    /// Expensive reads (the event log, time travel) by one user.
    pub expensive_per_user: Budget,
    /// A refused sign-in (wrong password, unknown user, over a budget) is answered no sooner
    /// than this after it arrived: a guesser's loop waits instead of spinning the server's
    /// cores, and every refusal takes the same time whatever its reason.
    pub failed_login_delay: Duration,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            requests_per_ip: Budget::per_minute(6000, 600),
            logins_per_account: Budget::per_minute(5, 5),
            logins_per_ip: Budget::per_minute(30, 10),
            registrations_per_ip: Budget::per_minute(20, 10),
            sends_per_user: Budget::per_minute(300, 30),
            expensive_per_user: Budget::per_minute(120, 30),
            failed_login_delay: Duration::from_secs(1),
        }
    }
}

impl RateLimitConfig {
    /// No limits (tests and benchmarks that are not about limits).
    pub fn unlimited() -> Self {
        Self {
            requests_per_ip: Budget::OFF,
            logins_per_account: Budget::OFF,
            logins_per_ip: Budget::OFF,
            registrations_per_ip: Budget::OFF,
            sends_per_user: Budget::OFF,
            expensive_per_user: Budget::OFF,
            failed_login_delay: Duration::ZERO,
        }
    }
}

/// Why an action was refused: which budget, and when it has room again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refused {
    pub what: &'static str,
    pub retry_after: Duration,
}

/// Keys kept before a limiter forgets the ones back to a full budget.
const MAX_KEYS: usize = 50_000;
/// Every this many checks a limiter forgets idle keys anyway.
const HOUSEKEEPING_EVERY: u64 = 4096;

/// One keyed budget.
struct Limiter<K: Hash + Eq + Clone> {
    what: &'static str,
    inner: Option<DefaultKeyedRateLimiter<K>>,
    checks: AtomicU64,
}

impl<K: Hash + Eq + Clone> Limiter<K> {
    fn new(what: &'static str, budget: Budget) -> Self {
        let inner = budget.0.map(|rate| {
            let count = NonZeroU32::new(rate.count).unwrap_or(NonZeroU32::MIN);
            let burst = NonZeroU32::new(rate.burst).unwrap_or(NonZeroU32::MIN);
            let interval = (rate.per / count.get()).max(Duration::from_nanos(1));
            let quota = Quota::with_period(interval)
                .unwrap_or_else(|| Quota::per_second(NonZeroU32::MAX))
                .allow_burst(burst);
            RateLimiter::keyed(quota)
        });
        Self {
            what,
            inner,
            checks: AtomicU64::new(0),
        }
    }

    fn check(&self, key: &K) -> Result<(), Refused> {
        let Some(limiter) = &self.inner else {
            return Ok(());
        };
        let checks = self.checks.fetch_add(1, Ordering::Relaxed) + 1;
        if checks % HOUSEKEEPING_EVERY == 0 || (checks % 64 == 0 && limiter.len() > MAX_KEYS) {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        limiter.check_key(key).map_err(|not_until| {
            metrics::counter!("parley_rate_limited_total", "limit" => self.what).increment(1);
            Refused {
                what: self.what,
                retry_after: not_until.wait_time_from(limiter.clock().now()),
            }
        })
    }

    fn keys(&self) -> usize {
        self.inner.as_ref().map_or(0, |l| l.len())
    }
}

/// The budgets of one server instance.
pub struct RateLimits {
    config: RateLimitConfig,
    requests_per_ip: Limiter<IpAddr>,
    logins_per_account: Limiter<String>,
    logins_per_ip: Limiter<IpAddr>,
    registrations_per_ip: Limiter<IpAddr>,
    sends_per_user: Limiter<UserId>,
    expensive_per_user: Limiter<UserId>,
}

impl fmt::Debug for RateLimits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimits")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Default for RateLimits {
    fn default() -> Self {
        Self::new(&RateLimitConfig::default())
    }
}

impl RateLimits {
    pub fn new(config: &RateLimitConfig) -> Self {
        Self {
            config: config.clone(),
            requests_per_ip: Limiter::new("requests", config.requests_per_ip),
            logins_per_account: Limiter::new(
                "sign-in attempts for this account",
                config.logins_per_account,
            ),
            logins_per_ip: Limiter::new("sign-in attempts", config.logins_per_ip),
            registrations_per_ip: Limiter::new("registrations", config.registrations_per_ip),
            sends_per_user: Limiter::new("messages", config.sends_per_user),
            expensive_per_user: Limiter::new("expensive queries", config.expensive_per_user),
        }
    }

    pub fn config(&self) -> &RateLimitConfig {
        &self.config
    }

    /// A whole request from `ip` (none known: not limited by IP).
    pub fn request(&self, ip: Option<IpAddr>) -> Result<(), Refused> {
        ip.map_or(Ok(()), |ip| self.requests_per_ip.check(&ip))
    }

    /// A password check against `account` (a valid username) from `ip`.
    pub fn login(&self, ip: Option<IpAddr>, account: &str) -> Result<(), Refused> {
        if let Some(ip) = ip {
            self.logins_per_ip.check(&ip)?;
        }
        self.logins_per_account.check(&account.to_owned())
    }

    pub fn register(&self, ip: Option<IpAddr>) -> Result<(), Refused> {
        ip.map_or(Ok(()), |ip| self.registrations_per_ip.check(&ip))
    }

    pub fn send(&self, user: UserId) -> Result<(), Refused> {
        self.sends_per_user.check(&user)
    }

    pub fn expensive(&self, user: UserId) -> Result<(), Refused> {
        self.expensive_per_user.check(&user)
    }

    /// Keys held across all budgets (to show memory stays bounded).
    pub fn tracked_keys(&self) -> usize {
        self.requests_per_ip.keys()
            + self.logins_per_account.keys()
            + self.logins_per_ip.keys()
            + self.registrations_per_ip.keys()
            + self.sends_per_user.keys()
            + self.expensive_per_user.keys()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_and_print() {
        assert_eq!("off".parse::<Budget>().unwrap(), Budget::OFF);
        assert_eq!(
            "10/min".parse::<Budget>().unwrap(),
            Budget::per_minute(10, 10)
        );
        assert_eq!(
            "5/min burst 2".parse::<Budget>().unwrap(),
            Budget::per_minute(5, 2)
        );
        assert_eq!(
            "3/s".parse::<Budget>().unwrap(),
            Budget::new(3, Duration::from_secs(1), 3)
        );
        for bad in [
            "",
            "10",
            "0/min",
            "x/min",
            "10/week",
            "5/min burst 0",
            "5/min burst x",
        ] {
            assert!(bad.parse::<Budget>().is_err(), "{bad:?} was accepted");
        }
        for budget in [
            Budget::OFF,
            Budget::per_minute(5, 2),
            Budget::per_minute(7, 7),
        ] {
            assert_eq!(budget.to_string().parse::<Budget>().unwrap(), budget);
        }
    }

    #[test]
    fn a_budget_refuses_past_its_burst_and_says_when_to_retry() {
        let limits = RateLimits::new(&RateLimitConfig {
            logins_per_account: Budget::per_minute(5, 3),
            ..RateLimitConfig::unlimited()
        });
        for _ in 0..3 {
            limits.login(None, "ann").unwrap();
        }
        let refused = limits.login(None, "ann").unwrap_err();
        assert!(refused.retry_after > Duration::from_secs(5));
        assert!(refused.retry_after <= Duration::from_secs(12));
        // Another account has its own budget.
        limits.login(None, "bob").unwrap();
    }

    #[test]
    fn idle_keys_are_forgotten() {
        let limits = RateLimits::new(&RateLimitConfig {
            requests_per_ip: Budget::new(1000, Duration::from_secs(1), 1000),
            ..RateLimitConfig::unlimited()
        });
        for i in 0..(HOUSEKEEPING_EVERY as u32 - 1) {
            let ip = IpAddr::from(i.to_be_bytes());
            limits.request(Some(ip)).unwrap();
        }
        assert!(limits.tracked_keys() > 4000);
        std::thread::sleep(Duration::from_millis(20));
        // The next check does the housekeeping: every earlier key is back to full.
        limits.request(Some(IpAddr::from([10, 0, 0, 1]))).unwrap();
        assert!(limits.tracked_keys() <= 1, "{}", limits.tracked_keys());
    }
}
