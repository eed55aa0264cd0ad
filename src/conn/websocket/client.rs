//! The client side of a connection after its handshake: TLS, or a WebSocket over TLS. Both are byte
//! streams, so everything after the handshake (the CONNECT, refusals, the splice, re-checks) is one
//! code path over [`ClientStream`].

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use super::stream::WsStream;
use crate::recheck::PeerChain;

/// A client connection past its handshake (and upgrade). Boxed: a TLS stream is over 1 KiB, and the
/// connection's task should stay small while it idles.
pub(crate) enum ClientStream {
    /// MQTT over TLS.
    Tls(Box<TlsStream<TcpStream>>),
    /// MQTT in WebSocket binary frames over TLS.
    WebSocket(Box<WsStream<TlsStream<TcpStream>>>),
}

impl ClientStream {
    /// The TLS session (for the client certificate and the PROXY header's TLS facts).
    pub(crate) fn tls(&self) -> &rustls::ServerConnection {
        match self {
            ClientStream::Tls(s) => s.get_ref().1,
            ClientStream::WebSocket(s) => s.get_ref().get_ref().1,
        }
    }

    /// The socket under it (to move it to another runtime's event loop).
    pub(crate) fn tcp_mut(&mut self) -> &mut TcpStream {
        match self {
            ClientStream::Tls(s) => s.get_mut().0,
            ClientStream::WebSocket(s) => s.get_mut().get_mut().0,
        }
    }
}

impl AsyncRead for ClientStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Tls(s) => Pin::new(s).poll_read(cx, buf),
            ClientStream::WebSocket(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Tls(s) => Pin::new(s).poll_write(cx, buf),
            ClientStream::WebSocket(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Tls(s) => Pin::new(s).poll_flush(cx),
            ClientStream::WebSocket(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Tls(s) => Pin::new(s).poll_shutdown(cx),
            ClientStream::WebSocket(s) => Pin::new(s).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            ClientStream::WebSocket(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            ClientStream::Tls(s) => s.is_write_vectored(),
            ClientStream::WebSocket(s) => s.is_write_vectored(),
        }
    }
}

impl PeerChain for ClientStream {
    fn peer_chain(&self) -> Option<&[CertificateDer<'static>]> {
        match self {
            ClientStream::Tls(s) => s.peer_chain(),
            ClientStream::WebSocket(s) => s.peer_chain(),
        }
    }
}
