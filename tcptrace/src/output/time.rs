//! Kernel timestamps (CLOCK_MONOTONIC ns) as wall-clock time: RFC 3339 UTC for JSON, local
//! time of day for tables. Date math is jiff's; the monotonic-to-realtime offset is sampled
//! once at start (`host::clock`).

use std::fmt;

use jiff::Timestamp;
use jiff::tz::TimeZone;

use crate::host::clock;

/// Converts kernel monotonic timestamps (`bpf_ktime_get_ns`) to wall-clock time.
#[derive(Debug, Clone)]
pub struct WallClock {
    /// CLOCK_REALTIME - CLOCK_MONOTONIC, sampled once at start.
    realtime_minus_mono_ns: i128,
    /// The local time zone, for the table's time column.
    tz: TimeZone,
}

impl WallClock {
    /// The system's clocks and time zone (`TZ`, else `/etc/localtime`; UTC when neither).
    pub fn now() -> Self {
        Self {
            realtime_minus_mono_ns: clock::realtime_offset_ns(),
            tz: TimeZone::system(),
        }
    }

    /// A clock with a fixed offset and time zone, for tests.
    pub fn fixed(realtime_minus_mono_ns: i128, tz: TimeZone) -> Self {
        Self {
            realtime_minus_mono_ns,
            tz,
        }
    }

    /// The instant of kernel timestamp `mono_ns`.
    pub fn timestamp(&self, mono_ns: u64) -> Timestamp {
        // Out of range only for timestamps centuries away from now.
        Timestamp::from_nanosecond(i128::from(mono_ns) + self.realtime_minus_mono_ns)
            .unwrap_or(Timestamp::UNIX_EPOCH)
    }

    /// RFC 3339 UTC with microseconds, e.g. `2026-11-21T07:41:02.123456Z`.
    pub fn rfc3339(&self, mono_ns: u64) -> Rfc3339 {
        Rfc3339(self.timestamp(mono_ns))
    }

    /// Local time of day with microseconds, e.g. `07:41:02.123456`.
    pub fn time_of_day(&self, mono_ns: u64) -> TimeOfDay {
        TimeOfDay(self.tz.to_datetime(self.timestamp(mono_ns)).time())
    }
}

/// A local time of day shown with microseconds.
#[derive(Debug, Clone, Copy)]
pub struct TimeOfDay(jiff::civil::Time);

impl fmt::Display for TimeOfDay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = self.0;
        write!(
            f,
            "{:02}:{:02}:{:02}.{:06}",
            t.hour(),
            t.minute(),
            t.second(),
            t.subsec_nanosecond() / 1_000
        )
    }
}

/// How tables show time (`--time-format`); JSON always uses RFC 3339 UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum TimeFormat {
    /// Local time of day, e.g. 08:06:25.735809 (milliseconds when the table is narrow).
    #[default]
    Time,
    /// Local date, time and UTC offset, e.g. 2026-11-30T08:06:25.735809+01:00.
    Date,
    /// UTC, as in JSON: 2026-11-30T07:06:25.735809Z.
    Utc,
}

impl TimeFormat {
    /// Characters a time takes (with microseconds).
    pub fn width(self) -> usize {
        match self {
            Self::Time => 15,
            Self::Date => 32,
            Self::Utc => 27,
        }
    }

    /// Kernel timestamp `mono_ns` in this format; the time of day to milliseconds unless
    /// `micros`.
    pub fn show(self, clock: &WallClock, mono_ns: u64, micros: bool) -> String {
        match self {
            Self::Time if micros => clock.time_of_day(mono_ns).to_string(),
            Self::Time => {
                let mut s = clock.time_of_day(mono_ns).to_string();
                s.truncate(12);
                s
            }
            Self::Date => {
                let ts = clock.timestamp(mono_ns);
                let offset = clock.tz.to_offset(ts);
                format!("{:.6}", ts.display_with_offset(offset))
            }
            Self::Utc => clock.rfc3339(mono_ns).to_string(),
        }
    }
}

/// An instant shown as RFC 3339 UTC with microseconds; a string in JSON.
#[derive(Debug, Clone, Copy)]
pub struct Rfc3339(pub Timestamp);

impl fmt::Display for Rfc3339 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.6}", self.0)
    }
}

impl serde::Serialize for Rfc3339 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Monotonic 0 == 2026-11-21T07:00:00Z, local time UTC+1.
    pub(crate) fn clock() -> WallClock {
        WallClock::fixed(
            1_795_244_400_000_000_000,
            TimeZone::fixed(jiff::tz::offset(1)),
        )
    }

    #[test]
    fn rfc3339_known_instants() {
        let c = WallClock::fixed(0, TimeZone::UTC);
        assert_eq!(c.rfc3339(0).to_string(), "1970-01-01T00:00:00.000000Z");
        // Leap day 2000.
        assert_eq!(
            c.rfc3339(951_782_400_123_456_789).to_string(),
            "2000-02-29T00:00:00.123456Z"
        );
        assert_eq!(
            clock().rfc3339(0).to_string(),
            "2026-11-21T07:00:00.000000Z"
        );
        let before = WallClock::fixed(-1_000, TimeZone::UTC);
        assert_eq!(before.rfc3339(0).to_string(), "1969-12-31T23:59:59.999999Z");
    }

    #[test]
    fn table_time_formats() {
        let c = clock();
        let ns = 5_000_123_456;
        assert_eq!(TimeFormat::Time.show(&c, ns, true), "08:00:05.000123");
        assert_eq!(TimeFormat::Time.show(&c, ns, false), "08:00:05.000");
        assert_eq!(
            TimeFormat::Date.show(&c, ns, true),
            "2026-11-21T08:00:05.000123+01:00"
        );
        assert_eq!(
            TimeFormat::Utc.show(&c, ns, true),
            "2026-11-21T07:00:05.000123Z"
        );
        for f in [TimeFormat::Time, TimeFormat::Date, TimeFormat::Utc] {
            assert_eq!(f.show(&c, ns, true).len(), f.width(), "{f:?}");
        }
    }

    #[test]
    fn time_of_day_is_local() {
        assert_eq!(
            clock().time_of_day(5_000_000_123).to_string(),
            "08:00:05.000000"
        );
    }
}
