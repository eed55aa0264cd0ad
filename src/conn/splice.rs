//! After the CONNECT: copy bytes both ways, untouched, until both directions are done.
//!
//! Unlike `tokio::io::copy_bidirectional`, a direction holds a buffer only while data is moving: when
//! its reader has nothing to give, the buffer is released. Fleets keep tens of thousands of mostly idle
//! connections, and 2 × 8 KiB pinned per connection would be most of their memory.
//!
//! End of stream from the client is passed on as a half-close (TCP FIN) to the broker, whose remaining
//! data still flows back for up to [`HALF_CLOSE_LINGER`]. End of stream from the broker ends the session:
//! MQTT brokers close whole connections, so the client gets close_notify and both sides are closed
//! without waiting for a client that may never close. An error on either side ends both directions.

use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::conn::busy_poll::BusyPoll;

/// How long the broker may keep answering after the client half-closed, before both sides are closed.
pub(crate) const HALF_CLOSE_LINGER: Duration = Duration::from_secs(10);

/// Bytes read per call: one full TLS record's plaintext, so a bulk publish moves a record per read.
const CHUNK: usize = 16 * 1024;

/// Bytes moved in each direction.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SpliceStats {
    pub(crate) client_to_upstream: u64,
    pub(crate) upstream_to_client: u64,
}

/// Copies `client` ⇄ `upstream` until both directions reach end of stream, or either fails.
/// The counts are returned in both cases, so the close log line can report them. Every read that
/// brings bytes is reported to `busy_poll`, when set.
#[cfg(test)]
pub(crate) async fn splice<C, U>(
    client: &mut C,
    upstream: &mut U,
    busy_poll: Option<&BusyPoll>,
) -> (SpliceStats, io::Result<()>)
where
    C: AsyncRead + AsyncWrite + Unpin + ?Sized,
    U: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut splice = Splice::default();
    let result = match splice.run(client, upstream, busy_poll, std::pin::pin!(std::future::pending::<()>())).await {
        Spliced::Done(result) => result,
        Spliced::Interrupted(()) => Ok(()),
    };
    (splice.stats(), result)
}

/// How [`Splice::run`] returned.
pub(crate) enum Spliced<T> {
    /// Both directions are over (or one failed): the session is done.
    Done(io::Result<()>),
    /// The interrupt came first; the splice may be resumed with another `run`.
    Interrupted(T),
}

/// A splice in progress. Its state lives outside the future that drives it, so the connection can
/// stop copying to look at its own TLS state (a trust re-check needs the client's certificates) and
/// then resume without losing a byte.
#[derive(Default)]
pub(crate) struct Splice {
    up: Direction,
    down: Direction,
    /// Set when the client half-closed: the broker may answer until it fires.
    linger: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Splice {
    /// Copies both ways until the session is over or `interrupt` completes, whichever is first.
    /// `interrupt` is borrowed (pinned by the caller), and the returned future holds nothing but
    /// these borrows: it lives as long as the connection idles.
    pub(crate) fn run<'a, C, U, F>(
        &'a mut self,
        client: &'a mut C,
        upstream: &'a mut U,
        busy_poll: Option<&'a BusyPoll>,
        mut interrupt: Pin<&'a mut F>,
    ) -> impl Future<Output = Spliced<F::Output>> + 'a
    where
        C: AsyncRead + AsyncWrite + Unpin + ?Sized,
        U: AsyncRead + AsyncWrite + Unpin + ?Sized,
        F: Future,
    {
        poll_fn(move |cx| {
            if let Poll::Ready(result) = self.poll_session(cx, busy_poll, &mut *client, &mut *upstream) {
                return Poll::Ready(Spliced::Done(result));
            }
            interrupt.as_mut().poll(cx).map(Spliced::Interrupted)
        })
    }

    /// Bytes moved so far.
    pub(crate) fn stats(&self) -> SpliceStats {
        SpliceStats { client_to_upstream: self.up.bytes, upstream_to_client: self.down.bytes }
    }

