//! The contact-tracing engine: given an index person and an infectious window, find everyone
//! whose records put them near the index person, with the evidence, total exposure and a score.
//!
//! It works on an in-memory copy of the records ([`Records`]), independent of any store:
//! visits are grouped by site and sorted by start, so the candidates for one visit are found by
//! binary search instead of a self-join. Sources of contact:
//! * **co-location** — presence at the same site overlapping in time (with a per-kind
//!   tolerance; a visit without a registered exit lasts the site's default stay);
//! * **vehicle** — the same plate at a checkpoint within a few minutes;
//! * **companion** — registered together as travel companions;
//! * **household** — the same residence unit;
//! * **proximity** — imported contact-token or study records.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// Dense person number inside the engine.
pub type Pid = u32;

/// A hasher for keys nobody outside chooses: one multiply instead of SipHash. Used for the
/// engine's dense numbers and for HMAC outputs under the server's key (person ids, blind
/// indexes), which are uniformly random to anyone without the key.
#[derive(Default, Clone, Copy)]
pub struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(5) ^ u64::from(*b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.0 = (self.0 ^ u64::from(n)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
    fn write_u128(&mut self, n: u128) {
        self.write_u64((n as u64) ^ ((n >> 64) as u64));
    }
}

pub(crate) type FastMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<IdHasher>>;

/// One presence of a person at a site: `[start, end)` in Unix seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Visit {
    pub person: Pid,
    pub site: u32,
    pub start: i64,
    pub end: i64,
    /// Index of the registration this visit came from (evidence).
    pub record: u32,
    /// Plate number id at a checkpoint, if any.
    pub plate: Option<u32>,
}

/// A proximity record: two people near each other from `at` for `duration_s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proximity {
    pub a: Pid,
    pub b: Pid,
    pub at: i64,
    pub duration_s: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContactKind {
    CoLocation,
    Vehicle,
    Companion,
    Household,
    Proximity,
}

impl ContactKind {
    /// How much one second of this kind of exposure weighs in the score.
    pub fn weight(self) -> f64 {
        match self {
            ContactKind::Household => 3.0,
            ContactKind::Companion | ContactKind::Vehicle => 2.0,
            ContactKind::Proximity => 1.5,
            ContactKind::CoLocation => 1.0,
        }
    }
}

/// Why two people are contacts: one piece of evidence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evidence {
    pub kind: ContactKind,
    /// Records (registrations) of the index person and of the contact, where there are any.
    pub index_record: Option<u32>,
    pub contact_record: Option<u32>,
    pub from: i64,
    pub to: i64,
    pub exposure_s: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Contact {
    pub person: Pid,
    pub degree: u8,
    /// For second-degree contacts: the first-degree contact they were found through.
    pub via: Option<Pid>,
    pub kinds: Vec<ContactKind>,
    pub exposure_s: i64,
    pub score: f64,
    pub evidence: Vec<Evidence>,
}

/// Settings of a trace.
#[derive(Debug, Clone)]
pub struct TraceParams {
    pub from: i64,
    pub to: i64,
    pub degree: u8,
    /// Contacts with less total exposure are left out.
    pub min_exposure_s: i64,
    /// Presence this close in time still counts as overlap, per site (seconds).
    pub tolerance_s: i64,
    /// The same plate at a checkpoint within this many seconds is a shared vehicle.
    pub vehicle_window_s: i64,
    /// Exposure credited to a shared household for a whole window (seconds per day).
    pub household_s_per_day: i64,
}

impl Default for TraceParams {
    fn default() -> Self {
        TraceParams {
            from: i64::MIN,
            to: i64::MAX,
            degree: 1,
            min_exposure_s: 0,
            tolerance_s: 0,
            vehicle_window_s: 300,
            household_s_per_day: 8 * 3600,
        }
    }
}

/// The records a trace runs over, indexed for it.
#[derive(Debug, Default, Clone)]
pub struct Records {
    /// Visits grouped by site, each group sorted by start.
    by_site: FastMap<u32, Vec<Visit>>,
    /// Longest visit at each site (bounds the binary search).
    longest: FastMap<u32, i64>,
    by_person: FastMap<Pid, Vec<Visit>>,
    companions: FastMap<Pid, Vec<(Pid, u32, i64)>>,
    household: FastMap<u32, Vec<Pid>>,
    household_of: FastMap<Pid, u32>,
    proximity: FastMap<Pid, Vec<Proximity>>,
}

