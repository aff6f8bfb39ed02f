//! `geoip`: looks up a client IP in a MaxMind GeoLite2-City database (and optionally
//! GeoLite2-ASN) and writes Logstash's ECS layout under `target`: `ip`, `geo.*` and `as.*`.
//! The database can be missing at start (the stage passes events through and reports itself
//! Degraded) and is swapped without a restart when the file is replaced.

mod database;
pub mod verify;

pub use database::{open, Kind, Loaded, OpenError, WatchedDb};

use super::cache::ShardedCache;
use super::{parse_path, Filter};
use crate::config::{de, did_you_mean, Problem};
use crate::event::{Event, FieldPath};
use crate::health::{HealthHandle, Status};
use crate::BuildContext;
use serde::Deserialize;
use serde_json::{Map, Value};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;

pub const TAG_LOOKUP_FAILURE: &str = "_geoip_lookup_failure";
pub const TAG_INVALID_IP: &str = "_geoip_invalid_ip";
pub const DEFAULT_DATABASE: &str = "GeoLite2/GeoLite2-City.mmdb";
const README: &str = "GeoLite2/README.md";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Field holding the IP address (a string, or an array whose first item is used).
    #[serde(default = "default_source")]
    pub source: String,
    /// Field that receives `ip`, `geo` and `as`.
    #[serde(default = "default_target")]
    pub target: String,
    /// GeoLite2-City database file. Default `GeoLite2/GeoLite2-City.mmdb`.
    #[serde(default = "default_database")]
    pub database: String,
    /// Optional GeoLite2-ASN database file; empty means none.
    #[serde(default)]
    pub asn_database: Option<String>,
    /// Fields to write (see [`GeoField`]); default all.
    #[serde(default, deserialize_with = "opt_list")]
    pub fields: Option<Vec<String>>,
    /// How often the database files are checked for replacement. Default 5s.
    #[serde(default = "default_reload", deserialize_with = "de::duration")]
    pub reload_interval: Duration,
    /// Lookup results kept for repeating client IPs; 0 disables the cache. Default 16384.
    #[serde(default = "default_cache", deserialize_with = "de::from_str_or_value")]
    pub cache_size: usize,
}

fn default_source() -> String {
    "client_ip".into()
}
fn default_target() -> String {
    "geoip".into()
}
fn default_database() -> String {
    DEFAULT_DATABASE.into()
}
fn default_reload() -> Duration {
    Duration::from_secs(5)
}
fn default_cache() -> usize {
    16_384
}
fn opt_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    de::string_list(d).map(Some)
}

/// A field the stage can write, named as in the `fields` option.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GeoField {
    Ip,
    CountryIsoCode,
    CountryName,
    ContinentCode,
    RegionIsoCode,
    RegionName,
    CityName,
    PostalCode,
    Timezone,
    Location,
    AsNumber,
    AsOrganization,
}

const FIELD_NAMES: &[(&str, GeoField)] = &[
    ("ip", GeoField::Ip),
    ("country_iso_code", GeoField::CountryIsoCode),
    ("country_name", GeoField::CountryName),
    ("continent_code", GeoField::ContinentCode),
    ("region_iso_code", GeoField::RegionIsoCode),
    ("region_name", GeoField::RegionName),
    ("city_name", GeoField::CityName),
    ("postal_code", GeoField::PostalCode),
    ("timezone", GeoField::Timezone),
    ("location", GeoField::Location),
    ("as_number", GeoField::AsNumber),
    ("as_organization", GeoField::AsOrganization),
];

/// Which fields are written, as a bit set.
#[derive(Debug, Clone, Copy)]
struct FieldSet(u16);

impl FieldSet {
    fn all() -> Self {
        FieldSet(u16::MAX)
    }
    fn has(self, f: GeoField) -> bool {
        self.0 & (1 << f as u16) != 0
    }
}

/// The parts of a City record the stage reads; other keys are skipped by the decoder.
#[derive(Deserialize)]
struct CityRecord<'a> {
    #[serde(borrow)]
    city: Option<Named<'a>>,
    #[serde(borrow)]
    continent: Option<Coded<'a>>,
    #[serde(borrow)]
    country: Option<Coded<'a>>,
    #[serde(borrow)]
    location: Option<Location<'a>>,
    #[serde(borrow)]
    postal: Option<Coded<'a>>,
    #[serde(borrow)]
    subdivisions: Option<Vec<Coded<'a>>>,
}

