//! `epigrid demo`: builds the demo city, Bayannur (巴彦淖尔市), into an empty store.
//!
//! What is built, in order:
//! 1. the six-level area tree: the city, its 7 counties, 89 towns and 956 communities from
//!    [`divisions`], plus generated buildings (2–6 per community) and units (2–4 per building);
//! 2. about a hundred sites of every kind: road checkpoints, compound gates, arrival desks
//!    for the floating population, and venues (stations, markets, fever clinics, hotels);
//! 3. `people` synthetic persons and their registrations over the last `days` local days.
//!
//! Everything that shapes the data set comes from one seeded [`Rng`], so the same seed gives
//! the same people, names and registration pattern. Only what must be unpredictable for
//! security is random: site tokens, ciphertext nonces, verification codes and the random
//! bits of UUIDs.
//!
//! Persons are never held in memory all at once: person `i` is regenerated from its own
//! random stream whenever it is needed, and registrations are generated chunk by chunk, the
//! next chunk while the previous one is being written, so `--people 1000000` runs in bounded
//! memory.

use std::collections::HashMap;

use anyhow::{anyhow, bail, Context as _, Result};
use chrono::{DateTime, Datelike, Duration, FixedOffset, NaiveDate, Timelike, Utc};
use uuid::Uuid;

use epigrid_core::area::{Area, Scope};
use epigrid_core::divisions::{self, BAYANNUR_CITY, BAYANNUR_NAME};
use epigrid_core::model::{
    Channel, CompanionInput, Direction, NewRegistration, RegistrationFields, Site, SiteKind,
};
use epigrid_core::register::{seal_person, verification_code};
use epigrid_core::rng::{chinese_name, Rng};
use epigrid_core::store::Store;
use epigrid_core::validate::{DocType, Document, MobilePhone, PersonName, Plate, Symptom};
use epigrid_core::vault::{random_token, Vault};

/// What to build.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Seed of every random choice that shapes the data set.
    pub seed: u64,
    /// How many synthetic persons to create.
    pub people: u32,
    /// How many days of registrations: that many whole 24-hour periods ending at `now` (so
    /// one day is a full day's activity at any time of day, not just today's so far).
    pub days: u32,
    /// The moment the demo is built "at": no registration lies after it.
    pub now: DateTime<Utc>,
    /// Offset of local time from UTC (Asia/Shanghai: +08:00); registrations count for the
    /// local day they were made on.
    pub tz: FixedOffset,
}

/// What was built.
#[derive(Debug, Clone)]
pub struct DemoSummary {
    /// Number of areas written (all six levels).
    pub areas: usize,
    /// The sites created, in creation order.
    pub sites: Vec<Site>,
    /// Number of synthetic persons.
    pub people: u32,
    /// Number of registrations written.
    pub registrations: u64,
}

/// Registrations per `insert_registrations` call (one transaction each).
const CHUNK: usize = 2_000;
/// A person makes at most this many registrations a day.
const MAX_PER_DAY: usize = 4;
/// Share of persons whose ID number was issued outside Bayannur.
const OUTSIDER_SHARE: f64 = 0.15;
/// Share of persons who own a car.
const CAR_SHARE: f64 = 0.30;

/// Population weights of the 7 counties (thousands of residents, rounded), in code order
/// 150802 … 150826.
const COUNTY_WEIGHTS: [(&str, u32); 7] = [
    ("150802", 540),
    ("150821", 260),
    ("150822", 110),
    ("150823", 300),
    ("150824", 140),
    ("150825", 60),
    ("150826", 290),
];

/// Counties outside Bayannur where ID numbers of newcomers were issued, with weights.
/// Codes unknown to [`divisions`] are dropped at start-up.
const OUTSIDE_REGIONS: &[(&str, u32)] = &[
    ("150102", 30), // 呼和浩特市新城区
    ("150203", 30), // 包头市昆都仑区
    ("150602", 10), // 鄂尔多斯市东胜区
    ("150302", 8),  // 乌海市海勃湾区
    ("110105", 8),  // 北京市朝阳区
    ("420102", 6),  // 武汉市江岸区
    ("640104", 5),  // 银川市兴庆区
    ("610113", 4),  // 西安市雁塔区
    ("620102", 4),  // 兰州市城关区
    ("130102", 3),  // 石家庄市长安区
];

/// Road checkpoints: the area (a county or a town) and the name. At least one per county.
const CHECKPOINTS: &[(&str, &str)] = &[
    ("150802", "G6京藏高速临河收费站卡口"),
    ("150802", "110国道临河东检查站"),
    ("150802100", "242国道狼山检查站"),
    ("150802", "S212省道临河南卡口"),
    ("150821", "G6京藏高速五原收费站卡口"),
    ("150821100", "110国道五原检查站"),
    ("150821", "S311省道五原卡口"),
    ("150822100", "G6京藏高速磴口收费站卡口"),
    ("150822", "110国道磴口检查站"),
    ("150823", "G6京藏高速乌拉特前旗收费站卡口"),
    ("150823100", "110国道乌拉山检查站"),
    ("150823401", "110国道西山嘴检查站"),
    ("150824", "G7京新高速乌拉特中旗卡口"),
    ("150824104", "甘其毛都口岸检查站"),
    ("150824100", "S212省道海流图卡口"),
    ("150825", "G7京新高速乌拉特后旗卡口"),
    ("150825100", "巴音宝力格镇检查站"),
    ("150826", "G6京藏高速杭锦后旗收费站卡口"),
    ("150826100", "陕坝镇东检查站"),
    ("150826", "242国道杭锦后旗检查站"),
];

/// Venues: the town, the name, and whether the venue sits in one of the town's communities
/// (shops, markets) rather than at town level (stations, hospitals, hotels).
const VENUES: &[(&str, &str, bool)] = &[
    ("150802002", "临河火车站", false),
    ("150802002", "巴彦淖尔长途汽车客运站", false),
    ("150802001", "巴彦淖尔市医院发热门诊", false),
    ("150802005", "临河区人民医院发热门诊", false),
    ("150802003", "临河区集中隔离观察酒店", false),
    ("150802004", "临河新华街农贸市场", true),
    ("150802001", "临河胜利路超市", true),
    ("150802006", "临河区政务服务大厅", true),
    ("150821100", "五原县汽车站", false),
    ("150821100", "五原县人民医院发热门诊", false),
    ("150821100", "五原县集中隔离酒店", false),
    ("150822100", "磴口火车站", false),
    ("150822100", "磴口县人民医院发热门诊", false),
    ("150823100", "乌拉特前旗火车站", false),
    ("150823100", "乌拉特前旗人民医院发热门诊", false),
    ("150824100", "乌拉特中旗汽车站", false),
    ("150824100", "乌拉特中旗人民医院发热门诊", false),
    ("150825100", "乌拉特后旗农贸市场", true),
    ("150826100", "杭锦后旗汽车站", false),
    ("150826100", "杭锦后旗人民医院发热门诊", false),
];

