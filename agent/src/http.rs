//! `--listen` (default :1107): `/health`, `/metrics`, `/graph`.

use anyhow::{Context, Result};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::io::AsyncWriteExt as _;
use tracing::{debug, info, warn};

use crate::metrics::Metrics;

/// A render's format and layout.
type RenderKey = (&'static str, &'static str);

/// What the handlers serve; the agent updates it after every reconcile.
pub struct State {
    pub metrics: Metrics,
    /// The mesh as GraphViz DOT, as of the last reconcile.
    pub graph: RwLock<String>,
    /// Set once the first reconcile succeeded; cleared while reconciles fail.
    pub healthy: AtomicBool,
    /// Set while the backend is unreachable: why, and for how long.
    pub stale: RwLock<Option<String>>,
    /// Whether the last attempt to publish this node's annotations failed.
    pub publish_failing: AtomicBool,
    /// GraphViz's `dot`, which renders `/graph` (default: `dot` on PATH).
    pub graphviz: PathBuf,
    /// At most this many renders at once; more requests wait their turn.
    renders: tokio::sync::Semaphore,
    /// The last render per format and layout, with the DOT it was made from.
    rendered: Mutex<HashMap<RenderKey, (String, Bytes)>>,
    /// Whether a missing `dot` was logged already.
    graphviz_missing: AtomicBool,
}

impl Default for State {
    fn default() -> Self {
        State {
            metrics: Metrics::default(),
            graph: RwLock::default(),
            healthy: AtomicBool::default(),
            stale: RwLock::default(),
            publish_failing: AtomicBool::default(),
            graphviz: PathBuf::from("dot"),
            renders: tokio::sync::Semaphore::new(2),
            rendered: Mutex::default(),
            graphviz_missing: AtomicBool::default(),
        }
    }
}

/// `/graph?format=`: what GraphViz renders, and the content type served.
/// Kilo's formats (but `bmp`, which Debian's GraphViz cannot write), and
/// `pdf`; `dot` (or `gv`) is the DOT source itself, rendered by nobody.
pub const GRAPH_FORMATS: &[(&str, &str)] = &[
    ("svg", "image/svg+xml"),
    ("png", "image/png"),
    ("gif", "image/gif"),
    ("pdf", "application/pdf"),
    ("ps", "application/postscript"),
    ("json", "application/json"),
    ("fig", "application/x-xfig"),
    ("dot", DOT_CONTENT_TYPE),
    ("gv", DOT_CONTENT_TYPE),
];

const DOT_CONTENT_TYPE: &str = "text/vnd.graphviz; charset=utf-8";

/// `/graph?layout=`: GraphViz's layout engines (`dot -K`), Kilo's and `sfdp`.
pub const GRAPH_LAYOUTS: &[&str] = &["circo", "dot", "neato", "twopi", "fdp", "sfdp"];

/// What `/graph` serves without parameters: SVG, laid out by `circo`, as Kilo's.
pub const DEFAULT_FORMAT: &str = "svg";
pub const DEFAULT_LAYOUT: &str = "circo";

/// How long GraphViz may take.
const RENDER_TIMEOUT: Duration = Duration::from_secs(10);

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
                async move { Ok::<_, std::convert::Infallible>(handle(&req, &state).await) }
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

/// A response: status, content type, body.
type Reply = (StatusCode, &'static str, Bytes);

const TEXT: &str = "text/plain; charset=utf-8";

fn text(status: StatusCode, body: impl Into<String>) -> Reply {
    (status, TEXT, Bytes::from(body.into()))
}

async fn handle<B>(req: &Request<B>, state: &State) -> Response<Full<Bytes>> {
    // Nothing of the request is held across an await.
    let path = req.uri().path().to_owned();
    let query = req.uri().query().map(str::to_owned);
    let (status, ctype, body) = match path.as_str() {
        "/health" => {
            let stale = state.stale.read().expect("not poisoned").clone();
            if !state.healthy.load(Ordering::Relaxed) {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    match stale {
                        Some(s) => format!("not reconciled yet; {s}\n"),
                        None => "not reconciled yet\n".to_string(),
                    },
                )
            } else if let Some(s) = stale {
                // Still 200: the datapath forwards on the last topology, and
                // a liveness probe must not restart every agent of a cluster
                // whose API server is away.
                text(StatusCode::OK, format!("stale: {s}\n"))
            } else {
                text(StatusCode::OK, "ok\n")
            }
        }
        "/metrics" => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Bytes::from(state.metrics.encode()),
        ),
        "/graph" => graph(query.as_deref(), state).await,
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /health, /metrics or /graph\n",
        ),
    };
    Response::builder()
        .status(status)
        .header("content-type", ctype)
        .body(Full::new(body))
        .expect("static headers are valid")
}

