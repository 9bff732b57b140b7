//! The one HTTP/1.1 client every server is measured with. A ratio is only fair when ocicache and its
//! peer are read by the same client, and the client must cost little next to the server on a
//! 2-core machine: so it is a few lines over a tokio `TcpStream` (keep-alive, `TCP_NODELAY`, one
//! reused buffer per connection, bodies counted and dropped) rather than reqwest's or curl's stack.
//! Every response is checked for its status and length, so a broken server cannot look fast.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sha2::Digest as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Read buffer per connection: big enough that a blob body costs few syscalls.
const BUF: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error("{what}: status {got}, expected {want}")]
    Status { what: String, got: u16, want: u16 },
    #[error("{what}: {got} bytes, expected {want}")]
    Length { what: String, got: u64, want: u64 },
    #[error("{0}: malformed response ({1})")]
    Malformed(String, &'static str),
    #[error("{0}: no answer within {1:?}")]
    Timeout(String, Duration),
}

/// One URL on one of the servers.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub path: String,
}

impl Target {
    pub fn new(port: u16, path: impl Into<String>) -> Target {
        Target { addr: SocketAddr::from(([127, 0, 0, 1], port)), path: path.into() }
    }

    /// The request bytes, built once and sent as many times as needed.
    pub fn request(&self, method: &str, headers: &[(&str, &str)]) -> Vec<u8> {
        let mut r = format!("{method} {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: ocicache-bench\r\n", self.path, self.addr);
        for (k, v) in headers {
            r.push_str(&format!("{k}: {v}\r\n"));
        }
        r.push_str("\r\n");
        r.into_bytes()
    }

    fn what(&self, method: &str) -> String {
        format!("{method} http://{}{}", self.addr, self.path)
    }
}

/// The parts of a response the measurements look at.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    /// The Content-Length header (for a HEAD: the length a GET would have).
    pub content_length: Option<u64>,
    pub content_type: Option<String>,
    /// Body bytes actually received.
    pub body_len: u64,
}

/// Which framing the body of a response has.
enum Framing {
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

/// One keep-alive connection with its read buffer (`buf[pos..len]` is read but not yet consumed).
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    pos: usize,
    len: usize,
    what: String,
}

impl Conn {
    pub async fn open(target: &Target, method: &str) -> Result<Conn, ClientError> {
        let what = target.what(method);
        let stream = TcpStream::connect(target.addr).await.map_err(|e| ClientError::Io(what.clone(), e))?;
        stream.set_nodelay(true).map_err(|e| ClientError::Io(what.clone(), e))?;
        Ok(Conn { stream, buf: vec![0; BUF], pos: 0, len: 0, what })
    }

    /// Sends `request` and reads its whole response, handing every body byte to `body`.
    pub async fn exchange(
        &mut self,
        request: &[u8],
        head_only: bool,
        body: &mut (dyn FnMut(&[u8]) + Send),
    ) -> Result<Answer, ClientError> {
        self.stream.write_all(request).await.map_err(|e| ClientError::Io(self.what.clone(), e))?;
        let (mut answer, framing) = self.read_head(head_only).await?;
        answer.body_len = match framing {
            Framing::None => 0,
            Framing::Length(n) => {
                self.consume(n, body).await?;
                n
            }
            Framing::Chunked => self.chunked(body).await?,
            Framing::UntilClose => self.until_close(body).await?,
        };
        Ok(answer)
    }

    /// Reads more bytes after `buf[..len]`, moving unconsumed bytes to the front first.
    async fn fill(&mut self) -> Result<usize, ClientError> {
        if self.pos == self.len {
            self.pos = 0;
            self.len = 0;
        } else if self.len == self.buf.len() {
            self.buf.copy_within(self.pos..self.len, 0);
            self.len -= self.pos;
            self.pos = 0;
        }
        if self.len == self.buf.len() {
            return Err(ClientError::Malformed(self.what.clone(), "header line longer than the read buffer"));
        }
        let n = self.stream.read(&mut self.buf[self.len..]).await.map_err(|e| ClientError::Io(self.what.clone(), e))?;
        self.len += n;
        Ok(n)
    }

