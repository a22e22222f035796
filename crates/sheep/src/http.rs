//! The HTTP listener (`--http-port`): `/metrics` in the Prometheus text format, the JSON
//! volume API under `/v1` (`api`), and the status page at `/`. Applies the access rule to every request: reading is
//! open to whoever reaches the port (it listens where `-b` says, loopback by default); a
//! request that changes something (any method but GET, HEAD, OPTIONS) needs the token of
//! `--api-token-file` when one is configured, and comes from a loopback address otherwise.
//! Owns: routes, the access rule, the connection count of this listener. Never: what a metric
//! means (`metrics`), or cluster and VDI logic (`ops`, `vdi`).

use crate::api::Api;
use crate::metrics;
use crate::server::ConnLimit;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::OwnedSemaphorePermit;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot read the API token file {path}: {source}")]
    TokenFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the API token file {0} is empty")]
    EmptyToken(PathBuf),
}

/// Who may change things through the API.
#[derive(Clone, Default)]
pub struct Access {
    /// The token writers present (`Authorization: Bearer TOKEN`); `None`: loopback only.
    token: Option<Arc<[u8]>>,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token itself.
        f.debug_struct("Access")
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .finish()
    }
}

/// What the access rule says of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// A token is configured and the request did not present it (401).
    NeedToken,
    /// No token is configured and the request comes from another machine (403).
    LoopbackOnly,
}

impl Access {
    /// Writers must present this token.
    pub fn with_token(token: &[u8]) -> Access {
        Access {
            token: Some(token.into()),
        }
    }

    /// The token in the first line of `path` (surrounding white space is not part of it).
    pub fn from_file(path: &Path) -> Result<Access, HttpError> {
        let text = std::fs::read(path).map_err(|source| HttpError::TokenFile {
            path: path.to_path_buf(),
            source,
        })?;
        let line = text.split(|&b| b == b'\n').next().unwrap_or_default();
        let token = line.trim_ascii();
        if token.is_empty() {
            return Err(HttpError::EmptyToken(path.to_path_buf()));
        }
        Ok(Access::with_token(token))
    }

    /// The rule for a request with `method` from `peer` carrying `authorization`.
    pub fn decide(&self, method: &Method, peer: IpAddr, authorization: Option<&[u8]>) -> Decision {
        if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
            return Decision::Allow;
        }
        match &self.token {
            Some(token) => {
                let presented = authorization.and_then(|a| a.strip_prefix(b"Bearer "));
                match presented {
                    Some(p) if same(p.trim_ascii(), token) => Decision::Allow,
                    _ => Decision::NeedToken,
                }
            }
            None if is_loopback(peer) => Decision::Allow,
            None => Decision::LoopbackOnly,
        }
    }
}

/// Loopback, also as an IPv4-mapped IPv6 address.
fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// Compares in time that does not depend on where the bytes differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// A JSON error answer: `{"error": CODE, "message": TEXT}`.
fn error(status: StatusCode, code: &str, message: &str) -> Response {
    crate::api::json_answer(
        status,
        &serde_json::json!({ "error": code, "message": message }),
    )
}

async fn check_access(
    State(access): State<Access>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    req: Request,
    next: Next,
) -> Response {
    let auth = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    match access.decide(req.method(), peer.0.ip(), auth) {
        Decision::Allow => next.run(req).await,
        Decision::NeedToken => {
            let mut r = error(
                StatusCode::UNAUTHORIZED,
                "UNAUTHORIZED",
                "this request needs the API token: Authorization: Bearer TOKEN",
            );
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            r
        }
        Decision::LoopbackOnly => error(
            StatusCode::FORBIDDEN,
            "FORBIDDEN",
            "without --api-token-file only loopback clients may change things",
        ),
    }
}

async fn metrics_page(State(api): State<Arc<Api>>) -> Response {
    let text = metrics::scrape(&api.node).await;
    ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response()
}

async fn not_found(_: HeaderMap) -> Response {
    error(
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
        "no such resource (try /, /metrics or /v1/openapi.json)",
    )
}

/// The status page: plain HTML and a little JavaScript reading the API.
const STATUS_PAGE: &str = include_str!("status.html");

async fn status_page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        STATUS_PAGE,
    )
        .into_response()
}

/// The routes, behind the access rule.
pub fn router(api: Arc<Api>, access: Access) -> Router {
    Router::new()
        .route("/", get(status_page))
        .route("/metrics", get(metrics_page))
        .with_state(api.clone())
        .merge(crate::api::routes(api))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(access, check_access))
}