/// `/graph?format=F&layout=L`: the mesh, rendered by GraphViz.
async fn graph(query: Option<&str>, state: &State) -> Reply {
    let (format, ctype, layout) = match graph_params(query) {
        Ok(p) => p,
        Err(msg) => return text(StatusCode::BAD_REQUEST, msg),
    };
    let dot = state.graph.read().expect("not poisoned").clone();
    if dot.is_empty() {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "no mesh yet: the agent has not computed its first topology\n",
        );
    }
    if ctype == DOT_CONTENT_TYPE {
        return (StatusCode::OK, ctype, Bytes::from(dot));
    }
    let key = (format, layout);
    if let Some((from, out)) = state.rendered.lock().expect("not poisoned").get(&key)
        && *from == dot
    {
        return (StatusCode::OK, ctype, out.clone());
    }
    let Ok(Ok(_permit)) = tokio::time::timeout(RENDER_TIMEOUT, state.renders.acquire()).await
    else {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy rendering other graphs: try again\n",
        );
    };
    match render(&state.graphviz, &dot, format, layout).await {
        Ok(out) => {
            let out = Bytes::from(out);
            state
                .rendered
                .lock()
                .expect("not poisoned")
                .insert(key, (dot, out.clone()));
            (StatusCode::OK, ctype, out)
        }
        Err(RenderError::Missing(e)) => {
            if !state.graphviz_missing.swap(true, Ordering::Relaxed) {
                warn!(
                    graphviz = %state.graphviz.display(),
                    "/graph cannot render: GraphViz's dot is not available ({e}); install graphviz (the DOT source stays at /graph?format=dot)"
                );
            }
            text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "cannot render the graph as {format}: GraphViz's {} is not available on this node ({e}); install graphviz, or get the DOT source with /graph?format=dot and render it elsewhere\n",
                    state.graphviz.display()
                ),
            )
        }
        Err(RenderError::Failed(msg)) => {
            debug!("/graph: {msg}");
            text(StatusCode::INTERNAL_SERVER_ERROR, format!("{msg}\n"))
        }
    }
}

