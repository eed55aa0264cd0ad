//! The listening sockets: bound by mqtls (with `SO_REUSEPORT` when `reuse_port` asks) or passed by
//! systemd (socket activation, `LISTEN_FDS`), and how a listener that stops hands its port over to the
//! process that replaces it.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::time::Duration;

use socket2::{Domain, Protocol, SockFilter, SockRef, Socket, Type};

/// Backlog of the sockets mqtls binds: what tokio's own `TcpListener::bind` asks for (the kernel caps it
/// at `net.core.somaxconn`).
const BACKLOG: i32 = 1024;

/// How long a stopping `reuse_port` listener still accepts the handshakes that were under way when it
/// stopped taking new ones: more than a handshake's round trip on any network devices use, and less than
/// the second after which a Linux client sends a dropped SYN again, so that most retries already find
/// this socket closed and reach the successor's.
pub(crate) const HANDOVER: Duration = Duration::from_millis(900);

/// Most connections taken from a stopping listener's accept queue in one go: a bound on the loop; the
/// queue itself holds at most `net.core.somaxconn` (4096 by default).
pub(crate) const MAX_QUEUED: usize = 65_536;

// Classic BPF, from linux/filter.h.
const BPF_LD_B_ABS: u16 = 0x30;
const BPF_ALU_AND_K: u16 = 0x54;
const BPF_JMP_JEQ_K: u16 = 0x15;
const BPF_RET_K: u16 = 0x06;
/// TCP flags: the 14th byte of the TCP header, where a socket filter of a TCP socket starts reading.
const TCP_FLAGS: u32 = 13;
const SYN: u32 = 0x02;
const ACK: u32 = 0x10;

/// A socket filter that drops a SYN without ACK (a new handshake) and lets every other segment through.
const DROP_NEW_SYNS: [SockFilter; 5] = [
    SockFilter::new(BPF_LD_B_ABS, 0, 0, TCP_FLAGS),
    SockFilter::new(BPF_ALU_AND_K, 0, 0, SYN | ACK),
    SockFilter::new(BPF_JMP_JEQ_K, 0, 1, SYN),
    SockFilter::new(BPF_RET_K, 0, 0, 0),
    SockFilter::new(BPF_RET_K, 0, 0, u32::MAX),
];

/// Binds `addr` and listens, with `SO_REUSEPORT` when `reuse_port` (a successor may then bind it while
/// this process drains; the kernel spreads new connections over every socket bound so). `SO_REUSEADDR`
/// always, as tokio's `bind` does, so a restart binds while the old connections are in TIME_WAIT.
pub(crate) fn bind(addr: SocketAddr, reuse_port: bool) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(reuse_port)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Stops new handshakes from reaching `listener`, while those already under way still complete into its
/// accept queue. With `SO_REUSEPORT` the kernel keeps choosing a socket for its share of new connections
/// until the socket is closed, and closing it resets what it holds — the connections in its accept queue
/// and the handshakes in flight. A dropped SYN is not a refusal: the client sends it again (after 1 s on
/// Linux), and by then this socket is closed and the successor's gets it.
///
/// Only for sockets mqtls bound itself: a filter on a socket systemd passed would stay on it for the
/// next process.
pub(crate) fn refuse_new_handshakes(listener: &impl AsFd) -> io::Result<()> {
    SockRef::from(listener).attach_filter(&DROP_NEW_SYNS)
}

/// Why a socket passed by the service manager can't be served.
#[derive(Debug, thiserror::Error)]
pub enum PassedError {
    #[error(
        "socket activation: descriptor {fd} (LISTEN_FDS) is not a TCP socket ({source}); mqtls serves only \
         ListenStream= sockets"
    )]
    NotTcp { fd: usize, source: io::Error },
    #[error(
        "socket activation: the socket passed on {addr} (LISTEN_FDS) is not listening; set Accept=no in the \
         .socket unit"
    )]
    NotListening { addr: SocketAddr },
    #[error(
        "listen (in {origin}): no listener listens on {addr}, the address of a socket systemd passed \
         (LISTEN_FDS); give ListenStream= and listen the same address, e.g. ListenStream=0.0.0.0:8883 with \
         listen = \"0.0.0.0:8883\""
    )]
    Unmatched { addr: SocketAddr, origin: String },
    #[error("socket activation: descriptor {fd} (LISTEN_FDS): {source}")]
    Io { fd: usize, source: io::Error },
}

