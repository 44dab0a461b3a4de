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
    // count only what completes inside the timed window (connections start sending as soon
    // as they are open, and finish their last request after the window)
    let start = Instant::now();
    let ok_before = ok.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let ok_in_window = ok.load(Ordering::Relaxed) - ok_before;
    let elapsed = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    Ok(Rate {
        ok: ok.load(Ordering::Relaxed),
        failed: failed.load(Ordering::Relaxed),
        per_second: ok_in_window as f64 / elapsed,
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

/// The median (the mean of the middle two for an even count), lowest and highest of a set of
/// measurements.
pub fn median_range(mut xs: Vec<f64>) -> (f64, f64, f64) {
    if xs.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    xs.sort_by(f64::total_cmp);
    let mid = xs.len() / 2;
    let median = if xs.len().is_multiple_of(2) {
        (xs[mid - 1] + xs[mid]) / 2.0
    } else {
        xs[mid]
    };
    (median, xs[0], xs[xs.len() - 1])
}

/// Uniform random visits for the tracing benchmark: `n` visits of `people` people at `sites`
/// sites over `days` days, 10–60 minutes each. Deterministic for a seed.
pub fn random_visits(
    n: usize,
    people: u32,
    sites: u32,
    days: u32,
    seed: u64,
) -> Vec<epigrid_core::trace::Visit> {
    let mut rng = epigrid_core::rng::Rng::new(seed);
    let span = i64::from(days) * 86_400;
    (0..n)
        .map(|i| {
            let start = rng.range(0, span - 1);
            let dur = rng.range(600, 3600);
            epigrid_core::trace::Visit {
                person: rng.below(u64::from(people)) as u32,
                site: rng.below(u64::from(sites)) as u32,
                start,
                end: start + dur,
                record: i as u32,
                plate: None,
            }
        })
        .collect()
}

/// Loads the same visits into PostgreSQL (table `bench_visits`, indexed as a straightforward
/// implementation would be: by person and by site + start).
pub async fn load_pg(
    url: &str,
    visits: &[epigrid_core::trace::Visit],
) -> Result<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    client
        .batch_execute(
            "DROP TABLE IF EXISTS bench_visits; \
             CREATE UNLOGGED TABLE bench_visits (person INT NOT NULL, site INT NOT NULL, s BIGINT NOT NULL, e BIGINT NOT NULL)",
        )
        .await?;
    let stmt = client
        .prepare("INSERT INTO bench_visits SELECT * FROM unnest($1::int[], $2::int[], $3::bigint[], $4::bigint[])")
        .await?;
    for chunk in visits.chunks(200_000) {
        let p: Vec<i32> = chunk.iter().map(|v| v.person as i32).collect();
        let s: Vec<i32> = chunk.iter().map(|v| v.site as i32).collect();
        let a: Vec<i64> = chunk.iter().map(|v| v.start).collect();
        let b: Vec<i64> = chunk.iter().map(|v| v.end).collect();
        client.execute(&stmt, &[&p, &s, &a, &b]).await?;
    }
    client
        .batch_execute("CREATE INDEX ON bench_visits (person)")
        .await?;
    client
        .batch_execute("CREATE INDEX ON bench_visits (site, s)")
        .await?;
    // a table as it is in steady state (visibility map set, statistics current)
    client.batch_execute("VACUUM ANALYZE bench_visits").await?;
    client
        .batch_execute("SET plan_cache_mode = force_custom_plan")
        .await?;
    Ok(client)
}

/// First-degree contacts of one person by SQL: a self-join on site and overlapping time,
/// bounded by the longest visit (an hour) so that the (site, start) index range is short.
pub const SQL_FIRST: &str =
    "SELECT b.person, SUM(LEAST(a.e, b.e) - GREATEST(a.s, b.s)) FROM bench_visits a \
    JOIN bench_visits b ON b.site = a.site AND b.s < a.e AND b.s > a.s - 3600 AND b.e > a.s \
    AND b.person <> a.person WHERE a.person = $1 GROUP BY b.person";

/// First and second degree for many index people at once, by SQL.
pub const SQL_SECOND: &str = "WITH idx AS (SELECT unnest($1::int[]) AS p), \
    first AS (SELECT DISTINCT idx.p AS i, b.person AS c FROM idx JOIN bench_visits a ON a.person = idx.p \
      JOIN bench_visits b ON b.site = a.site AND b.s < a.e AND b.s > a.s - 3600 AND b.e > a.s AND b.person <> a.person), \
    second AS (SELECT DISTINCT f.i, d.person AS c FROM first f JOIN bench_visits c2 ON c2.person = f.c \
      JOIN bench_visits d ON d.site = c2.site AND d.s < c2.e AND d.s > c2.s - 3600 AND d.e > c2.s AND d.person <> c2.person) \
    SELECT (SELECT COUNT(*) FROM first), (SELECT COUNT(*) FROM second)";

/// Synthetic people and a list to match against them (`epigrid bench match`).
pub struct MatchData {
    pub people: Vec<epigrid_core::matching::KnownPerson>,
    pub plates: Vec<(String, uuid::Uuid)>,
    /// The list as an agency would send it: a CSV with a header.
    pub csv: String,
}

/// `people` people with valid ID numbers, names, phones (and a plate for one in ten); a list
/// of `rows` rows: 60 % known people (ID, name, phone), 20 % unknown ID numbers, 10 % phone
/// only, 5 % name + birth date, 4 % plate, 1 % malformed ID numbers.
pub fn match_data(vault: &epigrid_core::vault::Vault, people: u32, rows: usize) -> MatchData {
    use epigrid_core::matching::KnownPerson;
    use epigrid_core::rng::{chinese_name, Rng};
    use epigrid_core::validate::IdNumber;
    use std::fmt::Write;
    let regions = [
        "150802", "150821", "150822", "150823", "150824", "150825", "150826",
    ];
    let mut rng = Rng::new(7);
    let id_number = |rng: &mut Rng| -> (String, chrono::NaiveDate) {
        let birth = chrono::NaiveDate::from_ymd_opt(1940, 1, 1).unwrap_or_default()
            + chrono::Duration::days(rng.below(25_000) as i64);
        let body = format!(
            "{}{}{:03}",
            rng.pick(&regions),
            birth.format("%Y%m%d"),
            rng.below(1000)
        );
        let check = IdNumber::check_char_for(&body).unwrap_or('0');
        (format!("{body}{check}"), birth)
    };
    struct Gen {
        id: String,
        name: String,
        phone: String,
        birth: chrono::NaiveDate,
        plate: Option<String>,
    }
    let mut gen = Vec::with_capacity(people as usize);
    let mut known = Vec::with_capacity(people as usize);
    let mut plates = Vec::new();
    for _ in 0..people {
        let (id, birth) = id_number(&mut rng);
        let name = chinese_name(&mut rng);
        let phone = format!("13{:09}", rng.below(1_000_000_000));
        let plate = rng
            .chance(0.1)
            .then(|| format!("蒙L{:05}", rng.below(100_000)));
        let doc = epigrid_core::validate::Document::parse(
            "id_number",
            epigrid_core::validate::DocType::CnId,
            &id,
        );
        let Ok(doc) = doc else { continue };
        let pid = epigrid_core::register::document_person_id(vault, &doc);
        known.push(KnownPerson {
            id: pid,
            merged_into: None,
            name: name.clone(),
            birth_index: Some(epigrid_core::matching::birth_index(vault, birth)),
            phone_index: Some(vault.blind_index("phone", &phone)),
        });
        if let Some(p) = &plate {
            plates.push((p.clone(), pid));
        }
        gen.push(Gen {
            id,
            name,
            phone,
            birth,
            plate,
        });
    }
    let mut csv = String::with_capacity(rows * 48);
    csv.push_str("姓名,身份证号,手机号,车牌号,出生日期\n");
    for _ in 0..rows {
        let roll = rng.below(100);
        let g = &gen[rng.below(gen.len() as u64) as usize];
        let _ = match roll {
            0..60 => writeln!(csv, "{},{},{},,", g.name, g.id, g.phone),
            60..80 => {
                let (id, _) = id_number(&mut rng);
                writeln!(csv, "{},{id},,,", chinese_name(&mut rng))
            }
            80..90 => writeln!(csv, "{},,{},,", g.name, g.phone),
            90..95 => writeln!(csv, "{},,,,{}", g.name, g.birth),
            95..99 => match &g.plate {
                Some(p) => writeln!(csv, "{},,,{p},", g.name),
                None => writeln!(csv, ",,,蒙L{:05},", rng.below(100_000)),
            },
            _ => writeln!(csv, "{},{}0,,,", g.name, &g.id[..16]),
        };
    }
    MatchData {
        people: known,
        plates,
        csv,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn median_range_takes_the_middle_two_of_an_even_count() {
        assert_eq!(super::median_range(vec![0.4, 0.2, 0.3]), (0.3, 0.2, 0.4));
        assert_eq!(
            super::median_range(vec![0.4, 0.1, 0.2, 0.3]),
            (0.25, 0.1, 0.4)
        );
        assert_eq!(super::median_range(Vec::new()), (0.0, 0.0, 0.0));
    }
}
