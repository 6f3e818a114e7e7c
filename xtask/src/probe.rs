//! `cargo xtask nat-probe …` (hidden): the small programs the masquerade
//! end-to-end tests (`xtask/tests/masquerade.rs`) run inside pods and on the
//! test bed's hosts, so that they need nothing beyond the test bed's own
//! tools (no python, netcat or socat).
//!
//! Every program prints one event per line, `<event> key=value ...`, and
//! flushes it at once, so that a test can follow a daemon's log:
//!
//! - `serve` (on the external host, the laptop, a node or a pod): TCP and
//!   UDP servers that log the peer address of everything they receive
//!   (`tcp-accept port=P local=A peer=B`, `udp port=P peer=B data=T`), and
//!   with `--icmp` the source of every echo request (`icmp-echo src=S id=I
//!   seq=N`). A TCP client's first byte says what it wants: `e` one byte
//!   back, then hold until the client closes (`tcp-close`); `s` the same,
//!   and the server logs the client's next sequence number (`tcp-seq
//!   rcv_nxt=N`, read with `TCP_REPAIR`; what a crafted ICMP error about
//!   this connection must quote); `u` upload: everything until EOF into a
//!   file (`tcp-upload bytes=N file=F`), answered `ok N`; `d` download: the
//!   `--download` file, then EOF. A UDP datagram is answered with its own
//!   contents and ` seen=<peer>`.
//! - `tcp`, `tcp-many`, `udp`, `udp-refused`: clients, optionally bound to
//!   an explicit source port (the same port in several pods on purpose).
//! - `frag-needed`: sends an ICMP "fragmentation needed" (type 3 code 4)
//!   quoting a packet of some flow, as a router on the path would.

use anyhow::{Context, Result, bail, ensure};
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug)]
pub struct ProbeArgs {
    #[command(subcommand)]
    pub cmd: ProbeCmd,
}

#[derive(clap::Subcommand, Debug)]
pub enum ProbeCmd {
    /// TCP/UDP (and ICMP echo) servers that log who they hear from.
    Serve(ServeArgs),
    /// One TCP connection: echo, seq, upload or download.
    Tcp(TcpArgs),
    /// Many TCP connections from explicit source ports, all held open at once.
    TcpMany(TcpManyArgs),
    /// One connected UDP socket: a datagram, its echo, optionally the path MTU over time.
    Udp(UdpArgs),
    /// A connected UDP socket to a closed port: counts the ECONNREFUSED it gets.
    UdpRefused(UdpRefusedArgs),
    /// Sends an ICMP fragmentation-needed about a flow (raw socket).
    FragNeeded(FragNeededArgs),
    /// Asks a `serve --name` server (a Service's backends) its name, over
    /// a new connection or UDP socket each time.
    Names(NamesArgs),
}

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// TCP ports to listen on (repeat).
    #[arg(long)]
    pub tcp: Vec<u16>,
    /// UDP ports to answer on (repeat).
    #[arg(long)]
    pub udp: Vec<u16>,
    /// Also log the source of every ICMP echo request (raw socket).
    #[arg(long)]
    pub icmp: bool,
    /// What `d` (download) connections get.
    #[arg(long)]
    pub download: Option<PathBuf>,
    /// Where `u` (upload) connections are written.
    #[arg(long)]
    pub upload_dir: Option<PathBuf>,
    /// The address to listen on. On a host with several addresses, give the
    /// one the clients use: a UDP answer leaves from the address the route
    /// back picks, which a connected client socket would not take.
    #[arg(long, default_value_t = Ipv4Addr::UNSPECIFIED)]
    pub bind: Ipv4Addr,
    /// Who this server is: a TCP client's `n` gets `name=NAME`, and UDP
    /// answers end with ` name=NAME`.
    #[arg(long)]
    pub name: Option<String>,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpMode {
    /// Send `e`, get one byte back.
    Echo,
    /// Like echo; the server logs our next sequence number.
    Seq,
    /// Send `--file`, get `ok N` back.
    Upload,
    /// Receive the server's file into `--file`.
    Download,
}

#[derive(clap::Args, Debug)]
pub struct TcpArgs {
    #[arg(long)]
    pub to: SocketAddrV4,
    /// Bind this source port before connecting.
    #[arg(long)]
    pub bind_port: Option<u16>,
    #[arg(long, value_enum)]
    pub mode: TcpMode,
    /// The file to upload, or where the download goes.
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// After the exchange keep the connection open this long (seconds),
    /// printing the socket's path MTU (`mtu N`) whenever it changes.
    #[arg(long, default_value_t = 0.0)]
    pub hold: f64,
}

