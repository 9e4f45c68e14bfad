//! Time as an input.
//!
//! The core never reads a clock. Every call that depends on time takes a
//! [`Instant`]: microseconds since an origin the caller picks (a runtime uses
//! its start, a simulation uses zero). Only differences between instants
//! matter, so a simulation's virtual clock and a runtime's real one are
//! interchangeable.

use std::fmt;
use std::ops::{Add, Sub};
use std::time::Duration;

/// A point in time, in microseconds since a caller-chosen origin.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Instant(u64);

impl Instant {
    /// The origin.
    pub const ZERO: Instant = Instant(0);

    /// An instant `micros` microseconds after the origin.
    pub const fn from_micros(micros: u64) -> Self {
        Instant(micros)
    }

    /// An instant `d` after the origin (saturating at about 584,000 years).
    pub fn from_duration(d: Duration) -> Self {
        Instant(u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
    }

    /// Microseconds since the origin.
    pub const fn as_micros(self) -> u64 {
        self.0
    }

    /// Time elapsed from `earlier` to `self`, or zero if `earlier` is later.
    pub fn saturating_since(self, earlier: Instant) -> Duration {
        Duration::from_micros(self.0.saturating_sub(earlier.0))
    }
}

impl Add<Duration> for Instant {
    type Output = Instant;
    fn add(self, d: Duration) -> Instant {
        Instant(
            self.0
                .saturating_add(u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
        )
    }
}

impl Sub<Instant> for Instant {
    type Output = Duration;
    fn sub(self, earlier: Instant) -> Duration {
        self.saturating_since(earlier)
    }
}

impl fmt::Debug for Instant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "t+{}.{:06}s", self.0 / 1_000_000, self.0 % 1_000_000)
    }
}

/// A wall-clock time: microseconds since the Unix epoch, as a caller's
/// clock says.
///
/// What several processes or machines must agree on uses it: the
/// deadline of a lease, which every process on a data directory checks,
/// and a message's not-before and expiry times, set by its sender. An
/// [`Instant`]'s origin is one process's own, so it cannot serve there.
/// The core still reads no clock: the caller passes the time in (a
/// runtime reads the system clock, a simulation its virtual one).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(u64);

impl Timestamp {
    /// The Unix epoch.
    pub const EPOCH: Timestamp = Timestamp(0);
    /// The latest time there is: "never" as a deadline.
    pub const NEVER: Timestamp = Timestamp(u64::MAX);

    /// `micros` microseconds after the Unix epoch.
    pub const fn from_micros(micros: u64) -> Self {
        Timestamp(micros)
    }

    /// `d` after the Unix epoch (what `SystemTime::duration_since(UNIX_EPOCH)`
    /// gives), saturating.
    pub fn from_unix(d: Duration) -> Self {
        Timestamp(u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
    }

    /// Microseconds since the Unix epoch.
    pub const fn as_micros(self) -> u64 {
        self.0
    }

    /// Time from `earlier` to `self`, or zero if `earlier` is later.
    pub fn saturating_since(self, earlier: Timestamp) -> Duration {
        Duration::from_micros(self.0.saturating_sub(earlier.0))
    }
}

impl Add<Duration> for Timestamp {
    type Output = Timestamp;
    fn add(self, d: Duration) -> Timestamp {
        Timestamp(
            self.0
                .saturating_add(u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
        )
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unix+{}.{:06}s", self.0 / 1_000_000, self.0 % 1_000_000)
    }
}