impl Records {
    pub fn new(visits: Vec<Visit>) -> Records {
        let mut r = Records::default();
        for v in visits {
            let e = r.longest.entry(v.site).or_insert(0);
            *e = (*e).max(v.end - v.start);
            r.by_person.entry(v.person).or_default().push(v);
            r.by_site.entry(v.site).or_default().push(v);
        }
        for list in r.by_site.values_mut() {
            list.sort_unstable_by_key(|v| (v.start, v.person));
        }
        r
    }

    /// Adds visits to an existing index (newer registrations): each touched site's list is
    /// re-sorted only if the new visits arrived out of order.
    pub fn append(&mut self, visits: Vec<Visit>) {
        let mut touched = std::collections::HashSet::new();
        for v in visits {
            let e = self.longest.entry(v.site).or_insert(0);
            *e = (*e).max(v.end - v.start);
            self.by_person.entry(v.person).or_default().push(v);
            let list = self.by_site.entry(v.site).or_default();
            if list
                .last()
                .is_some_and(|l| (l.start, l.person) > (v.start, v.person))
            {
                touched.insert(v.site);
            }
            list.push(v);
        }
        for site in touched {
            if let Some(list) = self.by_site.get_mut(&site) {
                list.sort_unstable_by_key(|v| (v.start, v.person));
            }
        }
    }

    /// People registered together (record id, time of the registration).
    pub fn add_companions(&mut self, a: Pid, b: Pid, record: u32, at: i64) {
        self.companions.entry(a).or_default().push((b, record, at));
        self.companions.entry(b).or_default().push((a, record, at));
    }

    /// A person's residence unit.
    pub fn set_household(&mut self, person: Pid, unit: u32) {
        self.household.entry(unit).or_default().push(person);
        self.household_of.insert(person, unit);
    }

    pub fn add_proximity(&mut self, p: Proximity) {
        self.proximity.entry(p.a).or_default().push(p);
        self.proximity.entry(p.b).or_default().push(Proximity {
            a: p.b,
            b: p.a,
            ..p
        });
    }

    pub fn visit_count(&self) -> usize {
        self.by_site.values().map(Vec::len).sum()
    }

    /// Direct contacts of one person in the window, unfiltered.
    fn direct(&self, index: Pid, p: &TraceParams) -> FastMap<Pid, Vec<Evidence>> {
        let mut found: FastMap<Pid, Vec<Evidence>> = FastMap::default();
        let tol = p.tolerance_s;
        for v in self.by_person.get(&index).into_iter().flatten() {
            // the part of the visit inside the window
            let (vs, ve) = (v.start.max(p.from), v.end.min(p.to));
            if vs >= ve {
                continue;
            }
            let Some(list) = self.by_site.get(&v.site) else {
                continue;
            };
            let longest = self.longest.get(&v.site).copied().unwrap_or(0);
            // any visit overlapping [vs - tol, ve + tol) starts after vs - tol - longest
            let lo = list.partition_point(|w| w.start < vs - tol - longest);
            for w in &list[lo..] {
                if w.start >= ve + tol {
                    break;
                }
                if w.person == index || w.end + tol <= vs {
                    continue;
                }
                let from = vs.max(w.start);
                let to = ve.min(w.end);
                let exposure = (to - from).max(0);
                found.entry(w.person).or_default().push(Evidence {
                    kind: ContactKind::CoLocation,
                    index_record: Some(v.record),
                    contact_record: Some(w.record),
                    from: from.min(to),
                    to,
                    exposure_s: exposure,
                });
                if let (Some(a), Some(b)) = (v.plate, w.plate) {
                    if a == b && (w.start - v.start).abs() <= p.vehicle_window_s {
                        found.entry(w.person).or_default().push(Evidence {
                            kind: ContactKind::Vehicle,
                            index_record: Some(v.record),
                            contact_record: Some(w.record),
                            from: v.start.min(w.start),
                            to: v.end.max(w.end),
                            exposure_s: (v.end - v.start).max(w.end - w.start),
                        });
                    }
                }
            }
        }
        for (other, record, at) in self.companions.get(&index).into_iter().flatten() {
            if *at >= p.from && *at < p.to && *other != index {
                found.entry(*other).or_default().push(Evidence {
                    kind: ContactKind::Companion,
                    index_record: Some(*record),
                    contact_record: Some(*record),
                    from: *at,
                    to: *at,
                    exposure_s: 3600,
                });
            }
        }
        if let Some(unit) = self.household_of.get(&index) {
            let days = ((p.to.min(i64::MAX / 2) - p.from.max(i64::MIN / 2)) / 86_400).clamp(1, 60);
            for other in self.household.get(unit).into_iter().flatten() {
                if *other != index {
                    found.entry(*other).or_default().push(Evidence {
                        kind: ContactKind::Household,
                        index_record: None,
                        contact_record: None,
                        from: p.from,
                        to: p.to,
                        exposure_s: days * p.household_s_per_day,
                    });
                }
            }
        }
        for x in self.proximity.get(&index).into_iter().flatten() {
            let (s, e) = (x.at.max(p.from), (x.at + x.duration_s).min(p.to));
            if s < e && x.b != index {
                found.entry(x.b).or_default().push(Evidence {
                    kind: ContactKind::Proximity,
                    index_record: None,
                    contact_record: None,
                    from: s,
                    to: e,
                    exposure_s: e - s,
                });
            }
        }
        found
    }