    async fn read_head(&mut self, head_only: bool) -> Result<(Answer, Framing), ClientError> {
        let end = loop {
            if let Some(i) = find(&self.buf[self.pos..self.len], b"\r\n\r\n") {
                break self.pos + i;
            }
            if self.fill().await? == 0 {
                return Err(ClientError::Malformed(self.what.clone(), "connection closed before the response head"));
            }
        };
        let head = std::str::from_utf8(&self.buf[self.pos..end])
            .map_err(|_| ClientError::Malformed(self.what.clone(), "response head is not UTF-8"))?;
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| ClientError::Malformed(self.what.clone(), "bad status line"))?;
        let mut answer = Answer { status, content_length: None, content_type: None, body_len: 0 };
        let mut chunked = false;
        for line in lines {
            let Some((name, value)) = line.split_once(':') else { continue };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                answer.content_length = value.parse().ok();
            } else if name.eq_ignore_ascii_case("content-type") {
                answer.content_type = Some(value.to_owned());
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.eq_ignore_ascii_case("chunked");
            }
        }
        self.pos = end + 4;
        let framing = if head_only || status == 204 || status == 304 || (100..200).contains(&status) {
            Framing::None
        } else if chunked {
            Framing::Chunked
        } else if let Some(n) = answer.content_length {
            Framing::Length(n)
        } else {
            Framing::UntilClose
        };
        Ok((answer, framing))
    }

    /// Hands the next `n` body bytes to `body`.
    async fn consume(&mut self, mut n: u64, body: &mut (dyn FnMut(&[u8]) + Send)) -> Result<(), ClientError> {
        while n > 0 {
            if self.pos == self.len && self.fill().await? == 0 {
                return Err(ClientError::Malformed(self.what.clone(), "connection closed mid-body"));
            }
            let take = (self.len - self.pos).min(usize::try_from(n).unwrap_or(usize::MAX));
            body(&self.buf[self.pos..self.pos + take]);
            self.pos += take;
            n -= take as u64;
        }
        Ok(())
    }

    async fn line(&mut self) -> Result<String, ClientError> {
        loop {
            if let Some(i) = find(&self.buf[self.pos..self.len], b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[self.pos..self.pos + i]).into_owned();
                self.pos += i + 2;
                return Ok(line);
            }
            if self.fill().await? == 0 {
                return Err(ClientError::Malformed(self.what.clone(), "connection closed in a chunk header"));
            }
        }
    }

    async fn chunked(&mut self, body: &mut (dyn FnMut(&[u8]) + Send)) -> Result<u64, ClientError> {
        let mut total = 0;
        loop {
            let line = self.line().await?;
            let size = u64::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| ClientError::Malformed(self.what.clone(), "bad chunk size"))?;
            if size == 0 {
                while !self.line().await?.is_empty() {}
                return Ok(total);
            }
            self.consume(size, body).await?;
            total += size;
            if !self.line().await?.is_empty() {
                return Err(ClientError::Malformed(self.what.clone(), "chunk not followed by CRLF"));
            }
        }
    }

    async fn until_close(&mut self, body: &mut (dyn FnMut(&[u8]) + Send)) -> Result<u64, ClientError> {
        let mut total = 0;
        loop {
            body(&self.buf[self.pos..self.len]);
            total += (self.len - self.pos) as u64;
            self.pos = self.len;
            if self.fill().await? == 0 {
                return Ok(total);
            }
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn check(what: &str, a: &Answer, status: u16, len: u64) -> Result<(), ClientError> {
    if a.status != status {
        return Err(ClientError::Status { what: what.to_owned(), got: a.status, want: status });
    }
    if a.body_len != len {
        return Err(ClientError::Length { what: what.to_owned(), got: a.body_len, want: len });
    }
    Ok(())
}

async fn bounded<T>(
    what: String,
    limit: Duration,
    f: impl std::future::Future<Output = Result<T, ClientError>>,
) -> Result<T, ClientError> {
    tokio::time::timeout(limit, f).await.map_err(|_| ClientError::Timeout(what, limit))?
}

/// `clients` connections opened at once, each GETting `target` `times` times in a row (keep-alive);
/// every answer must be `200` with `size` bytes. Returns the wall time until the last one finished.
pub async fn downloads(target: &Target, clients: usize, times: usize, size: u64) -> Result<Duration, ClientError> {
    let request = std::sync::Arc::new(target.request("GET", &[]));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let (target, request) = (target.clone(), request.clone());
        tasks.spawn(async move {
            let what = target.what("GET");
            bounded(what.clone(), Duration::from_secs(600), async {
                let mut conn = Conn::open(&target, "GET").await?;
                for _ in 0..times {
                    let a = conn.exchange(&request, false, &mut |_| {}).await?;
                    check(&what, &a, 200, size)?;
                }
                Ok(())
            })
            .await
        });
    }
    let mut first_error = None;
    while let Some(r) = tasks.join_next().await {
        let r = r.unwrap_or_else(|e| panic!("download task: {e}"));
        if let (Err(e), None) = (r, &first_error) {
            first_error = Some(e);
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(started.elapsed()),
    }
}

/// One GET of `target`, hashed: the `sha256:<hex>` of the body, which must be `size` bytes.
pub async fn digest_of(target: &Target, size: u64) -> Result<String, ClientError> {
    let what = target.what("GET");
    bounded(what.clone(), Duration::from_secs(600), async {
        let mut conn = Conn::open(target, "GET").await?;
        let mut hasher = sha2::Sha256::new();
        let a = conn.exchange(&target.request("GET", &[]), false, &mut |b| hasher.update(b)).await?;
        check(&what, &a, 200, size)?;
        Ok(format!("sha256:{}", hex::encode(hasher.finalize())))
    })
    .await
}

/// One request, the body kept: for the checks of small answers (manifests) and the Range figure.
pub async fn fetch(target: &Target, method: &str, headers: &[(&str, &str)]) -> Result<(Answer, Vec<u8>), ClientError> {
    let what = target.what(method);
    bounded(what, Duration::from_secs(600), async {
        let mut conn = Conn::open(target, method).await?;
        let mut body = Vec::new();
        let a = conn
            .exchange(&target.request(method, headers), method == "HEAD", &mut |b| body.extend_from_slice(b))
            .await?;
        Ok((a, body))
    })
    .await
}

/// Requests per second: `connections` keep-alive connections each sending `method` to `target` one
/// request after the other for `duration`. Every answer must be `200` with a Content-Length of
/// `size` (and, for a GET, that many body bytes).
pub async fn rate(
    target: &Target,
    method: &'static str,
    headers: &[(&str, &str)],
    connections: usize,
    duration: Duration,
    size: u64,
) -> Result<f64, ClientError> {
    let request = std::sync::Arc::new(target.request(method, headers));
    let head_only = method == "HEAD";
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..connections {
        let (target, request) = (target.clone(), request.clone());
        tasks.spawn(async move {
            let what = target.what(method);
            bounded(what.clone(), duration + Duration::from_secs(60), async {
                let mut conn = Conn::open(&target, method).await?;
                let mut done = 0u64;
                while Instant::now() < deadline {
                    let a = conn.exchange(&request, head_only, &mut |_| {}).await?;
                    check(&what, &a, 200, if head_only { 0 } else { size })?;
                    if a.content_length != Some(size) {
                        return Err(ClientError::Length { what, got: a.content_length.unwrap_or(0), want: size });
                    }
                    done += 1;
                }
                Ok(done)
            })
            .await
        });
    }
    let mut total = 0;
    let mut first_error = None;
    while let Some(r) = tasks.join_next().await {
        match r.unwrap_or_else(|e| panic!("rate task: {e}")) {
            Ok(n) => total += n,
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(total as f64 / started.elapsed().as_secs_f64()),
    }
}
