//! GeoIP lookups on the full-size GeoLite2-City database and user-agent parsing over a
//! realistic mix of agents, with and without the caches, on one and on two threads.
//!
//! cargo build --release -p sheepdog-loadgen
//! GEOLITE2_CITY=GeoLite2/GeoLite2-City.mmdb cargo bench --bench enrich
//! (scripts/fetch-geolite2 puts the 2018 database there; without it the GeoIP benches fail
//! with that hint.) The `loadgen_mix` rows take their client IPs from `sheepdog-loadgen gen`,
//! the mix the throughput runs send. Before measuring, the stage's record decoder is checked
//! against `maxminddb`'s own decoding on every address of the mix.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use serde_json::json;
use sheepdog::event::Event;
use sheepdog::filters::geoip;
use sheepdog::filters::useragent;
use sheepdog::filters::Filter;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

fn database() -> String {
    let path =
        std::env::var("GEOLITE2_CITY").unwrap_or_else(|_| "GeoLite2/GeoLite2-City.mmdb".into());
    assert!(
        std::path::Path::new(&path).exists(),
        "{path} is missing: run scripts/fetch-geolite2 or set GEOLITE2_CITY"
    );
    path
}

/// A small deterministic generator (xorshift), so runs compare.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Public IPv4 addresses spread over the whole space (most are in the database).
fn public_ips(n: usize) -> Vec<IpAddr> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let ip = IpAddr::V4(Ipv4Addr::from(rng.next() as u32));
        if !geoip::is_local(ip) && (rng.0 as u8) < 224 {
            out.push(ip);
        }
    }
    out
}

/// A client-IP stream where a few thousand clients repeat, skewed towards the busiest.
fn repeating_ips(distinct: usize, n: usize) -> Vec<String> {
    let pool = public_ips(distinct);
    let mut rng = Rng(42);
    (0..n)
        .map(|_| {
            let a = rng.next() as usize % distinct;
            let b = rng.next() as usize % distinct;
            pool[a.min(b)].to_string()
        })
        .collect()
}

/// A few hundred agents as an LLM API sees them: mostly SDKs and HTTP libraries, some
/// browsers (playgrounds, dashboards), some crawlers.
pub fn agent_mix() -> Vec<String> {
    let mut a = Vec::new();
    for v in 0..60 {
        a.push(format!("OpenAI/Python 1.{v}.0"));
    }
    for v in 0..40 {
        a.push(format!("Anthropic/Python 0.{v}.0"));
    }
    for v in 0..20 {
        a.push(format!("OpenAI/JS 4.{v}.1"));
        a.push(format!("Anthropic/JS 0.{v}.0"));
    }
    for v in 0..20 {
        a.push(format!("python-httpx/0.{v}.0"));
        a.push(format!("python-requests/2.{v}.0"));
        a.push(format!("axios/1.{}.{}", v / 4, v % 4));
        a.push(format!("okhttp/4.{v}.0"));
        a.push(format!("curl/8.{v}.0"));
    }
    a.push("Go-http-client/1.1".into());
    a.push("Go-http-client/2.0".into());
    a.push("node-fetch/1.0 (+https://github.com/bitinn/node-fetch)".into());
    a.push("Python/3.11 aiohttp/3.9.5".into());
    a.push("Java-http-client/17.0.9".into());
    a.push("PostmanRuntime/7.39.0".into());
    for v in 100..140 {
        a.push(format!("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{v}.0.0.0 Safari/537.36"));
        a.push(format!("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{v}.0.0.0 Safari/537.36"));
    }
    for v in 100..130 {
        a.push(format!(
            "Mozilla/5.0 (X11; Linux x86_64; rv:{v}.0) Gecko/20100101 Firefox/{v}.0"
        ));
    }
    for v in 15..18 {
        for m in 0..6 {
            a.push(format!("Mozilla/5.0 (iPhone; CPU iPhone OS {v}_{m} like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/{v}.{m} Mobile/15E148 Safari/604.1"));
        }
    }
    a.push("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)".into());
    a.push("Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)".into());
    a.push("Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; GPTBot/1.2; +https://openai.com/gptbot)".into());
    a
}