    fn contact(person: Pid, degree: u8, via: Option<Pid>, mut evidence: Vec<Evidence>) -> Contact {
        evidence.sort_by_key(|e| (e.from, e.kind));
        let mut kinds: Vec<ContactKind> = evidence.iter().map(|e| e.kind).collect();
        kinds.sort_unstable();
        kinds.dedup();
        // co-location exposure is the sum over visits; other kinds add their own
        let exposure_s = evidence
            .iter()
            .filter(|e| e.kind != ContactKind::Vehicle)
            .map(|e| e.exposure_s)
            .sum();
        let score = evidence
            .iter()
            .map(|e| e.kind.weight() * (e.exposure_s.max(1) as f64 / 60.0))
            .sum::<f64>()
            .ln_1p();
        Contact {
            person,
            degree,
            via,
            kinds,
            exposure_s,
            score: (score * 1000.0).round() / 1000.0,
            evidence,
        }
    }

    /// Contacts of `index` in the window; second degree (contacts of contacts, through the
    /// first-degree contact with the most exposure) when `degree` is 2. Highest score first.
    pub fn trace(&self, index: Pid, p: &TraceParams) -> Vec<Contact> {
        let mut out: Vec<Contact> = self
            .direct(index, p)
            .into_iter()
            .map(|(person, ev)| Records::contact(person, 1, None, ev))
            .filter(|c| c.exposure_s >= p.min_exposure_s)
            .collect();
        if p.degree >= 2 {
            let first: FastMap<Pid, i64> = out.iter().map(|c| (c.person, c.exposure_s)).collect();
            let mut second: FastMap<Pid, Contact> = FastMap::default();
            for via in first.keys() {
                for (person, ev) in self.direct(*via, p) {
                    if person == index || first.contains_key(&person) {
                        continue;
                    }
                    let c = Records::contact(person, 2, Some(*via), ev);
                    if c.exposure_s < p.min_exposure_s {
                        continue;
                    }
                    match second.get(&person) {
                        Some(old) if old.exposure_s >= c.exposure_s => {}
                        _ => {
                            second.insert(person, c);
                        }
                    }
                }
            }
            out.extend(second.into_values());
        }
        out.sort_by(|a, b| {
            a.degree
                .cmp(&b.degree)
                .then(b.score.total_cmp(&a.score))
                .then(a.person.cmp(&b.person))
        });
        out
    }
}

/// One registration as the tracing engine reads it from a store.
#[derive(Debug, Clone, PartialEq)]
pub struct VisitRow {
    /// The registration's sequence number (to fetch only what is newer next time).
    pub seq: i64,
    pub registration_id: uuid::Uuid,
    pub person_id: uuid::Uuid,
    pub site_id: uuid::Uuid,
    pub at: chrono::DateTime<chrono::Utc>,
    pub left_at: Option<chrono::DateTime<chrono::Utc>>,
    pub default_stay_min: i32,
    pub plate: Option<String>,
}