/// The listening sockets systemd passed (socket activation), each matched to the listener whose `listen`
/// is its address: the address is what the `.socket` unit and the configuration both already say, while
/// `FileDescriptorName=` would need a name on every listener, including the unnamed single one.
#[derive(Debug, Default)]
pub struct PassedSockets {
    sockets: Vec<(SocketAddr, std::net::TcpListener)>,
}

/// The first descriptor systemd passes (`SD_LISTEN_FDS_START`): for messages.
const FIRST_FD: usize = 3;

impl PassedSockets {
    /// Takes the sockets passed to this process (`LISTEN_FDS` for `LISTEN_PID`) and removes those
    /// variables. Call it before the runtime starts threads: it changes the environment.
    pub fn from_env() -> Result<PassedSockets, PassedError> {
        let mut fds = listenfd::ListenFd::from_env();
        let mut sockets = Vec::with_capacity(fds.len());
        for i in 0..fds.len() {
            let fd = FIRST_FD + i;
            let Some(socket) = fds.take_tcp_listener(i).map_err(|source| PassedError::NotTcp { fd, source })? else {
                continue;
            };
            let addr = socket.local_addr().map_err(|source| PassedError::Io { fd, source })?;
            if !SockRef::from(&socket).is_listener().map_err(|source| PassedError::Io { fd, source })? {
                return Err(PassedError::NotListening { addr });
            }
            socket.set_nonblocking(true).map_err(|source| PassedError::Io { fd, source })?;
            sockets.push((addr, socket));
        }
        Ok(PassedSockets { sockets })
    }

    /// How many sockets are left.
    pub fn len(&self) -> usize {
        self.sockets.len()
    }

    /// Whether every passed socket has been taken (or none was passed).
    pub fn is_empty(&self) -> bool {
        self.sockets.is_empty()
    }

    /// The passed socket bound to `addr`, if any.
    pub(crate) fn take(&mut self, addr: SocketAddr) -> Option<std::net::TcpListener> {
        let at = self.sockets.iter().position(|(a, _)| *a == addr)?;
        Some(self.sockets.swap_remove(at).1)
    }

    /// The address of a socket no listener took.
    pub(crate) fn leftover(&self) -> Option<SocketAddr> {
        self.sockets.first().map(|(addr, _)| *addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpStream;

    #[test]
    fn two_reuse_port_sockets_share_an_address() {
        let first = bind("127.0.0.1:0".parse().expect("addr"), true).expect("bind");
        let addr = first.local_addr().expect("addr");
        bind(addr, true).expect("a second SO_REUSEPORT socket binds the same address");
    }

    #[test]
    fn without_reuse_port_the_address_is_taken() {
        let first = bind("127.0.0.1:0".parse().expect("addr"), false).expect("bind");
        let addr = first.local_addr().expect("addr");
        let err = bind(addr, false).expect_err("the address is in use");
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
    }

    /// A connect to a socket that refuses new handshakes gets no answer (no RST): its SYN is dropped,
    /// so the client would send it again. Established connections on it keep working.
    #[test]
    fn a_listener_refusing_new_handshakes_drops_syns_silently() {
        let listener = bind("127.0.0.1:0".parse().expect("addr"), true).expect("bind");
        let addr = listener.local_addr().expect("addr");
        let established = TcpStream::connect(addr).expect("connect before the filter");
        refuse_new_handshakes(&listener).expect("attach the filter");
        let err = TcpStream::connect_timeout(&addr, Duration::from_millis(300)).expect_err("no handshake");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
        listener.set_nonblocking(false).expect("blocking");
        let (mut accepted, _) = listener.accept().expect("the earlier connection is still queued");
        use std::io::{Read, Write};
        (&established).write_all(b"x").expect("write");
        let mut byte = [0u8];
        accepted.read_exact(&mut byte).expect("read");
        assert_eq!(&byte, b"x");
    }
}
