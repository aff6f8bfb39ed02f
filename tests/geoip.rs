//! GeoIP and user-agent enrichment: answers compared field by field with MaxMind's source
//! JSON for its test databases, and the real binary running the shipped stages without a
//! database, picking one up later, and swapping it under load without losing events.

mod common;

use common::*;
use serde_json::{json, Map, Value};
use sheepdog::filters::geoip::{self, Answer};
use sheepdog::filters::Filter;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn fixture(name: &str) -> PathBuf {
    repo_root().join("tests/fixtures/geoip").join(name)
}

fn ctx() -> sheepdog::BuildContext {
    sheepdog::BuildContext::new("data".into(), tokio_util::sync::CancellationToken::new())
}

fn geoip_filter(toml_text: &str) -> geoip::GeoipFilter {
    let mut warnings = Vec::new();
    let f = toml::from_str::<geoip::Config>(toml_text)
        .unwrap()
        .build("geoip", &ctx(), &geoip::Registry::new(), &mut warnings)
        .unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    f
}

/// MaxMind's source JSON: a list of `{ "network/len": record }`.
fn source_records(name: &str) -> Vec<(IpAddr, Value)> {
    let text = std::fs::read_to_string(fixture(name)).unwrap();
    let list: Vec<Map<String, Value>> = serde_json::from_str(&text).unwrap();
    list.into_iter()
        .flat_map(|m| m.into_iter())
        .map(|(net, rec)| {
            let addr = net.split('/').next().unwrap().parse().unwrap();
            (addr, rec)
        })
        .collect()
}

/// What the stage must write for a City record, derived from the source JSON.
fn expected_city(ip: IpAddr, rec: &Value) -> Value {
    let mut geo = Map::new();
    let s = |v: &Value| v.as_str().map(Value::from);
    let country_iso = rec["country"]["iso_code"].as_str();
    if let Some(v) = s(&rec["country"]["iso_code"]) {
        geo.insert("country_iso_code".into(), v);
    }
    if let Some(v) = s(&rec["country"]["names"]["en"]) {
        geo.insert("country_name".into(), v);
    }
    if let Some(v) = s(&rec["continent"]["code"]) {
        geo.insert("continent_code".into(), v);
    }
    if let Some(sub) = rec["subdivisions"].as_array().and_then(|a| a.last()) {
        if let (Some(c), Some(r)) = (country_iso, sub["iso_code"].as_str()) {
            geo.insert("region_iso_code".into(), json!(format!("{c}-{r}")));
        }
        if let Some(v) = s(&sub["names"]["en"]) {
            geo.insert("region_name".into(), v);
        }
    }
    if let Some(v) = s(&rec["city"]["names"]["en"]) {
        geo.insert("city_name".into(), v);
    }
    if let Some(v) = s(&rec["postal"]["code"]) {
        geo.insert("postal_code".into(), v);
    }
    if let Some(v) = s(&rec["location"]["time_zone"]) {
        geo.insert("timezone".into(), v);
    }
    if let (Some(lat), Some(lon)) = (
        rec["location"]["latitude"].as_f64(),
        rec["location"]["longitude"].as_f64(),
    ) {
        geo.insert("location".into(), json!({"lat": lat, "lon": lon}));
    }
    json!({"ip": ip.to_string(), "geo": geo})
}

#[test]
fn city_answers_match_maxmind_source_json() {
    let f = geoip_filter(&format!(
        "database = '{}'",
        fixture("GeoLite2-City-Test.mmdb").display()
    ));
    let records = source_records("GeoLite2-City-Test.json");
    let mut compared = 0;
    for (ip, rec) in &records {
        if geoip::is_local(*ip) {
            continue;
        }
        let want = expected_city(*ip, rec);
        if want["geo"].as_object().unwrap().is_empty() {
            continue;
        }
        assert_eq!(f.lookup(*ip), Answer::Found(want), "{ip}");
        compared += 1;
    }
    assert!(compared >= 100, "only {compared} networks compared");

    // The examples operators ask about.
    let geo = |ip: &str| match f.lookup(ip.parse().unwrap()) {
        Answer::Found(v) => v["geo"].clone(),
        Answer::NotFound => panic!("{ip} not found"),
    };
    let london = geo("81.2.69.142");
    assert_eq!(
        (&london["city_name"], &london["country_iso_code"]),
        (&json!("London"), &json!("GB"))
    );
    assert_eq!(london["location"], json!({"lat": 51.5142, "lon": -0.0931}));
    assert_eq!(geo("216.160.83.56")["city_name"], json!("Milton"));
    assert_eq!(geo("216.160.83.56")["country_iso_code"], json!("US"));
    let linkoping = geo("89.160.20.112");
    assert_eq!(linkoping["city_name"], json!("Linköping"));
    assert_eq!(
        linkoping["city_name"].as_str().unwrap().as_bytes()[4..6],
        [0xc3, 0xb6]
    );
    assert_eq!(linkoping["country_iso_code"], json!("SE"));
    assert_eq!(geo("2001:218::")["country_iso_code"], json!("JP"));
    assert_eq!(geo("2001:218:ffff::1")["country_iso_code"], json!("JP"));
}