    /// Ready when the broker's side has ended, or the client's has and the linger is over.
    fn poll_session<C, U>(
        &mut self,
        cx: &mut Context<'_>,
        busy_poll: Option<&BusyPoll>,
        client: &mut C,
        upstream: &mut U,
    ) -> Poll<io::Result<()>>
    where
        C: AsyncRead + AsyncWrite + Unpin + ?Sized,
        U: AsyncRead + AsyncWrite + Unpin + ?Sized,
    {
        if self.linger.is_none() {
            let a = self.up.poll_copy(cx, busy_poll, Pin::new(&mut *client), Pin::new(&mut *upstream))?;
            let b = self.down.poll_copy(cx, busy_poll, Pin::new(&mut *upstream), Pin::new(&mut *client))?;
            // Done when the broker's side has ended; the client's alone only starts the linger.
            if b.is_ready() {
                return Poll::Ready(Ok(()));
            }
            ready!(a);
            self.linger = Some(Box::pin(tokio::time::sleep(HALF_CLOSE_LINGER)));
        }
        if self.down.poll_copy(cx, busy_poll, Pin::new(&mut *upstream), Pin::new(&mut *client))?.is_ready() {
            return Poll::Ready(Ok(()));
        }
        // The linger is over: the broker had its time; the session ends cleanly.
        match self.linger.as_mut() {
            Some(linger) => linger.as_mut().poll(cx).map(Ok),
            None => Poll::Ready(Ok(())),
        }
    }
}

/// One direction's state. `buf` is `Some` only while bytes are in flight.
#[derive(Default)]
struct Direction {
    buf: Option<Box<[u8]>>,
    start: usize,
    end: usize,
    read_done: bool,
    need_flush: bool,
    done: bool,
    bytes: u64,
}

