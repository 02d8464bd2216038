//! The metrics endpoint: hyper's HTTP/1.1 server on the command's tokio runtime, TLS with
//! rustls and basic auth from the web config ([`crate::output::web_config`]).
//!
//! Bounded where it costs: a request head is at most [`MAX_HEAD_BYTES`] (`431` beyond) and must
//! arrive within [`HEAD_TIMEOUT`] (also the idle time allowed between keep-alive requests; the
//! connection is closed after it), a TLS handshake within [`HEAD_TIMEOUT`] too, and a response
//! that the client does not read within [`WRITE_TIMEOUT`] is dropped with its connection. At
//! most `--web.max-requests` renders run at once (`503` beyond, as node_exporter), off the
//! async thread, and bcrypt checks for credentials not seen before at most
//! [`AUTH_CHECKS`] at once. Connections are cheap while they send nothing (a task and an
//! 8 KiB buffer at most), so their count is bounded high (`--web.max-connections`), and per
//! source address lower (`--web.max-connections-per-source`) so that one host cannot hold
//! them all: connections beyond are closed at once. GET and HEAD only (`405`).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
pub use hyper::Method;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_io_timeout::TimeoutStream;

use crate::output::web_config::{SharedWebConfig, WebConfig, basic_credentials};

/// Largest request head (request line and headers) and read buffer per connection.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;
/// Time to send a whole request head (or finish a TLS handshake), and the longest idle time
/// between two requests on a kept-alive connection.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// A write that makes no progress for this long ends the connection.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// bcrypt checks of unseen credentials at once (each takes tens of ms of one core).
pub const AUTH_CHECKS: usize = 2;

/// node_exporter's default for `--web.max-requests`.
pub const DEFAULT_MAX_REQUESTS: usize = 40;
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
pub const DEFAULT_MAX_CONNECTIONS_PER_SOURCE: usize = 256;

/// What the server answers.
pub struct Site {
    pub telemetry_path: String,
    /// Renders the metrics page (called per scrape, on a blocking thread).
    pub render: Box<dyn Fn() -> Vec<u8> + Send + Sync>,
    /// Renders the `/` page, HTML (called per request).
    pub home: Box<dyn Fn() -> Vec<u8> + Send + Sync>,
}

/// The endpoint's bounds (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Renders at once; 0 = no limit.
    pub max_requests: usize,
    pub max_connections: usize,
    pub max_connections_per_source: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_requests: DEFAULT_MAX_REQUESTS,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_source: DEFAULT_MAX_CONNECTIONS_PER_SOURCE,
        }
    }
}

/// Open connections, in all and per source address.
struct Gate {
    limits: Limits,
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// One admitted connection; leaving frees its place.
struct Admitted {
    gate: Arc<Gate>,
    source: IpAddr,
}

impl Gate {
    fn admit(self: &Arc<Self>, source: IpAddr) -> Option<Admitted> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let (total, per_source) = &mut *open;
        let mine = per_source.get(&source).copied().unwrap_or(0);
        if *total >= self.limits.max_connections || mine >= self.limits.max_connections_per_source {
            return None;
        }
        *total += 1;
        per_source.insert(source, mine + 1);
        Some(Admitted {
            gate: self.clone(),
            source,
        })
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut open = self.gate.open.lock().unwrap_or_else(|e| e.into_inner());
        let (total, per_source) = &mut *open;
        *total = total.saturating_sub(1);
        if let Some(n) = per_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                per_source.remove(&self.source);
            }
        }
    }
}

/// Everything a request handler shares.
struct Server {
    site: Site,
    web: Arc<SharedWebConfig>,
    renders: Option<Semaphore>,
    auth_checks: Semaphore,
    gate: Arc<Gate>,
}

type Body = Full<Bytes>;

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// What a request gets before rendering: the routing decision. Pure, so it is unit-tested
/// and fuzzed without sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Metrics,
    Landing,
    NotFound,
    MethodNotAllowed,
}

pub fn route(method: &Method, path: &str, telemetry_path: &str) -> Route {
    if method != Method::GET && method != Method::HEAD {
        Route::MethodNotAllowed
    } else if path == telemetry_path {
        Route::Metrics
    } else if path == "/" {
        Route::Landing
    } else {
        Route::NotFound
    }
}

