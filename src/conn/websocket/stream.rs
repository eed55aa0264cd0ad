//! The byte stream under a WebSocket's binary frames, as `AsyncRead + AsyncWrite`, so the CONNECT
//! reader and the splice work on it unchanged: MQTT packets may span frames and a frame may hold
//! several packets (MQTT 5.0 §6), exactly as TCP segments do.
//!
//! Reads unwrap client messages; writes wrap the broker's bytes into one binary frame per write (the
//! splice writes what one read brought, at most 16 KiB). Pings are answered by tungstenite; a client's
//! close is end of stream (its close is answered at once); shutting down (the broker closed) sends close
//! 1000 and then TLS close_notify. A protocol violation ends the stream with an error after a close
//! frame with its code: a text frame 1003, an unmasked or malformed frame 1002, invalid UTF-8 1007, a
//! frame or message over `ws_max_message_size` 1009.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use futures_core::Stream;
use futures_sink::Sink;
use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::error::{Error as WsError, ProtocolError};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::recheck::PeerChain;

/// tungstenite's read buffer: allocated once per connection and kept for its life, so small (most
/// MQTT packets are far smaller; a larger frame grows it while it is read).
const READ_BUFFER: usize = 2 * 1024;

/// Why the stream ended with an error: a frame the client may not send (the close code said so).
#[derive(Debug, thiserror::Error)]
#[error("WebSocket close {code}: {why}")]
pub(crate) struct FrameError {
    code: u16,
    why: String,
}

/// The close code a read error of a [`WsStream`] was answered with, if it was a violation.
pub(crate) fn close_code_of(err: &io::Error) -> Option<u16> {
    err.get_ref().and_then(|e| e.downcast_ref::<FrameError>()).map(|e| e.code)
}

/// Counts a stream's end under `mqtls_websocket_violations_total{code}` when it was a client's bad frame.
pub(crate) fn count_violation(metrics: &crate::ops::metrics::ListenerMetrics, err: &io::Error) {
    let code = match close_code_of(err) {
        Some(1002) => "1002",
        Some(1003) => "1003",
        Some(1007) => "1007",
        Some(1009) => "1009",
        _ => return,
    };
    metrics.websocket_violation(code);
}

/// A WebSocket as the byte stream its binary messages carry.
pub(crate) struct WsStream<S> {
    ws: WebSocketStream<S>,
    /// The rest of the last binary message, handed out by the next reads.
    pending: Bytes,
    /// A violation seen: the close to send before the error is returned.
    failing: Option<(CloseCode, String)>,
    /// Our close frame is queued (or can't be: the peer closed first).
    close_sent: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsStream<S> {
    /// Wraps a stream whose upgrade has been answered; `tail` is what the client sent after its request.
    pub(crate) async fn new(stream: S, tail: Vec<u8>, max_message_size: usize) -> WsStream<S> {
        let config = WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER)
            // Each write goes out as it is made (the splice flushes when its reader idles); nothing is
            // held back waiting to fill a buffer.
            .write_buffer_size(0)
            // Backpressure: a client that doesn't read stops the broker's direction, not more memory.
            .max_write_buffer_size(256 * 1024)
            .max_message_size(Some(max_message_size))
            .max_frame_size(Some(max_message_size));
        let ws = if tail.is_empty() {
            WebSocketStream::from_raw_socket(stream, Role::Server, Some(config)).await
        } else {
            WebSocketStream::from_partially_read(stream, tail, Role::Server, Some(config)).await
        };
        WsStream { ws, pending: Bytes::new(), failing: None, close_sent: false }
    }

    /// The stream under the WebSocket (the TLS stream).
    pub(crate) fn get_ref(&self) -> &S {
        self.ws.get_ref()
    }

    /// The stream under the WebSocket, to move its socket ([`crate::conn::handshake_threads::rehome`]).
    pub(crate) fn get_mut(&mut self) -> &mut S {
        self.ws.get_mut()
    }

    /// Queues a close frame with `code` (once) and flushes it. Best effort: a peer that is gone, or
    /// that closed first, gets none.
    fn poll_close_with(&mut self, cx: &mut Context<'_>, code: CloseCode) -> Poll<()> {
        if !self.close_sent {
            if ready!(Pin::new(&mut self.ws).poll_ready(cx)).is_ok() {
                let frame = CloseFrame { code, reason: "".into() };
                let _ = Pin::new(&mut self.ws).start_send(Message::Close(Some(frame)));
            }
            self.close_sent = true;
        }
        let _ = ready!(Pin::new(&mut self.ws).poll_flush(cx));
        Poll::Ready(())
    }
}