/// Number of compound gates and of arrival desks.
const GATES: usize = 45;
const ARRIVALS: usize = 15;

const VISIT_REASONS: &[&str] = &["探亲访友", "送货", "快递配送", "维修", "家政服务"];
const PURPOSES: &[&str] = &["务工", "探亲", "经商", "就学", "就医", "旅游"];
const EMPLOYERS: &[&str] = &[
    "个体经营",
    "河套农产品加工厂",
    "临河物流园",
    "建筑工地",
    "餐饮服务",
    "商贸公司",
];
const STAY_DAYS: &[i32] = &[7, 14, 30, 90, 180, 365];
/// Letters and digits allowed in a plate serial (no `I`, `O`).
const PLATE_CHARS: &[u8] = b"0123456789ABCDEFGHJKLMNPQRSTUVWXYZ";
/// Chinese numerals for village group names (`一组` …).
const CN_NUMERALS: [&str; 10] = ["一", "二", "三", "四", "五", "六", "七", "八", "九", "十"];

/// Builds Bayannur into an empty store (see the module documentation).
///
/// Fails if the store already holds sites (the demo is meant for a fresh database) or if a
/// write fails. Progress is printed to stderr about every 5%; no personal data is printed.
pub async fn build(
    store: &dyn Store,
    vault: &Vault,
    opts: &DemoOptions,
) -> anyhow::Result<DemoSummary> {
    let existing = store
        .sites(&Scope::all())
        .await
        .context("reading existing sites")?;
    if !existing.is_empty() {
        bail!(
            "the store already holds {} sites; the demo needs an empty database",
            existing.len()
        );
    }
    let mut root = Rng::new(opts.seed);
    let mut area_rng = root.fork(1);
    let mut site_rng = root.fork(2);
    let mut people_rng = root.fork(3);
    let registration_key = root.fork(4).next_u64();

    let city = City::generate(&mut area_rng)?;
    store
        .upsert_areas(&city.areas)
        .await
        .context("writing the areas")?;

    let sites = SiteIndex::generate(&city, &mut site_rng, opts.now)?;
    for site in &sites.sites {
        store
            .insert_site(site)
            .await
            .with_context(|| format!("writing site {}", site.name))?;
    }

    let population = Population::new(&city, &sites, opts.people, &mut people_rng)?;
    let mut generator = Generator::new(&city, &sites, &population, vault, opts, registration_key);
    let total_work = generator.total_person_days();
    let mut registrations: u64 = 0;
    let mut next_report = 5u64;
    let mut chunk = generator.next_chunk()?;
    // Person-days covered by the chunk about to be written.
    let mut chunk_done = generator.done_person_days();
    while !chunk.is_empty() {
        let written = chunk.len() as u64;
        // The insert is polled first (handing the chunk to the database), then the next chunk
        // is generated while the database writes this one.
        let (inserted, next) = tokio::join!(store.insert_registrations(chunk), async {
            generator.next_chunk()
        });
        inserted.context("writing registrations")?;
        registrations += written;
        let percent = (chunk_done * 100).checked_div(total_work).unwrap_or(100);
        if percent >= next_report {
            crate::tell!("demo: {percent}% ({registrations} registrations)");
            next_report = (percent / 5 + 1) * 5;
        }
        chunk = next?;
        chunk_done = generator.done_person_days();
    }
    Ok(DemoSummary {
        areas: city.areas.len(),
        sites: sites.sites,
        people: opts.people,
        registrations,
    })
}

// ---------------------------------------------------------------------------------------------
// Deterministic helpers
// ---------------------------------------------------------------------------------------------

/// The SplitMix64 finaliser: a good 64-bit mixer, used to derive independent streams.
fn mix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The random stream of item `i` under `key`: independent of every other item, so items
/// can be generated in any order (and regenerated) with the same result.
fn stream(key: u64, i: u64) -> Rng {
    Rng::new(mix64(key ^ mix64(i)))
}

/// A keyed pseudo-random permutation of `0..n` (a 4-round Feistel network on the smallest
/// even number of bits covering `n`, with cycle walking), so that persons get distinct ID
/// numbers and plates without a set of the ones already used.
#[derive(Debug, Clone)]
struct Permutation {
    n: u64,
    half_bits: u32,
    keys: [u64; 4],
}

impl Permutation {
    fn new(n: u64, rng: &mut Rng) -> Permutation {
        let n = n.max(1);
        let bits = 64 - (n - 1).leading_zeros();
        let half_bits = bits.div_ceil(2).clamp(1, 31);
        Permutation {
            n,
            half_bits,
            keys: [
                rng.next_u64(),
                rng.next_u64(),
                rng.next_u64(),
                rng.next_u64(),
            ],
        }
    }

    fn feistel(&self, x: u64) -> u64 {
        let mask = (1u64 << self.half_bits) - 1;
        let mut left = (x >> self.half_bits) & mask;
        let mut right = x & mask;
        for k in self.keys {
            let next = left ^ (mix64(right ^ k) & mask);
            left = right;
            right = next;
        }
        (left << self.half_bits) | right
    }

    /// The image of `x` (taken modulo `n`, so inputs beyond `n` repeat earlier outputs).
    fn apply(&self, x: u64) -> u64 {
        let mut y = self.feistel(x % self.n);
        // The Feistel network permutes 0..2^(2·half_bits) ⊇ 0..n; walking its cycle from a
        // point inside 0..n returns inside 0..n after fewer than 4 steps on average.
        while y >= self.n {
            y = self.feistel(y);
        }
        y
    }
}

// ---------------------------------------------------------------------------------------------
// Areas
// ---------------------------------------------------------------------------------------------

/// How a community is organised, which decides how its buildings and units are named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settlement {
    /// An urban 社区: buildings `1号楼`, units `1单元`.
    Urban,
    /// A 村: groups `一组`, households `1户`.
    Village,
    /// A 嘎查, farm or other rural community: groups `1组`, households `1户`.
    Rural,
}

#[derive(Debug)]
struct County {
    code: &'static str,
    name: &'static str,
    path: String,
}

#[derive(Debug)]
struct Town {
    code: &'static str,
    name: &'static str,
    county: usize,
    path: String,
}

#[derive(Debug)]
struct Community {
    code: &'static str,
    /// The name without the committee suffix, e.g. `团结社区` for `团结社区居委会`.
    short: String,
    town: usize,
    county: usize,
    settlement: Settlement,
    /// Number of units of each building.
    buildings: Vec<u8>,
}

impl Community {
    fn unit_code(&self, building: usize, unit: usize) -> String {
        format!("{}{:03}{:03}", self.code, building + 1, unit + 1)
    }

    fn building_name(&self, building: usize) -> String {
        let n = building + 1;
        match self.settlement {
            Settlement::Urban => format!("{n}号楼"),
            Settlement::Village => match CN_NUMERALS.get(building) {
                Some(c) => format!("{c}组"),
                None => format!("{n}组"),
            },
            Settlement::Rural => format!("{n}组"),
        }
    }

