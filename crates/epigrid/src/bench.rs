//! `epigrid bench http`: sustained registrations/s through HTTP against the same server's
//! requests/s on a trivial endpoint (`/healthz`), measured in one run on one machine.
//!
//! The server is the real one (router, store, group commit) on a loopback port; the load comes
//! from keep-alive HTTP/1.1 connections in this process (like `wrk -c N`), each sending its next
//! request as soon as the previous response has been read in full.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Counts of one load run.
#[derive(Debug, Clone, Copy)]
pub struct Rate {
    pub ok: u64,
    pub failed: u64,
    pub per_second: f64,
}

/// Reads one HTTP/1.1 response (headers + Content-Length body) from `stream`; returns the
/// status code. `buf` keeps bytes read past the response for the next one.
async fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<u16> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..end]).map_err(|_| anyhow!("non-UTF-8 header"))?;
            let status: u16 = head
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| anyhow!("no status line"))?;
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            let total = end + 4 + len;
            while buf.len() < total {
                let mut chunk = [0u8; 16 * 1024];
                let n = stream.read(&mut chunk).await?;
                if n == 0 {
                    return Err(anyhow!("connection closed"));
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            buf.drain(..total);
            return Ok(status);
        }
        let mut chunk = [0u8; 16 * 1024];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(anyhow!("connection closed"));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Sends `request` over `connections` keep-alive connections for `seconds`; 2xx count as ok.
pub async fn load(addr: &str, request: Vec<u8>, connections: usize, seconds: u64) -> Result<Rate> {
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let request = Arc::new(request);
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let mut stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connect {addr}"))?;
        stream.set_nodelay(true)?;
        let (ok, failed, stop, request) =
            (ok.clone(), failed.clone(), stop.clone(), request.clone());
        tasks.push(tokio::spawn(async move {
            let mut buf = Vec::with_capacity(32 * 1024);
            while !stop.load(Ordering::Relaxed) {
                if stream.write_all(&request).await.is_err() {
                    break;
                }
                match read_response(&mut stream, &mut buf).await {
                    Ok(s) if (200..300).contains(&s) => ok.fetch_add(1, Ordering::Relaxed),
                    Ok(_) => failed.fetch_add(1, Ordering::Relaxed),
                    Err(_) => break,
                };
            }
        }));
    }
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = start.elapsed().as_secs_f64();
    for t in tasks {
        let _ = t.await;
    }
    let ok = ok.load(Ordering::Relaxed);
    Ok(Rate {
        ok,
        failed: failed.load(Ordering::Relaxed),
        per_second: ok as f64 / elapsed,
    })
}

/// A raw HTTP/1.1 request.
pub fn request(method: &str, host: &str, path: &str, json_body: Option<&str>) -> Vec<u8> {
    let mut r = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n");
    match json_body {
        Some(b) => {
            r.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}",
                b.len()
            ));
        }
        None => r.push_str("\r\n"),
    }
    r.into_bytes()
}

/// Latency percentiles of a set of measurements, in milliseconds.
pub fn percentiles(mut ms: Vec<f64>) -> (f64, f64, f64) {
    if ms.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    ms.sort_by(|a, b| a.total_cmp(b));
    let at = |p: f64| ms[((ms.len() as f64 - 1.0) * p).round() as usize];
    (at(0.5), at(0.95), at(1.0))
}
