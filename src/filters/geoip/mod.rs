//! `geoip`: looks up a client IP in a MaxMind GeoLite2-City database (and optionally
//! GeoLite2-ASN) and writes Logstash's ECS layout under `target`: `ip`, `geo.*` and `as.*`.
//! The database can be missing at start (the stage passes events through and reports itself
//! Degraded) and is swapped without a restart when the file is replaced. In the daemon the file
//! is verified in the background after start-up; the stage reports itself not ready until then
//! so the filter workers hold events back instead of passing them through unenriched.

mod database;
pub mod record;
pub mod verify;

pub use database::{open, Kind, Loaded, OpenError, Registry, WatchedDb};

use super::cache::ShardedCache;
use super::{parse_path, Filter};
use crate::config::de;
use crate::config::problem::{did_you_mean, Problem};
use crate::event::{Event, FieldPath, SharedValue};
use crate::health::{HealthHandle, Status};
use crate::{BuildContext, Verify};
use futures_util::future::BoxFuture;
use serde::Deserialize;
use serde_json::{Map, Value};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
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
    /// Answers kept per client address, and decoded database records (shared by every
    /// address of a network) kept, each up to this many; 0 disables both. Default 16384.
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

/// The outcome of looking up one address, cached per database generation.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// The object written to `target`.
    Found(Value),
    /// Neither database has the address.
    NotFound,
}

/// Decoded records as positions in their data section, keyed by database generation and
/// record offset: addresses of one network share a record, so the cache hits for clients that
/// never repeat an address, and an entry is a few words (no allocation) however many fields
/// the record has.
type CityCache = ShardedCache<(u64, usize), record::CitySpans>;
type AsnCache = ShardedCache<(u64, usize), record::AsnSpans>;

/// Finished answers per address text (as written in the event, so a hit needs no parse and no
/// tree walk), tagged with the database generations they came from; `None` is "not found".
/// Clients repeat their address, so most events are hits.
/// An answer is shared with the events (a reference count, not a copy of the object) and keeps
/// its JSON rendered for the outputs.
type AddressCache = ShardedCache<Box<str>, (u64, u64, Option<Arc<SharedValue>>)>;

/// Everything the loader and reload watcher need; the filter holds it, the watcher only a
/// `Weak`.
struct Shared {
    city: WatchedDb,
    asn: Option<WatchedDb>,
    health: HealthHandle,
    /// True while the databases are being opened and verified after start-up.
    loading: AtomicBool,
    /// Flips to true once the first load finished (whatever its outcome).
    ready: tokio::sync::watch::Sender<bool>,
}

impl Shared {
    fn report_health(&self) {
        if self.loading.load(Ordering::Relaxed) {
            let paths: Vec<String> = std::iter::once(&self.city)
                .chain(self.asn.as_ref())
                .map(|db| db.path.display().to_string())
                .collect();
            self.health.set(
                Status::Degraded,
                format!(
                    "loading database: verifying {}; events wait in the queue until it is done",
                    paths.join(" and ")
                ),
            );
            return;
        }
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
    city_cache: CityCache,
    asn_cache: AsnCache,
    address_cache: AddressCache,
}

impl Config {
    /// Compiles stage `id` and opens the databases: before returning with
    /// [`Verify::Now`], in a background task (see [`Filter::ready`]) with
    /// [`Verify::Background`]. A missing or broken City database is a warning: the stage still
    /// runs (passing events through) and the watcher retries. Stages built with one `registry`
    /// (one pipeline's) walk each database file once between them.
    pub fn build(
        &self,
        id: &str,
        ctx: &BuildContext,
        registry: &Arc<Registry>,
        warnings: &mut Vec<Problem>,
    ) -> Result<GeoipFilter, Vec<Problem>> {
        let mut problems = Vec::new();
        let source = parse_path("source", &self.source, &mut problems);
        let target = parse_path("target", &self.target, &mut problems);
        let fields = self.field_set(&mut problems);
        self.check_options(&mut problems);
        let (Some(source), Some(target)) = (source, target) else {
            return Err(problems);
        };
        if !problems.is_empty() {
            return Err(problems);
        }

        let (city, asn) = self.watched_dbs(registry, warnings);
        let background = ctx.verify == Verify::Background;
        let shared = Arc::new(Shared {
            health: ctx.health.register(format!("filter {id}")),
            loading: AtomicBool::new(background),
            ready: tokio::sync::watch::Sender::new(!background),
            city,
            asn,
        });
        let seen = if background {
            // Nothing opened yet: the loader opens whatever file exists.
            (None, None)
        } else {
            open_all_now(&shared, warnings)
        };
        shared.report_health();
        spawn_watcher(
            Arc::downgrade(&shared),
            self.reload_interval,
            ctx.shutdown.clone(),
            seen,
            background,
        );
        Ok(GeoipFilter {
            source,
            target,
            fields,
            shared,
            city_cache: ShardedCache::new(self.cache_size),
            address_cache: ShardedCache::new(self.cache_size),
            asn_cache: ShardedCache::new(if self.asn_database.is_some() {
                self.cache_size
            } else {
                0
            }),
        })
    }

