//! The live feed of registrations (server-sent events) for the field view.
//!
//! A feed wakes when this process stores a registration (in-process broadcast) and at least
//! every two seconds, then reads what is new in the caller's scope from the database. Reading
//! from the database, not from the broadcast, is what makes registrations taken by another
//! `epigrid serve` process on the same PostgreSQL appear too — no LISTEN/NOTIFY needed.

use std::collections::{HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use epigrid_core::area::Scope;
use epigrid_core::model::{Registration, RegistrationFilter};
use futures_util::Stream;
use tokio::sync::broadcast;
use uuid::Uuid;

use crate::auth::Staff;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::view::{registration_json, row_view};

const POLL: Duration = Duration::from_secs(2);
/// Minimum time between two reads, so a burst of registrations costs one query.
const DEBOUNCE: Duration = Duration::from_millis(250);

/// How far below the highest sequence number seen a feed on PostgreSQL reads again, for
/// registrations that committed late: a batch takes its numbers when it inserts and may
/// commit after another process's later batch (waiting on the same rollup row), so the
/// window is four of PostgreSQL's largest batches (`MAX_BATCH`, 256), not fewer.
pub const PG_LOOKBACK: i64 = 1024;
/// New registrations read at most per poll, besides the look-back window.
const READ: u32 = 500;
/// Ids remembered as sent (more than a window and a read: nothing in it is sent twice).
const SEEN_MAX: usize = 4000;

struct Feed {
    st: AppState,
    lang: epigrid_core::Lang,
    /// The session the feed was opened with: checked at every read, so a feed ends with
    /// its session (logout, expiry, a deactivated account).
    session: Vec<u8>,
    scope: Scope,
    site: Option<Uuid>,
    hwm: i64,
    lookback: i64,
    seen: HashSet<Uuid>,
    order: VecDeque<Uuid>,
    pending: VecDeque<Registration>,
    /// The last read was full: more is waiting, read again without waiting for news (a
    /// burst through another server sharing a PostgreSQL database wakes nobody here).
    behind: bool,
    rx: broadcast::Receiver<i64>,
    _guard: ClientGuard,
}

struct ClientGuard(AppState);
impl Drop for ClientGuard {
    fn drop(&mut self) {
        self.0.metrics.live_clients.fetch_sub(1, Relaxed);
    }
}

impl Feed {
    fn remember(&mut self, id: Uuid) -> bool {
        if !self.seen.insert(id) {
            return false;
        }
        self.order.push_back(id);
        if self.order.len() > SEEN_MAX {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        true
    }

    /// Waits for something new and reads it; false when the feed's session has ended.
    async fn poll(&mut self) -> bool {
        if !self.behind {
            tokio::select! {
                r = self.rx.recv() => { if let Err(broadcast::error::RecvError::Closed) = r { tokio::time::sleep(POLL).await; } }
                _ = tokio::time::sleep(POLL) => {}
            }
            tokio::time::sleep(DEBOUNCE).await;
        }
        while self.rx.try_recv().is_ok() {}
        match self.st.session(&self.session).await {
            Ok(Some(_)) => {}
            Ok(None) => return false,
            Err(e) => {
                tracing::warn!(error = %e, "live feed session check failed");
                // wait before the next try, even while catching up: not a loop that spins
                // while the database is down
                self.behind = false;
                return true;
            }
        }
        let read = READ + self.lookback as u32;
        let f = RegistrationFilter {
            site_id: self.site,
            after_seq: Some((self.hwm - self.lookback).max(0)),
            limit: read,
            ..Default::default()
        };
        let before = self.hwm;
        let mut full = false;
        match self.st.store.registrations(&self.scope, &f).await {
            Ok(rows) => {
                full = rows.len() >= read as usize;
                for r in rows {
                    self.hwm = self.hwm.max(r.seq);
                    if self.remember(r.id) {
                        self.pending.push_back(r);
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "live feed read failed"),
        }
        // a full read that moved on means more is waiting (one that did not, only the
        // look-back window again, means nothing is)
        self.behind = full && self.hwm > before;
        true
    }
}

/// `GET /api/v1/feed?site=ID`: `registration` events (masked JSON), newest last, each with
/// its sequence number as the event id. A client that reconnects with `Last-Event-ID` (as a
/// browser's `EventSource` does by itself) gets what came after that event, not the latest
/// twenty again.
pub async fn sse(
    State(st): State<AppState>,
    staff: Staff,
    headers: HeaderMap,
    axum::Extension(lang): axum::Extension<epigrid_core::Lang>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    staff.require(staff.role().sees_personal_data())?;
    let site = match q.get("site").map(|s| s.trim()).filter(|s| !s.is_empty()) {
        Some(s) => Some(Uuid::parse_str(s).map_err(|_| ApiError::field("site", "err.id.format"))?),
        None => None,
    };
    // a site outside the caller's area, or none at all, is not an empty feed but no feed
    if let Some(id) = site {
        st.store
            .site(id, &staff.scope())
            .await?
            .ok_or(ApiError::NotFound)?;
    }
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<i64>().ok())
        .filter(|n| *n >= 0);
    let scope = staff.scope();
    // PostgreSQL may commit sequence numbers out of order: look back that far for late ones
    let lookback = if st.store.backend() == "postgres" {
        PG_LOOKBACK
    } else {
        0
    };
    let filter = |after_seq: Option<i64>, limit: u32| RegistrationFilter {
        site_id: site,
        after_seq,
        limit,
        ..Default::default()
    };
    // A last event ahead of everything stored here (a database restored or rebuilt since):
    // the client is sent what a new feed gets, not kept waiting for numbers long past.
    let resume = match resume {
        Some(last) => {
            let newest = st.store.registrations(&scope, &filter(None, 1)).await?;
            newest.first().filter(|r| r.seq >= last).map(|_| last)
        }
        None => None,
    };
    // What to send first (oldest first), and up to which sequence number the client has
    // everything: what it had before it reconnected, or the latest twenty sent now.
    let (mut send, known_upto): (Vec<Registration>, Option<i64>) = match resume {
        Some(last) => (Vec::new(), Some(last)),
        None => {
            let mut r = st.store.registrations(&scope, &filter(None, 20)).await?;
            r.reverse();
            let top = r.last().map(|r| r.seq);
            (r, top)
        }
    };
    // The look-back window below that number is read again by every poll (PostgreSQL). For
    // a new feed it is older than what was just sent: known, not news. For a feed resumed
    // after an event, a registration in it may have committed late, after the client left:
    // the window is sent again, and the client drops what it has (events carry their
    // sequence number; the field view drops repeats by id).
    let mut known = Vec::new();
    if let Some(upto) = known_upto.filter(|_| resume.is_some() || lookback > 0) {
        for r in st
            .store
            .registrations(
                &scope,
                &filter(Some((upto - lookback).max(0)), READ + lookback as u32),
            )
            .await?
        {
            if resume.is_some() {
                send.push(r);
            } else if r.seq <= upto {
                known.push(r.id);
            }
        }
    }
    st.metrics.live_clients.fetch_add(1, Relaxed);
    let mut feed = Feed {
        rx: st.live.subscribe(),
        lookback,
        hwm: send
            .iter()
            .map(|r| r.seq)
            .chain(known_upto)
            .max()
            .unwrap_or(0),
        _guard: ClientGuard(st.clone()),
        session: staff.token_hash.clone(),
        lang,
        st,
        scope,
        site,
        seen: HashSet::new(),
        order: VecDeque::new(),
        pending: VecDeque::new(),
        behind: false,
    };
    for r in send {
        if feed.remember(r.id) {
            feed.pending.push_back(r);
        }
    }
    for id in known {
        feed.remember(id);
    }
    let stream = futures_util::stream::unfold(feed, |mut feed| async move {
        loop {
            if let Some(r) = feed.pending.pop_front() {
                // the masked registration, and the line the field view shows for it (in the
                // caller's language), so the page need not rebuild it
                let mut v =
                    serde_json::to_value(registration_json(&r, feed.st.cfg.tz)).unwrap_or_default();
                let row = row_view(&r, feed.st.cfg.tz, feed.lang);
                v["row"] = serde_json::json!({
                    "temperature": row.temperature,
                    "summary": row.summary,
                    "symptoms": row.symptoms,
                    "attention": row.attention,
                });
                let data = v.to_string();
                let ev = Event::default()
                    .event("registration")
                    .id(r.seq.to_string())
                    .data(data);
                return Some((Ok(ev), feed));
            }
            if !feed.poll().await {
                return None;
            }
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