impl Server {
    /// Whether the request carries credentials the config accepts (always, without auth).
    async fn authorized(&self, web: &WebConfig, req: &Request<Incoming>) -> bool {
        let Some(auth) = &web.auth else {
            return true;
        };
        let Some((user, password)) = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| basic_credentials(v.as_bytes()))
        else {
            return false;
        };
        if let Some(ok) = auth.cached(&user, &password) {
            return ok;
        }
        let Ok(_slot) = self.auth_checks.acquire().await else {
            return false;
        };
        let web = self.web.current();
        tokio::task::spawn_blocking(move || {
            web.auth
                .as_ref()
                .is_some_and(|auth| auth.verify(&user, &password))
        })
        .await
        .unwrap_or(false)
    }

    async fn respond(self: Arc<Self>, web: &WebConfig, req: Request<Incoming>) -> Response<Body> {
        if !self.authorized(web, &req).await {
            let mut r = text(StatusCode::UNAUTHORIZED, "Unauthorized\n");
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"tcptrace\""),
            );
            return r;
        }
        match route(req.method(), req.uri().path(), &self.site.telemetry_path) {
            Route::MethodNotAllowed => {
                let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
                r.headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
                r
            }
            Route::NotFound => text(StatusCode::NOT_FOUND, "not found\n"),
            Route::Landing => {
                // The state diagram page: rendered from the last sample, no walk of the table.
                let mut r = Response::new(Full::new(Bytes::from((self.site.home)())));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/html; charset=utf-8"),
                );
                r
            }
            Route::Metrics => {
                let _permit = match &self.renders {
                    Some(renders) => match renders.try_acquire() {
                        Ok(p) => Some(p),
                        Err(_) => {
                            return text(
                                StatusCode::SERVICE_UNAVAILABLE,
                                "too many scrapes at once (--web.max-requests); try again later\n",
                            );
                        }
                    },
                    None => None,
                };
                // Rendering walks every metric: off the async thread.
                let server = self.clone();
                let Ok(body) = tokio::task::spawn_blocking(move || (server.site.render)()).await
                else {
                    return text(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n");
                };
                let mut r = Response::new(Full::new(Bytes::from(body)));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                r
            }
        }
    }

    /// Answers with the configuration in force now (auth, headers); a connection accepted
    /// under an earlier one (its TLS settings) is closed after this answer, so a reload
    /// reaches kept-alive scrapers at their next request.
    async fn handle(
        self: Arc<Self>,
        accepted_with: Arc<WebConfig>,
        req: Request<Incoming>,
    ) -> Response<Body> {
        let web = self.web.current();
        let mut response = self.respond(&web, req).await;
        for (name, value) in &web.headers {
            response.headers_mut().insert(name.clone(), value.clone());
        }
        if !Arc::ptr_eq(&web, &accepted_with) {
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }

    /// Serves one connection to its end.
    async fn connection(self: Arc<Self>, stream: TcpStream, _admitted: Admitted) {
        let web = self.web.current();
        let mut stream = TimeoutStream::new(stream);
        stream.set_write_timeout(Some(WRITE_TIMEOUT));
        let stream = Box::pin(stream);
        let server = self.clone();
        let config = web.clone();
        let service = hyper::service::service_fn(move |req| {
            let server = server.clone();
            let config = config.clone();
            async move { Ok::<_, Infallible>(server.handle(config, req).await) }
        });
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(HEAD_TIMEOUT)
            .max_buf_size(MAX_HEAD_BYTES)
            .keep_alive(true);
        let result = match &web.tls {
            None => http.serve_connection(TokioIo::new(stream), service).await,
            Some(tls) => {
                let acceptor = tokio_rustls::TlsAcceptor::from(tls.clone());
                let tls_stream =
                    match tokio::time::timeout(HEAD_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            log::debug!("TLS handshake failed: {e}");
                            return;
                        }
                        Err(_) => {
                            log::debug!("TLS handshake timed out");
                            return;
                        }
                    };
                http.serve_connection(TokioIo::new(tls_stream), service)
                    .await
            }
        };
        if let Err(e) = result {
            log::debug!("HTTP connection ended: {e}");
        }
    }
}

/// Accepts on one listener until the future is dropped.
async fn accept_loop(server: Arc<Server>, listener: TcpListener) {
    loop {
        let (stream, peer): (TcpStream, SocketAddr) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                log::debug!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let source = peer.ip().to_canonical();
        let Some(admitted) = server.gate.admit(source) else {
            log::debug!("connection from {source} refused: too many connections");
            drop(stream);
            continue;
        };
        tokio::spawn(server.clone().connection(stream, admitted));
    }
}