impl Direction {
    /// Reads whatever is readable right now into the buffer after `end`, up to a full buffer, so the
    /// other side gets one write per batch rather than one per socket read of the TLS stream (about
    /// 4 KiB each): fewer syscalls and wake-ups for the broker under bulk traffic. It never waits: the
    /// first `Pending` ends it, with the waker registered. End of stream sets `read_done`.
    fn fill<R: AsyncRead + ?Sized>(&mut self, cx: &mut Context<'_>, mut reader: Pin<&mut R>) -> io::Result<()> {
        while let Some(room) = self.buf.as_deref_mut().and_then(|b| b.get_mut(self.end..)) {
            if room.is_empty() {
                break;
            }
            let mut rb = ReadBuf::new(room);
            match reader.as_mut().poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) if rb.filled().is_empty() => {
                    self.read_done = true;
                    break;
                }
                Poll::Ready(Ok(())) => self.end += rb.filled().len(),
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => break,
            }
        }
        Ok(())
    }

    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        busy_poll: Option<&BusyPoll>,
        mut reader: Pin<&mut R>,
        mut writer: Pin<&mut W>,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        loop {
            if self.start == self.end && !self.read_done {
                self.buf.get_or_insert_with(|| vec![0u8; CHUNK].into_boxed_slice());
                self.start = 0;
                self.end = 0;
                self.fill(cx, reader.as_mut())?;
                if self.end == 0 && !self.read_done {
                    // Idle: give the memory back before sleeping, after pushing out what was written.
                    self.buf = None;
                    if self.need_flush {
                        ready!(writer.as_mut().poll_flush(cx))?;
                        self.need_flush = false;
                    }
                    return Poll::Pending;
                }
                if let (true, Some(bp)) = (self.end > 0, busy_poll) {
                    bp.touch();
                }
            }
            while self.start < self.end {
                let Some(buf) = self.buf.as_deref() else { break };
                let chunk = buf.get(self.start..self.end).unwrap_or_default();
                let n = ready!(writer.as_mut().poll_write(cx, chunk))?;
                if n == 0 {
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::WriteZero, "peer accepted no more bytes")));
                }
                self.start += n;
                self.bytes += n as u64;
                self.need_flush = true;
            }
            if self.read_done {
                self.buf = None;
                ready!(writer.as_mut().poll_flush(cx))?;
                ready!(writer.as_mut().poll_shutdown(cx))?;
                self.done = true;
                return Poll::Ready(Ok(()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn bytes_flow_both_ways_and_half_close_propagates() {
        let (mut client, mut proxy_client_side) = duplex(64);
        let (mut proxy_upstream_side, mut broker) = duplex(64);
        let task = tokio::spawn(async move { splice(&mut proxy_client_side, &mut proxy_upstream_side, None).await });

        let payload: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let sent = payload.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&sent).await.expect("client write");
            client.shutdown().await.expect("client shutdown");
            let mut back = Vec::new();
            client.read_to_end(&mut back).await.expect("client read");
            back
        });
        let mut got = Vec::new();
        broker.read_to_end(&mut got).await.expect("broker read");
        assert_eq!(got, payload, "client→broker bytes arrive intact, then EOF");
        broker.write_all(b"bye").await.expect("broker write");
        broker.shutdown().await.expect("broker shutdown");
        assert_eq!(writer.await.expect("join"), b"bye", "broker→client still flows after the client half-closed");
        let (stats, result) = task.await.expect("join");
        result.expect("splice ends cleanly");
        assert_eq!(stats, SpliceStats { client_to_upstream: 100_000, upstream_to_client: 3 });
    }

    #[tokio::test]
    async fn the_broker_closing_ends_the_session_even_if_the_client_stays_silent() {
        let (_client, mut proxy_client_side) = duplex(64);
        let (mut proxy_upstream_side, mut broker) = duplex(64);
        let task = tokio::spawn(async move { splice(&mut proxy_client_side, &mut proxy_upstream_side, None).await });
        broker.shutdown().await.expect("broker closes");
        let (_, result) = tokio::time::timeout(std::time::Duration::from_secs(5), task)
            .await
            .expect("splice ends without waiting for the client")
            .expect("join");
        result.expect("clean end");
    }

    #[tokio::test(start_paused = true)]
    async fn a_half_closed_client_waits_for_the_broker_at_most_the_linger() {
        let (mut client, mut proxy_client_side) = duplex(64);
        let (mut proxy_upstream_side, _silent_broker) = duplex(64);
        let task = tokio::spawn(async move { splice(&mut proxy_client_side, &mut proxy_upstream_side, None).await });
        client.shutdown().await.expect("client half-closes");
        let (_, result) = task.await.expect("join");
        result.expect("clean end after the linger");
    }

    #[tokio::test]
    async fn idle_directions_hold_no_buffer() {
        let (_client, mut a) = duplex(64);
        let (mut b, _broker) = duplex(64);
        let mut up = Direction::default();
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert!(up.poll_copy(&mut cx, None, Pin::new(&mut a), Pin::new(&mut b)).is_pending());
        assert!(up.buf.is_none());
    }

    /// Yields one queued chunk per read (as a TLS stream yields about one socket read), then waits.
    struct Chunks(std::collections::VecDeque<Vec<u8>>);

    impl AsyncRead for Chunks {
        fn poll_read(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
            match self.0.pop_front() {
                Some(mut chunk) => {
                    let rest = chunk.split_off(chunk.len().min(buf.remaining()));
                    buf.put_slice(&chunk);
                    if !rest.is_empty() {
                        self.0.push_front(rest);
                    }
                    Poll::Ready(Ok(()))
                }
                None => Poll::Pending,
            }
        }
    }

    /// Records the size of every write.
    #[derive(Default)]
    struct Writes(Vec<usize>);

    impl AsyncWrite for Writes {
        fn poll_write(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            self.0.push(buf.len());
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[test]
    fn records_readable_together_leave_in_one_write() {
        let mut reader = Chunks((0..5u8).map(|i| vec![i; 1000]).collect());
        let mut writer = Writes::default();
        let mut dir = Direction::default();
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(dir.poll_copy(&mut cx, None, Pin::new(&mut reader), Pin::new(&mut writer)).is_pending());
        assert_eq!(writer.0, vec![5000], "one write for the five records");
        assert_eq!(dir.bytes, 5000);
    }

    #[test]
    fn a_batch_never_exceeds_one_buffer() {
        let mut reader = Chunks((0..40u8).map(|i| vec![i; 1000]).collect());
        let mut writer = Writes::default();
        let mut dir = Direction::default();
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(dir.poll_copy(&mut cx, None, Pin::new(&mut reader), Pin::new(&mut writer)).is_pending());
        assert!(writer.0.iter().all(|&n| n <= CHUNK), "{:?}", writer.0);
        assert_eq!(writer.0.iter().sum::<usize>(), 40_000);
    }
}