/// The close code a read error calls for, or `None` when the stream simply ended.
fn close_code(err: &WsError) -> Option<CloseCode> {
    match err {
        WsError::ConnectionClosed | WsError::AlreadyClosed | WsError::Io(_) => None,
        WsError::Capacity(_) => Some(CloseCode::Size),
        WsError::Utf8(_) => Some(CloseCode::Invalid),
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => None,
        _ => Some(CloseCode::Protocol),
    }
}

fn ws_io(err: WsError) -> io::Error {
    match err {
        WsError::Io(e) => e,
        WsError::ConnectionClosed | WsError::AlreadyClosed | WsError::Protocol(ProtocolError::SendAfterClosing) => {
            io::Error::from(io::ErrorKind::BrokenPipe)
        }
        other => io::Error::other(other),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsStream<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if let Some((code, _)) = &this.failing {
                let code = *code;
                ready!(this.poll_close_with(cx, code));
                let why = this.failing.take().map(|(_, why)| why).unwrap_or_default();
                let err = FrameError { code: code.into(), why };
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, err)));
            }
            if !this.pending.is_empty() {
                let n = this.pending.len().min(buf.remaining());
                buf.put_slice(&this.pending.split_to(n));
                if this.pending.is_empty() {
                    // An empty view still shares the frame's allocation with tungstenite's read buffer.
                    this.pending = Bytes::new();
                }
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut this.ws).poll_next(cx)) {
                None => return Poll::Ready(Ok(())),
                Some(Ok(Message::Binary(data))) => this.pending = data,
                Some(Ok(Message::Text(_))) => {
                    this.failing = Some((CloseCode::Unsupported, "a text frame (MQTT goes in binary frames)".into()))
                }
                // Answered by tungstenite (the pong goes out with the next read or write).
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                // tungstenite has queued the answering close; it leaves with the shutdown.
                Some(Ok(Message::Close(_))) => {
                    this.close_sent = true;
                    return Poll::Ready(Ok(()));
                }
                Some(Err(err)) => match close_code(&err) {
                    Some(code) => this.failing = Some((code, err.to_string())),
                    None => {
                        return Poll::Ready(match err {
                            WsError::Io(e) => Err(e),
                            // Closed without a close frame: end of stream, as a TCP FIN would be.
                            _ => Ok(()),
                        });
                    }
                },
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsStream<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        ready!(Pin::new(&mut this.ws).poll_ready(cx)).map_err(ws_io)?;
        Pin::new(&mut this.ws).start_send(Message::Binary(Bytes::copy_from_slice(buf))).map_err(ws_io)?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().ws).poll_flush(cx).map_err(ws_io)
    }

    /// Close 1000 (or the answer to the client's close, already queued), then close_notify and FIN.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_close_with(cx, CloseCode::Normal));
        Pin::new(this.ws.get_mut()).poll_shutdown(cx)
    }
}