/// Everything a trace needs from a store.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TraceData {
    pub visits: Vec<VisitRow>,
    /// (registering person, companion person, registration id, time)
    pub companions: Vec<(
        uuid::Uuid,
        uuid::Uuid,
        uuid::Uuid,
        chrono::DateTime<chrono::Utc>,
    )>,
    /// (person, home unit code)
    pub households: Vec<(uuid::Uuid, String)>,
    pub proximity: Vec<ProximityPair>,
}

/// A stored proximity record as a trace reads it: (a, b, time, duration in seconds).
pub type ProximityPair = (uuid::Uuid, uuid::Uuid, chrono::DateTime<chrono::Utc>, i64);

/// An imported proximity record, ready to store.
#[derive(Debug, Clone, PartialEq)]
pub struct ProximityRow {
    pub id: uuid::Uuid,
    pub a: uuid::Uuid,
    pub b: uuid::Uuid,
    pub at: chrono::DateTime<chrono::Utc>,
    pub duration_s: i64,
    pub source: String,
}

/// [`Records`] built from store rows, with the maps between store ids and engine numbers.
pub struct Loaded {
    pub records: Records,
    pub person_ids: Vec<uuid::Uuid>,
    pub pid_of: HashMap<uuid::Uuid, Pid>,
    pub registration_ids: Vec<uuid::Uuid>,
    site_no: HashMap<uuid::Uuid, u32>,
    plate_no: HashMap<String, u32>,
    /// Highest registration sequence number loaded.
    pub max_seq: i64,
    /// Sequence numbers below `max_seq` not seen yet by [`Loaded::append_visits`], with when
    /// they were first missed. On PostgreSQL a transaction can commit after one that took a
    /// later number, so its registration shows up late; a number still missing after
    /// [`GAP_WAIT`] is taken as rolled back.
    gaps: std::collections::BTreeMap<i64, std::time::Instant>,
}

/// How long a missing sequence number is looked for again.
pub const GAP_WAIT: std::time::Duration = std::time::Duration::from_secs(60);
/// Jumps in sequence numbers larger than this are not tracked as gaps (another process's
/// burst, or a sequence's cache: the 10-minute reload covers those).
const MAX_GAP: i64 = 10_000;

impl Loaded {
    fn pid(&mut self, u: uuid::Uuid) -> Pid {
        if let Some(p) = self.pid_of.get(&u) {
            return *p;
        }
        self.person_ids.push(u);
        let p = (self.person_ids.len() - 1) as Pid;
        self.pid_of.insert(u, p);
        p
    }

    fn visits_of(&mut self, rows: &[VisitRow]) -> Vec<Visit> {
        let mut visits = Vec::with_capacity(rows.len());
        for v in rows {
            let n = self.site_no.len() as u32;
            let site = *self.site_no.entry(v.site_id).or_insert(n);
            let plate = v.plate.as_ref().map(|p| {
                let n = self.plate_no.len() as u32;
                *self.plate_no.entry(p.clone()).or_insert(n)
            });
            let start = v.at.timestamp();
            let end = v
                .left_at
                .map(|l| l.timestamp())
                .filter(|e| *e > start)
                .unwrap_or(start + i64::from(v.default_stay_min.max(1)) * 60);
            let record = self.registration_ids.len() as u32;
            self.registration_ids.push(v.registration_id);
            self.max_seq = self.max_seq.max(v.seq);
            let person = self.pid(v.person_id);
            visits.push(Visit {
                person,
                site,
                start,
                end,
                record,
                plate,
            });
        }
        visits
    }