/// The address of a connection's client, for the access rule.
#[derive(Clone, Copy, Debug)]
pub struct Peer(pub SocketAddr);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, Limited>> for Peer {
    fn connect_info(s: axum::serve::IncomingStream<'_, Limited>) -> Peer {
        Peer(*s.remote_addr())
    }
}

/// The TCP listener with this node's connection limit: one connection more than
/// `--max-connections` is closed as soon as it is accepted.
pub struct Limited {
    inner: tokio::net::TcpListener,
    gate: Arc<ConnLimit>,
}

/// An accepted connection, holding its slot and its place in the connection count.
pub struct Conn {
    io: tokio::net::TcpStream,
    _slot: OwnedSemaphorePermit,
    _counted: metrics::Connection,
}

impl axum::serve::Listener for Limited {
    type Io = Conn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Conn, SocketAddr) {
        // Each turn accepts one connection or waits after an error: no busy loop.
        loop {
            match self.inner.accept().await {
                Ok((s, peer)) => {
                    let Some(slot) = self.gate.admit(&peer.to_string()) else {
                        continue;
                    };
                    let _ = s.set_nodelay(true);
                    crate::server::keepalive(&s);
                    let conn = Conn {
                        io: s,
                        _slot: slot,
                        _counted: metrics::connection(metrics::Listener::Http),
                    };
                    return (conn, peer);
                }
                Err(e) => {
                    tracing::warn!("http accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Serves HTTP on `listener` until the node stops.
pub async fn listen(
    api: Arc<Api>,
    listener: tokio::net::TcpListener,
    access: Access,
    max_connections: usize,
) {
    let limited = Limited {
        inner: listener,
        gate: ConnLimit::new("http port", max_connections),
    };
    let node = api.node.clone();
    let app = router(api, access).into_make_service_with_connect_info::<Peer>();
    let stop = { async move { node.stop.notified().await } };
    if let Err(e) = axum::serve(limited, app).with_graceful_shutdown(stop).await {
        tracing::warn!("http: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn reads_are_open_writes_need_the_token_or_loopback() {
        let open = Access::default();
        let far = ip("192.0.2.7");
        assert_eq!(open.decide(&Method::GET, far, None), Decision::Allow);
        assert_eq!(open.decide(&Method::HEAD, far, None), Decision::Allow);
        assert_eq!(
            open.decide(&Method::POST, ip("127.0.0.1"), None),
            Decision::Allow
        );
        assert_eq!(
            open.decide(&Method::DELETE, ip("::1"), None),
            Decision::Allow
        );
        assert_eq!(
            open.decide(&Method::POST, ip("::ffff:127.0.0.2"), None),
            Decision::Allow
        );
        assert_eq!(
            open.decide(&Method::POST, far, None),
            Decision::LoopbackOnly
        );
        assert_eq!(
            open.decide(&Method::PUT, far, Some(b"Bearer x")),
            Decision::LoopbackOnly
        );

        let t = Access::with_token(b"s3cret");
        assert_eq!(t.decide(&Method::GET, far, None), Decision::Allow);
        assert_eq!(
            t.decide(&Method::POST, far, Some(b"Bearer s3cret")),
            Decision::Allow
        );
        // Loopback needs the token too once one is configured.
        assert_eq!(
            t.decide(&Method::POST, ip("127.0.0.1"), None),
            Decision::NeedToken
        );
        for bad in [
            &b"Bearer s3cre"[..],
            b"Bearer s3cret2",
            b"s3cret",
            b"Basic s3cret",
            b"",
        ] {
            assert_eq!(t.decide(&Method::POST, far, Some(bad)), Decision::NeedToken);
        }
    }

    #[test]
    fn the_token_file_gives_its_first_line() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("token");
        std::fs::write(&p, "  abc123 \nignored\n").unwrap();
        let a = Access::from_file(&p).unwrap();
        assert_eq!(
            a.decide(&Method::POST, ip("192.0.2.7"), Some(b"Bearer abc123")),
            Decision::Allow
        );
        assert!(!format!("{a:?}").contains("abc123"));
        std::fs::write(&p, "\n").unwrap();
        assert!(matches!(
            Access::from_file(&p),
            Err(HttpError::EmptyToken(_))
        ));
        assert!(matches!(
            Access::from_file(&d.path().join("missing")),
            Err(HttpError::TokenFile { .. })
        ));
    }
}