    /// The fields the `fields` option selects (all without it); an unknown name is a problem.
    fn field_set(&self, problems: &mut Vec<Problem>) -> FieldSet {
        let Some(list) = &self.fields else {
            return FieldSet::all();
        };
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
                        Problem::at("fields", format!("unknown GeoIP field `{name}`")).hint(hint),
                    );
                }
            }
        }
        set
    }

    /// Checks `reload_interval` and that a database file is named.
    fn check_options(&self, problems: &mut Vec<Problem>) {
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
    }

    /// Slots for the City and (when configured) ASN files; a file missing now is a warning.
    fn watched_dbs(
        &self,
        registry: &Arc<Registry>,
        warnings: &mut Vec<Problem>,
    ) -> (WatchedDb, Option<WatchedDb>) {
        let (city, missing) = WatchedDb::new(
            PathBuf::from(self.database.trim()),
            Kind::City,
            registry.clone(),
        );
        if let Some(e) = &missing {
            warnings.push(open_problem("database", e, Kind::City));
        }
        let asn = match self.asn_database.as_deref().map(str::trim) {
            Some(path) if !path.is_empty() => {
                let (db, missing) =
                    WatchedDb::new(PathBuf::from(path), Kind::Asn, registry.clone());
                if let Some(e) = &missing {
                    warnings.push(open_problem("asn_database", e, Kind::Asn));
                }
                Some(db)
            }
            _ => None,
        };
        (city, asn)
    }
}

/// Opens and verifies the databases before the build returns ([`Verify::Now`]), warning about
/// each unusable one not already reported missing; returns the identities of the files tried.
fn open_all_now(
    shared: &Shared,
    warnings: &mut Vec<Problem>,
) -> (Option<database::Fingerprint>, Option<database::Fingerprint>) {
    let dbs = [
        ("database", Some(&shared.city)),
        ("asn_database", shared.asn.as_ref()),
    ];
    for (key, db) in dbs {
        let Some(db) = db else { continue };
        if missing_reported(db) {
            continue;
        }
        if let Some(e) = db.open_now() {
            warnings.push(open_problem(key, &e, db.kind));
        }
    }
    (
        shared.city.initial_fingerprint(),
        shared.asn.as_ref().and_then(WatchedDb::initial_fingerprint),
    )
}

