//! How a spool is sized and how hard it pushes data to the disk. Parsed once, from strings the
//! agent's configuration carries, into typed values no later code re-checks.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::format::{RECORD_HEADER_LEN, SEGMENT_HEADER_LEN};

/// Sizes and policies of a spool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpoolConfig {
    /// Cap on the bytes of segment files on disk (headers included). The small ack log is not
    /// counted. What happens at the cap is `when_full`.
    pub max_bytes: u64,
    /// A segment is closed and a new one started once the next record would take it past this
    /// size. Disk space is only given back a whole segment at a time, so smaller segments free
    /// space sooner; larger ones mean fewer files and fsyncs.
    pub segment_bytes: u64,
    /// When appended data is forced to the disk.
    pub fsync: FsyncPolicy,
    /// What an append does when the spool is at `max_bytes`.
    pub when_full: WhenFull,
    /// Recently appended payloads kept in memory (bytes), so that sending right after
    /// appending does not read the disk back. 0 turns the cache off.
    pub cache_bytes: u64,
}

impl SpoolConfig {
    /// Default cap: 64 MiB.
    pub const fn default_max_bytes() -> u64 {
        64 << 20
    }

    /// Default segment size: 4 MiB.
    pub const fn default_segment_bytes() -> u64 {
        4 << 20
    }

    /// Default fsync policy: every 200 ms.
    pub const fn default_fsync() -> FsyncPolicy {
        FsyncPolicy::Interval(Duration::from_millis(200))
    }

    /// Default read cache: 4 MiB.
    pub const fn default_cache_bytes() -> u64 {
        4 << 20
    }

    /// Checks the sizes against each other.
    pub fn validate(&self) -> Result<()> {
        let smallest = SEGMENT_HEADER_LEN + RECORD_HEADER_LEN;
        if self.max_bytes < smallest {
            return Err(Error::Config(format!(
                "max_bytes is {} but must be at least {smallest} (one empty record)",
                self.max_bytes
            )));
        }
        if self.segment_bytes == 0 || self.segment_bytes > self.max_bytes {
            return Err(Error::Config(format!(
                "segment_bytes is {} but must be between 1 and max_bytes ({})",
                self.segment_bytes, self.max_bytes
            )));
        }
        Ok(())
    }
}

impl Default for SpoolConfig {
    fn default() -> SpoolConfig {
        SpoolConfig {
            max_bytes: SpoolConfig::default_max_bytes(),
            segment_bytes: SpoolConfig::default_segment_bytes(),
            fsync: SpoolConfig::default_fsync(),
            when_full: WhenFull::Block,
            cache_bytes: SpoolConfig::default_cache_bytes(),
        }
    }
}

/// When appended records are forced to the disk with `fdatasync`.
///
/// Text form: `always`, `never`, or `interval:<duration>` with a humantime duration
/// (`interval:200ms`, `interval:1s`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// `append` returns only after `fdatasync`: nothing acknowledged to the caller is lost to a
    /// power cut. Costs one sync per record.
    Always,
    /// The owner calls `Spool::maybe_sync(now)` on a tick; data is synced when this much time
    /// has passed since the last sync. A power cut loses at most the last interval; a process
    /// crash loses nothing (the data is in the page cache).
    Interval(Duration),
    /// The spool never syncs on its own (the OS writes back when it likes); `close` and `sync`
    /// still do. For benchmarks and throwaway spools.
    Never,
}

impl fmt::Display for FsyncPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FsyncPolicy::Always => f.write_str("always"),
            FsyncPolicy::Never => f.write_str("never"),
            FsyncPolicy::Interval(d) => write!(f, "interval:{}", humantime::format_duration(*d)),
        }
    }
}

impl FromStr for FsyncPolicy {
    type Err = Error;

    fn from_str(s: &str) -> Result<FsyncPolicy> {
        let bad = || Error::ParseFsyncPolicy {
            input: s.to_owned(),
        };
        match s.trim() {
            "always" => Ok(FsyncPolicy::Always),
            "never" => Ok(FsyncPolicy::Never),
            other => {
                let d = other.strip_prefix("interval:").ok_or_else(bad)?;
                humantime::parse_duration(d.trim())
                    .map(FsyncPolicy::Interval)
                    .map_err(|_| bad())
            }
        }
    }
}

/// What `append` does when the spool is at its cap.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum WhenFull {
    /// Refuse the record and hand it back (`Appended::Full`); the caller retries once acks
    /// have freed space. Nothing is lost, the producer is slowed down.
    #[default]
    Block,
    /// Delete the oldest segments, unacknowledged records included, until the record fits,
    /// and report exactly which records went (`Appended::Stored { dropped, .. }`).
    DropOldest,
}

impl fmt::Display for WhenFull {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WhenFull::Block => "block",
            WhenFull::DropOldest => "drop_oldest",
        })
    }
}

impl FromStr for WhenFull {
    type Err = Error;

    fn from_str(s: &str) -> Result<WhenFull> {
        match s.trim() {
            "block" => Ok(WhenFull::Block),
            "drop_oldest" => Ok(WhenFull::DropOldest),
            _ => Err(Error::ParseWhenFull {
                input: s.to_owned(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fsync_policy_text_round_trips() {
        for p in [
            FsyncPolicy::Always,
            FsyncPolicy::Never,
            FsyncPolicy::Interval(Duration::from_millis(250)),
            FsyncPolicy::Interval(Duration::from_secs(2)),
        ] {
            assert_eq!(p.to_string().parse::<FsyncPolicy>().unwrap(), p, "{p}");
        }
        assert_eq!(
            FsyncPolicy::Interval(Duration::from_millis(250)).to_string(),
            "interval:250ms"
        );
        assert_eq!(
            "interval:1s".parse::<FsyncPolicy>().unwrap(),
            FsyncPolicy::Interval(Duration::from_secs(1))
        );
    }

    #[test]
    fn bad_fsync_policy_names_the_input() {
        for bad in ["sometimes", "interval:", "interval:fast", "200ms", "Always"] {
            let err = bad.parse::<FsyncPolicy>().unwrap_err();
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
    }

    #[test]
    fn when_full_text_round_trips() {
        for p in [WhenFull::Block, WhenFull::DropOldest] {
            assert_eq!(p.to_string().parse::<WhenFull>().unwrap(), p);
        }
        assert_eq!(WhenFull::DropOldest.to_string(), "drop_oldest");
        let err = "drop-oldest".parse::<WhenFull>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid when_full policy \"drop-oldest\": expected \"block\" or \"drop_oldest\""
        );
    }

    #[test]
    fn validate_rejects_segments_larger_than_the_cap() {
        assert!(SpoolConfig::default().validate().is_ok());
        let c = SpoolConfig {
            max_bytes: 1000,
            segment_bytes: 2000,
            ..SpoolConfig::default()
        };
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "invalid spool configuration: segment_bytes is 2000 but must be between 1 and max_bytes (1000)"
        );
        let c = SpoolConfig {
            max_bytes: 10,
            segment_bytes: 10,
            ..SpoolConfig::default()
        };
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("max_bytes is 10")
        );
    }
}