#[derive(Deserialize)]
struct Names<'a> {
    #[serde(borrow)]
    en: Option<&'a str>,
}

#[derive(Deserialize)]
struct Named<'a> {
    #[serde(borrow)]
    names: Option<Names<'a>>,
}

#[derive(Deserialize)]
struct Coded<'a> {
    #[serde(borrow)]
    iso_code: Option<&'a str>,
    #[serde(borrow)]
    code: Option<&'a str>,
    #[serde(borrow)]
    names: Option<Names<'a>>,
}

impl<'a> Coded<'a> {
    fn name(&self) -> Option<&'a str> {
        self.names.as_ref().and_then(|n| n.en)
    }
}

#[derive(Deserialize)]
struct Location<'a> {
    latitude: Option<f64>,
    longitude: Option<f64>,
    #[serde(borrow)]
    time_zone: Option<&'a str>,
}

#[derive(Deserialize)]
struct AsnRecord<'a> {
    autonomous_system_number: Option<u32>,
    #[serde(borrow)]
    autonomous_system_organization: Option<&'a str>,
}

/// The outcome of looking up one address, cached per database generation.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// The object written to `target`.
    Found(Value),
    /// Neither database has the address.
    NotFound,
}

type CacheKey = (u64, u64, IpAddr);

/// Everything the reload watcher needs; the filter holds it, the watcher only a `Weak`.
struct Shared {
    city: WatchedDb,
    asn: Option<WatchedDb>,
    health: HealthHandle,
}

impl Shared {
    fn report_health(&self) {
        let mut problems: Vec<String> = Vec::new();
        for db in std::iter::once(&self.city).chain(self.asn.as_ref()) {
            if let Some(p) = db.problem() {
                problems.push(p);
            }
        }
        if problems.is_empty() {
            self.health.ok();
        } else {
            let mut reason = problems.join("; ");
            if self.city.current().is_none() {
                reason.push_str(&format!(
                    "; events pass through without GeoIP fields until the file appears (see {README})"
                ));
            }
            self.health.set(Status::Degraded, reason);
        }
    }
}

pub struct GeoipFilter {
    source: FieldPath,
    target: FieldPath,
    fields: FieldSet,
    shared: Arc<Shared>,
    cache: ShardedCache<CacheKey, Arc<Answer>>,
}

impl Config {
    /// Compiles the stage and opens the databases. A missing or broken City database is a
    /// warning: the stage still runs (passing events through) and the watcher retries.
    pub fn build(
        &self,
        ctx: &BuildContext,
        warnings: &mut Vec<Problem>,
    ) -> Result<GeoipFilter, Vec<Problem>> {
        let mut problems = Vec::new();
        let source = parse_path("source", &self.source, &mut problems);
        let target = parse_path("target", &self.target, &mut problems);
        let fields = match &self.fields {
            None => FieldSet::all(),
            Some(list) => {
                let mut set = FieldSet(0);
                for name in list {
                    let bare = name.strip_prefix("geo.").unwrap_or(name);
                    match FIELD_NAMES.iter().find(|(n, _)| *n == bare) {
                        Some((_, f)) => set.0 |= 1 << *f as u16,
                        None => {
                            let names: Vec<&str> = FIELD_NAMES.iter().map(|(n, _)| *n).collect();
                            let prefixed = names.iter().find(|n| n.starts_with(bare)).copied();
                            let hint = match prefixed.or_else(|| did_you_mean(bare, &names)) {
                                Some(s) => format!("did you mean `{s}`?"),
                                None => format!("valid fields: {}", names.join(", ")),
                            };
                            problems.push(
                                Problem::at("fields", format!("unknown GeoIP field `{name}`"))
                                    .hint(hint),
                            );
                        }
                    }
                }
                set
            }
        };
        if self.reload_interval < Duration::from_millis(100) {
            problems.push(
                Problem::at(
                    "reload_interval",
                    format!("{:?} is too short", self.reload_interval),
                )
                .hint("check for a new database every few seconds, e.g. \"5s\""),
            );
        }
        if self.database.trim().is_empty() {
            problems.push(
                Problem::at("database", "no database file given")
                    .hint(format!("set it to {DEFAULT_DATABASE} or ${{GEOIP_DB}}")),
            );
        }
        let (Some(source), Some(target)) = (source, target) else {
            return Err(problems);
        };
        if !problems.is_empty() {
            return Err(problems);
        }

        let (city, city_err) = WatchedDb::open(PathBuf::from(self.database.trim()), Kind::City);
        if let Some(e) = &city_err {
            warnings.push(open_problem("database", e, Kind::City));
        }
        let asn = match self.asn_database.as_deref().map(str::trim) {
            Some(path) if !path.is_empty() => {
                let (db, err) = WatchedDb::open(PathBuf::from(path), Kind::Asn);
                if let Some(e) = &err {
                    warnings.push(open_problem("asn_database", e, Kind::Asn));
                }
                Some(db)
            }
            _ => None,
        };
        let shared = Arc::new(Shared {
            health: ctx.health.register("filter geoip"),
            city,
            asn,
        });
        shared.report_health();
        spawn_watcher(
            Arc::downgrade(&shared),
            self.reload_interval,
            ctx.shutdown.clone(),
        );
        Ok(GeoipFilter {
            source,
            target,
            fields,
            shared,
            cache: ShardedCache::new(self.cache_size),
        })
    }
}