/// True when the build already found the file missing (and warned about it).
fn missing_reported(db: &WatchedDb) -> bool {
    db.problem().is_some() && !db.path.exists()
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

/// Loads the databases first when `load_first` (in the background, after start-up), then polls
/// the files until shutdown or until the filter is dropped. Without a Tokio runtime
/// (`sheepdog check`, or the configuration check before the runtime starts) there is nothing
/// to watch for.
fn spawn_watcher(
    shared: Weak<Shared>,
    interval: Duration,
    shutdown: tokio_util::sync::CancellationToken,
    mut seen: (Option<database::Fingerprint>, Option<database::Fingerprint>),
    load_first: bool,
) {
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        return;
    };
    handle.spawn(async move {
        let mut first = load_first;
        loop {
            if !first {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(interval) => {}
                }
            }
            let Some(s) = shared.upgrade() else { return };
            let before = seen;
            let work = s.clone();
            let load = first;
            let joined = tokio::task::spawn_blocking(move || {
                let city = work.city.refresh(before.0);
                let asn = work.asn.as_ref().and_then(|db| db.refresh(before.1));
                if load || (city, asn) != before {
                    work.loading.store(false, Ordering::Relaxed);
                    work.report_health();
                }
                (city, asn)
            })
            .await;
            match joined {
                Ok(now) => seen = now,
                Err(e) => {
                    tracing::error!(error = %e, "GeoIP database check failed");
                    s.loading.store(false, Ordering::Relaxed);
                    s.report_health();
                }
            }
            if first {
                // Whatever the outcome, the workers may start: with a database, or without one
                // (reported in health and the log) passing events through.
                s.ready.send_replace(true);
                first = false;
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
    /// Looks `ip` up in the databases in use, bypassing the caches.
    pub fn lookup(&self, ip: IpAddr) -> Answer {
        let city = self.shared.city.current();
        let asn = self.shared.asn.as_ref().map(|a| a.current());
        let asn = asn.as_ref().and_then(|g| g.as_deref());
        let geo = city.as_deref().and_then(|db| {
            let at = db.find(ip)?;
            Some(city_object(&record::city(db.data(), at), self.fields))
        });
        let as_obj = asn.and_then(|db| {
            let at = db.find(ip)?;
            Some(asn_object(&record::asn(db.data(), at), self.fields))
        });
        match self.answer(&ip.to_string(), geo, as_obj) {
            Some(out) => Answer::Found(Value::Object(out)),
            None => Answer::NotFound,
        }
    }

    /// The object written to `target`, `None` when neither database knows the address.
    fn answer(
        &self,
        ip: &str,
        geo: Option<Value>,
        as_obj: Option<Value>,
    ) -> Option<Map<String, Value>> {
        let geo = geo.filter(|v| !v.is_null());
        let as_obj = as_obj.filter(|v| !v.is_null());
        if geo.is_none() && as_obj.is_none() {
            return None;
        }
        let mut out = Map::new();
        if self.fields.has(GeoField::Ip) {
            out.insert("ip".into(), Value::String(ip.to_owned()));
        }
        if let Some(g) = geo {
            out.insert("geo".into(), g);
        }
        if let Some(a) = as_obj {
            out.insert("as".into(), a);
        }
        Some(out)
    }

    /// The City fields of the record at `at`, from the cache when another address of the same
    /// network was seen.
    #[inline]
    fn city_fields<'a>(&self, db: &'a Loaded, at: usize) -> record::CityFields<'a> {
        let key = (db.generation, at);
        if let Some(spans) = self.city_cache.get(&key) {
            return spans.fields(db.data());
        }
        let fields = record::city(db.data(), at);
        if let Some(spans) = record::CitySpans::of(db.data(), &fields) {
            self.city_cache.insert(key, spans);
        }
        fields
    }

    #[inline]
    fn asn_fields<'a>(&self, db: &'a Loaded, at: usize) -> record::AsnFields<'a> {
        let key = (db.generation, at);
        if let Some(spans) = self.asn_cache.get(&key) {
            return spans.fields(db.data());
        }
        let fields = record::asn(db.data(), at);
        if let Some(spans) = record::AsnSpans::of(db.data(), &fields) {
            self.asn_cache.insert(key, spans);
        }
        fields
    }
}

/// The `geo` object for a City record, `Null` when it has none of the selected fields.
fn city_object(r: &record::CityFields, f: FieldSet) -> Value {
    let mut geo = Map::new();
    let mut put = |field: GeoField, key: &str, v: Option<&str>| {
        if let (true, Some(v)) = (f.has(field), v) {
            geo.insert(key.into(), Value::from(v));
        }
    };
    put(
        GeoField::CountryIsoCode,
        "country_iso_code",
        r.country_iso_code,
    );
    put(GeoField::CountryName, "country_name", r.country_name);
    put(GeoField::ContinentCode, "continent_code", r.continent_code);
    put(GeoField::RegionName, "region_name", r.region_name);
    put(GeoField::CityName, "city_name", r.city_name);
    put(GeoField::PostalCode, "postal_code", r.postal_code);
    put(GeoField::Timezone, "timezone", r.time_zone);
    if let (true, Some(c), Some(s)) = (
        f.has(GeoField::RegionIsoCode),
        r.country_iso_code,
        r.region_code,
    ) {
        let mut code = String::with_capacity(c.len() + 1 + s.len());
        code.push_str(c);
        code.push('-');
        code.push_str(s);
        geo.insert("region_iso_code".into(), Value::String(code));
    }
    if let (true, Some(lat), Some(lon)) = (f.has(GeoField::Location), r.latitude, r.longitude) {
        let mut l = Map::new();
        l.insert("lat".into(), Value::from(lat));
        l.insert("lon".into(), Value::from(lon));
        geo.insert("location".into(), Value::Object(l));
    }
    if geo.is_empty() {
        Value::Null
    } else {
        Value::Object(geo)
    }
}