#[test]
fn asn_answers_match_maxmind_source_json() {
    let f = geoip_filter(&format!(
        "database = '{}'\nasn_database = '{}'",
        fixture("GeoLite2-City-Test.mmdb").display(),
        fixture("GeoLite2-ASN-Test.mmdb").display()
    ));
    let mut compared = 0;
    for (ip, rec) in source_records("GeoLite2-ASN-Test.json") {
        if geoip::is_local(ip) {
            continue;
        }
        let Answer::Found(got) = f.lookup(ip) else {
            panic!("{ip} not found")
        };
        let mut want = Map::new();
        if let Some(n) = rec["autonomous_system_number"].as_u64() {
            want.insert("number".into(), json!(n));
        }
        if let Some(o) = rec["autonomous_system_organization"].as_str() {
            want.insert("organization".into(), json!({ "name": o }));
        }
        assert_eq!(got["as"], Value::Object(want), "{ip}");
        compared += 1;
    }
    assert!(compared >= 100, "only {compared} networks compared");
}

#[test]
fn user_agents_of_the_api_clients() {
    let f = toml::from_str::<sheepdog::filters::useragent::Config>("")
        .unwrap()
        .build()
        .unwrap();
    let mut e = sheepdog::event::Event::from_map(
        json!({"user_agent": "OpenAI/Python 1.54.0"})
            .as_object()
            .unwrap()
            .clone(),
        0,
    );
    assert!(f.apply(&mut e));
    assert_eq!(
        e.fields()["ua"],
        json!({"name": "OpenAI/Python", "version": "1.54.0", "device": "library", "vendor": "OpenAI"})
    );
}

// ---- the real binary with the shipped stages ----

/// The shipped pipeline with a file output in place of Elasticsearch and a fast reload check.
fn shipped_with_file_output(out: &Path) -> PathBuf {
    let shipped = std::fs::read_to_string(repo_root().join("pipelines/holysheep.toml")).unwrap();
    let cut = shipped.find("\n[[outputs]]").expect("shipped outputs");
    let mut text =
        shipped[..cut].replace("reload_interval = \"5s\"", "reload_interval = \"200ms\"");
    assert!(
        text.contains("reload_interval = \"200ms\""),
        "shipped geoip stage changed"
    );
    text.push_str(&format!(
        "\n[[outputs]]\ntype = \"file\"\npath = \"{}\"\n",
        out.display()
    ));
    temp_file("pipeline.toml", &text)
}

fn read_events(path: &Path, n: usize) -> Vec<Value> {
    read_ndjson(path, n, Duration::from_secs(30))
}