/// The agent stream: SDK-heavy, skewed towards the popular ones.
fn agent_stream(n: usize) -> Vec<String> {
    let mix = agent_mix();
    let mut rng = Rng(7);
    (0..n)
        .map(|_| {
            let a = rng.next() as usize % mix.len();
            let b = rng.next() as usize % mix.len();
            mix[a.min(b)].clone()
        })
        .collect()
}

/// The release `sheepdog-loadgen` beside this bench (`target/release/deps/`): the tool is a
/// workspace member of its own, which `cargo bench` does not build for this package.
fn loadgen_bin() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("path of the bench executable");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/release/deps");
    let bin = dir.join("sheepdog-loadgen");
    assert!(
        bin.is_file(),
        "{} is missing: run `cargo build --release -p sheepdog-loadgen` first",
        bin.display()
    );
    bin
}

/// Client IPs as `sheepdog-loadgen gen` writes them (fixed seed).
fn loadgen_ips(n: usize) -> Vec<String> {
    let out = std::process::Command::new(loadgen_bin())
        .args(["gen", "--count", &n.to_string()])
        .output()
        .expect("run sheepdog-loadgen gen");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["client_ip"].as_str().unwrap().to_owned()
        })
        .collect()
}

/// The stage's decoder and `maxminddb`'s agree on every field the stage writes.
fn check_decoder_against_maxminddb(path: &str, ips: &[IpAddr]) {
    let registry = geoip::Registry::new();
    let ours = geoip::open(std::path::Path::new(path), geoip::Kind::City, &registry).unwrap();
    // Opened only after the verification above accepted the same file.
    let theirs = maxminddb::Reader::open_mmap(path).unwrap();
    fn en<'a>(n: &Option<std::collections::BTreeMap<&'a str, &'a str>>) -> Option<&'a str> {
        n.as_ref().and_then(|m| m.get("en").copied())
    }
    for ip in ips {
        let got = ours
            .find(*ip)
            .map(|at| geoip::record::city(ours.data(), at));
        let want = theirs
            .lookup::<maxminddb::geoip2::City>(*ip)
            .unwrap()
            .map(|c| {
                let sub = c.subdivisions.as_ref().and_then(|s| s.last());
                geoip::record::CityFields {
                    country_iso_code: c.country.as_ref().and_then(|x| x.iso_code),
                    country_name: c.country.as_ref().and_then(|x| en(&x.names)),
                    continent_code: c.continent.as_ref().and_then(|x| x.code),
                    region_code: sub.and_then(|x| x.iso_code),
                    region_name: sub.and_then(|x| en(&x.names)),
                    city_name: c.city.as_ref().and_then(|x| en(&x.names)),
                    postal_code: c.postal.as_ref().and_then(|x| x.code),
                    time_zone: c.location.as_ref().and_then(|x| x.time_zone),
                    latitude: c.location.as_ref().and_then(|x| x.latitude),
                    longitude: c.location.as_ref().and_then(|x| x.longitude),
                }
            });
        assert_eq!(got, want, "{ip}");
    }
}

fn geoip_filter(cache_size: usize) -> geoip::GeoipFilter {
    let ctx = sheepdog::BuildContext::new("data".into(), Default::default());
    let cfg = format!("database = '{}'\ncache_size = {cache_size}", database());
    let mut warnings = Vec::new();
    let f = toml::from_str::<geoip::Config>(&cfg)
        .unwrap()
        .build("geoip", &ctx, &geoip::Registry::new(), &mut warnings)
        .unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    f
}

/// Times `filter` over fresh copies of `template` (the copying is not timed).
fn apply_to_copies(b: &mut criterion::Bencher, filter: &dyn Filter, template: &[Event]) {
    b.iter_batched_ref(
        || template.to_vec(),
        |evs| {
            for e in evs.iter_mut() {
                filter.apply(e);
            }
        },
        criterion::BatchSize::LargeInput,
    )
}

fn events(field: &str, values: &[String]) -> Vec<Event> {
    values
        .iter()
        .map(|v| Event::from_map(json!({ field: v }).as_object().unwrap().clone(), 0))
        .collect()
}

/// Runs `work` over `items` on `threads` threads, each taking every `threads`-th item.
fn on_threads<T: Sync>(threads: usize, items: &[T], work: impl Fn(&T) + Sync) -> Duration {
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let work = &work;
            s.spawn(move || {
                for item in items.iter().skip(t).step_by(threads) {
                    work(item);
                }
            });
        }
    });
    start.elapsed()
}