/// The `as` object for an ASN record, `Null` when it has none of the selected fields.
fn asn_object(r: &record::AsnFields, f: FieldSet) -> Value {
    let mut as_obj = Map::new();
    if let (true, Some(n)) = (f.has(GeoField::AsNumber), r.number) {
        as_obj.insert("number".into(), Value::from(n));
    }
    if let (true, Some(o)) = (f.has(GeoField::AsOrganization), r.organization) {
        let mut org = Map::new();
        org.insert("name".into(), Value::from(o));
        as_obj.insert("organization".into(), Value::Object(org));
    }
    if as_obj.is_empty() {
        Value::Null
    } else {
        Value::Object(as_obj)
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

impl GeoipFilter {
    /// Writes `answer` to the target, or tags the event when the address was not found.
    fn write(&self, event: &mut Event, answer: Option<&Arc<SharedValue>>) -> bool {
        match answer {
            Some(v) => {
                event.insert_shared(&self.target, v);
                true
            }
            None => {
                event.add_tag(TAG_LOOKUP_FAILURE);
                false
            }
        }
    }
}

impl Filter for GeoipFilter {
    fn apply(&self, event: &mut Event) -> bool {
        let Some(value) = event.get(&self.source) else {
            return true;
        };
        let Some(text) = source_text(value).map(str::trim) else {
            event.add_tag(TAG_INVALID_IP);
            return false;
        };
        let city = self.shared.city.current();
        let asn = self.shared.asn.as_ref().map(|a| a.current());
        let asn_db = asn.as_ref().and_then(|g| g.as_deref());
        let generations = (
            city.as_deref().map_or(0, |d| d.generation),
            asn_db.map_or(0, |d| d.generation),
        );
        // Only valid, non-local addresses answered by a database are cached, so a hit skips
        // exactly the checks that passed when it was stored.
        if let Some((c, a, answer)) = self.address_cache.get(text) {
            if (c, a) == generations {
                return self.write(event, answer.as_ref());
            }
        }
        let Ok(ip) = text.parse::<IpAddr>() else {
            event.add_tag(TAG_INVALID_IP);
            return false;
        };
        if is_local(ip) {
            return true;
        }
        let Some(city_db) = city.as_deref() else {
            // No database: pass through; health and the start-up warning say why.
            return true;
        };
        let f = self.fields;
        let geo = city_db
            .find(ip)
            .map(|at| city_object(&self.city_fields(city_db, at), f));
        let as_obj = asn_db.and_then(|db| {
            let at = db.find(ip)?;
            Some(asn_object(&self.asn_fields(db, at), f))
        });
        // A parsed IPv4 address's text is already canonical (the parser refuses leading zeros
        // and surrounding text); IPv6 is written in its canonical compressed form.
        let canonical;
        let ip_text = match ip {
            IpAddr::V4(_) => text,
            IpAddr::V6(_) => {
                canonical = ip.to_string();
                canonical.as_str()
            }
        };
        let answer = self
            .answer(ip_text, geo, as_obj)
            .map(|a| SharedValue::new(Value::Object(a)));
        if self.address_cache.capacity() > 0 {
            self.address_cache
                .insert(text.into(), (generations.0, generations.1, answer.clone()));
        }
        self.write(event, answer.as_ref())
    }

    fn ready(&self) -> Option<BoxFuture<'static, ()>> {
        if *self.shared.ready.borrow() {
            return None;
        }
        let mut rx = self.shared.ready.subscribe();
        Some(Box::pin(async move {
            // An error means the filter is gone; nothing left to wait for.
            let _ = rx.wait_for(|ready| *ready).await;
        }))
    }
}

#[cfg(test)]
mod tests;