impl<S: PeerChain + AsyncRead + AsyncWrite + Unpin> PeerChain for WsStream<S> {
    fn peer_chain(&self) -> Option<&[CertificateDer<'static>]> {
        self.ws.get_ref().peer_chain()
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    use super::*;

    /// One client frame: FIN, `opcode`, masked with `mask` unless `None`.
    pub(crate) fn frame(opcode: u8, fin: bool, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
        let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
        let m = if mask.is_some() { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => out.push(m | n as u8),
            n if n <= 0xffff => {
                out.push(m | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(m | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        match mask {
            Some(key) => {
                out.extend_from_slice(&key);
                out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
            }
            None => out.extend_from_slice(payload),
        }
        out
    }

    const MASK: Option<[u8; 4]> = Some([1, 2, 3, 4]);

    async fn pair() -> (DuplexStream, WsStream<DuplexStream>) {
        let (client, server) = tokio::io::duplex(256 * 1024);
        (client, WsStream::new(server, Vec::new(), 1024).await)
    }

    /// The server's frames as (opcode, payload), to end of stream.
    async fn server_frames(client: &mut DuplexStream) -> Vec<(u8, Vec<u8>)> {
        let mut bytes = Vec::new();
        client.read_to_end(&mut bytes).await.expect("read");
        let mut frames = Vec::new();
        let mut rest = bytes.as_slice();
        while let [b0, b1, tail @ ..] = rest {
            let len = usize::from(*b1 & 0x7f);
            assert!(len < 126, "short frames only in these tests");
            frames.push((*b0 & 0x0f, tail[..len].to_vec()));
            rest = &tail[len..];
        }
        frames
    }

    #[tokio::test]
    async fn binary_frames_are_read_as_one_byte_stream() {
        let (mut client, mut server) = pair().await;
        let mut wire = frame(2, false, b"he", MASK);
        wire.extend(frame(0, true, b"llo", MASK));
        wire.extend(frame(9, true, b"ping", MASK));
        wire.extend(frame(2, true, b" world", MASK));
        client.write_all(&wire).await.expect("write");
        let mut got = vec![0u8; 11];
        server.read_exact(&mut got).await.expect("read");
        assert_eq!(got, b"hello world");
        drop(client);
    }

    #[tokio::test]
    async fn writes_go_out_as_binary_frames_and_shutdown_sends_close_1000() {
        let (mut client, mut server) = pair().await;
        client.write_all(&frame(9, true, b"p", MASK)).await.expect("write");
        server.write_all(b"\x20\x02\x00\x00").await.expect("write");
        server.flush().await.expect("flush");
        // The ping is read (and answered) on the next read; the client's close ends the stream.
        client.write_all(&frame(8, true, &1000u16.to_be_bytes(), MASK)).await.expect("write");
        let mut rest = Vec::new();
        server.read_to_end(&mut rest).await.expect("eof");
        assert!(rest.is_empty());
        server.shutdown().await.expect("shutdown");
        drop(server);
        let frames = server_frames(&mut client).await;
        assert_eq!(frames.first(), Some(&(2, b"\x20\x02\x00\x00".to_vec())), "{frames:?}");
        assert!(frames.contains(&(0xA, b"p".to_vec())), "pong: {frames:?}");
        assert_eq!(frames.last().map(|f| f.0), Some(8), "{frames:?}");
    }

    #[tokio::test]
    async fn the_broker_closing_sends_close_1000() {
        let (mut client, mut server) = pair().await;
        server.shutdown().await.expect("shutdown");
        drop(server);
        assert_eq!(server_frames(&mut client).await, vec![(8, 1000u16.to_be_bytes().to_vec())]);
    }

    async fn refused_with(wire: Vec<u8>) -> (io::Error, Vec<(u8, Vec<u8>)>) {
        let (mut client, mut server) = pair().await;
        client.write_all(&wire).await.expect("write");
        let mut buf = [0u8; 64];
        let err = server.read(&mut buf).await.expect_err("violation");
        drop(server);
        (err, server_frames(&mut client).await)
    }

    #[tokio::test]
    async fn a_text_frame_is_refused_with_close_1003() {
        let (err, frames) = refused_with(frame(1, true, b"hi", MASK)).await;
        assert!(err.to_string().contains("text frame"), "{err}");
        assert_eq!(frames, vec![(8, 1003u16.to_be_bytes().to_vec())]);
    }

    #[tokio::test]
    async fn an_unmasked_frame_is_refused_with_close_1002() {
        let (err, frames) = refused_with(frame(2, true, b"\x10\x00", None)).await;
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        assert_eq!(frames, vec![(8, 1002u16.to_be_bytes().to_vec())]);
    }

    #[tokio::test]
    async fn an_oversized_frame_is_refused_with_close_1009_before_its_payload() {
        // The header alone announces 1 GiB: refused without waiting for (or buffering) the payload.
        let mut header = vec![0x82, 0x80 | 127];
        header.extend_from_slice(&(1u64 << 30).to_be_bytes());
        header.extend_from_slice(&[1, 2, 3, 4]);
        let (_, frames) = refused_with(header).await;
        assert_eq!(frames, vec![(8, 1009u16.to_be_bytes().to_vec())]);
    }

    #[tokio::test]
    async fn a_message_over_the_cap_in_small_frames_is_refused_with_close_1009() {
        let mut wire = Vec::new();
        for i in 0..20 {
            wire.extend(frame(if i == 0 { 2 } else { 0 }, false, &[0u8; 100], MASK));
        }
        let (_, frames) = refused_with(wire).await;
        assert_eq!(frames, vec![(8, 1009u16.to_be_bytes().to_vec())]);
    }
}