#[derive(clap::Args, Debug)]
pub struct TcpManyArgs {
    #[arg(long)]
    pub to: SocketAddrV4,
    /// Source ports, `FIRST-LAST` (inclusive): one connection from each.
    #[arg(long)]
    pub ports: String,
    /// Once every connection has exchanged its byte, wait for this file to
    /// exist before closing them all.
    #[arg(long)]
    pub release: PathBuf,
    /// Give up (and fail) after this many seconds.
    #[arg(long, default_value_t = 120.0)]
    pub timeout: f64,
}

#[derive(clap::Args, Debug)]
pub struct UdpArgs {
    #[arg(long)]
    pub to: SocketAddrV4,
    #[arg(long)]
    pub bind_port: Option<u16>,
    /// What to send (no spaces); the answer must start with it.
    #[arg(long)]
    pub token: String,
    /// After the answer keep the socket this long (seconds), printing its
    /// path MTU (`mtu N`) whenever it changes.
    #[arg(long, default_value_t = 0.0)]
    pub hold: f64,
}

#[derive(clap::Args, Debug)]
pub struct UdpRefusedArgs {
    #[arg(long)]
    pub to: SocketAddrV4,
    #[arg(long)]
    pub bind_port: Option<u16>,
    /// After the first ECONNREFUSED keep listening this long (seconds) and
    /// count any further one (none is expected: nothing more is sent).
    #[arg(long, default_value_t = 0.0)]
    pub wait: f64,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

#[derive(clap::Args, Debug)]
pub struct NamesArgs {
    #[arg(long)]
    pub to: SocketAddrV4,
    #[arg(long, value_enum)]
    pub proto: Proto,
    /// Connections (TCP) or sockets (UDP), one after the other.
    #[arg(long, default_value_t = 1)]
    pub count: u32,
}

#[derive(clap::Args, Debug)]
pub struct FragNeededArgs {
    /// Where the ICMP error goes (the quoted packet's source host).
    #[arg(long)]
    pub to: Ipv4Addr,
    /// The next-hop MTU it announces.
    #[arg(long)]
    pub mtu: u16,
    #[arg(long, value_enum)]
    pub proto: Proto,
    /// The quoted packet's source (address:port).
    #[arg(long)]
    pub inner_src: SocketAddrV4,
    /// The quoted packet's destination (address:port).
    #[arg(long)]
    pub inner_dst: SocketAddrV4,
    /// The quoted TCP segment's sequence number (the receiver checks it is
    /// in its window).
    #[arg(long, default_value_t = 0)]
    pub seq: u32,
}

pub fn run(args: &ProbeArgs) -> Result<()> {
    match &args.cmd {
        ProbeCmd::Serve(a) => serve(a),
        ProbeCmd::Tcp(a) => tcp(a),
        ProbeCmd::TcpMany(a) => tcp_many(a),
        ProbeCmd::Udp(a) => udp(a),
        ProbeCmd::UdpRefused(a) => udp_refused(a),
        ProbeCmd::FragNeeded(a) => frag_needed(a),
        ProbeCmd::Names(a) => names(a),
    }
}

/// Prints one event line (Rust's stdout is line-buffered: each line is
/// written at once, also to a log file).
macro_rules! event {
    ($($t:tt)*) => {
        println!($($t)*)
    };
}

// ------------------------------------------------------------ system calls

fn cvt(r: libc::c_int) -> std::io::Result<libc::c_int> {
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*a.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

fn socket(ty: libc::c_int, proto: libc::c_int) -> std::io::Result<OwnedFd> {
    // SAFETY: plain system call; the descriptor is owned from here on.
    let fd = cvt(unsafe { libc::socket(libc::AF_INET, ty | libc::SOCK_CLOEXEC, proto) })?;
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn set_int(
    fd: &impl AsRawFd,
    level: libc::c_int,
    name: libc::c_int,
    v: libc::c_int,
) -> std::io::Result<()> {
    // SAFETY: `v` outlives the call; the length is its size.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&v as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(drop)
}

fn get_int(
    fd: &impl AsRawFd,
    level: libc::c_int,
    name: libc::c_int,
) -> std::io::Result<libc::c_int> {
    let mut v: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `v` and `len` outlive the call.
    cvt(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    })?;
    Ok(v)
}

fn bind(fd: &impl AsRawFd, a: SocketAddrV4) -> std::io::Result<()> {
    let sa = sockaddr(a);
    // SAFETY: `sa` outlives the call.
    cvt(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sa as *const libc::sockaddr_in).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    })
    .map(drop)
}