    pub fn from_data(data: TraceData) -> Loaded {
        let mut l = Loaded {
            records: Records::default(),
            person_ids: Vec::new(),
            pid_of: HashMap::new(),
            registration_ids: Vec::with_capacity(data.visits.len()),
            site_no: HashMap::new(),
            plate_no: HashMap::new(),
            max_seq: 0,
            gaps: Default::default(),
        };
        let visits = l.visits_of(&data.visits);
        l.records = Records::new(visits);
        // numbers missing near the top may be registrations still being committed
        let top: std::collections::HashSet<i64> = data
            .visits
            .iter()
            .map(|v| v.seq)
            .filter(|s| *s > l.max_seq - 1000)
            .collect();
        let now = std::time::Instant::now();
        for missing in (l.max_seq - 1000).max(1)..l.max_seq {
            if !top.contains(&missing) {
                l.gaps.insert(missing, now);
            }
        }
        let reg_no: HashMap<uuid::Uuid, u32> = l
            .registration_ids
            .iter()
            .enumerate()
            .map(|(i, r)| (*r, i as u32))
            .collect();
        for (a, b, reg, at) in &data.companions {
            let (a, b) = (l.pid(*a), l.pid(*b));
            let record = reg_no.get(reg).copied().unwrap_or(u32::MAX);
            l.records.add_companions(a, b, record, at.timestamp());
        }
        let mut units: HashMap<&str, u32> = HashMap::new();
        for (p, unit) in &data.households {
            let n = units.len() as u32;
            let u = *units.entry(unit.as_str()).or_insert(n);
            let p = l.pid(*p);
            l.records.set_household(p, u);
        }
        for (a, b, at, d) in &data.proximity {
            let (a, b) = (l.pid(*a), l.pid(*b));
            l.records.add_proximity(Proximity {
                a,
                b,
                at: at.timestamp(),
                duration_s: *d,
            });
        }
        l
    }

    /// Where to read newer registrations from: after the oldest number still missing, else
    /// after the highest loaded.
    pub fn read_after(&mut self) -> i64 {
        self.gaps.retain(|_, since| since.elapsed() < GAP_WAIT);
        self.gaps
            .keys()
            .next()
            .map_or(self.max_seq, |first| first - 1)
    }

    /// Adds registrations read after [`Loaded::read_after`]: rows already loaded are skipped,
    /// rows that fill a gap are added, and new gaps are remembered (companions and households
    /// of new registrations are picked up by the next full load).
    pub fn append_visits(&mut self, rows: &[VisitRow]) {
        let mut sorted: Vec<&VisitRow> = rows.iter().collect();
        sorted.sort_by_key(|v| v.seq);
        let now = std::time::Instant::now();
        let mut fresh = Vec::new();
        for v in sorted {
            if v.seq <= self.max_seq {
                if self.gaps.remove(&v.seq).is_some() {
                    fresh.push(v.clone());
                }
                continue;
            }
            if v.seq - self.max_seq <= MAX_GAP {
                for missing in self.max_seq + 1..v.seq {
                    self.gaps.entry(missing).or_insert(now);
                }
            }
            self.max_seq = v.seq;
            fresh.push(v.clone());
        }
        let visits = self.visits_of(&fresh);
        self.records.append(visits);
    }

    pub fn registration(&self, record: Option<u32>) -> Option<uuid::Uuid> {
        record.and_then(|r| self.registration_ids.get(r as usize).copied())
    }
}

impl Records {
    /// Traces many index people at once (re-tracing every active case after new data), spread
    /// over the machine's cores; results in the order of `indexes`.
    pub fn trace_many(&self, indexes: &[Pid], p: &TraceParams) -> Vec<Vec<Contact>> {
        crate::matching::in_parallel(indexes, |i| self.trace(*i, p))
    }
}