    fn unit_name(&self, unit: usize) -> String {
        let n = unit + 1;
        match self.settlement {
            Settlement::Urban => format!("{n}单元"),
            Settlement::Village | Settlement::Rural => format!("{n}户"),
        }
    }
}

/// Strips the committee suffix of a community's official name: `团结社区居委会` → `团结社区`,
/// `白艮居委会` → `白艮社区`, `红光村民委员会` → `红光村`, `呼和嘎查委员会` → `呼和嘎查`.
fn short_community_name(name: &str) -> (String, Settlement) {
    const URBAN: &[&str] = &[
        "社区居民委员会",
        "社区居委会",
        "居民委员会",
        "居委会",
        "社区",
    ];
    const VILLAGE: &[&str] = &["村民委员会", "村民委会", "村委会"];
    for suffix in URBAN {
        if let Some(stem) = name.strip_suffix(suffix) {
            return (format!("{stem}社区"), Settlement::Urban);
        }
    }
    for suffix in VILLAGE {
        if let Some(stem) = name.strip_suffix(suffix) {
            return (format!("{stem}村"), Settlement::Village);
        }
    }
    if let Some(stem) = name.strip_suffix("委员会") {
        return (stem.to_string(), Settlement::Rural);
    }
    if name.ends_with('村') {
        return (name.to_string(), Settlement::Village);
    }
    (name.to_string(), Settlement::Rural)
}

/// The demo city: its areas (parents before children) and indexes over them.
struct City {
    areas: Vec<Area>,
    counties: Vec<County>,
    towns: Vec<Town>,
    communities: Vec<Community>,
    /// Communities of each town, by town index.
    town_communities: Vec<Vec<usize>>,
    /// Area path of a county, town or community code.
    paths: HashMap<&'static str, String>,
}

impl City {
    fn generate(rng: &mut Rng) -> Result<City> {
        let city = Area::new(BAYANNUR_CITY, BAYANNUR_NAME, 1, None);
        let mut paths: HashMap<&'static str, String> = HashMap::new();
        let mut areas = vec![city.clone()];

        let mut counties = Vec::new();
        let mut county_index: HashMap<&str, usize> = HashMap::new();
        for d in divisions::bayannur_counties() {
            let area = Area::new(d.code, d.name, 2, Some(&city));
            county_index.insert(d.code, counties.len());
            paths.insert(d.code, area.path.clone());
            counties.push(County {
                code: d.code,
                name: d.name,
                path: area.path.clone(),
            });
            areas.push(area);
        }
        if counties.is_empty() {
            bail!("the division data holds no counties of {BAYANNUR_NAME}");
        }

        let mut towns = Vec::new();
        let mut town_index: HashMap<&str, usize> = HashMap::new();
        for t in divisions::bayannur_towns() {
            let Some(&county) = county_index.get(t.parent) else {
                continue;
            };
            let area = Area::new(t.code, t.name, 3, Some(&areas[county + 1]));
            town_index.insert(t.code, towns.len());
            paths.insert(t.code, area.path.clone());
            towns.push(Town {
                code: t.code,
                name: t.name,
                county,
                path: area.path.clone(),
            });
            areas.push(area);
        }

        let mut communities = Vec::new();
        let mut town_communities = vec![Vec::new(); towns.len()];
        let mut below_communities = Vec::new();
        for c in divisions::bayannur_communities() {
            let Some(&town) = town_index.get(c.parent) else {
                continue;
            };
            let Some(parent) = towns.get(town) else {
                continue;
            };
            let community_area = Area {
                code: c.code.to_string(),
                name: c.name.to_string(),
                level: 4,
                parent_code: Some(parent.code.to_string()),
                path: format!("{}{}/", parent.path, c.code),
            };
            let (short, settlement) = short_community_name(c.name);
            let n_buildings = rng.range(2, 6) as usize;
            let buildings: Vec<u8> = (0..n_buildings).map(|_| rng.range(2, 4) as u8).collect();
            let community = Community {
                code: c.code,
                short,
                town,
                county: parent.county,
                settlement,
                buildings,
            };
            for (b, &units) in community.buildings.iter().enumerate() {
                let building = Area::new(
                    &format!("{}{:03}", c.code, b + 1),
                    &community.building_name(b),
                    5,
                    Some(&community_area),
                );
                for u in 0..usize::from(units) {
                    let unit = Area::new(
                        &community.unit_code(b, u),
                        &community.unit_name(u),
                        6,
                        Some(&building),
                    );
                    below_communities.push(unit);
                }
                // Buildings before their units: the units were built from the building, so
                // put the building right before them.
                let first_unit = below_communities.len() - usize::from(units);
                below_communities.push(building);
                below_communities[first_unit..].rotate_right(1);
            }
            if let Some(list) = town_communities.get_mut(town) {
                list.push(communities.len());
            }
            paths.insert(c.code, community_area.path.clone());
            communities.push(community);
            areas.push(community_area);
        }
        if communities.is_empty() {
            bail!("the division data holds no communities of {BAYANNUR_NAME}");
        }
        areas.append(&mut below_communities);
        Ok(City {
            areas,
            counties,
            towns,
            communities,
            town_communities,
            paths,
        })
    }

    fn county_of(&self, code: &str) -> Option<usize> {
        self.counties.iter().position(|c| code.starts_with(c.code))
    }

    fn town_index(&self, code: &str) -> Option<usize> {
        self.towns.iter().position(|t| t.code == code)
    }
}

// ---------------------------------------------------------------------------------------------
// Sites
// ---------------------------------------------------------------------------------------------

/// The sites, with the indexes persons pick them from.
struct SiteIndex {
    sites: Vec<Site>,
    checkpoints_by_county: Vec<Vec<usize>>,
    venues_by_county: Vec<Vec<usize>>,
    arrivals_by_county: Vec<Vec<usize>>,
    checkpoints: Vec<usize>,
    venues: Vec<usize>,
    arrivals: Vec<usize>,
    /// The gate site of each gated community, by community index.
    gate_of: HashMap<usize, usize>,
    /// Community indexes with a gate, in creation order.
    gated: Vec<usize>,
}

