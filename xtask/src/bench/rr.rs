//! A small TCP request/response benchmark, run inside the test bed's pods
//! as the hidden subcommands `cargo xtask bench-server` / `bench-client`
//! (the datapath bench starts them pinned with `taskset -c 0`).
//!
//! - `rr`: one connection, 1-byte request → 1-byte response, repeated.
//! - `crr`: connect → 1 byte → 1 byte → the server closes → the client sees
//!   EOF and closes, repeated. The server closes first so that TIME_WAIT
//!   stays on the server's side and the client never runs out of ports
//!   nor depends on earlier runs.
//!
//! The server serves one connection at a time (the client is sequential):
//! the request byte tells it whether to keep the connection (`r`) or close
//! it after the answer (`c`). The client prints one JSON line:
//! `{"mode":"rr","transactions":N,"seconds":S,"per_second":R}`.

use anyhow::{Context, Result, ensure};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// The port the server listens on unless told otherwise.
pub const DEFAULT_PORT: u16 = 7007;
const KEEP: u8 = b'r';
const CLOSE: u8 = b'c';
/// A peer silent this long fails the run instead of hanging it.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(clap::Args, Debug, Clone)]
pub struct ServerArgs {
    /// TCP port to listen on (every address).
    #[arg(long, default_value_t = DEFAULT_PORT)]
    pub port: u16,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Request/response on one connection.
    Rr,
    /// Connect, request, response, close.
    Crr,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Rr => "rr",
            Mode::Crr => "crr",
        }
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct ClientArgs {
    /// The server's address, `IP:PORT`.
    #[arg(long)]
    pub addr: SocketAddr,
    #[arg(long, value_enum)]
    pub mode: Mode,
    /// How long to run.
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
}

/// Serves forever, one connection at a time.
pub fn server(args: &ServerArgs) -> Result<()> {
    let listener = TcpListener::bind(("0.0.0.0", args.port))
        .with_context(|| format!("listening on port {}", args.port))?;
    for conn in listener.incoming() {
        match conn {
            Ok(s) => {
                if let Err(e) = serve(s) {
                    eprintln!("bench-server: connection failed: {e}");
                }
            }
            Err(e) => eprintln!("bench-server: accept failed: {e}"),
        }
    }
    Ok(())
}

fn serve(mut s: TcpStream) -> std::io::Result<()> {
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_nodelay(true)?;
    let mut b = [0u8; 1];
    loop {
        if s.read(&mut b)? == 0 {
            return Ok(());
        }
        s.write_all(&b)?;
        if b[0] == CLOSE {
            // Dropping `s` closes it: the server closes first.
            return Ok(());
        }
    }
}

/// What one client run measured.
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    pub transactions: u64,
    pub seconds: f64,
}

impl Outcome {
    pub fn per_second(&self) -> f64 {
        self.transactions as f64 / self.seconds
    }
}

/// Runs the client and prints its JSON line.
pub fn client(args: &ClientArgs) -> Result<()> {
    let o = run_client(args)?;
    println!(
        "{}",
        serde_json::json!({
            "mode": args.mode.name(),
            "transactions": o.transactions,
            "seconds": o.seconds,
            "per_second": o.per_second(),
        })
    );
    Ok(())
}

pub fn run_client(args: &ClientArgs) -> Result<Outcome> {
    ensure!(args.seconds > 0.0, "--seconds must be positive");
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(args.seconds);
    let mut n = 0u64;
    let mut b = [0u8; 1];
    match args.mode {
        Mode::Rr => {
            let mut s = TcpStream::connect(args.addr)
                .with_context(|| format!("connecting to {}", args.addr))?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(IO_TIMEOUT))?;
            loop {
                s.write_all(&[KEEP]).context("sending a request")?;
                s.read_exact(&mut b).context("reading a response")?;
                n += 1;
                if Instant::now() >= deadline {
                    break;
                }
            }
        }
        Mode::Crr => loop {
            let mut s = TcpStream::connect(args.addr)
                .with_context(|| format!("connection {} to {}", n + 1, args.addr))?;
            s.set_read_timeout(Some(IO_TIMEOUT))?;
            s.write_all(&[CLOSE]).context("sending a request")?;
            s.read_exact(&mut b).context("reading a response")?;
            // Wait for the server's FIN, then close our side.
            match s.read(&mut b) {
                Ok(0) => {}
                Ok(_) => anyhow::bail!("the server sent more than one byte"),
                Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
                Err(e) => return Err(e).context("waiting for the server to close"),
            }
            drop(s);
            n += 1;
            if Instant::now() >= deadline {
                break;
            }
        },
    }
    Ok(Outcome {
        transactions: n,
        seconds: start.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both modes against a server on loopback.
    #[test]
    fn rr_and_crr_on_loopback() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for s in listener.incoming() {
                let _ = serve(s.unwrap());
            }
        });
        for mode in [Mode::Rr, Mode::Crr] {
            let o = run_client(&ClientArgs {
                addr,
                mode,
                seconds: 0.2,
            })
            .unwrap();
            assert!(o.transactions > 10, "{mode:?}: {o:?}");
        }
    }
}