/// The reference: first-degree co-location by comparing every pair of visits (tests only).
pub fn brute_force_colocation(visits: &[Visit], index: Pid, p: &TraceParams) -> HashMap<Pid, i64> {
    let mut out: HashMap<Pid, i64> = HashMap::new();
    for v in visits.iter().filter(|v| v.person == index) {
        let (vs, ve) = (v.start.max(p.from), v.end.min(p.to));
        if vs >= ve {
            continue;
        }
        for w in visits {
            if w.person == index || w.site != v.site {
                continue;
            }
            if w.start < ve + p.tolerance_s && w.end + p.tolerance_s > vs {
                *out.entry(w.person).or_default() += (ve.min(w.end) - vs.max(w.start)).max(0);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn v(person: Pid, site: u32, start: i64, end: i64, record: u32) -> Visit {
        Visit {
            person,
            site,
            start,
            end,
            record,
            plate: None,
        }
    }

    #[test]
    fn overlapping_visits_at_the_same_site_are_contacts_with_their_overlap() {
        let r = Records::new(vec![
            v(1, 10, 1000, 2000, 0),
            v(2, 10, 1500, 2500, 1), // overlaps 500 s
            v(3, 10, 2000, 3000, 2), // touches, no overlap
            v(4, 11, 1000, 2000, 3), // another site
            v(2, 10, 1900, 1950, 4), // a second overlap of 50 s
        ]);
        let c = r.trace(1, &TraceParams::default());
        assert_eq!(c.len(), 1);
        assert_eq!((c[0].person, c[0].exposure_s), (2, 550));
        assert_eq!(c[0].evidence.len(), 2);
        // with a tolerance, touching counts (zero exposure)
        let c = r.trace(
            1,
            &TraceParams {
                tolerance_s: 60,
                ..Default::default()
            },
        );
        assert!(c.iter().any(|x| x.person == 3));
        // the window cuts the index person's presence
        let c = r.trace(
            1,
            &TraceParams {
                from: 1900,
                to: 2000,
                ..Default::default()
            },
        );
        assert_eq!(c[0].exposure_s, 150);
    }

    #[test]
    fn vehicles_companions_households_and_proximity_are_contacts_too() {
        let mut visits = vec![v(1, 10, 0, 600, 0), v(2, 10, 100, 700, 1)];
        visits[0].plate = Some(7);
        visits[1].plate = Some(7);
        let mut r = Records::new(visits);
        r.add_companions(1, 5, 9, 50);
        r.set_household(1, 100);
        r.set_household(6, 100);
        r.add_proximity(Proximity {
            a: 8,
            b: 1,
            at: 200,
            duration_s: 20,
        });
        let c = r.trace(
            1,
            &TraceParams {
                from: 0,
                to: 86_400,
                ..Default::default()
            },
        );
        let kinds = |p: Pid| {
            c.iter()
                .find(|x| x.person == p)
                .map(|x| x.kinds.clone())
                .unwrap_or_default()
        };
        assert_eq!(
            kinds(2),
            vec![ContactKind::CoLocation, ContactKind::Vehicle]
        );
        assert_eq!(kinds(5), vec![ContactKind::Companion]);
        assert_eq!(kinds(6), vec![ContactKind::Household]);
        assert_eq!(kinds(8), vec![ContactKind::Proximity]);
        // the household member ranks first
        assert_eq!(c[0].person, 6);
    }

    #[test]
    fn second_degree_goes_through_first_degree_contacts() {
        let r = Records::new(vec![
            v(1, 10, 0, 100, 0),
            v(2, 10, 50, 150, 1),
            v(2, 11, 500, 600, 2),
            v(3, 11, 550, 650, 3),
        ]);
        let c = r.trace(
            1,
            &TraceParams {
                degree: 2,
                ..Default::default()
            },
        );
        assert_eq!(
            c.iter()
                .map(|x| (x.person, x.degree, x.via))
                .collect::<Vec<_>>(),
            vec![(2, 1, None), (3, 2, Some(2))]
        );
        let c = r.trace(
            1,
            &TraceParams {
                min_exposure_s: 60,
                ..Default::default()
            },
        );
        assert!(c.is_empty(), "50 s is below the minimum");
    }

    #[test]
    fn tracing_many_at_once_gives_the_same_answers_in_order() {
        let r = Records::new(vec![
            v(1, 10, 0, 100, 0),
            v(2, 10, 50, 150, 1),
            v(3, 11, 0, 100, 2),
            v(4, 11, 20, 90, 3),
        ]);
        let p = TraceParams {
            degree: 2,
            ..Default::default()
        };
        let one_by_one: Vec<Vec<Contact>> = [1, 3, 2, 4].iter().map(|i| r.trace(*i, &p)).collect();
        assert_eq!(r.trace_many(&[1, 3, 2, 4], &p), one_by_one);
    }

    #[test]
    fn appending_visits_gives_the_same_answers_as_building_at_once() {
        let all = vec![
            v(1, 10, 1000, 2000, 0),
            v(2, 10, 1500, 2500, 1),
            v(3, 10, 900, 1600, 2),
            v(4, 11, 0, 100, 3),
        ];
        let whole = Records::new(all.clone());
        let mut parts = Records::new(all[..2].to_vec());
        parts.append(all[2..].to_vec());
        let p = TraceParams::default();
        assert_eq!(whole.trace(1, &p), parts.trace(1, &p));
    }

    #[test]
    fn registrations_committed_out_of_order_are_picked_up_once() {
        let row = |seq: i64| VisitRow {
            seq,
            registration_id: uuid::Uuid::from_u128(seq as u128),
            person_id: uuid::Uuid::from_u128(1000 + seq as u128),
            site_id: uuid::Uuid::from_u128(7),
            at: chrono::DateTime::from_timestamp(1_700_000_000 + seq, 0).unwrap(),
            left_at: None,
            default_stay_min: 10,
            plate: None,
        };
        let mut l = Loaded::from_data(TraceData {
            visits: vec![row(1), row(2), row(4)],
            ..Default::default()
        });
        // 3 is missing: read again from there
        assert_eq!(l.read_after(), 2);
        // the store now has 3 (committed late), 4 (loaded) and 5, 7 (new; 6 is missing)
        l.append_visits(&[row(5), row(3), row(4), row(7)]);
        let mut ids: Vec<u128> = l.registration_ids.iter().map(|u| u.as_u128()).collect();
        ids.sort();
        assert_eq!(ids, vec![1, 2, 3, 4, 5, 7], "each registration once");
        assert_eq!((l.max_seq, l.read_after()), (7, 5));
        l.append_visits(&[row(6), row(7)]);
        assert_eq!((l.registration_ids.len(), l.read_after()), (7, 7));
        // the late one is traced like any other: 3 overlaps 2 and 4 at the same site
        let p3 = l.pid_of[&uuid::Uuid::from_u128(1003)];
        let p = TraceParams {
            from: 0,
            to: i64::MAX / 2,
            ..Default::default()
        };
        assert!(!l.records.trace(p3, &p).is_empty());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        #[test]
        fn the_engine_finds_exactly_the_pairs_brute_force_finds(
            raw in proptest::collection::vec((0u32..30, 0u32..6, 0i64..20_000, 1i64..3_600), 1..300),
            index in 0u32..30,
            tol in 0i64..600,
            from in 0i64..10_000,
            len in 1i64..30_000,
        ) {
            let visits: Vec<Visit> = raw.iter().enumerate().map(|(i, (p, s, st, d))| v(*p, *s, *st, st + d, i as u32)).collect();
            let params = TraceParams { from, to: from + len, tolerance_s: tol, ..Default::default() };
            let engine: HashMap<Pid, i64> = Records::new(visits.clone())
                .trace(index, &params)
                .into_iter()
                .map(|c| (c.person, c.exposure_s))
                .collect();
            let brute = brute_force_colocation(&visits, index, &params);
            prop_assert_eq!(engine, brute);
        }
    }
}

/// A contact-search notice: where and when a case was, with no personal data.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Notice {
    pub id: uuid::Uuid,
    pub case_person_id: uuid::Uuid,
    pub public_token: String,
    pub area_path: String,
    pub created_by: Option<uuid::Uuid>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub entries: Vec<NoticeEntry>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NoticeEntry {
    pub position: i32,
    pub site_id: uuid::Uuid,
    pub place: String,
    pub area_name: String,
    pub from: chrono::DateTime<chrono::Utc>,
    pub to: chrono::DateTime<chrono::Utc>,
}

/// Someone who came forward through a notice, pending review.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PendingContact {
    pub id: uuid::Uuid,
    pub notice_id: uuid::Uuid,
    pub position: i32,
    pub index_person_id: uuid::Uuid,
    pub person_id: uuid::Uuid,
    pub reported_at: chrono::DateTime<chrono::Utc>,
    pub status: String,
}

/// The entries of a notice from a case's visits: per site, visits closer than `merge_gap_s`
/// are joined into one span; spans are widened to whole hours so that they do not reveal
/// exact times; sorted by start.
pub fn notice_spans(
    visits: &[(uuid::Uuid, i64, i64)],
    merge_gap_s: i64,
) -> Vec<(uuid::Uuid, i64, i64)> {
    let mut v: Vec<(uuid::Uuid, i64, i64)> = visits.to_vec();
    v.sort_by_key(|x| (x.0, x.1));
    let mut out: Vec<(uuid::Uuid, i64, i64)> = Vec::new();
    for (site, s, e) in v {
        match out.last_mut() {
            Some(last) if last.0 == site && s <= last.2 + merge_gap_s => last.2 = last.2.max(e),
            _ => out.push((site, s, e)),
        }
    }
    for x in &mut out {
        x.1 = x.1.div_euclid(3600) * 3600;
        x.2 = (x.2 + 3599).div_euclid(3600) * 3600;
    }
    out.sort_by_key(|x| (x.1, x.0));
    out
}

#[cfg(test)]
mod notice_tests {
    #[test]
    fn spans_join_close_visits_and_round_to_hours() {
        let a = uuid::Uuid::from_u128(1);
        let b = uuid::Uuid::from_u128(2);
        let spans = super::notice_spans(
            &[
                (a, 3700, 4000),
                (a, 4500, 5000),
                (b, 100, 200),
                (a, 20_000, 20_100),
            ],
            1800,
        );
        assert_eq!(
            spans,
            vec![(b, 0, 3600), (a, 3600, 7200), (a, 18_000, 21_600)]
        );
    }
}

/// A contact as kept between traces: found (pending), confirmed by staff, or dismissed.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ContactRecord {
    pub index_person_id: uuid::Uuid,
    pub contact_person_id: uuid::Uuid,
    pub degree: i32,
    /// Comma-separated kinds (`co_location,vehicle`).
    pub kinds: String,
    pub exposure_s: i64,
    pub score: f64,
    pub status: String,
    pub found_at: chrono::DateTime<chrono::Utc>,
}

/// One transmission chain: people linked by confirmed contacts.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Chain {
    pub people: Vec<uuid::Uuid>,
    pub edges: Vec<(uuid::Uuid, uuid::Uuid)>,
}