impl SiteIndex {
    fn generate(city: &City, rng: &mut Rng, now: DateTime<Utc>) -> Result<SiteIndex> {
        let n_counties = city.counties.len();
        let mut ix = SiteIndex {
            sites: Vec::new(),
            checkpoints_by_county: vec![Vec::new(); n_counties],
            venues_by_county: vec![Vec::new(); n_counties],
            arrivals_by_county: vec![Vec::new(); n_counties],
            checkpoints: Vec::new(),
            venues: Vec::new(),
            arrivals: Vec::new(),
            gate_of: HashMap::new(),
            gated: Vec::new(),
        };

        // Checkpoints at their county or town; a town missing from the data falls back to
        // its county.
        for &(code, name) in CHECKPOINTS {
            let Some(county) = city.county_of(code) else {
                continue;
            };
            let area = if city.paths.contains_key(code) {
                code
            } else {
                city.counties[county].code
            };
            ix.add(city, SiteKind::Checkpoint, name, area, county, now)?;
        }
        // Every county has a checkpoint, whatever the data held.
        for county in 0..n_counties {
            if ix.checkpoints_by_county[county].is_empty() {
                let c = &city.counties[county];
                let name = format!("{}检查站", c.name);
                ix.add(city, SiteKind::Checkpoint, &name, c.code, county, now)?;
            }
        }

        // Gates at urban communities: one per county first, then the rest in shuffled order.
        let mut urban: Vec<usize> = (0..city.communities.len())
            .filter(|&i| city.communities[i].settlement == Settlement::Urban)
            .collect();
        rng.shuffle(&mut urban);
        let mut chosen: Vec<usize> = Vec::new();
        for county in 0..n_counties {
            if let Some(&c) = urban
                .iter()
                .find(|&&c| city.communities[c].county == county)
            {
                chosen.push(c);
            }
        }
        for &c in &urban {
            if chosen.len() >= GATES {
                break;
            }
            if !chosen.contains(&c) {
                chosen.push(c);
            }
        }
        for c in chosen {
            let community = &city.communities[c];
            let side = if rng.chance(0.5) { "东门" } else { "北门" };
            let name = format!("{}{side}", community.short);
            let site = ix.add(
                city,
                SiteKind::Gate,
                &name,
                community.code,
                community.county,
                now,
            )?;
            ix.gate_of.insert(c, site);
            ix.gated.push(c);
        }

        // Arrival desks at towns proper (streets, towns, sumu, townships — not state farms):
        // the county seat first, then random others.
        let mut eligible: Vec<usize> = (0..city.towns.len())
            .filter(|&t| {
                let n = city.towns[t].name;
                ["街道", "镇", "苏木", "乡"].iter().any(|s| n.ends_with(s))
            })
            .collect();
        let mut desk_towns: Vec<usize> = Vec::new();
        for county in 0..n_counties {
            if let Some(&t) = eligible.iter().find(|&&t| city.towns[t].county == county) {
                desk_towns.push(t);
            }
        }
        eligible.retain(|t| !desk_towns.contains(t));
        rng.shuffle(&mut eligible);
        let missing = ARRIVALS.saturating_sub(desk_towns.len());
        desk_towns.extend(eligible.into_iter().take(missing));
        for t in desk_towns {
            let town = &city.towns[t];
            let name = format!("{}流动人口登记点", town.name);
            ix.add(city, SiteKind::Arrival, &name, town.code, town.county, now)?;
        }

        // Venues at their town, or at one of its urban communities.
        for &(town_code, name, in_community) in VENUES {
            let Some(county) = city.county_of(town_code) else {
                continue;
            };
            let area: &str = match city.town_index(town_code) {
                Some(t) if in_community => {
                    let candidates = city.town_communities.get(t).map(Vec::as_slice);
                    let candidates = candidates.unwrap_or_default();
                    let urban: Vec<usize> = candidates
                        .iter()
                        .copied()
                        .filter(|&c| city.communities[c].settlement == Settlement::Urban)
                        .collect();
                    match rng.try_pick(&urban).or_else(|| rng.try_pick(candidates)) {
                        Some(&c) => city.communities[c].code,
                        None => city.towns[t].code,
                    }
                }
                Some(t) => city.towns[t].code,
                None => city.counties[county].code,
            };
            ix.add(city, SiteKind::Venue, name, area, county, now)?;
        }
        Ok(ix)
    }

    /// Creates a site and indexes it; returns its index in `sites`.
    fn add(
        &mut self,
        city: &City,
        kind: SiteKind,
        name: &str,
        area_code: &str,
        county: usize,
        now: DateTime<Utc>,
    ) -> Result<usize> {
        let path = city
            .paths
            .get(area_code)
            .ok_or_else(|| anyhow!("site {name}: area {area_code} is not in the demo city"))?;
        let i = self.sites.len();
        self.sites.push(Site {
            id: Uuid::now_v7(),
            token: random_token(16),
            kind,
            name: name.to_string(),
            area_code: area_code.to_string(),
            area_path: path.clone(),
            active: true,
            default_stay_min: kind.default_stay_min(),
            created_at: now,
        });
        let (by_county, all) = match kind {
            SiteKind::Checkpoint => (&mut self.checkpoints_by_county, &mut self.checkpoints),
            SiteKind::Venue => (&mut self.venues_by_county, &mut self.venues),
            SiteKind::Arrival => (&mut self.arrivals_by_county, &mut self.arrivals),
            SiteKind::Gate => return Ok(i),
        };
        if let Some(list) = by_county.get_mut(county) {
            list.push(i);
        }
        all.push(i);
        Ok(i)
    }