fn bench_geoip(c: &mut Criterion) {
    let path = database();
    let start = Instant::now();
    let registry = geoip::Registry::new();
    let loaded = geoip::open(std::path::Path::new(&path), geoip::Kind::City, &registry).unwrap();
    eprintln!(
        "open + verify {path}: {:?} ({} records, {} nodes)",
        start.elapsed(),
        loaded.summary.data_records,
        loaded.summary.node_count
    );
    drop(loaded);

    let ips = public_ips(10_000);
    let mix = loadgen_ips(100_000);
    let mix_ips: Vec<IpAddr> = mix.iter().map(|s| s.parse().unwrap()).collect();
    let distinct: std::collections::HashSet<&IpAddr> = mix_ips.iter().collect();
    check_decoder_against_maxminddb(&path, &ips);
    check_decoder_against_maxminddb(&path, &mix_ips);
    let db = geoip::open(
        std::path::Path::new(&path),
        geoip::Kind::City,
        &geoip::Registry::new(),
    )
    .unwrap();
    let records: std::collections::HashSet<usize> =
        mix_ips.iter().filter_map(|ip| db.find(*ip)).collect();
    eprintln!(
        "loadgen mix: {} events, {} distinct addresses, {} distinct records",
        mix.len(),
        distinct.len(),
        records.len()
    );
    drop(db);

    let mut g = c.benchmark_group("geoip");
    let uncached = geoip_filter(0);
    g.throughput(Throughput::Elements(ips.len() as u64));
    g.bench_function("lookup_uncached_10k_distinct", |b| {
        b.iter(|| {
            for ip in &ips {
                black_box(uncached.lookup(*ip));
            }
        })
    });
    let template = events("client_ip", &mix);
    g.throughput(Throughput::Elements(mix.len() as u64));
    for cache in [0usize, 16_384] {
        let f = geoip_filter(cache);
        g.bench_with_input(
            BenchmarkId::new("apply_loadgen_mix", format!("cache={cache}")),
            &cache,
            |b, _| apply_to_copies(b, &f, &template),
        );
    }
    let stream = repeating_ips(5_000, 20_000);
    let template = events("client_ip", &stream);
    g.throughput(Throughput::Elements(stream.len() as u64));
    for cache in [0usize, 16_384] {
        let f = geoip_filter(cache);
        g.bench_with_input(
            BenchmarkId::new("apply_5k_clients", format!("cache={cache}")),
            &cache,
            |b, _| apply_to_copies(b, &f, &template),
        );
        g.bench_with_input(
            BenchmarkId::new("apply_5k_clients_2_threads", format!("cache={cache}")),
            &cache,
            |b, _| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let evs = template.clone();
                        let evs: Vec<std::sync::Mutex<Event>> =
                            evs.into_iter().map(std::sync::Mutex::new).collect();
                        total += on_threads(2, &evs, |e| {
                            f.apply(&mut e.lock().unwrap());
                        });
                    }
                    total
                })
            },
        );
    }
    g.finish();
}

fn bench_useragent(c: &mut Criterion) {
    let stream = agent_stream(20_000);
    let mut g = c.benchmark_group("useragent");
    g.throughput(Throughput::Elements(stream.len() as u64));
    for cache in [0usize, 4096] {
        let cfg = format!("cache_size = {cache}");
        let f = toml::from_str::<useragent::Config>(&cfg)
            .unwrap()
            .build()
            .unwrap();
        g.bench_with_input(
            BenchmarkId::new("parse_mix", format!("cache={cache}")),
            &cache,
            |b, _| {
                b.iter(|| {
                    for a in &stream {
                        black_box(f.parse_cached(a));
                    }
                })
            },
        );
        g.bench_with_input(
            BenchmarkId::new("parse_mix_2_threads", format!("cache={cache}")),
            &cache,
            |b, _| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        total += on_threads(2, &stream, |a| {
                            black_box(f.parse_cached(a));
                        });
                    }
                    total
                })
            },
        );
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(4)).warm_up_time(Duration::from_secs(1));
    targets = bench_geoip, bench_useragent
}
criterion_main!(benches);