fn open_problem(key: &str, e: &OpenError, kind: Kind) -> Problem {
    let what = match kind {
        Kind::City => "GeoLite2-City.mmdb",
        Kind::Asn => "GeoLite2-ASN.mmdb",
    };
    let hint = match e {
        OpenError::Missing(_) => format!(
            "download {what} with geoipupdate or scripts/fetch-geolite2 (see {README}), or point GEOIP_DB at it; until then the geoip stage passes events through unchanged"
        ),
        OpenError::WrongType { .. } => format!("point `{key}` at {}", kind.expected()),
        _ => format!(
            "replace the file with a fresh download (see {README}); until then the geoip stage passes events through unchanged"
        ),
    };
    Problem::at(key, format!("GeoIP database unusable: {e}"))
        .hint(hint)
        .warning()
}

/// Polls the database files until shutdown or until the filter is dropped. Without a Tokio
/// runtime (`sheepdog check`) there is nothing to watch for.
fn spawn_watcher(
    shared: Weak<Shared>,
    interval: Duration,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let Some(s) = shared.upgrade() else { return };
    let mut seen = (
        s.city.initial_fingerprint(),
        s.asn.as_ref().and_then(WatchedDb::initial_fingerprint),
    );
    drop(s);
    handle.spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
            let Some(s) = shared.upgrade() else { return };
            let before = seen;
            let joined = tokio::task::spawn_blocking(move || {
                let city = s.city.refresh(before.0);
                let asn = s.asn.as_ref().and_then(|db| db.refresh(before.1));
                if (city, asn) != before {
                    s.report_health();
                }
                (city, asn)
            })
            .await;
            match joined {
                Ok(now) => seen = now,
                Err(e) => tracing::error!(error = %e, "GeoIP reload check failed"),
            }
        }
    });
}

/// True for addresses no GeoIP database covers: private, loopback, link-local, unspecified,
/// broadcast, documentation-free local ranges, and the IPv6 equivalents.
pub fn is_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_local(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || (first & 0xfe00) == 0xfc00 // unique local fc00::/7
                || (first & 0xffc0) == 0xfe80 // link-local fe80::/10
        }
    }
}

impl GeoipFilter {
    /// Looks `ip` up in the databases in use, bypassing the cache.
    pub fn lookup(&self, ip: IpAddr) -> Answer {
        let city = self.shared.city.current();
        let asn = self.shared.asn.as_ref().map(|a| a.current());
        self.resolve(ip, city.as_deref(), asn.as_ref().and_then(|g| g.as_deref()))
    }