    /// A site from the county's list most of the time, else from anywhere in the city.
    fn pick(
        rng: &mut Rng,
        by_county: &[Vec<usize>],
        all: &[usize],
        county: usize,
    ) -> Option<usize> {
        let local = by_county.get(county).map(Vec::as_slice).unwrap_or_default();
        if !local.is_empty() && rng.chance(0.85) {
            rng.try_pick(local).copied()
        } else {
            rng.try_pick(all).copied()
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Persons
// ---------------------------------------------------------------------------------------------

/// One synthetic person, in clear (never printed or logged).
struct Person {
    name: String,
    doc: Document,
    phone: MobilePhone,
    /// Normalised plate (`蒙LA1234`), for car owners.
    plate: Option<String>,
    /// Community index, building and unit of the home.
    home: usize,
    building: usize,
    unit: usize,
    /// The ID number was issued outside Bayannur (a newcomer).
    outsider: bool,
}

impl Person {
    fn region(&self) -> &str {
        self.doc.number().get(..6).unwrap_or("")
    }
}

/// Everything needed to regenerate person `i` on demand.
struct Population<'a> {
    city: &'a City,
    people: u32,
    key: u64,
    births: Permutation,
    plates: Permutation,
    first_birth: NaiveDate,
    /// Urban communities, and those of them with a gate (homes are drawn from these).
    urban_homes: Vec<usize>,
    gated_homes: Vec<usize>,
    /// Population weight of each county, by county index.
    county_weights: Vec<u32>,
    /// Where newcomers' ID numbers were issued, with weights (known codes only).
    outside_regions: Vec<(&'static str, u32)>,
}

impl<'a> Population<'a> {
    fn new(
        city: &'a City,
        sites: &SiteIndex,
        people: u32,
        rng: &mut Rng,
    ) -> Result<Population<'a>> {
        let first_birth = NaiveDate::from_ymd_opt(1940, 1, 1)
            .ok_or_else(|| anyhow!("bad constant birth date"))?;
        let last_birth = NaiveDate::from_ymd_opt(2015, 12, 31)
            .ok_or_else(|| anyhow!("bad constant birth date"))?;
        let birth_days = (last_birth - first_birth).num_days() as u64 + 1;
        let plate_space = (PLATE_CHARS.len() * PLATE_CHARS.len() * 1000) as u64;
        let county_weights = city
            .counties
            .iter()
            .map(|c| {
                COUNTY_WEIGHTS
                    .iter()
                    .find(|(code, _)| *code == c.code)
                    .map_or(100, |(_, w)| *w)
            })
            .collect();
        let outside_regions: Vec<(&'static str, u32)> = OUTSIDE_REGIONS
            .iter()
            .copied()
            .filter(|(code, _)| divisions::is_known_county(code))
            .collect();
        let urban_homes = (0..city.communities.len())
            .filter(|&c| city.communities[c].settlement == Settlement::Urban)
            .collect();
        Ok(Population {
            city,
            people,
            key: rng.next_u64(),
            births: Permutation::new(birth_days * 1000, rng),
            plates: Permutation::new(plate_space, rng),
            first_birth,
            urban_homes,
            county_weights,
            outside_regions,
            gated_homes: sites.gated.clone(),
        })
    }

    /// Regenerates person `i` (the same person every time).
    fn person(&self, i: u32) -> Result<Person> {
        let mut rng = stream(self.key, u64::from(i));
        let city = self.city;

        // Home: about 45% behind a gate, 20% in another urban community, the rest anywhere.
        let r = rng.next_f64();
        let home = if r < 0.45 && !self.gated_homes.is_empty() {
            *rng.pick(&self.gated_homes)
        } else if r < 0.65 && !self.urban_homes.is_empty() {
            *rng.pick(&self.urban_homes)
        } else {
            rng.below(city.communities.len() as u64) as usize
        };
        let community = city
            .communities
            .get(home)
            .ok_or_else(|| anyhow!("no community {home}"))?;
        let building = rng.below(community.buildings.len() as u64) as usize;
        let units = community.buildings.get(building).copied().unwrap_or(1);
        let unit = rng.below(u64::from(units)) as usize;

        // ID number: region, then a birth date and sequence unique to this person.
        let outsider = !self.outside_regions.is_empty() && rng.chance(OUTSIDER_SHARE);
        let region: &str = if outsider {
            rng.weighted_pick(&self.outside_regions)
                .copied()
                .unwrap_or("150102")
        } else if rng.chance(0.8) {
            city.counties[community.county].code
        } else {
            let c = rng.weighted(&self.county_weights);
            city.counties.get(c).map_or(BAYANNUR_CITY, |c| c.code)
        };
        let slot = self.births.apply(u64::from(i));
        let birth = self.first_birth + Duration::days((slot / 1000) as i64);
        let body = format!("{region}{}{:03}", birth.format("%Y%m%d"), slot % 1000);
        let check = epigrid_core::validate::IdNumber::check_char_for(&body)
            .ok_or_else(|| anyhow!("generated a malformed ID number body"))?;
        let doc = Document::parse("id_number", DocType::CnId, &format!("{body}{check}"))
            .map_err(|e| anyhow!("generated an invalid ID number: {e}"))?;

        let raw_name = chinese_name(&mut rng);
        let name = PersonName::parse("name", &raw_name)
            .map_err(|e| anyhow!("generated an invalid name: {e}"))?
            .as_str()
            .to_string();

        let second = *rng.pick(&[3u8, 3, 5, 5, 8, 8, 7, 9, 4, 6]);
        let phone_raw = format!("1{second}{:09}", rng.below(1_000_000_000));
        let phone = MobilePhone::parse("phone", &phone_raw)
            .map_err(|e| anyhow!("generated an invalid phone number: {e}"))?;

        let plate = if rng.chance(CAR_SHARE) {
            let x = self.plates.apply(u64::from(i)) as usize;
            let n = PLATE_CHARS.len();
            let a = PLATE_CHARS[(x / (n * 1000)) % n] as char;
            let b = PLATE_CHARS[(x / 1000) % n] as char;
            let raw = format!("蒙L·{a}{b}{:03}", x % 1000);
            let plate = Plate::parse("plate", &raw)
                .map_err(|e| anyhow!("generated an invalid plate: {e}"))?;
            Some(plate.as_str().to_string())
        } else {
            None
        };
        Ok(Person {
            name,
            doc,
            phone,
            plate,
            home,
            building,
            unit,
            outsider,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Registrations
// ---------------------------------------------------------------------------------------------

/// One visit of a person's day, before it becomes a registration.
#[derive(Debug, Clone, Copy)]
enum Visit {
    GateOut,
    GateIn,
    /// Visiting another gated community.
    GateVisitor {
        community: usize,
    },
    Checkpoint,
    Venue,
    Arrival,
}

/// A local day and its start in UTC.
/// A 24-hour period of registrations: from `start` to a day later.
struct DayWindow {
    /// The local date `start` falls on: what the period's random choices are keyed by.
    date: NaiveDate,
    start: DateTime<Utc>,
}

/// Generates registrations person-day by person-day, oldest day first.
struct Generator<'a> {
    city: &'a City,
    sites: &'a SiteIndex,
    population: &'a Population<'a>,
    vault: &'a Vault,
    now: DateTime<Utc>,
    tz: FixedOffset,
    key: u64,
    days: Vec<DayWindow>,
    day: usize,
    person: u32,
    /// A day's registrations in time order, waiting to be written (the end of the vector
    /// first): see [`SORTED_DAYS_UP_TO`].
    pending: Vec<NewRegistration>,
}

/// Up to this many people, a day's registrations are written in time order, as they would
/// have come, so that the demo's newest-first lists read as a day did; beyond it (benchmark
/// scales, where a day would not fit in memory) person by person.
const SORTED_DAYS_UP_TO: u32 = 200_000;

impl<'a> Generator<'a> {
    fn new(
        city: &'a City,
        sites: &'a SiteIndex,
        population: &'a Population<'a>,
        vault: &'a Vault,
        opts: &DemoOptions,
        key: u64,
    ) -> Generator<'a> {
        let days = (0..opts.days)
            .rev()
            .map(|back| {
                let start = opts.now - Duration::days(i64::from(back) + 1);
                DayWindow {
                    date: start.with_timezone(&opts.tz).date_naive(),
                    start,
                }
            })
            .collect();
        Generator {
            city,
            sites,
            population,
            vault,
            now: opts.now,
            tz: opts.tz,
            key,
            days,
            day: 0,
            person: 0,
            pending: Vec::new(),
        }
    }

    fn total_person_days(&self) -> u64 {
        self.days.len() as u64 * u64::from(self.population.people)
    }

    fn done_person_days(&self) -> u64 {
        self.day as u64 * u64::from(self.population.people) + u64::from(self.person)
    }

    /// The next chunk of about [`CHUNK`] registrations; empty when all are generated.
    fn next_chunk(&mut self) -> Result<Vec<NewRegistration>> {
        if self.population.people <= SORTED_DAYS_UP_TO {
            if self.pending.is_empty() && self.day < self.days.len() {
                let mut day = Vec::new();
                for i in 0..self.population.people {
                    self.person_day(self.day, i, &mut day)?;
                }
                // newest first, so that the oldest are popped off the end
                day.sort_by_key(|r| std::cmp::Reverse(r.at));
                self.pending = day;
                self.day += 1;
            }
            let n = self.pending.len().min(CHUNK);
            let mut out = self.pending.split_off(self.pending.len() - n);
            out.reverse();
            return Ok(out);
        }
        let mut out = Vec::with_capacity(CHUNK + MAX_PER_DAY);
        while out.len() < CHUNK && self.day < self.days.len() {
            if self.person >= self.population.people {
                self.day += 1;
                self.person = 0;
                continue;
            }
            self.person_day(self.day, self.person, &mut out)?;
            self.person += 1;
        }
        Ok(out)
    }

    /// The registrations of person `i` on day `d`.
    fn person_day(&self, d: usize, i: u32, out: &mut Vec<NewRegistration>) -> Result<()> {
        let Some(window) = self.days.get(d) else {
            return Ok(());
        };
        // Keyed by the date itself, so a day looks the same whatever `days` was asked for.
        let day_key = mix64(self.key ^ mix64(window.date.num_days_from_ce() as u64));
        let mut rng = stream(day_key, u64::from(i));
        let person = self.population.person(i)?;
        let community = &self.city.communities[person.home];
        let county = community.county;
        let sites = self.sites;

        // The day's plan: (site, seconds after local midnight, visit).
        let mut plan: Vec<(usize, i64, Visit)> = Vec::with_capacity(MAX_PER_DAY + 2);
        if let Some(&gate) = sites.gate_of.get(&person.home) {
            if rng.chance(0.6) {
                plan.push((gate, rng.range(7 * 3600, 11 * 3600), Visit::GateOut));
                plan.push((gate, rng.range(16 * 3600, 21 * 3600), Visit::GateIn));
            }
        }
        if rng.chance(0.25) {
            if let Some(s) =
                SiteIndex::pick(&mut rng, &sites.venues_by_county, &sites.venues, county)
            {
                plan.push((s, rng.range(9 * 3600, 20 * 3600), Visit::Venue));
            }
        }
        let drives = if person.plate.is_some() { 0.15 } else { 0.03 };
        if rng.chance(drives) {
            if let Some(s) = SiteIndex::pick(
                &mut rng,
                &sites.checkpoints_by_county,
                &sites.checkpoints,
                county,
            ) {
                plan.push((s, rng.range(6 * 3600, 22 * 3600), Visit::Checkpoint));
            }
        }
        // people from elsewhere report at an arrival desk now and then (on arriving, on moving)
        if person.outsider && rng.chance(0.08) {
            if let Some(s) =
                SiteIndex::pick(&mut rng, &sites.arrivals_by_county, &sites.arrivals, county)
            {
                plan.push((s, rng.range(8 * 3600, 18 * 3600), Visit::Arrival));
            }
        }
        if rng.chance(0.04) {
            if let Some(&c) = rng.try_pick(&sites.gated) {
                if c != person.home {
                    if let Some(&gate) = sites.gate_of.get(&c) {
                        let t = rng.range(9 * 3600, 20 * 3600);
                        plan.push((gate, t, Visit::GateVisitor { community: c }));
                    }
                }
            }
        }
        plan.truncate(MAX_PER_DAY);
        if plan.is_empty() {
            return Ok(());
        }

        // Health of the day: about 1% have a fever, about 2% report symptoms.
        let fever = rng.chance(0.01);
        let mut symptoms = 0u8;
        if rng.chance(0.02) {
            let others = [
                Symptom::Cough,
                Symptom::Fatigue,
                Symptom::SoreThroat,
                Symptom::ShortnessOfBreath,
                Symptom::Diarrhoea,
            ];
            for _ in 0..rng.range(1, 2) {
                symptoms |= rng.pick(&others).bit();
            }
            if fever && rng.chance(0.5) {
                symptoms |= Symptom::Fever.bit();
            }
        }
        let base_temp = 360 + rng.below(7) as i16 + rng.below(7) as i16;
        let sealed = seal_person(
            self.vault,
            &person.name,
            Some(&person.doc),
            Some(&person.phone),
        );

        for (site_ix, secs, visit) in plan {
            let Some(site) = sites.sites.get(site_ix) else {
                continue;
            };
            let millis = rng.below(1000) as i64;
            // the first moment in the period at that local time of day
            let local_start = window.start.with_timezone(&self.tz);
            let after =
                (secs - i64::from(local_start.num_seconds_from_midnight())).rem_euclid(86_400);
            let at = window.start + Duration::seconds(after) + Duration::milliseconds(millis);
            let temperature = if fever {
                373 + rng.below(16) as i16
            } else {
                (base_temp + rng.range(-1, 1) as i16).clamp(360, 372)
            };
            let mut fields = RegistrationFields {
                temperature: Some(temperature),
                symptoms,
                ..Default::default()
            };
            let mut companion_list = Vec::new();
            match visit {
                Visit::GateOut | Visit::GateIn => {
                    fields.direction = Some(if matches!(visit, Visit::GateOut) {
                        Direction::Out
                    } else {
                        Direction::In
                    });
                    fields.visitor = Some(false);
                    fields.unit_code = Some(community.unit_code(person.building, person.unit));
                }
                Visit::GateVisitor { community: c } => {
                    let target = &self.city.communities[c];
                    let b = rng.below(target.buildings.len() as u64) as usize;
                    let units = target.buildings.get(b).copied().unwrap_or(1);
                    let u = rng.below(u64::from(units)) as usize;
                    fields.direction = Some(Direction::In);
                    fields.visitor = Some(true);
                    fields.unit_code = Some(target.unit_code(b, u));
                    fields.visit_reason = Some(rng.pick(VISIT_REASONS).to_string());
                }
                Visit::Checkpoint => {
                    self.checkpoint_fields(&mut rng, &person, site, &mut fields);
                    companion_list = self.companions(&mut rng, i, fields.companions)?;
                }
                Visit::Venue => {
                    if rng.chance(0.1) {
                        fields.temperature = None;
                    }
                }
                Visit::Arrival => {
                    self.arrival_fields(&mut rng, &person, window.date, &mut fields);
                    if rng.chance(0.2) {
                        fields.temperature = None;
                    }
                }
            }
            if at > self.now {
                continue;
            }
            out.push(NewRegistration {
                id: time_ordered_id(at),
                site_id: site.id,
                area_path: site.area_path.clone(),
                at,
                kind: site.kind,
                channel: Channel::SelfService,
                by_user: None,
                verification_code: verification_code(),
                person: sealed.clone(),
                companion_list,
                fields,
                day: at.with_timezone(&self.tz).date_naive(),
            });
        }
        Ok(())
    }

    fn checkpoint_fields(
        &self,
        rng: &mut Rng,
        person: &Person,
        site: &Site,
        fields: &mut RegistrationFields,
    ) {
        let city = self.city;
        fields.plate = person.plate.clone().filter(|_| rng.chance(0.85));
        let origin: String = if person.outsider && rng.chance(0.4) {
            person.region().to_string()
        } else if rng.chance(0.7) {
            city.counties[rng.below(city.counties.len() as u64) as usize]
                .code
                .to_string()
        } else {
            let (code, _) = rng
                .try_pick(OUTSIDE_REGIONS)
                .copied()
                .unwrap_or(("150102", 1));
            code.to_string()
        };
        fields.origin_code = divisions::normalise_origin(&origin);
        if fields.origin_code.is_none() {
            fields.origin_code = Some(BAYANNUR_CITY.to_string());
        }
        let home = &city.communities[person.home];
        let town = &city.towns[home.town];
        let heading_home = site.area_path.starts_with(&city.counties[home.county].path);
        fields.destination = Some(if heading_home || rng.chance(0.5) {
            format!("{}{}", city.counties[home.county].name, town.name)
        } else {
            let c = &city.counties[rng.below(city.counties.len() as u64) as usize];
            c.name.to_string()
        });
        fields.companions = [0, 0, 0, 0, 0, 1, 1, 1, 2, 3][rng.below(10) as usize];
        fields.high_risk_travel = Some(rng.chance(0.01));
    }

    /// Up to `count` listed companions: other demo persons, named and identified about half
    /// of the time (the rest are counted only).
    fn companions(&self, rng: &mut Rng, i: u32, count: i32) -> Result<Vec<CompanionInput>> {
        let mut list = Vec::new();
        let people = self.population.people;
        for _ in 0..count {
            if people < 2 || !rng.chance(0.5) {
                continue;
            }
            let mut j = rng.below(u64::from(people)) as u32;
            if j == i {
                j = (j + 1) % people;
            }
            let other = self.population.person(j)?;
            list.push(CompanionInput {
                name: Some(other.name.clone()),
                person: Some(seal_person(self.vault, &other.name, Some(&other.doc), None)),
            });
        }
        Ok(list)
    }

    fn arrival_fields(
        &self,
        rng: &mut Rng,
        person: &Person,
        day: NaiveDate,
        fields: &mut RegistrationFields,
    ) {
        let city = self.city;
        let home = &city.communities[person.home];
        let town = &city.towns[home.town];
        fields.arrival_date = Some(day - Duration::days(rng.range(0, 3)));
        fields.origin_code = divisions::normalise_origin(person.region());
        if fields.origin_code.is_none() {
            fields.origin_code = Some(BAYANNUR_CITY.to_string());
        }
        fields.residence_code = Some(home.code.to_string());
        fields.address = Some(format!(
            "{}{}{}{}",
            town.name,
            home.short,
            home.building_name(person.building),
            home.unit_name(person.unit)
        ));
        fields.employer = rng.chance(0.6).then(|| rng.pick(EMPLOYERS).to_string());
        fields.stay_days = Some(*rng.pick(STAY_DAYS));
        fields.purpose = Some(rng.pick(PURPOSES).to_string());
        fields.high_risk_travel = Some(rng.chance(0.02));
    }
}

/// A UUIDv7 carrying the registration's own time, so ids sort by registration time.
fn time_ordered_id(at: DateTime<Utc>) -> Uuid {
    match u64::try_from(at.timestamp()) {
        Ok(secs) => Uuid::new_v7(uuid::Timestamp::from_unix(
            uuid::NoContext,
            secs,
            at.timestamp_subsec_nanos(),
        )),
        Err(_) => Uuid::now_v7(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use epigrid_core::model::RegistrationFilter;
    use epigrid_store_sqlite::{Durability, SqliteStore};

    /// A fresh SQLite store in its own temporary directory (removed when dropped).
    struct TempStore {
        store: SqliteStore,
        dir: std::path::PathBuf,
    }

    impl Drop for TempStore {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn temp_store() -> TempStore {
        let dir = std::env::temp_dir().join(format!("epigrid-demo-{}", random_token(8)));
        let store = SqliteStore::open(&dir.join("demo.db"), Durability::Process).expect("open");
        TempStore { store, dir }
    }

    fn options(seed: u64) -> DemoOptions {
        DemoOptions {
            seed,
            people: 300,
            days: 2,
            // 2020-02-10 15:30 in Bayannur.
            now: DateTime::parse_from_rfc3339("2020-02-10T15:30:00+08:00")
                .expect("a valid time")
                .with_timezone(&Utc),
            tz: FixedOffset::east_opt(8 * 3600).expect("a valid offset"),
        }
    }

    async fn build_into(seed: u64) -> (TempStore, DemoSummary) {
        let t = temp_store();
        let vault = Vault::new(&[7u8; 32]);
        let summary = build(&t.store, &vault, &options(seed))
            .await
            .expect("build");
        (t, summary)
    }

    /// (site name, person name, temperature) of every registration, sorted.
    async fn fingerprint(store: &SqliteStore) -> Vec<(String, String, Option<i16>)> {
        let filter = RegistrationFilter {
            limit: 5000,
            ..Default::default()
        };
        let regs = store.registrations(&Scope::all(), &filter).await.unwrap();
        let mut v: Vec<_> = regs
            .into_iter()
            .map(|r| (r.site_name, r.name, r.fields.temperature))
            .collect();
        v.sort();
        v
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn demo_city_has_the_expected_shape() {
        let (t, summary) = build_into(7).await;
        let store = &t.store;
        // written in time order: the newest-first list reads as the days did
        let newest = store
            .registrations(
                &Scope::all(),
                &epigrid_core::model::RegistrationFilter {
                    limit: 1000,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert!(newest.len() > 100);
        assert!(newest.windows(2).all(|w| w[0].at >= w[1].at));

        let roots = store.area_children(None).await.unwrap();
        assert_eq!(roots.len(), 1);
        assert_eq!(roots[0].name, "巴彦淖尔市");
        let counties = store.area_children(Some("150800")).await.unwrap();
        assert_eq!(counties.len(), 7);
        let everything = Scope::all();
        let upto = |level| store.areas_in(&everything, level);
        let count = |areas: Vec<Area>, level| areas.iter().filter(|a| a.level == level).count();
        assert_eq!(count(upto(3).await.unwrap(), 3), 89);
        assert_eq!(count(upto(4).await.unwrap(), 4), 956);
        assert_eq!(store.area_count().await.unwrap(), summary.areas as i64);
        let all = upto(6).await.unwrap();
        let buildings = count(all.clone(), 5);
        let units = count(all.clone(), 6);
        assert!((956 * 2..=956 * 6).contains(&buildings), "{buildings}");
        assert!((buildings * 2..=buildings * 4).contains(&units), "{units}");
        let unit = all.iter().find(|a| a.level == 6).expect("a unit");
        assert_eq!(unit.code.len(), 18);
        assert!(unit.path.ends_with(&format!("{}/", unit.code)));

        // Sites: every kind, every kind in 临河区, a checkpoint in every county.
        let sites = store.sites(&Scope::all()).await.unwrap();
        assert_eq!(sites.len(), summary.sites.len());
        assert!((90..=110).contains(&sites.len()), "{}", sites.len());
        let linhe = Scope::new("/150800/150802/");
        for kind in SiteKind::ALL {
            assert!(sites.iter().any(|s| s.kind == *kind), "no {kind}");
            assert!(
                sites
                    .iter()
                    .any(|s| s.kind == *kind && linhe.contains(&s.area_path)),
                "no {kind} in 临河区"
            );
        }
        for c in &counties {
            assert!(
                sites.iter().any(|s| s.kind == SiteKind::Checkpoint
                    && Scope::new(c.path.clone()).contains(&s.area_path)),
                "no checkpoint in {}",
                c.name
            );
        }
        let tokens: std::collections::HashSet<_> = sites.iter().map(|s| &s.token).collect();
        assert_eq!(tokens.len(), sites.len());
        assert!(sites.iter().all(|s| s.token.len() == 32));

        // Registrations, and the rollups agree with them.
        assert!(summary.registrations > 0);
        assert_eq!(
            store.registration_count().await.unwrap(),
            summary.registrations as i64
        );
        let mut recount = store.recount_rollups().await.unwrap();
        let mut rows = store.rollup_rows().await.unwrap();
        let key =
            |r: &epigrid_core::model::RollupRow| (r.area_code.clone(), r.day, r.metric.clone());
        recount.sort_by_key(key);
        rows.sort_by_key(key);
        assert_eq!(recount, rows);

        // Every registration lies within the requested days, up to now.
        let opts = options(7);
        let filter = RegistrationFilter {
            limit: 5000,
            ..Default::default()
        };
        let regs = store.registrations(&Scope::all(), &filter).await.unwrap();
        let first = opts.now - Duration::days(i64::from(opts.days));
        for r in &regs {
            assert!(r.at <= opts.now);
            assert!(r.at >= first, "{} is before the requested days", r.at);
        }
        for kind in SiteKind::ALL {
            let of_kind = RegistrationFilter {
                kind: Some(*kind),
                limit: 1,
                ..Default::default()
            };
            assert!(
                !store
                    .registrations(&Scope::all(), &of_kind)
                    .await
                    .unwrap()
                    .is_empty(),
                "no {kind} registration"
            );
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn the_same_seed_gives_the_same_data() {
        let ((a, sa), (b, sb), (c, _)) = tokio::join!(build_into(7), build_into(7), build_into(8));
        assert_eq!(sa.registrations, sb.registrations);
        let fa = fingerprint(&a.store).await;
        assert!(!fa.is_empty());
        assert_eq!(fa, fingerprint(&b.store).await);
        assert_ne!(fa, fingerprint(&c.store).await);
        // Tokens are random even for the same seed.
        assert_ne!(sa.sites[0].token, sb.sites[0].token);
        assert_eq!(sa.sites[0].name, sb.sites[0].name);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn one_day_is_a_full_day_of_registrations_at_any_hour() {
        let t = temp_store();
        let vault = Vault::new(&[7u8; 32]);
        let mut opts = options(3);
        opts.people = 200;
        opts.days = 1;
        // 05:20 in Bayannur: the local day has barely begun
        opts.now = DateTime::parse_from_rfc3339("2020-02-10T05:20:00+08:00")
            .expect("a valid time")
            .with_timezone(&Utc);
        let summary = build(&t.store, &vault, &opts).await.unwrap();
        assert!(
            summary.registrations > 100,
            "a day's gates, venues and checkpoints: {}",
            summary.registrations
        );
        let filter = RegistrationFilter {
            limit: 5000,
            ..Default::default()
        };
        let regs = t.store.registrations(&Scope::all(), &filter).await.unwrap();
        assert!(regs
            .iter()
            .all(|r| r.at <= opts.now && r.at >= opts.now - Duration::days(1)));
        // activity keeps local hours: nobody leaves through a gate before 07:00
        assert!(regs.iter().filter(|r| r.kind == SiteKind::Gate).all(|r| r
            .at
            .with_timezone(&opts.tz)
            .hour()
            >= 7));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_second_build_into_the_same_store_is_refused() {
        let t = temp_store();
        let vault = Vault::new(&[7u8; 32]);
        let mut opts = options(1);
        opts.people = 5;
        opts.days = 1;
        build(&t.store, &vault, &opts).await.unwrap();
        assert!(build(&t.store, &vault, &opts).await.is_err());
    }

    #[test]
    fn permutation_is_a_bijection() {
        let mut rng = Rng::new(3);
        for n in [1u64, 2, 3, 10, 1000, 4097] {
            let p = Permutation::new(n, &mut rng);
            let mut seen: Vec<u64> = (0..n).map(|x| p.apply(x)).collect();
            seen.sort_unstable();
            assert_eq!(seen, (0..n).collect::<Vec<_>>(), "n = {n}");
        }
    }

    #[test]
    fn persons_are_valid_and_distinct() {
        let mut rng = Rng::new(11);
        let city = City::generate(&mut rng).unwrap();
        let sites = SiteIndex::generate(&city, &mut rng, Utc::now()).unwrap();
        let pop = Population::new(&city, &sites, 2000, &mut rng).unwrap();
        let mut docs = std::collections::HashSet::new();
        let mut plates = std::collections::HashSet::new();
        let mut outsiders = 0;
        for i in 0..2000 {
            let p = pop.person(i).unwrap();
            assert!(docs.insert(p.doc.number().to_string()));
            if let Some(plate) = &p.plate {
                assert!(plates.insert(plate.clone()));
                assert!(plate.starts_with("蒙L"));
            }
            let birth = p.doc.id_number().unwrap().birth_date();
            assert!((1940..=2015).contains(&birth.year()));
            outsiders += usize::from(p.outsider);
            // Regenerating gives the same person.
            assert_eq!(pop.person(i).unwrap().doc.number(), p.doc.number());
        }
        assert!((150..=450).contains(&outsiders), "{outsiders}");
        assert!((400..=800).contains(&plates.len()), "{}", plates.len());
    }

    #[test]
    fn community_names_lose_their_committee_suffix() {
        assert_eq!(short_community_name("金河社区居委会").0, "金河社区");
        assert_eq!(short_community_name("白艮居委会").0, "白艮社区");
        assert_eq!(
            short_community_name("红光村民委员会"),
            ("红光村".to_string(), Settlement::Village)
        );
        assert_eq!(
            short_community_name("呼和嘎查委员会"),
            ("呼和嘎查".to_string(), Settlement::Rural)
        );
        assert_eq!(short_community_name("今日社区").1, Settlement::Urban);
    }
}