fn connect(fd: &impl AsRawFd, a: SocketAddrV4) -> std::io::Result<()> {
    let sa = sockaddr(a);
    // SAFETY: `sa` outlives the call.
    cvt(unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&sa as *const libc::sockaddr_in).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    })
    .map(drop)
}

fn set_timeout(fd: &impl AsRawFd, name: libc::c_int, t: Duration) -> std::io::Result<()> {
    let tv = libc::timeval {
        tv_sec: t.as_secs() as libc::time_t,
        tv_usec: t.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: `tv` outlives the call.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            name,
            (&tv as *const libc::timeval).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// Raises the soft limit of open files to the hard one (thousands of
/// connections in one process).
fn raise_nofile() -> Result<u64> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `r` outlives both calls.
    cvt(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) })?;
    r.rlim_cur = r.rlim_max;
    cvt(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) }).context("raising RLIMIT_NOFILE")?;
    Ok(r.rlim_cur)
}

/// A TCP listener with a long accept queue: a client connecting in a tight
/// loop can fill std's 128 before the server is scheduled, and a dropped
/// SYN costs a second.
fn tcp_listen(a: SocketAddrV4) -> std::io::Result<TcpListener> {
    let fd = socket(libc::SOCK_STREAM, 0)?;
    set_int(&fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    bind(&fd, a)?;
    // SAFETY: plain system call on our descriptor (the kernel caps the
    // length at net.core.somaxconn).
    cvt(unsafe { libc::listen(fd.as_raw_fd(), 8192) })?;
    Ok(TcpListener::from(fd))
}

/// A TCP connection to `to`, from `bind_port` if given (SO_REUSEADDR, so
/// that a port in TIME_WAIT from an earlier run can be bound again).
fn tcp_connect(to: SocketAddrV4, bind_port: Option<u16>, timeout: Duration) -> Result<TcpStream> {
    let Some(port) = bind_port else {
        return TcpStream::connect_timeout(&to.into(), timeout)
            .with_context(|| format!("connecting to {to}"));
    };
    let fd = socket(libc::SOCK_STREAM, 0)?;
    set_int(&fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    bind(&fd, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port))
        .with_context(|| format!("binding source port {port}"))?;
    // A blocking connect gives up after SO_SNDTIMEO.
    set_timeout(&fd, libc::SO_SNDTIMEO, timeout)?;
    connect(&fd, to).with_context(|| format!("connecting to {to} from port {port}"))?;
    set_timeout(&fd, libc::SO_SNDTIMEO, Duration::ZERO)?;
    Ok(TcpStream::from(fd))
}

/// A UDP socket connected to `to`, from `bind_port` if given.
fn udp_connect(to: SocketAddrV4, bind_port: Option<u16>) -> Result<UdpSocket> {
    let fd = socket(libc::SOCK_DGRAM, 0)?;
    let port = bind_port.unwrap_or(0);
    bind(&fd, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port))
        .with_context(|| format!("binding UDP port {port}"))?;
    let s = UdpSocket::from(fd);
    s.connect(to)
        .with_context(|| format!("connecting to {to}"))?;
    Ok(s)
}

/// The kernel's path MTU of a connected socket (`IP_MTU`).
fn path_mtu(fd: &impl AsRawFd) -> Option<i32> {
    get_int(fd, libc::IPPROTO_IP, libc::IP_MTU).ok()
}