/// Format, its content type, layout.
type GraphParams = (&'static str, &'static str, &'static str);

/// The format (with its content type) and layout asked for, or a message
/// saying what is accepted. Parameters other than these two are ignored,
/// as Kilo does; the first of a repeated one counts.
fn graph_params(query: Option<&str>) -> Result<GraphParams, String> {
    let mut format = None;
    let mut layout = None;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let slot = match percent_decode(k).as_str() {
            "format" => &mut format,
            "layout" => &mut layout,
            _ => continue,
        };
        if slot.is_none() {
            *slot = Some(percent_decode(v));
        }
    }
    let (format, ctype) = match format.as_deref().filter(|f| !f.is_empty()) {
        None => GRAPH_FORMATS
            .iter()
            .find(|(f, _)| *f == DEFAULT_FORMAT)
            .copied()
            .expect("the default format is listed"),
        Some(f) => GRAPH_FORMATS
            .iter()
            .find(|(known, _)| *known == f)
            .copied()
            .ok_or_else(|| {
                format!(
                    "unsupported format {}: use one of {} (default {DEFAULT_FORMAT})\n",
                    shorten(f),
                    GRAPH_FORMATS
                        .iter()
                        .map(|(f, _)| *f)
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })?,
    };
    let layout = match layout.as_deref().filter(|l| !l.is_empty()) {
        None => DEFAULT_LAYOUT,
        Some(l) => GRAPH_LAYOUTS
            .iter()
            .find(|known| **known == l)
            .copied()
            .ok_or_else(|| {
                format!(
                    "unsupported layout {}: use one of {} (default {DEFAULT_LAYOUT})\n",
                    shorten(l),
                    GRAPH_LAYOUTS.join(", ")
                )
            })?,
    };
    Ok((format, ctype, layout))
}

/// A request's value quoted for a one-line answer, cut when long.
fn shorten(v: &str) -> String {
    let cut: String = v.chars().take(40).collect();
    if cut.len() < v.len() {
        format!("{cut:?}...")
    } else {
        format!("{cut:?}")
    }
}

/// Decodes `%XX` and `+` in a query component (invalid escapes kept as they are).
fn percent_decode(s: &str) -> String {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

enum RenderError {
    /// GraphViz is not there (or cannot be run).
    Missing(std::io::Error),
    /// It ran and failed, or took too long.
    Failed(String),
}

/// `dot -K<layout> -T<format>` with the DOT on stdin.
async fn render(
    graphviz: &std::path::Path,
    dot: &str,
    format: &str,
    layout: &str,
) -> Result<Vec<u8>, RenderError> {
    let what = format!("{} -K{layout} -T{format}", graphviz.display());
    let mut child = tokio::process::Command::new(graphviz)
        .arg(format!("-K{layout}"))
        .arg(format!("-T{format}"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => {
                RenderError::Missing(e)
            }
            _ => RenderError::Failed(format!("cannot run {what}: {e}")),
        })?;
    let mut stdin = child.stdin.take().expect("piped");
    let input = dot.as_bytes().to_vec();
    let write = async move {
        // dot may exit before reading everything: its status says why.
        let _ = stdin.write_all(&input).await;
    };
    let run = async { tokio::join!(write, child.wait_with_output()).1 };
    let out = match tokio::time::timeout(RENDER_TIMEOUT, run).await {
        Err(_) => {
            return Err(RenderError::Failed(format!(
                "{what} took longer than {} s",
                RENDER_TIMEOUT.as_secs()
            )));
        }
        Ok(Err(e)) => return Err(RenderError::Failed(format!("{what}: {e}"))),
        Ok(Ok(out)) => out,
    };
    if !out.status.success() || out.stdout.is_empty() {
        let err = String::from_utf8_lossy(&out.stderr);
        let err: Vec<&str> = err.lines().take(5).collect();
        return Err(RenderError::Failed(format!(
            "GraphViz could not render the graph ({what}: {}): {}",
            out.status,
            err.join("; ")
        )));
    }
    Ok(out.stdout)
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

    async fn get(s: &State, uri: &str) -> (StatusCode, String, Bytes) {
        use http_body_util::BodyExt as _;
        let r = handle(&Request::get(uri).body(()).unwrap(), s).await;
        let ctype = r.headers()["content-type"].to_str().unwrap().to_owned();
        let status = r.status();
        let body = r.into_body().collect().await.unwrap().to_bytes();
        (status, ctype, body)
    }

    const DOT: &str = "digraph \"weft\" {\n\t\"node/a\" -> \"node/b\" [dir=both, style=bold];\n}\n";

    fn have_graphviz() -> bool {
        let found = std::process::Command::new("dot")
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            eprintln!(
                "GraphViz's dot is not installed: rendering not tested (cargo xtask setup installs it)"
            );
        }
        found
    }

    #[tokio::test]
    async fn routes() {
        let s = State::default();
        assert_eq!(get(&s, "/health").await.0, StatusCode::SERVICE_UNAVAILABLE);
        s.healthy.store(true, Ordering::Relaxed);
        let (status, ctype, body) = get(&s, "/health").await;
        assert_eq!(
            (status, ctype.as_str(), &body[..]),
            (StatusCode::OK, TEXT, &b"ok\n"[..])
        );
        *s.stale.write().unwrap() = Some("API away".into());
        let (status, _, body) = get(&s, "/health").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(&body[..], b"stale: API away\n");
        let (status, ctype, body) = get(&s, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(ctype.starts_with("application/openmetrics-text"));
        assert!(String::from_utf8_lossy(&body).contains("kilo_reconciles_total"));
        // No topology yet: nothing to draw.
        assert_eq!(get(&s, "/graph").await.0, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(get(&s, "/nope").await.0, StatusCode::NOT_FOUND);
    }

    #[test]
    fn graph_parameters() {
        assert_eq!(graph_params(None), Ok(("svg", "image/svg+xml", "circo")));
        assert_eq!(
            graph_params(Some("layout=dot&format=png&x=1")),
            Ok(("png", "image/png", "dot"))
        );
        assert_eq!(
            graph_params(Some("format=&layout=")),
            Ok(("svg", "image/svg+xml", "circo"))
        );
        assert_eq!(
            graph_params(Some("format=%64ot&format=svg")),
            Ok(("dot", DOT_CONTENT_TYPE, "circo"))
        );
        let e = graph_params(Some("format=bogus")).unwrap_err();
        assert_eq!(
            e,
            "unsupported format \"bogus\": use one of svg, png, gif, pdf, ps, json, fig, dot, gv (default svg)\n"
        );
        let e = graph_params(Some("format=svg&layout=bogus")).unwrap_err();
        assert_eq!(
            e,
            "unsupported layout \"bogus\": use one of circo, dot, neato, twopi, fdp, sfdp (default circo)\n"
        );
        let long = "x".repeat(500);
        let e = graph_params(Some(&format!("layout={long}"))).unwrap_err();
        assert!(e.len() < 200, "{e}");
        assert_eq!(percent_decode("a%2Fb+c%zz%4"), "a/b c%zz%4");
    }

    #[tokio::test]
    async fn graph_formats_and_errors() {
        let s = State::default();
        *s.graph.write().unwrap() = DOT.to_owned();
        for uri in [
            "/graph?format=bogus",
            "/graph?layout=bogus",
            "/graph?format=dot&layout=x",
        ] {
            let (status, ctype, body) = get(&s, uri).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}");
            assert_eq!(ctype, TEXT);
            assert!(
                String::from_utf8_lossy(&body).contains("use one of"),
                "{uri}"
            );
        }
        for uri in ["/graph?format=dot", "/graph?format=gv&layout=fdp"] {
            let (status, ctype, body) = get(&s, uri).await;
            assert_eq!((status, ctype.as_str()), (StatusCode::OK, DOT_CONTENT_TYPE));
            assert_eq!(&body[..], DOT.as_bytes());
        }
        if !have_graphviz() {
            return;
        }
        for uri in [
            "/graph",
            "/graph?format=svg",
            "/graph?format=svg&layout=circo",
        ] {
            let (status, ctype, body) = get(&s, uri).await;
            assert_eq!(
                (status, ctype.as_str()),
                (StatusCode::OK, "image/svg+xml"),
                "{uri}"
            );
            let svg = String::from_utf8_lossy(&body);
            assert!(
                svg.contains("<svg") && svg.contains("node/a"),
                "{uri}: {svg}"
            );
        }
        for layout in GRAPH_LAYOUTS {
            let (status, _, body) = get(&s, &format!("/graph?layout={layout}")).await;
            assert_eq!(status, StatusCode::OK, "{layout}: {body:?}");
        }
        let (status, ctype, body) = get(&s, "/graph?format=png&layout=dot").await;
        assert_eq!((status, ctype.as_str()), (StatusCode::OK, "image/png"));
        assert!(body.starts_with(b"\x89PNG"));
        let (status, ctype, body) = get(&s, "/graph?format=json").await;
        assert_eq!(
            (status, ctype.as_str()),
            (StatusCode::OK, "application/json")
        );
        assert!(serde_json::from_slice::<serde_json::Value>(&body).is_ok());
        // GraphViz refusing the input is a 500 saying what it said.
        *s.graph.write().unwrap() = "digraph {".to_owned();
        let (status, _, body) = get(&s, "/graph?format=svg&layout=dot").await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(
            String::from_utf8_lossy(&body).contains("GraphViz could not render"),
            "{body:?}"
        );
    }

    #[tokio::test]
    async fn without_graphviz_dot_stays_available() {
        let s = State {
            graphviz: PathBuf::from("/nonexistent/dot"),
            ..State::default()
        };
        *s.graph.write().unwrap() = DOT.to_owned();
        let (status, ctype, body) = get(&s, "/graph").await;
        assert_eq!(
            (status, ctype.as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, TEXT)
        );
        let msg = String::from_utf8_lossy(&body);
        assert!(
            msg.contains("/nonexistent/dot is not available")
                && msg.contains("install graphviz")
                && msg.contains("/graph?format=dot"),
            "{msg}"
        );
        let (status, _, body) = get(&s, "/graph?format=dot").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(&body[..], DOT.as_bytes());
    }

    #[tokio::test]
    async fn renders_are_reused_until_the_graph_changes() {
        if !have_graphviz() {
            return;
        }
        let mut s = State::default();
        *s.graph.write().unwrap() = DOT.to_owned();
        let (status, _, first) = get(&s, "/graph").await;
        assert_eq!(status, StatusCode::OK);
        // With GraphViz gone, the same graph is still served...
        s.graphviz = PathBuf::from("/nonexistent/dot");
        let (status, _, again) = get(&s, "/graph").await;
        assert_eq!((status, &again), (StatusCode::OK, &first));
        // ...and a new one needs rendering.
        *s.graph.write().unwrap() = DOT.replace("node/b", "node/c");
        assert_eq!(get(&s, "/graph").await.0, StatusCode::SERVICE_UNAVAILABLE);
    }
}