/// Connected components of the contact graph (union–find), largest first; people in no edge
/// are not chains.
pub fn chains(edges: &[(uuid::Uuid, uuid::Uuid)]) -> Vec<Chain> {
    let mut idx: HashMap<uuid::Uuid, usize> = HashMap::new();
    let mut ids: Vec<uuid::Uuid> = Vec::new();
    let mut parent: Vec<usize> = Vec::new();
    fn find(p: &mut [usize], mut x: usize) -> usize {
        while p[x] != x {
            p[x] = p[p[x]];
            x = p[x];
        }
        x
    }
    let mut node = |u: uuid::Uuid, ids: &mut Vec<uuid::Uuid>, parent: &mut Vec<usize>| -> usize {
        *idx.entry(u).or_insert_with(|| {
            ids.push(u);
            parent.push(parent.len());
            parent.len() - 1
        })
    };
    let pairs: Vec<(usize, usize)> = edges
        .iter()
        .map(|(a, b)| {
            (
                node(*a, &mut ids, &mut parent),
                node(*b, &mut ids, &mut parent),
            )
        })
        .collect();
    for (a, b) in &pairs {
        let (ra, rb) = (find(&mut parent, *a), find(&mut parent, *b));
        if ra != rb {
            parent[ra.max(rb)] = ra.min(rb);
        }
    }
    let mut groups: HashMap<usize, Chain> = HashMap::new();
    for (i, id) in ids.iter().enumerate() {
        let r = find(&mut parent, i);
        groups
            .entry(r)
            .or_insert_with(|| Chain {
                people: Vec::new(),
                edges: Vec::new(),
            })
            .people
            .push(*id);
    }
    for ((a, _), e) in pairs.iter().zip(edges) {
        let r = find(&mut parent, *a);
        if let Some(g) = groups.get_mut(&r) {
            g.edges.push(*e);
        }
    }
    let mut out: Vec<Chain> = groups.into_values().collect();
    for c in &mut out {
        c.people.sort();
    }
    out.sort_by(|a, b| {
        b.people
            .len()
            .cmp(&a.people.len())
            .then(a.people.cmp(&b.people))
    });
    out
}

#[cfg(test)]
mod chain_tests {
    #[test]
    fn components_are_found_largest_first() {
        let u = |n| uuid::Uuid::from_u128(n);
        let c = super::chains(&[(u(1), u(2)), (u(2), u(3)), (u(10), u(11)), (u(3), u(1))]);
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].people, vec![u(1), u(2), u(3)]);
        assert_eq!(c[0].edges.len(), 3);
        assert_eq!(c[1].people, vec![u(10), u(11)]);
        assert!(super::chains(&[]).is_empty());
    }
}