/// Prints `mtu N` at once and whenever the socket's path MTU changes,
/// until `secs` have passed.
fn watch_mtu(fd: &impl AsRawFd, secs: f64) {
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let mut last = None;
    loop {
        let m = path_mtu(fd);
        if m != last {
            event!("mtu {}", m.map_or("?".into(), |m| m.to_string()));
            last = m;
        }
        if Instant::now() >= end {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ------------------------------------------------------------------ server

fn serve(a: &ServeArgs) -> Result<()> {
    ensure!(
        !a.tcp.is_empty() || !a.udp.is_empty() || a.icmp,
        "nothing to serve: give --tcp, --udp or --icmp"
    );
    raise_nofile()?;
    let download = Arc::new(match &a.download {
        Some(f) => std::fs::read(f).with_context(|| format!("reading {}", f.display()))?,
        None => Vec::new(),
    });
    let upload_dir = a.upload_dir.clone().map(Arc::new);
    let name = Arc::new(a.name.clone());
    let mut threads = Vec::new();
    for &port in &a.tcp {
        let l = tcp_listen(SocketAddrV4::new(a.bind, port))
            .with_context(|| format!("listening on TCP port {port}"))?;
        let (download, upload_dir, name) = (download.clone(), upload_dir.clone(), name.clone());
        threads.push(std::thread::spawn(move || {
            for c in l.incoming() {
                let s = match c {
                    Ok(s) => s,
                    Err(e) => {
                        event!("error port={port} accept: {e}");
                        continue;
                    }
                };
                let (download, upload_dir, name) =
                    (download.clone(), upload_dir.clone(), name.clone());
                // Thousands of held connections: small stacks.
                let spawned = std::thread::Builder::new()
                    .stack_size(128 * 1024)
                    .spawn(move || {
                        let dirs = (upload_dir.as_deref(), name.as_deref());
                        if let Err(e) = serve_tcp(port, s, &download, dirs) {
                            event!("error port={port} {e:#}");
                        }
                    });
                if let Err(e) = spawned {
                    event!("error port={port} no thread: {e}");
                }
            }
        }));
    }
    for &port in &a.udp {
        let s =
            UdpSocket::bind((a.bind, port)).with_context(|| format!("binding UDP port {port}"))?;
        let name = name.clone();
        threads.push(std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            loop {
                match s.recv_from(&mut buf) {
                    Ok((n, peer)) => {
                        let data = String::from_utf8_lossy(&buf[..n]).into_owned();
                        event!("udp port={port} peer={peer} data={data}");
                        let mut reply = format!("{data} seen={peer}");
                        if let Some(n) = name.as_deref() {
                            reply.push_str(&format!(" name={n}"));
                        }
                        if let Err(e) = s.send_to(reply.as_bytes(), peer) {
                            event!("error port={port} udp send to {peer}: {e}");
                        }
                    }
                    Err(e) => event!("error port={port} udp recv: {e}"),
                }
            }
        }));
    }
    if a.icmp {
        let fd = socket(libc::SOCK_RAW, libc::IPPROTO_ICMP).context("raw ICMP socket")?;
        let mut f = std::fs::File::from(fd);
        threads.push(std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            loop {
                match f.read(&mut buf) {
                    Ok(n) => {
                        let p = &buf[..n];
                        let ihl = usize::from(p.first().map_or(0, |b| b & 0x0f)) * 4;
                        if n < ihl + 8 || ihl < 20 || p[ihl] != 8 {
                            continue; // not an echo request
                        }
                        let src = Ipv4Addr::new(p[12], p[13], p[14], p[15]);
                        let id = u16::from_be_bytes([p[ihl + 4], p[ihl + 5]]);
                        let seq = u16::from_be_bytes([p[ihl + 6], p[ihl + 7]]);
                        event!("icmp-echo src={src} id={id} seq={seq}");
                    }
                    Err(e) => {
                        event!("error icmp recv: {e}");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        }));
    }
    event!("listening tcp={:?} udp={:?} icmp={}", a.tcp, a.udp, a.icmp);
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

/// Reads until EOF (a reset counts as one).
fn drain(s: &mut TcpStream) -> std::io::Result<u64> {
    let mut buf = [0u8; 4096];
    let mut n = 0;
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Ok(n),
            Ok(k) => n += k as u64,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return Ok(n),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// The next sequence number the peer will send (our `rcv_nxt`), read in
/// TCP repair mode (CAP_NET_ADMIN), which is then left again.
fn rcv_nxt(s: &TcpStream) -> Result<u32> {
    const TCP_RECV_QUEUE: libc::c_int = 1;
    const TCP_REPAIR_ON: libc::c_int = 1;
    const TCP_REPAIR_OFF_NO_WP: libc::c_int = -1;
    set_int(s, libc::IPPROTO_TCP, libc::TCP_REPAIR, TCP_REPAIR_ON).context("TCP_REPAIR on")?;
    let seq = set_int(s, libc::IPPROTO_TCP, libc::TCP_REPAIR_QUEUE, TCP_RECV_QUEUE)
        .and_then(|()| get_int(s, libc::IPPROTO_TCP, libc::TCP_QUEUE_SEQ))
        .context("TCP_QUEUE_SEQ");
    set_int(s, libc::IPPROTO_TCP, libc::TCP_REPAIR, TCP_REPAIR_OFF_NO_WP)
        .or_else(|_| set_int(s, libc::IPPROTO_TCP, libc::TCP_REPAIR, 0))
        .context("TCP_REPAIR off")?;
    Ok(seq? as u32)
}

fn serve_tcp(
    port: u16,
    mut s: TcpStream,
    download: &[u8],
    (upload_dir, name): (Option<&PathBuf>, Option<&str>),
) -> Result<()> {
    let peer = s.peer_addr()?;
    let local = s.local_addr()?;
    event!("tcp-accept port={port} local={local} peer={peer}");
    s.set_nodelay(true)?;
    let mut cmd = [0u8; 1];
    if s.read(&mut cmd)? == 0 {
        event!("tcp-close port={port} peer={peer} bytes=0");
        return Ok(());
    }
    match cmd[0] {
        b'e' | b's' => {
            if cmd[0] == b's' {
                let seq = rcv_nxt(&s)?;
                event!("tcp-seq port={port} peer={peer} rcv_nxt={seq}");
            }
            s.write_all(&cmd)?;
            let n = drain(&mut s)?;
            event!("tcp-close port={port} peer={peer} bytes={n}");
        }
        b'u' => {
            let dir = upload_dir.context("an upload, but no --upload-dir")?;
            let SocketAddr::V4(p) = peer else {
                bail!("IPv6 peer {peer}")
            };
            let file = dir.join(format!("tcp-{}-{}.bin", p.ip(), p.port()));
            let mut data = Vec::new();
            s.read_to_end(&mut data)?;
            std::fs::write(&file, &data).with_context(|| format!("writing {}", file.display()))?;
            event!(
                "tcp-upload port={port} peer={peer} bytes={} file={}",
                data.len(),
                file.display()
            );
            s.write_all(format!("ok {}\n", data.len()).as_bytes())?;
        }
        b'd' => {
            s.write_all(download)?;
            s.shutdown(std::net::Shutdown::Write)?;
            event!(
                "tcp-download port={port} peer={peer} bytes={}",
                download.len()
            );
            drain(&mut s)?;
        }
        b'n' => {
            let name = name.context("asked for a name, but no --name")?;
            s.write_all(format!("name={name}\n").as_bytes())?;
            s.shutdown(std::net::Shutdown::Write)?;
            event!("tcp-name port={port} peer={peer}");
            drain(&mut s)?;
        }
        c => bail!("peer {peer}: unknown command byte {c:#04x}"),
    }
    Ok(())
}

// ----------------------------------------------------------------- clients

const IO_TIMEOUT: Duration = Duration::from_secs(10);

fn tcp(a: &TcpArgs) -> Result<()> {
    let mut s = tcp_connect(a.to, a.bind_port, IO_TIMEOUT)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_nodelay(true)?;
    event!(
        "tcp-connected local={} peer={}",
        s.local_addr()?,
        s.peer_addr()?
    );
    let file = || a.file.as_deref().context("--file is needed");
    match a.mode {
        TcpMode::Echo | TcpMode::Seq => {
            let c = if a.mode == TcpMode::Echo { b'e' } else { b's' };
            s.write_all(&[c])?;
            let mut b = [0u8; 1];
            s.read_exact(&mut b).context("reading the answer")?;
            ensure!(b[0] == c, "answer {:?}, not {:?}", b[0] as char, c as char);
            event!("echo ok");
        }
        TcpMode::Upload => {
            let path = file()?;
            let data =
                std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            s.write_all(b"u")?;
            s.write_all(&data)?;
            s.shutdown(std::net::Shutdown::Write)?;
            let mut reply = String::new();
            s.read_to_string(&mut reply).context("reading the answer")?;
            let want = format!("ok {}", data.len());
            ensure!(reply.trim() == want, "answer {reply:?}, not {want:?}");
            event!("upload bytes={}", data.len());
        }
        TcpMode::Download => {
            let path = file()?;
            s.write_all(b"d")?;
            let mut data = Vec::new();
            s.read_to_end(&mut data).context("downloading")?;
            std::fs::write(path, &data).with_context(|| format!("writing {}", path.display()))?;
            event!("download bytes={}", data.len());
        }
    }
    if a.hold > 0.0 {
        watch_mtu(&s, a.hold);
    }
    Ok(())
}

/// The `name=` field of a server's answer.
fn name_of(answer: &str) -> Option<&str> {
    answer
        .split_whitespace()
        .find_map(|w| w.strip_prefix("name="))
}

fn names(a: &NamesArgs) -> Result<()> {
    for i in 0..a.count {
        let answer = match a.proto {
            Proto::Tcp => {
                let mut s = tcp_connect(a.to, None, IO_TIMEOUT)
                    .with_context(|| format!("connection {i}"))?;
                s.set_read_timeout(Some(IO_TIMEOUT))?;
                s.write_all(b"n")?;
                let mut answer = String::new();
                s.read_to_string(&mut answer)
                    .with_context(|| format!("connection {i}: reading the answer"))?;
                answer
            }
            Proto::Udp => {
                // A connected socket takes answers from `to` only: one from
                // a backend's own address would be dropped (a timeout here).
                let s = udp_connect(a.to, None)?;
                s.set_read_timeout(Some(Duration::from_millis(500)))?;
                let token = format!("n{i}");
                let mut buf = [0u8; 2048];
                let mut answer = None;
                for _ in 0..10 {
                    s.send(token.as_bytes()).context("sending")?;
                    if let Ok(n) = s.recv(&mut buf) {
                        answer = Some(String::from_utf8_lossy(&buf[..n]).into_owned());
                        break;
                    }
                }
                let answer =
                    answer.with_context(|| format!("socket {i}: no answer from {}", a.to))?;
                ensure!(answer.starts_with(&token), "socket {i}: answer {answer:?}");
                answer
            }
        };
        let name =
            name_of(&answer).with_context(|| format!("{i}: answer {answer:?} has no name"))?;
        event!("answer i={i} name={name}");
    }
    Ok(())
}

fn parse_ports(s: &str) -> Result<std::ops::RangeInclusive<u16>> {
    let (a, b) = s
        .split_once('-')
        .with_context(|| format!("--ports {s:?}: want FIRST-LAST"))?;
    let (a, b): (u16, u16) = (a.trim().parse()?, b.trim().parse()?);
    ensure!(a > 0 && a <= b, "--ports {s:?}: empty range");
    Ok(a..=b)
}

fn tcp_many(a: &TcpManyArgs) -> Result<()> {
    let ports = parse_ports(&a.ports)?;
    let limit = raise_nofile()?;
    let want = ports.clone().count();
    ensure!(
        (want as u64) + 32 < limit,
        "{want} connections, but only {limit} open files allowed"
    );
    let deadline = Instant::now() + Duration::from_secs_f64(a.timeout);
    let started = Instant::now();
    let mut conns = Vec::with_capacity(want);
    for p in ports {
        ensure!(
            Instant::now() < deadline,
            "timed out after {} connections",
            conns.len()
        );
        let s = tcp_connect(a.to, Some(p), IO_TIMEOUT)?;
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        s.set_nodelay(true)?;
        conns.push((p, s));
    }
    event!(
        "connected n={} seconds={:.2}",
        conns.len(),
        started.elapsed().as_secs_f64()
    );
    for (p, s) in &mut conns {
        s.write_all(b"e")
            .with_context(|| format!("sending from port {p}"))?;
    }
    let mut b = [0u8; 1];
    for (p, s) in &mut conns {
        s.read_exact(&mut b)
            .with_context(|| format!("reading the answer on port {p}"))?;
        ensure!(b[0] == b'e', "port {p}: answer {:?}", b[0] as char);
    }
    event!(
        "exchanged n={} seconds={:.2}",
        conns.len(),
        started.elapsed().as_secs_f64()
    );
    while !a.release.exists() {
        ensure!(
            Instant::now() < deadline,
            "{} never appeared",
            a.release.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let n = conns.len();
    drop(conns);
    event!("closed n={n}");
    Ok(())
}

fn udp(a: &UdpArgs) -> Result<()> {
    ensure!(!a.token.contains(' '), "--token without spaces");
    let s = udp_connect(a.to, a.bind_port)?;
    s.set_read_timeout(Some(Duration::from_millis(500)))?;
    event!("udp-bound local={}", s.local_addr()?);
    let mut buf = [0u8; 2048];
    let mut reply = None;
    for _ in 0..10 {
        s.send(a.token.as_bytes()).context("sending")?;
        match s.recv(&mut buf) {
            Ok(n) => {
                reply = Some(String::from_utf8_lossy(&buf[..n]).into_owned());
                break;
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => return Err(e).context("receiving the answer"),
        }
    }
    let reply = reply.context("no answer to 10 datagrams")?;
    let (data, seen) = reply.split_once(" seen=").unwrap_or((&reply, "?"));
    ensure!(data == a.token, "answer {reply:?} is not for {:?}", a.token);
    event!("udp-reply token={data} seen={seen}");
    if a.hold > 0.0 {
        watch_mtu(&s, a.hold);
    }
    Ok(())
}

fn udp_refused(a: &UdpRefusedArgs) -> Result<()> {
    let s = udp_connect(a.to, a.bind_port)?;
    s.set_read_timeout(Some(Duration::from_millis(100)))?;
    event!("udp-bound local={}", s.local_addr()?);
    let mut buf = [0u8; 512];
    let mut refused = 0u32;
    let start = Instant::now();
    let mut first: Option<Instant> = None;
    let mut sent = 0u32;
    let mut last_send: Option<Instant> = None;
    loop {
        let now = Instant::now();
        match first {
            None if now - start > Duration::from_secs(5) => break,
            Some(t) if now - t >= Duration::from_secs_f64(a.wait) => break,
            _ => {}
        }
        // Until the first error: a datagram every 500 ms (one may be lost).
        if first.is_none() && last_send.is_none_or(|t| now - t >= Duration::from_millis(500)) {
            match s.send(b"anyone?") {
                Ok(_) => sent += 1,
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                    refused += 1;
                    first.get_or_insert(now);
                    event!("refused n={refused} on=send");
                }
                Err(e) => return Err(e).context("sending"),
            }
            last_send = Some(now);
        }
        match s.recv(&mut buf) {
            Ok(n) => event!("unexpected-answer bytes={n}"),
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                refused += 1;
                first.get_or_insert(now);
                event!("refused n={refused} on=recv");
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => return Err(e).context("receiving"),
        }
    }
    event!("result refused={refused} sent={sent}");
    Ok(())
}

/// The Internet checksum of `data`.
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The ICMP message (no outer IP header): type 3 code 4 with `mtu`, quoting
/// the IP header of a 1400-byte DF packet `inner_src → inner_dst` and the
/// first 8 bytes of its TCP or UDP header.
pub fn frag_needed_message(
    mtu: u16,
    proto: Proto,
    inner_src: SocketAddrV4,
    inner_dst: SocketAddrV4,
    seq: u32,
) -> Vec<u8> {
    const QUOTED_LEN: u16 = 1400;
    let mut ip = vec![0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&QUOTED_LEN.to_be_bytes());
    ip[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
    ip[6..8].copy_from_slice(&0x4000u16.to_be_bytes()); // DF
    ip[8] = 64;
    ip[9] = match proto {
        Proto::Tcp => libc::IPPROTO_TCP as u8,
        Proto::Udp => libc::IPPROTO_UDP as u8,
    };
    ip[12..16].copy_from_slice(&inner_src.ip().octets());
    ip[16..20].copy_from_slice(&inner_dst.ip().octets());
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut l4 = Vec::with_capacity(8);
    l4.extend_from_slice(&inner_src.port().to_be_bytes());
    l4.extend_from_slice(&inner_dst.port().to_be_bytes());
    match proto {
        Proto::Tcp => l4.extend_from_slice(&seq.to_be_bytes()),
        Proto::Udp => {
            l4.extend_from_slice(&(QUOTED_LEN - 20).to_be_bytes());
            l4.extend_from_slice(&[0, 0]); // no checksum
        }
    }
    let mut m = vec![3, 4, 0, 0, 0, 0];
    m.extend_from_slice(&mtu.to_be_bytes());
    m.extend_from_slice(&ip);
    m.extend_from_slice(&l4);
    let c = checksum(&m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

fn frag_needed(a: &FragNeededArgs) -> Result<()> {
    let msg = frag_needed_message(a.mtu, a.proto, a.inner_src, a.inner_dst, a.seq);
    let fd = socket(libc::SOCK_RAW, libc::IPPROTO_ICMP).context("raw ICMP socket")?;
    let sa = sockaddr(SocketAddrV4::new(a.to, 0));
    // SAFETY: `msg` and `sa` outlive the call.
    let n = cvt(unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            msg.as_ptr().cast(),
            msg.len(),
            0,
            (&sa as *const libc::sockaddr_in).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        ) as libc::c_int
    })
    .with_context(|| format!("sending to {}", a.to))?;
    ensure!(n as usize == msg.len(), "sent {n} of {} bytes", msg.len());
    event!(
        "frag-needed sent to={} mtu={} quoting={:?} {}->{} seq={}",
        a.to,
        a.mtu,
        a.proto,
        a.inner_src,
        a.inner_dst,
        a.seq
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_of_a_known_header() {
        // The classic example header (checksum field zeroed): 0xb861.
        let h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(checksum(&h), 0xb861);
    }

    #[test]
    fn frag_needed_message_checks_out() {
        let m = frag_needed_message(
            1200,
            Proto::Udp,
            "198.18.0.10:40000".parse().unwrap(),
            "198.18.0.200:5201".parse().unwrap(),
            0,
        );
        assert_eq!(m.len(), 8 + 20 + 8);
        assert_eq!(&m[..2], &[3, 4]);
        assert_eq!(u16::from_be_bytes([m[6], m[7]]), 1200);
        assert_eq!(checksum(&m), 0, "ICMP checksum");
        assert_eq!(checksum(&m[8..28]), 0, "quoted IP header checksum");
        assert_eq!(u16::from_be_bytes([m[28], m[29]]), 40000);
        assert_eq!(u16::from_be_bytes([m[30], m[31]]), 5201);
        let t = frag_needed_message(
            1200,
            Proto::Tcp,
            "198.18.0.10:40000".parse().unwrap(),
            "198.18.0.200:5201".parse().unwrap(),
            0xdead_beef,
        );
        assert_eq!(t[17], 6);
        assert_eq!(&t[32..36], &0xdead_beefu32.to_be_bytes());
        assert_eq!(checksum(&t), 0);
    }

    #[test]
    fn ports_range() {
        assert_eq!(parse_ports("40000-40002").unwrap().count(), 3);
        assert!(parse_ports("5-4").is_err());
        assert!(parse_ports("5").is_err());
    }

    /// The server and the clients on loopback: echo, seq, upload,
    /// download, UDP, and many connections from explicit ports.
    #[test]
    fn server_and_clients_on_loopback() {
        let _ = raise_nofile();
        let dir = tempfile::tempdir().unwrap();
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let download = vec![7u8; 100_000];
        let up = dir.path().to_path_buf();
        let dl = download.clone();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let (dl, up) = (dl.clone(), up.clone());
                std::thread::spawn(move || {
                    serve_tcp(port, s.unwrap(), &dl, (Some(&up), None)).unwrap()
                });
            }
        });
        let to = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
        let f = dir.path().join("in.bin");
        std::fs::write(&f, vec![9u8; 50_000]).unwrap();
        for mode in [TcpMode::Echo, TcpMode::Upload] {
            tcp(&TcpArgs {
                to,
                bind_port: None,
                mode,
                file: Some(f.clone()),
                hold: 0.0,
            })
            .unwrap();
        }
        let out = dir.path().join("out.bin");
        tcp(&TcpArgs {
            to,
            bind_port: None,
            mode: TcpMode::Download,
            file: Some(out.clone()),
            hold: 0.0,
        })
        .unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), download);
        let release = dir.path().join("go");
        std::fs::write(&release, "").unwrap();
        tcp_many(&TcpManyArgs {
            to,
            ports: "47000-47049".into(),
            release,
            timeout: 30.0,
        })
        .unwrap();
    }

    /// `serve --name` and `names`: every answer carries the server's name,
    /// over TCP and UDP.
    #[test]
    fn names_are_asked_and_answered() {
        assert_eq!(name_of("n3 seen=1.2.3.4:5 name=pod-a"), Some("pod-a"));
        assert_eq!(name_of("name=x\n"), Some("x"));
        assert_eq!(name_of("n3 seen=1.2.3.4:5"), None);
        // A port free for TCP and UDP at once.
        let port = loop {
            let t = TcpListener::bind("127.0.0.1:0").unwrap();
            let p = t.local_addr().unwrap().port();
            if UdpSocket::bind(("127.0.0.1", p)).is_ok() {
                break p;
            }
        };
        let args = ServeArgs {
            tcp: vec![port],
            udp: vec![port],
            icmp: false,
            download: None,
            upload_dir: None,
            bind: Ipv4Addr::LOCALHOST,
            name: Some("backend-1".into()),
        };
        std::thread::spawn(move || serve(&args));
        let to = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
        for proto in [Proto::Tcp, Proto::Udp] {
            let mut ok = false;
            for _ in 0..50 {
                if names(&NamesArgs {
                    to,
                    proto,
                    count: 3,
                })
                .is_ok()
                {
                    ok = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            assert!(ok, "{proto:?}");
        }
        // A server without a name gives answers `names` refuses.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let to = SocketAddrV4::new(Ipv4Addr::LOCALHOST, l.local_addr().unwrap().port());
        std::thread::spawn(move || {
            for s in l.incoming() {
                let _ = serve_tcp(to.port(), s.unwrap(), &[], (None, None));
            }
        });
        assert!(
            names(&NamesArgs {
                to,
                proto: Proto::Tcp,
                count: 1
            })
            .is_err()
        );
    }
}
