//! `--listen` (default :1107): `/health`, `/metrics`, `/graph`.

use anyhow::{Context, Result};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use tracing::{debug, info};

use crate::metrics::Metrics;

/// What the handlers serve; the agent updates it after every reconcile.
#[derive(Default)]
pub struct State {
    pub metrics: Metrics,
    /// The mesh as GraphViz DOT, as of the last reconcile.
    pub graph: RwLock<String>,
    /// Set once the first reconcile succeeded; cleared while reconciles fail.
    pub healthy: std::sync::atomic::AtomicBool,
    /// Set while the backend is unreachable: why, and for how long.
    pub stale: RwLock<Option<String>>,
    /// Whether the last attempt to publish this node's annotations failed.
    pub publish_failing: std::sync::atomic::AtomicBool,
}

/// Parses `:1107`, `0.0.0.0:1107` or `[::]:1107`.
pub fn parse_listen(s: &str) -> Result<SocketAddr> {
    let full = if s.starts_with(':') {
        format!("0.0.0.0{s}")
    } else {
        s.to_string()
    };
    full.parse().with_context(|| {
        format!("invalid --listen address {s:?} (expected e.g. :1107 or 127.0.0.1:1107)")
    })
}

/// Serves until the task is dropped.
pub async fn serve(addr: SocketAddr, state: Arc<State>) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening on {addr}"))?;
    info!(%addr, "serving /health, /metrics, /graph");
    loop {
        let (stream, _) = listener.accept().await?;
        let state = state.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(&req, &state)) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                debug!("http connection: {e}");
            }
        });
    }
}

fn handle<B>(req: &Request<B>, state: &State) -> Response<Full<Bytes>> {
    let (status, ctype, body) = match req.uri().path() {
        "/health" => {
            let stale = state.stale.read().expect("not poisoned").clone();
            if !state.healthy.load(std::sync::atomic::Ordering::Relaxed) {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    match stale {
                        Some(s) => format!("not reconciled yet; {s}\n"),
                        None => "not reconciled yet\n".to_string(),
                    },
                )
            } else if let Some(s) = stale {
                // Still 200: the datapath forwards on the last topology, and
                // a liveness probe must not restart every agent of a cluster
                // whose API server is away.
                (StatusCode::OK, "text/plain", format!("stale: {s}\n"))
            } else {
                (StatusCode::OK, "text/plain", "ok\n".to_string())
            }
        }
        "/metrics" => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            state.metrics.encode(),
        ),
        "/graph" => (
            StatusCode::OK,
            "text/vnd.graphviz",
            state.graph.read().expect("not poisoned").clone(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /health, /metrics or /graph\n".to_string(),
        ),
    };
    Response::builder()
        .status(status)
        .header("content-type", ctype)
        .body(Full::new(Bytes::from(body)))
        .expect("static headers are valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses() {
        assert_eq!(
            parse_listen(":1107").unwrap(),
            "0.0.0.0:1107".parse().unwrap()
        );
        assert_eq!(
            parse_listen("127.0.0.1:9").unwrap(),
            "127.0.0.1:9".parse().unwrap()
        );
        assert!(parse_listen("nope").is_err());
    }

    #[test]
    fn routes() {
        let s = State::default();
        let get = |p: &str| handle(&Request::get(p).body(()).unwrap(), &s).status();
        assert_eq!(get("/health"), StatusCode::SERVICE_UNAVAILABLE);
        s.healthy.store(true, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(get("/health"), StatusCode::OK);
        *s.stale.write().unwrap() = Some("API away".into());
        let r = handle(&Request::get("/health").body(()).unwrap(), &s);
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(get("/metrics"), StatusCode::OK);
        assert_eq!(get("/graph"), StatusCode::OK);
        assert_eq!(get("/nope"), StatusCode::NOT_FOUND);
    }
}
