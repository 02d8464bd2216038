//! A deliberately small HTTP/1.1 server for the metrics endpoint: GET/HEAD only, one request
//! per connection, bounded in every dimension so a slow or hostile client cannot stall the
//! agent or grow its memory: at most [`MAX_CONNECTIONS`] at once, request head at most
//! [`MAX_HEAD_BYTES`] and read within [`HEAD_TIMEOUT`], responses written within
//! [`WRITE_TIMEOUT`].

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

pub const MAX_CONNECTIONS: usize = 64;
pub const MAX_HEAD_BYTES: usize = 8 * 1024;
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the server answers.
pub struct Site {
    pub telemetry_path: String,
    /// Renders the metrics page (called per scrape).
    pub render: Box<dyn Fn() -> Vec<u8> + Send + Sync>,
    /// Renders the `/` page, HTML (called per request).
    pub home: Box<dyn Fn() -> Vec<u8> + Send + Sync>,
}

#[derive(Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

fn text(status: u16, body: &str) -> Response {
    Response {
        status,
        content_type: "text/plain; charset=utf-8",
        body: body.as_bytes().to_vec(),
    }
}

/// Answers one request head (everything before the blank line). Pure: unit-tested.
pub fn respond(site: &Site, head: &[u8]) -> (Response, bool) {
    let Ok(head) = std::str::from_utf8(head) else {
        return (text(400, "bad request\n"), false);
    };
    let mut parts = head.lines().next().unwrap_or("").split(' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return (text(400, "bad request\n"), false);
    };
    if !version.starts_with("HTTP/1.") {
        return (text(400, "bad request\n"), false);
    }
    let head_only = method == "HEAD";
    if method != "GET" && !head_only {
        return (text(405, "only GET and HEAD\n"), head_only);
    }
    let path = target.split('?').next().unwrap_or("");
    let response = if path == site.telemetry_path {
        Response {
            status: 200,
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            body: (site.render)(),
        }
    } else if path == "/" {
        Response {
            status: 200,
            content_type: "text/html; charset=utf-8",
            body: (site.home)(),
        }
    } else {
        text(404, "not found\n")
    };
    (response, head_only)
}

fn encode(response: &Response, head_only: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        response.status,
        reason(response.status),
        response.content_type,
        response.body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(&response.body);
    }
    out
}

/// Reads a request head (up to the blank line). `Err(status)` when too big or too slow.
async fn read_head(stream: &mut TcpStream) -> Result<Vec<u8>, u16> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    let read = async {
        loop {
            let n = stream.read(&mut buf).await.map_err(|_| 400u16)?;
            if n == 0 {
                return Err(400);
            }
            head.extend_from_slice(&buf[..n]);
            if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                head.truncate(end);
                return Ok(());
            }
            if head.len() > MAX_HEAD_BYTES {
                return Err(431);
            }
        }
    };
    match tokio::time::timeout(HEAD_TIMEOUT, read).await {
        Ok(Ok(())) => Ok(head),
        Ok(Err(status)) => Err(status),
        Err(_) => Err(408),
    }
}

async fn handle(site: Arc<Site>, mut stream: TcpStream) {
    let (response, head_only) = match read_head(&mut stream).await {
        Ok(head) => {
            // Rendering walks every metric: do it off the async threads.
            let site2 = site.clone();
            match tokio::task::spawn_blocking(move || respond(&site2, &head)).await {
                Ok(r) => r,
                Err(_) => (text(500, "internal error\n"), false),
            }
        }
        Err(status) => (text(status, "request rejected\n"), false),
    };
    let bytes = encode(&response, head_only);
    let _ = tokio::time::timeout(WRITE_TIMEOUT, async {
        stream.write_all(&bytes).await?;
        stream.shutdown().await
    })
    .await;
}

/// Answers 503 without reading the request, then lets the client finish sending (closing with
/// unread data would reset the connection before the client reads the answer). Bounded to one
/// second and 8 KiB.
async fn refuse_busy(mut stream: TcpStream) {
    let busy = encode(&text(503, "too many connections\n"), false);
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(&busy).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 1024];
        let mut total = 0;
        while total < MAX_HEAD_BYTES {
            match stream.read(&mut sink).await? {
                0 => break,
                n => total += n,
            }
        }
        std::io::Result::Ok(())
    })
    .await;
}

/// Accepts connections until the future is dropped.
pub async fn serve(listener: TcpListener, site: Site) {
    let site = Arc::new(site);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // EMFILE and friends: back off instead of spinning.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tokio::spawn(refuse_busy(stream));
            continue;
        };
        let site = site.clone();
        tokio::spawn(async move {
            handle(site, stream).await;
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site() -> Site {
        Site {
            telemetry_path: "/metrics".into(),
            render: Box::new(|| b"x 1\n".to_vec()),
            home: Box::new(|| b"<html>home</html>".to_vec()),
        }
    }

    #[test]
    fn routes() {
        let s = site();
        let (r, head) = respond(&s, b"GET /metrics HTTP/1.1\r\nHost: x");
        assert_eq!((r.status, head), (200, false));
        assert_eq!(r.body, b"x 1\n");
        assert!(r.content_type.contains("version=0.0.4"));
        let (r, _) = respond(&s, b"GET /metrics?x=1 HTTP/1.0");
        assert_eq!(r.status, 200);
        let (r, _) = respond(&s, b"GET / HTTP/1.1");
        assert_eq!(r.status, 200);
        assert_eq!(r.body, b"<html>home</html>");
        assert!(r.content_type.starts_with("text/html"));
        let (r, head) = respond(&s, b"HEAD /metrics HTTP/1.1");
        assert_eq!((r.status, head), (200, true));
        assert_eq!(respond(&s, b"GET /nope HTTP/1.1").0.status, 404);
        assert_eq!(respond(&s, b"POST /metrics HTTP/1.1").0.status, 405);
        assert_eq!(respond(&s, b"garbage").0.status, 400);
        assert_eq!(respond(&s, b"GET / SPDY/3").0.status, 400);
        assert_eq!(respond(&s, &[0xff, 0xfe]).0.status, 400);
    }

    #[test]
    fn encoding_has_length_and_close() {
        let r = text(404, "nope\n");
        let bytes = String::from_utf8(encode(&r, false)).unwrap();
        assert!(bytes.starts_with("HTTP/1.1 404 Not Found\r\n"));
        assert!(bytes.contains("Content-Length: 5\r\n"));
        assert!(bytes.contains("Connection: close\r\n"));
        assert!(bytes.ends_with("\r\n\r\nnope\n"));
        let head = String::from_utf8(encode(&r, true)).unwrap();
        assert!(head.ends_with("\r\n\r\n"));
    }
}