    fn resolve(&self, ip: IpAddr, city: Option<&Loaded>, asn: Option<&Loaded>) -> Answer {
        let f = self.fields;
        let mut geo = Map::new();
        if let Some(db) = city {
            match db.reader.lookup::<CityRecord>(ip) {
                Ok(Some(r)) => write_city(&mut geo, &r, f),
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!(%ip, error = %e, "GeoIP City lookup failed");
                }
            }
        }
        let mut as_obj = Map::new();
        if let Some(db) = asn {
            if let Ok(Some(r)) = db.reader.lookup::<AsnRecord>(ip) {
                if let (true, Some(n)) = (f.has(GeoField::AsNumber), r.autonomous_system_number) {
                    as_obj.insert("number".into(), Value::from(n));
                }
                if let (true, Some(o)) = (
                    f.has(GeoField::AsOrganization),
                    r.autonomous_system_organization,
                ) {
                    let mut org = Map::new();
                    org.insert("name".into(), Value::from(o));
                    as_obj.insert("organization".into(), Value::Object(org));
                }
            }
        }
        if geo.is_empty() && as_obj.is_empty() {
            return Answer::NotFound;
        }
        let mut out = Map::new();
        if f.has(GeoField::Ip) {
            out.insert("ip".into(), Value::String(ip.to_string()));
        }
        if !geo.is_empty() {
            out.insert("geo".into(), Value::Object(geo));
        }
        if !as_obj.is_empty() {
            out.insert("as".into(), Value::Object(as_obj));
        }
        Answer::Found(Value::Object(out))
    }
}

fn write_city(geo: &mut Map<String, Value>, r: &CityRecord, f: FieldSet) {
    let mut put = |field: GeoField, key: &str, v: Option<&str>| {
        if let (true, Some(v)) = (f.has(field), v) {
            geo.insert(key.into(), Value::from(v));
        }
    };
    let country_iso = r.country.as_ref().and_then(|c| c.iso_code);
    put(GeoField::CountryIsoCode, "country_iso_code", country_iso);
    put(
        GeoField::CountryName,
        "country_name",
        r.country.as_ref().and_then(Coded::name),
    );
    put(
        GeoField::ContinentCode,
        "continent_code",
        r.continent.as_ref().and_then(|c| c.code),
    );
    // Like Logstash and the Elasticsearch geoip processor: the most specific subdivision.
    let region = r.subdivisions.as_ref().and_then(|s| s.last());
    if let (Some(c), Some(s)) = (country_iso, region.and_then(|s| s.iso_code)) {
        put(
            GeoField::RegionIsoCode,
            "region_iso_code",
            Some(&format!("{c}-{s}")),
        );
    }
    put(
        GeoField::RegionName,
        "region_name",
        region.and_then(Coded::name),
    );
    put(
        GeoField::CityName,
        "city_name",
        r.city
            .as_ref()
            .and_then(|c| c.names.as_ref())
            .and_then(|n| n.en),
    );
    put(
        GeoField::PostalCode,
        "postal_code",
        r.postal.as_ref().and_then(|p| p.code),
    );
    if let Some(loc) = &r.location {
        put(GeoField::Timezone, "timezone", loc.time_zone);
        if let (true, Some(lat), Some(lon)) =
            (f.has(GeoField::Location), loc.latitude, loc.longitude)
        {
            let mut l = Map::new();
            l.insert("lat".into(), Value::from(lat));
            l.insert("lon".into(), Value::from(lon));
            geo.insert("location".into(), Value::Object(l));
        }
    }
}

/// The address in the source field: a string, or the first item of an array.
fn source_text(v: &Value) -> Option<&str> {
    match v {
        Value::String(s) => Some(s),
        Value::Array(a) => a.first().and_then(Value::as_str),
        _ => None,
    }
}

impl Filter for GeoipFilter {
    fn apply(&self, event: &mut Event) -> bool {
        let Some(value) = event.get(&self.source) else {
            return true;
        };
        let parsed = source_text(value).and_then(|s| s.trim().parse::<IpAddr>().ok());
        let Some(ip) = parsed else {
            event.add_tag(TAG_INVALID_IP);
            return false;
        };
        if is_local(ip) {
            return true;
        }
        let city = self.shared.city.current();
        let Some(city_db) = city.as_deref() else {
            // No database yet: pass through; health and the start-up warning say why.
            return true;
        };
        let asn = self.shared.asn.as_ref().map(|a| a.current());
        let asn_db = asn.as_ref().and_then(|g| g.as_deref());
        let key = (city_db.generation, asn_db.map_or(0, |d| d.generation), ip);
        let answer = match self.cache.get(&key) {
            Some(a) => a,
            None => {
                let a = Arc::new(self.resolve(ip, Some(city_db), asn_db));
                self.cache.insert(key, a.clone());
                a
            }
        };
        match &*answer {
            Answer::Found(v) => {
                event.insert(&self.target, v.clone());
                true
            }
            Answer::NotFound => {
                event.add_tag(TAG_LOOKUP_FAILURE);
                false
            }
        }
    }
}

#[cfg(test)]
mod tests;