fn geoip_health(dog: &Sheepdog) -> Value {
    let (_, body) = dog.health();
    body["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["component"] == "filter geoip")
        .cloned()
        .unwrap_or_else(|| panic!("no geoip component in {body}"))
}

fn scratch_dir() -> PathBuf {
    let dir = temp_file("x", "").with_file_name(format!("geo-{}", free_port()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn check_warns_about_a_missing_or_broken_database() {
    let dir = scratch_dir();
    let config = shipped_with_file_output(&dir.join("out.ndjson"));
    let missing = dir.join("GeoLite2-City.mmdb");
    let (code, text) = sheepdog_check(&config, &[("GEOIP_DB", missing.to_str().unwrap())]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("warning"), "{text}");
    assert!(
        text.contains(&format!("{} does not exist", missing.display())),
        "{text}"
    );
    assert!(text.contains("GeoLite2/README.md"), "{text}");

    let broken = fixture("MaxMind-DB-test-broken-pointers-24.mmdb");
    let (code, text) = sheepdog_check(&config, &[("GEOIP_DB", broken.to_str().unwrap())]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("not a valid MaxMind database"), "{text}");
    assert!(!text.contains("panicked"), "{text}");
}

#[test]
fn runs_without_database_and_picks_it_up_when_it_appears() {
    let dir = scratch_dir();
    let out = dir.join("out.ndjson");
    let db = dir.join("GeoLite2-City.mmdb");
    let dog = Sheepdog::start(
        shipped_with_file_output(&out),
        &[("GEOIP_DB", db.to_str().unwrap())],
    );
    let health = geoip_health(&dog);
    assert_eq!(health["status"], "degraded", "{health}");
    let reason = health["reason"].as_str().unwrap();
    assert!(reason.contains(&db.display().to_string()), "{reason}");
    assert_eq!(dog.health().0, 200);
    let log = dog.log();
    assert!(
        log.contains(&db.display().to_string()) && log.contains("GeoLite2/README.md"),
        "{log}"
    );

    let body = json!({"request_id": "r1", "client_ip": "81.2.69.142", "user_agent": "curl/8.5.0"});
    assert_eq!(dog.post(body.to_string(), "application/json").0, 200);
    let events = read_events(&out, 1);
    assert!(events[0].get("geoip").is_none(), "{}", events[0]);
    assert!(
        events[0]
            .get("tags")
            .is_none_or(|t| !t.to_string().contains("_geoip")),
        "{}",
        events[0]
    );
    assert_eq!(
        events[0]["ua"],
        json!({"name": "curl", "version": "8.5.0", "device": "library"})
    );

    std::fs::copy(fixture("GeoLite2-City-Test.mmdb"), &db).unwrap();
    wait_for(Duration::from_secs(20), "geoip stage healthy", || {
        (geoip_health(&dog)["status"] == "ok").then_some(())
    });
    let body = json!({"request_id": "r2", "client_ip": "81.2.69.142"});
    assert_eq!(dog.post(body.to_string(), "application/json").0, 200);
    let events = read_events(&out, 2);
    assert_eq!(events[1]["geoip"]["geo"]["city_name"], "London");
    assert_eq!(events[1]["geoip"]["ip"], "81.2.69.142");
}

#[test]
fn replacing_the_database_under_load_loses_no_events() {
    let dir = scratch_dir();
    let out = dir.join("out.ndjson");
    let db = dir.join("GeoLite2-City.mmdb");
    std::fs::copy(fixture("GeoLite2-Country-Test.mmdb"), &db).unwrap();
    let mut dog = Sheepdog::start(
        shipped_with_file_output(&out),
        &[("GEOIP_DB", db.to_str().unwrap())],
    );
    assert_eq!(geoip_health(&dog)["status"], "ok");

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let sender = {
        let (stop, sent, url) = (stop.clone(), sent.clone(), dog.http_url.clone());
        std::thread::spawn(move || {
            let mut seq = 0usize;
            // Bounded: at most 2000 batches even if the stop flag never comes.
            for _ in 0..2000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let mut body = String::new();
                for _ in 0..20 {
                    body.push_str(&json!({"seq": seq, "client_ip": "81.2.69.142"}).to_string());
                    body.push('\n');
                    seq += 1;
                }
                let (status, text) = post_body(&url, body, "application/x-ndjson", &[]);
                assert_eq!(status, 200, "{text}");
                sent.store(seq, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let city_count = |events: &[Value]| {
        events
            .iter()
            .filter(|e| e["geoip"]["geo"]["city_name"] == "London")
            .count()
    };
    std::thread::sleep(Duration::from_millis(500));
    // geoipupdate's way: write a temporary file, rename it over the old one.
    let tmp = dir.join("GeoLite2-City.mmdb.tmp");
    std::fs::copy(fixture("GeoLite2-City-Test.mmdb"), &tmp).unwrap();
    std::fs::rename(&tmp, &db).unwrap();
    wait_for(Duration::from_secs(20), "events with city names", || {
        let text = std::fs::read_to_string(&out).ok()?;
        let events: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        (city_count(&events) > 100).then_some(())
    });
    std::fs::copy(fixture("MaxMind-DB-test-broken-search-tree-24.mmdb"), &tmp).unwrap();
    std::fs::rename(&tmp, &db).unwrap();
    wait_for(
        Duration::from_secs(20),
        "refused replacement in the log",
        || dog.log().contains("replacement refused").then_some(()),
    );
    let settled = sent.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    sender.join().unwrap();
    let total = sent.load(Ordering::Relaxed);
    let health = geoip_health(&dog);
    assert_eq!(health["status"], "degraded", "{health}");
    assert!(health["reason"]
        .as_str()
        .unwrap()
        .contains("still using the previous database"));

    let events = read_events(&out, total);
    assert_eq!(events.len(), total, "events lost or duplicated");
    let mut seen = vec![false; total];
    for e in &events {
        let seq = e["seq"].as_u64().unwrap() as usize;
        assert!(!seen[seq], "duplicate {seq}");
        seen[seq] = true;
        assert!(!e.to_string().contains("_geoip"), "{e}");
        assert_eq!(e["geoip"]["geo"]["country_iso_code"], "GB", "{e}");
    }
    let first = events.iter().find(|e| e["seq"] == 0).unwrap();
    assert!(first["geoip"]["geo"].get("city_name").is_none(), "{first}");
    // After the broken file was refused, the City database is still answering.
    assert!(events
        .iter()
        .filter(|e| e["seq"].as_u64().unwrap() as usize >= settled)
        .all(|e| e["geoip"]["geo"]["city_name"] == "London"));
    let status = dog.stop();
    assert!(status.success());
    let log = dog.log();
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn enriched_events_are_searchable_in_elasticsearch() {
    let es = Osmem::start();
    let db = fixture("GeoLite2-City-Test.mmdb");
    let mut dog = Sheepdog::start(
        "pipelines/holysheep.toml",
        &[
            ("ES_HOSTS", es.url.as_str()),
            ("GEOIP_DB", db.to_str().unwrap()),
        ],
    );
    let clients = [
        ("81.2.69.142", "OpenAI/Python 1.54.0", 6),
        ("216.160.83.56", "Anthropic/Python 0.39.0", 3),
        ("89.160.20.112", "python-httpx/0.27.0", 2),
        ("2001:218::1", "curl/8.5.0", 1),
        ("10.0.0.7", "axios/1.7.2", 1),
        ("not-an-ip", "Go-http-client/2.0", 1),
    ];
    let mut body = String::new();
    let mut n = 0;
    for (ip, agent, count) in clients {
        for _ in 0..count {
            let e = json!({"request_id": format!("r{n}"), "status": "success", "client_ip": ip, "user_agent": agent});
            body.push_str(&e.to_string());
            body.push('\n');
            n += 1;
        }
    }
    assert_eq!(dog.post(body, "application/x-ndjson").0, 200);
    assert_eq!(
        es.wait_count("holysheep-logs-*", n, Duration::from_secs(30)),
        n
    );
    es.refresh();

    let countries = es.search(
        "holysheep-logs-*",
        &json!({"size": 0, "aggs": {"c": {"terms": {"field": "geoip.geo.country_iso_code"}}}}),
    );
    let buckets: Vec<(String, u64)> = countries["aggregations"]["c"]["buckets"]
        .as_array()
        .unwrap_or_else(|| panic!("{countries}"))
        .iter()
        .map(|b| {
            (
                b["key"].as_str().unwrap().to_string(),
                b["doc_count"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        buckets,
        sorted_buckets(&[("GB", 6), ("US", 3), ("SE", 2), ("JP", 1)]),
        "{countries}"
    );

    // Within 50 km of central London: the six London requests.
    let near = es.search(
        "holysheep-logs-*",
        &json!({"size": 20, "query": {"geo_distance": {"distance": "50km", "geoip.geo.location": {"lat": 51.5074, "lon": -0.1278}}}}),
    );
    let hits = near["hits"]["hits"]
        .as_array()
        .unwrap_or_else(|| panic!("{near}"));
    assert_eq!(hits.len(), 6, "{near}");
    for h in hits {
        assert_eq!(h["_source"]["geoip"]["geo"]["city_name"], "London");
        assert_eq!(h["_source"]["ua"]["name"], "OpenAI/Python");
    }

    let sdk = es.search(
        "holysheep-logs-*",
        &json!({"size": 0, "query": {"term": {"ua.name": "Anthropic/Python"}}}),
    );
    assert_eq!(sdk["hits"]["total"]["value"], 3, "{sdk}");
    let invalid = es.search(
        "holysheep-logs-*",
        &json!({"size": 5, "query": {"term": {"tags": "_geoip_invalid_ip"}}}),
    );
    assert_eq!(invalid["hits"]["total"]["value"], 1, "{invalid}");
    assert_eq!(
        invalid["hits"]["hits"][0]["_source"]["ua"]["name"],
        "Go-http-client"
    );
    let private = es.search(
        "holysheep-logs-*",
        &json!({"size": 5, "query": {"term": {"client_ip": "10.0.0.7"}}}),
    );
    let doc = &private["hits"]["hits"][0]["_source"];
    assert!(
        doc.get("geoip").is_none() && !doc.to_string().contains("_geoip"),
        "{doc}"
    );
    assert!(dog.stop().success());
}

/// Terms buckets in Elasticsearch's order: count descending, then key ascending.
fn sorted_buckets(items: &[(&str, u64)]) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = items.iter().map(|(k, c)| (k.to_string(), *c)).collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    v
}

/// The full-size GeoLite2-City database (55 MB): $GEOLITE2_CITY, else where
/// scripts/fetch-geolite2 puts it (GeoLite2/) or where CI's scripts/ci-deps/geoip.sh does
/// (target/geolite2/). Its verification takes long enough, in a debug build even more so, to
/// observe the daemon before and after without a test-only delay.
fn full_city_database() -> PathBuf {
    let candidates: Vec<PathBuf> = match std::env::var_os("GEOLITE2_CITY") {
        Some(p) => vec![PathBuf::from(p)],
        None => vec![
            repo_root().join("GeoLite2/GeoLite2-City.mmdb"),
            repo_root().join("target/geolite2/GeoLite2-City.mmdb"),
        ],
    };
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "no full-size GeoLite2-City database at {candidates:?}: run scripts/ci-deps/geoip.sh (or scripts/fetch-geolite2), or set GEOLITE2_CITY"
            )
        })
}

#[test]
fn answers_before_the_database_is_verified_and_enriches_what_waited() {
    let db = full_city_database();
    let dir = scratch_dir();
    let out = dir.join("out.ndjson");
    let mut dog = Sheepdog::start_loading(
        shipped_with_file_output(&out),
        &[("GEOIP_DB", db.to_str().unwrap())],
    );
    // The API and the HTTP input answer while the database is still being walked.
    let health = geoip_health(&dog);
    assert_eq!(health["status"], "degraded", "{health}");
    let reason = health["reason"].as_str().unwrap();
    assert!(reason.contains("loading database"), "{reason}");
    assert!(reason.contains(&db.display().to_string()), "{reason}");
    assert_eq!(dog.health().0, 200, "loading is not a failure");
    let mut body = String::new();
    for (seq, ip) in ["8.8.8.8", "81.2.69.142", "2001:218::1", "10.0.0.1"]
        .iter()
        .enumerate()
    {
        body.push_str(&json!({"seq": seq, "client_ip": ip}).to_string());
        body.push('\n');
    }
    assert_eq!(
        post_body(&dog.http_url, body, "application/x-ndjson", &[]).0,
        200
    );
    let still_loading = geoip_health(&dog);
    assert!(
        still_loading["reason"]
            .as_str()
            .unwrap()
            .contains("loading database"),
        "verification finished before the post was answered; the test proves nothing: {still_loading}"
    );
    // Held back, not passed through unenriched.
    let written = std::fs::read_to_string(&out).unwrap_or_default();
    assert_eq!(
        written, "",
        "events left the filters before the database was ready"
    );

    wait_for(Duration::from_secs(120), "geoip stage ok", || {
        (geoip_health(&dog)["status"] == "ok").then_some(())
    });
    let mut events = read_events(&out, 4);
    events.sort_by_key(|e| e["seq"].as_u64());
    let country = |e: &Value| e["geoip"]["geo"]["country_iso_code"].clone();
    assert_eq!(country(&events[0]), json!("US"), "{}", events[0]);
    assert_eq!(country(&events[1]), json!("GB"), "{}", events[1]);
    assert_eq!(country(&events[2]), json!("JP"), "{}", events[2]);
    assert_eq!(events[2]["geoip"]["ip"], json!("2001:218::1"));
    assert!(events[3].get("geoip").is_none(), "{}", events[3]);
    for e in &events {
        assert!(!e.to_string().contains("_geoip"), "{e}");
    }
    assert!(dog.stop().success());
    let log = dog.log();
    assert!(log.contains("GeoIP database loaded"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
}
