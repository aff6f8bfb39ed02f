//! What one client may take of the Beats input besides what the codec bounds: connections per
//! client address, and how slowly a frame may arrive.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::time::Instant;

/// Refused connections are logged at most this often (with how many were refused since).
const REFUSED_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Connections open per client address, capped.
pub struct PerClient {
    max: usize,
    /// Taken once when a connection is accepted and once when it ends, never across an await.
    open: Mutex<HashMap<IpAddr, usize>>,
    /// When a refusal was last logged, and refusals since then.
    refused: Mutex<(Option<Instant>, u64)>,
}

impl PerClient {
    pub fn new(max: usize) -> Self {
        PerClient {
            max,
            open: Mutex::new(HashMap::new()),
            refused: Mutex::new((None, 0)),
        }
    }

    /// Counts a new connection from `ip`, or refuses it (false) when `ip` has `max` open.
    pub fn admit(&self, ip: IpAddr) -> bool {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(ip).or_insert(0);
        if *n >= self.max {
            return false;
        }
        *n += 1;
        true
    }

    /// A connection from `ip` that `admit` counted has ended.
    pub fn release(&self, ip: IpAddr) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&ip);
            }
        }
    }

    /// Records a refusal; returns how many refusals to log now (this one and those not logged
    /// before), or `None` while the last log line is recent.
    pub fn refused(&self) -> Option<u64> {
        let mut r = self.refused.lock().unwrap_or_else(|e| e.into_inner());
        r.1 += 1;
        let now = Instant::now();
        if r.0.is_some_and(|at| now - at < REFUSED_LOG_INTERVAL) {
            return None;
        }
        r.0 = Some(now);
        Some(std::mem::take(&mut r.1))
    }

    pub fn max(&self) -> usize {
        self.max
    }
}

/// A reader that counts the bytes read through it, for the frame rate check.
pub struct Counted<R> {
    inner: R,
    read: u64,
}

impl<R> Counted<R> {
    pub fn new(inner: R) -> Self {
        Counted { inner, read: 0 }
    }

    pub fn read(&self) -> u64 {
        self.read
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for Counted<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        this.read += (buf.filled().len() - before) as u64;
        r
    }
}

/// The floor rate a frame must arrive at once its grace period has passed.
#[derive(Debug, Clone, Copy)]
pub struct FrameRate {
    /// Bytes per second; 0 turns the check off.
    pub min: u64,
    pub grace: Duration,
}

/// The frame being received: since when, and how many bytes had been read by then.
#[derive(Debug, Clone, Copy)]
pub struct Trickle {
    since: Instant,
    read_then: u64,
}

/// A frame that arrived slower than the floor rate.
#[derive(Debug, Clone, Copy)]
pub struct TooSlow {
    pub bytes: u64,
    pub elapsed: Duration,
}

impl Trickle {
    pub fn start(read: u64) -> Self {
        Trickle {
            since: Instant::now(),
            read_then: read,
        }
    }

    /// Checks the frame in progress, given the bytes read so far and whether any of a frame
    /// is buffered. With nothing buffered the next frame's clock starts now.
    pub fn check(&mut self, read: u64, partial: bool, rate: FrameRate) -> Result<(), TooSlow> {
        if !partial {
            *self = Trickle::start(read);
            return Ok(());
        }
        let elapsed = self.since.elapsed();
        if rate.min == 0 || elapsed < rate.grace {
            return Ok(());
        }
        let bytes = read - self.read_then;
        if (bytes as f64) < rate.min as f64 * elapsed.as_secs_f64() {
            return Err(TooSlow { bytes, elapsed });
        }
        Ok(())
    }
}

/// How often a waiting connection checks its frame's rate: every second, or more often with
/// a shorter grace period.
pub fn tick(rate: FrameRate) -> Duration {
    (rate.grace / 4).clamp(Duration::from_millis(10), Duration::from_secs(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_address_gets_at_most_max_connections() {
        let p = PerClient::new(2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(p.admit(a) && p.admit(a));
        assert!(!p.admit(a));
        assert!(p.admit(b));
        p.release(a);
        assert!(p.admit(a));
        p.release(a);
        p.release(a);
        p.release(b);
        assert!(
            p.open.lock().unwrap().is_empty(),
            "no entry kept for gone clients"
        );
    }

    #[test]
    fn refusals_are_logged_once_per_interval_with_their_count() {
        let p = PerClient::new(1);
        assert_eq!(p.refused(), Some(1));
        assert_eq!(p.refused(), None);
        assert_eq!(p.refused(), None);
        p.refused.lock().unwrap().0 = Some(Instant::now() - REFUSED_LOG_INTERVAL);
        assert_eq!(p.refused(), Some(3));
    }

    #[test]
    fn a_frame_slower_than_the_floor_after_the_grace_period_is_too_slow() {
        let rate = FrameRate {
            min: 100,
            grace: Duration::from_secs(10),
        };
        let started = |ago: u64| Trickle {
            since: Instant::now() - Duration::from_secs(ago),
            read_then: 0,
        };
        assert!(
            started(5).check(10, true, rate).is_ok(),
            "within the grace period"
        );
        assert!(
            started(11).check(1200, true, rate).is_ok(),
            "1200 bytes in 11 s"
        );
        let slow = started(11).check(1000, true, rate).unwrap_err();
        assert_eq!(slow.bytes, 1000);
        // Nothing buffered: between frames, idle is not slow, and the clock starts again.
        let mut t = started(60);
        assert!(t.check(1000, false, rate).is_ok());
        assert!(t.since.elapsed() < Duration::from_secs(1));
        assert_eq!(t.read_then, 1000);
        let off = FrameRate { min: 0, ..rate };
        assert!(started(60).check(0, true, off).is_ok());
    }
}