/// Serves `site` on every listener until the future is dropped; the web config is read anew
/// for each connection (a reload applies to the next ones).
pub async fn serve(
    listeners: Vec<TcpListener>,
    site: Site,
    web: Arc<SharedWebConfig>,
    limits: Limits,
) {
    let server = Arc::new(Server {
        site,
        web,
        renders: (limits.max_requests > 0).then(|| Semaphore::new(limits.max_requests)),
        auth_checks: Semaphore::new(AUTH_CHECKS),
        gate: Arc::new(Gate {
            limits,
            open: Mutex::new((0, HashMap::new())),
        }),
    });
    // Dropping the set (when this future is dropped) aborts the accept loops.
    let mut loops = tokio::task::JoinSet::new();
    for listener in listeners {
        loops.spawn(accept_loop(server.clone(), listener));
    }
    while loops.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::web_config::tests::{pki, temp_dir};
    use std::path::Path;

    #[test]
    fn routes() {
        let m = "/metrics";
        assert_eq!(route(&Method::GET, "/metrics", m), Route::Metrics);
        assert_eq!(route(&Method::HEAD, "/metrics", m), Route::Metrics);
        assert_eq!(route(&Method::GET, "/", m), Route::Landing);
        assert_eq!(route(&Method::GET, "/nope", m), Route::NotFound);
        assert_eq!(route(&Method::POST, "/metrics", m), Route::MethodNotAllowed);
        assert_eq!(route(&Method::PUT, "/", m), Route::MethodNotAllowed);
    }

    #[test]
    fn the_gate_bounds_connections_in_all_and_per_source() {
        let gate = Arc::new(Gate {
            limits: Limits {
                max_requests: 1,
                max_connections: 3,
                max_connections_per_source: 2,
            },
            open: Mutex::new((0, HashMap::new())),
        });
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        let c: IpAddr = "127.0.0.4".parse().unwrap();
        let a1 = gate.admit(a).unwrap();
        let _a2 = gate.admit(a).unwrap();
        assert!(gate.admit(a).is_none(), "per source");
        let _b1 = gate.admit(b).unwrap();
        assert!(gate.admit(c).is_none(), "in all");
        drop(a1);
        let _c1 = gate.admit(c).unwrap();
        assert!(gate.admit(a).is_none());
    }

    /// A server on a loopback port, on its own thread and runtime, until the test ends.
    fn start(web: WebConfig, limits: Limits, render: fn() -> Vec<u8>) -> SocketAddr {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let addr = std_listener.local_addr().unwrap();
        let web = Arc::new(SharedWebConfig::new(web));
        std::thread::spawn(move || {
            let rt = crate::commands::runtime().unwrap();
            rt.block_on(async move {
                let listener = TcpListener::from_std(std_listener).unwrap();
                let site = Site {
                    telemetry_path: "/metrics".into(),
                    render: Box::new(render),
                    home: Box::new(|| b"<a href=\"/metrics\">/metrics</a>".to_vec()),
                };
                serve(vec![listener], site, web, limits).await;
            });
        });
        addr
    }

    fn metrics() -> Vec<u8> {
        b"x 1\n".to_vec()
    }

    /// Sends `request` raw and returns everything the server wrote before closing.
    fn exchange(stream: &mut (impl std::io::Read + std::io::Write), request: &str) -> String {
        stream.write_all(request.as_bytes()).unwrap();
        let mut out = Vec::new();
        let _ = stream.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    }

    fn plain(addr: SocketAddr, request: &str) -> String {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        exchange(&mut s, request)
    }

    fn get(path: &str, extra: &str) -> String {
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{extra}\r\n")
    }

    #[test]
    fn serves_get_and_head_only_with_bounded_heads() {
        let addr = start(WebConfig::default(), Limits::default(), metrics);
        let r = plain(addr, &get("/metrics", ""));
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(
            r.contains("version=0.0.4") && r.ends_with("\r\n\r\nx 1\n"),
            "{r}"
        );
        let r = plain(
            addr,
            "HEAD /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        );
        assert!(
            r.starts_with("HTTP/1.1 200") && r.ends_with("\r\n\r\n"),
            "{r}"
        );
        assert!(r.contains("content-length: 4"), "{r}");
        let r = plain(
            addr,
            "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
        assert!(
            r.starts_with("HTTP/1.1 405") && r.contains("allow: GET, HEAD"),
            "{r}"
        );
        assert!(plain(addr, &get("/nope", "")).starts_with("HTTP/1.1 404"));
        assert!(plain(addr, &get("/", "")).contains("href=\"/metrics\""));
        let big = format!("X: {}\r\n", "a".repeat(2 * MAX_HEAD_BYTES));
        let r = plain(addr, &get("/metrics", &big));
        assert!(r.starts_with("HTTP/1.1 431"), "{r}");
        assert!(plain(addr, "garbage\r\n\r\n").starts_with("HTTP/1.1 400"));
        // Keep-alive: two requests on one connection.
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let r = exchange(
            &mut s,
            "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\nGET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        );
        assert_eq!(r.matches("HTTP/1.1 200").count(), 2, "{r}");
    }

    #[test]
    fn scrapes_beyond_max_requests_get_503() {
        fn slow() -> Vec<u8> {
            std::thread::sleep(Duration::from_millis(1500));
            b"x 1\n".to_vec()
        }
        let limits = Limits {
            max_requests: 1,
            ..Limits::default()
        };
        let addr = start(WebConfig::default(), limits, slow);
        let first = std::thread::spawn(move || plain(addr, &get("/metrics", "")));
        std::thread::sleep(Duration::from_millis(300));
        let second = plain(addr, &get("/metrics", ""));
        assert!(second.starts_with("HTTP/1.1 503"), "{second}");
        // Pages other than the metrics are not bounded by it.
        assert!(plain(addr, &get("/", "")).starts_with("HTTP/1.1 200"));
        assert!(first.join().unwrap().starts_with("HTTP/1.1 200"));
    }

    #[test]
    fn connections_beyond_the_per_source_bound_are_closed() {
        let limits = Limits {
            max_connections_per_source: 2,
            ..Limits::default()
        };
        let addr = start(WebConfig::default(), limits, metrics);
        let idle: Vec<_> = (0..2)
            .map(|_| std::net::TcpStream::connect(addr).unwrap())
            .collect();
        std::thread::sleep(Duration::from_millis(200));
        let r = plain(addr, &get("/metrics", ""));
        assert!(r.is_empty(), "closed without an answer: {r}");
        drop(idle);
        std::thread::sleep(Duration::from_millis(200));
        assert!(plain(addr, &get("/metrics", "")).starts_with("HTTP/1.1 200"));
    }

    #[test]
    fn basic_auth_and_configured_headers() {
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        let web = WebConfig::parse(
            &format!(
                "basic_auth_users:\n  alice: '{hash}'\nhttp_server_config:\n  headers:\n    X-Frame-Options: deny\n"
            ),
            Path::new("."),
        )
        .unwrap();
        let addr = start(web, Limits::default(), metrics);
        let r = plain(addr, &get("/metrics", ""));
        assert!(r.starts_with("HTTP/1.1 401"), "{r}");
        assert!(
            r.contains("www-authenticate: Basic") && r.contains("x-frame-options: deny"),
            "{r}"
        );
        // alice:wrong, then alice:s3cret
        assert!(
            plain(
                addr,
                &get("/metrics", "Authorization: Basic YWxpY2U6d3Jvbmc=\r\n")
            )
            .starts_with("HTTP/1.1 401")
        );
        for _ in 0..2 {
            let r = plain(
                addr,
                &get("/metrics", "Authorization: Basic YWxpY2U6czNjcmV0\r\n"),
            );
            assert!(
                r.starts_with("HTTP/1.1 200") && r.contains("x-frame-options: deny"),
                "{r}"
            );
        }
    }

    fn tls_client(
        pki: &crate::output::web_config::tests::Pki,
        with_cert: bool,
    ) -> Arc<rustls::ClientConfig> {
        use rustls::pki_types::pem::PemObject as _;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(&pki.ca).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
        Arc::new(if with_cert {
            let certs = CertificateDer::pem_file_iter(&pki.client_cert)
                .unwrap()
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = PrivateKeyDer::from_pem_file(&pki.client_key).unwrap();
            builder.with_client_auth_cert(certs, key).unwrap()
        } else {
            builder.with_no_client_auth()
        })
    }

    fn tls_get(addr: SocketAddr, client: Arc<rustls::ClientConfig>) -> String {
        let tcp = std::net::TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let conn = rustls::ClientConnection::new(client, "127.0.0.1".try_into().unwrap()).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        exchange(&mut tls, &get("/metrics", ""))
    }

    #[test]
    fn tls_with_and_without_client_certificates() {
        let dir = temp_dir("http-tls");
        let pki = pki(&dir);
        let web = WebConfig::parse(
            &format!(
                "tls_server_config:\n  cert_file: {}\n  key_file: {}\n",
                pki.cert.display(),
                pki.key.display()
            ),
            &dir,
        )
        .unwrap();
        let addr = start(web, Limits::default(), metrics);
        let r = tls_get(addr, tls_client(&pki, false));
        assert!(r.starts_with("HTTP/1.1 200") && r.ends_with("x 1\n"), "{r}");
        // Plain HTTP to the TLS port gets no HTTP answer.
        let r = plain(addr, &get("/metrics", ""));
        assert!(!r.contains("HTTP/1.1"), "{r}");

        let web = WebConfig::parse(
            &format!(
                "tls_server_config:\n  cert_file: {}\n  key_file: {}\n  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {}\n",
                pki.cert.display(),
                pki.key.display(),
                pki.ca.display()
            ),
            &dir,
        )
        .unwrap();
        let addr = start(web, Limits::default(), metrics);
        assert!(tls_get(addr, tls_client(&pki, true)).starts_with("HTTP/1.1 200"));
        assert!(!tls_get(addr, tls_client(&pki, false)).contains("HTTP/1.1"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
