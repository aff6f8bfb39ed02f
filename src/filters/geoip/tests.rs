use super::*;
use serde_json::json;
use tokio_util::sync::CancellationToken;

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/geoip/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn ctx() -> BuildContext {
    BuildContext::new("data".into(), CancellationToken::new())
}

fn build(extra: &str) -> (GeoipFilter, Vec<Problem>, BuildContext) {
    let cfg = format!(
        "database = '{}'\nasn_database = '{}'\n{extra}",
        fixture("GeoLite2-City-Test.mmdb"),
        fixture("GeoLite2-ASN-Test.mmdb")
    );
    let ctx = ctx();
    let mut warnings = Vec::new();
    let f = toml::from_str::<Config>(&cfg)
        .unwrap()
        .build("geoip", &ctx, &Registry::new(), &mut warnings)
        .unwrap();
    (f, warnings, ctx)
}

fn event(ip: Value) -> Event {
    Event::from_map(json!({ "client_ip": ip }).as_object().unwrap().clone(), 0)
}

#[test]
fn london_with_asn_in_ecs_layout() {
    let (f, warnings, ctx) = build("");
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(ctx.health.report().status, Status::Ok);
    let mut e = event(json!("81.2.69.142"));
    assert!(f.apply(&mut e));
    assert_eq!(
        e.fields()["geoip"],
        json!({
            "ip": "81.2.69.142",
            "geo": {
                "country_iso_code": "GB",
                "country_name": "United Kingdom",
                "continent_code": "EU",
                "region_iso_code": "GB-ENG",
                "region_name": "England",
                "city_name": "London",
                "timezone": "Europe/London",
                "location": {"lat": 51.5142, "lon": -0.0931}
            }
        })
    );
    let mut e = event(json!("1.128.0.1"));
    assert!(f.apply(&mut e));
    assert_eq!(
        e.fields()["geoip"],
        json!({"ip": "1.128.0.1", "as": {"number": 1221, "organization": {"name": "Telstra Pty Ltd"}}})
    );
}

#[test]
fn utf8_names_and_ipv6() {
    let (f, _, _) = build("");
    let mut e = event(json!("89.160.20.112"));
    assert!(f.apply(&mut e));
    assert_eq!(e.fields()["geoip"]["geo"]["city_name"], json!("Linköping"));
    assert_eq!(e.fields()["geoip"]["geo"]["country_iso_code"], json!("SE"));
    let mut e = event(json!("2001:218::1"));
    assert!(f.apply(&mut e));
    assert_eq!(e.fields()["geoip"]["geo"]["country_iso_code"], json!("JP"));
    assert_eq!(e.fields()["geoip"]["ip"], json!("2001:218::1"));
    // An array source uses its first item, like Logstash.
    let mut e = event(json!(["216.160.83.56", "10.0.0.1"]));
    assert!(f.apply(&mut e));
    assert_eq!(e.fields()["geoip"]["geo"]["city_name"], json!("Milton"));
    assert_eq!(
        e.fields()["geoip"]["geo"]["region_iso_code"],
        json!("US-WA")
    );
}

#[test]
fn local_invalid_and_unknown_addresses() {
    let (f, _, _) = build("");
    for local in [
        "10.1.2.3",
        "192.168.0.1",
        "172.16.5.4",
        "127.0.0.1",
        "169.254.1.1",
        "0.0.0.0",
        "::1",
        "fe80::1",
        "fd00::1",
        "::ffff:192.168.1.1",
    ] {
        let mut e = event(json!(local));
        assert!(f.apply(&mut e), "{local}");
        assert!(e.fields().get("geoip").is_none(), "{local}");
        assert!(e.fields().get("tags").is_none(), "{local}");
    }
    for bad in [
        json!("not-an-ip"),
        json!("1.2.3.4.5"),
        json!(""),
        json!(42),
        json!({}),
    ] {
        let mut e = event(bad.clone());
        assert!(!f.apply(&mut e), "{bad}");
        assert!(e.has_tag(TAG_INVALID_IP), "{bad}");
        assert!(e.fields().get("geoip").is_none());
    }
    let mut e = event(json!("8.8.4.4"));
    assert!(!f.apply(&mut e));
    assert!(e.has_tag(TAG_LOOKUP_FAILURE));
    assert!(e.fields().get("geoip").is_none());
    // No source field: nothing to do, no tag.
    let mut e = Event::from_map(Map::new(), 0);
    assert!(f.apply(&mut e));
    assert!(e.fields().get("tags").is_none());
}

#[test]
fn field_selection() {
    let (f, _, _) = build("fields = ['country_iso_code', 'location']");
    let mut e = event(json!("81.2.69.142"));
    assert!(f.apply(&mut e));
    assert_eq!(
        e.fields()["geoip"],
        json!({"geo": {"country_iso_code": "GB", "location": {"lat": 51.5142, "lon": -0.0931}}})
    );
    let cfg = "fields = ['country_iso', 'ip']";
    let mut warnings = Vec::new();
    let errs = toml::from_str::<Config>(cfg)
        .unwrap()
        .build("geoip", &ctx(), &Registry::new(), &mut warnings)
        .err()
        .unwrap();
    assert_eq!(
        errs[0].to_string(),
        "error: fields: unknown GeoIP field `country_iso` (hint: did you mean `country_iso_code`?)"
    );
}

#[test]
fn missing_database_passes_events_through_and_degrades() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("GeoLite2-City.mmdb");
    let ctx = ctx();
    let mut warnings = Vec::new();
    let cfg = format!("database = '{}'", path.display());
    let f = toml::from_str::<Config>(&cfg)
        .unwrap()
        .build("geoip", &ctx, &Registry::new(), &mut warnings)
        .unwrap();
    assert_eq!(warnings.len(), 1);
    let w = warnings[0].to_string();
    assert!(!warnings[0].is_error());
    assert!(w.contains(&path.display().to_string()), "{w}");
    assert!(w.contains("does not exist"), "{w}");
    assert!(w.contains("GeoLite2/README.md"), "{w}");
    let report = ctx.health.report();
    assert_eq!(report.status, Status::Degraded);
    assert!(report.components[0].reason.contains("does not exist"));
    let mut e = event(json!("81.2.69.142"));
    assert!(f.apply(&mut e));
    assert!(e.fields().get("geoip").is_none());
    assert!(e.fields().get("tags").is_none());

    // The file appears: the next refresh picks it up.
    std::fs::copy(fixture("GeoLite2-City-Test.mmdb"), &path).unwrap();
    let seen = f.shared.city.refresh(None);
    assert!(seen.is_some());
    f.shared.report_health();
    assert_eq!(ctx.health.report().status, Status::Ok);
    assert!(f.apply(&mut e));
    assert_eq!(e.fields()["geoip"]["geo"]["city_name"], json!("London"));
}

#[test]
fn corrupt_database_is_a_warning_with_the_reason() {
    for name in [
        "MaxMind-DB-test-broken-pointers-24.mmdb",
        "MaxMind-DB-test-broken-search-tree-24.mmdb",
        "GeoIP2-City-Test-Invalid-Node-Count.mmdb",
    ] {
        let ctx = ctx();
        let mut warnings = Vec::new();
        let cfg = format!("database = '{}'", fixture(name));
        let f = toml::from_str::<Config>(&cfg)
            .unwrap()
            .build("geoip", &ctx, &Registry::new(), &mut warnings)
            .unwrap();
        let w = warnings[0].to_string();
        assert!(w.contains("not a valid MaxMind database"), "{name}: {w}");
        let report = ctx.health.report();
        assert_eq!(report.status, Status::Degraded, "{name}");
        assert!(report.components[0].reason.contains(name), "{name}");
        let mut e = event(json!("81.2.69.142"));
        assert!(f.apply(&mut e));
    }
    // An ASN file where a City file belongs.
    let mut warnings = Vec::new();
    let cfg = format!("database = '{}'", fixture("GeoLite2-ASN-Test.mmdb"));
    toml::from_str::<Config>(&cfg)
        .unwrap()
        .build("geoip", &ctx(), &Registry::new(), &mut warnings)
        .unwrap();
    assert!(warnings[0]
        .to_string()
        .contains("is a GeoLite2-ASN database, expected a GeoLite2-City"));
}

#[test]
fn replacement_swaps_and_broken_replacement_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("city.mmdb");
    std::fs::copy(fixture("GeoLite2-Country-Test.mmdb"), &path).unwrap();
    let ctx = ctx();
    let cfg = format!("database = '{}'", path.display());
    let f = toml::from_str::<Config>(&cfg)
        .unwrap()
        .build("geoip", &ctx, &Registry::new(), &mut Vec::new())
        .unwrap();
    let city_of = |f: &GeoipFilter| {
        let mut e = event(json!("81.2.69.142"));
        f.apply(&mut e);
        e.fields()["geoip"]["geo"].get("city_name").cloned()
    };
    assert_eq!(city_of(&f), None, "the Country database has no cities");
    let seen = f.shared.city.initial_fingerprint();

    // geoipupdate writes a temporary file and renames it over the old one.
    let tmp = dir.path().join("city.mmdb.tmp");
    std::fs::copy(fixture("GeoLite2-City-Test.mmdb"), &tmp).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    let seen = f.shared.city.refresh(seen);
    assert_eq!(city_of(&f), Some(json!("London")));
    assert_eq!(
        f.shared.city.refresh(seen),
        seen,
        "unchanged file: no reload"
    );

    std::fs::copy(fixture("MaxMind-DB-test-broken-search-tree-24.mmdb"), &tmp).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    let _ = f.shared.city.refresh(seen);
    f.shared.report_health();
    assert_eq!(
        city_of(&f),
        Some(json!("London")),
        "old database stays in use"
    );
    let report = ctx.health.report();
    assert_eq!(report.status, Status::Degraded);
    assert!(
        report.components[0].reason.contains("replacement refused"),
        "{}",
        report.components[0].reason
    );
}

#[tokio::test]
async fn watcher_follows_the_file_and_stops_on_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("city.mmdb");
    let ctx = ctx();
    let cfg = format!("database = '{}'\nreload_interval = '100ms'", path.display());
    let f = toml::from_str::<Config>(&cfg)
        .unwrap()
        .build("geoip", &ctx, &Registry::new(), &mut Vec::new())
        .unwrap();
    assert_eq!(ctx.health.report().status, Status::Degraded);
    std::fs::copy(fixture("GeoLite2-City-Test.mmdb"), &path).unwrap();
    let mut found = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut e = event(json!("81.2.69.142"));
        f.apply(&mut e);
        // Health is reported just after the swap; wait for both.
        if e.fields().get("geoip").is_some() && ctx.health.report().status == Status::Ok {
            found = true;
            break;
        }
    }
    assert!(found, "watcher did not load the new file and report it");
    ctx.shutdown.cancel();
}

fn build_in(
    ctx: &BuildContext,
    registry: &Arc<Registry>,
    id: &str,
    database: &str,
) -> (GeoipFilter, Vec<Problem>) {
    let mut warnings = Vec::new();
    let f = toml::from_str::<Config>(&format!("database = '{database}'"))
        .unwrap()
        .build(id, ctx, registry, &mut warnings)
        .unwrap();
    (f, warnings)
}

#[tokio::test]
async fn background_load_holds_readiness_until_verified() {
    let mut ctx = ctx();
    ctx.verify = crate::Verify::Background;
    let db = fixture("GeoLite2-City-Test.mmdb");
    let registry = Registry::new();
    let (f, warnings) = build_in(&ctx, &registry, "geoip", &db);
    assert!(warnings.is_empty(), "{warnings:?}");
    // The loader has not run yet (this runtime runs one task at a time and we have not yielded).
    let ready = f.ready().expect("the database is still to be verified");
    let report = ctx.health.report();
    assert_eq!(report.status, Status::Degraded);
    let reason = &report.components[0].reason;
    assert!(
        reason.starts_with("loading database: verifying"),
        "{reason}"
    );
    assert!(reason.contains(&db), "{reason}");
    tokio::time::timeout(Duration::from_secs(10), ready)
        .await
        .expect("ready within 10 s");
    assert!(f.ready().is_none());
    assert_eq!(ctx.health.report().status, Status::Ok);
    let mut e = event(json!("81.2.69.142"));
    assert!(f.apply(&mut e));
    assert_eq!(e.fields()["geoip"]["geo"]["city_name"], json!("London"));

    // A broken file: ready as well (the stage passes events through), health says why.
    let (f, warnings) = build_in(
        &ctx,
        &registry,
        "broken",
        &fixture("MaxMind-DB-test-broken-pointers-24.mmdb"),
    );
    assert!(
        warnings.is_empty(),
        "found only when verified: {warnings:?}"
    );
    tokio::time::timeout(Duration::from_secs(10), f.ready().unwrap())
        .await
        .unwrap();
    let broken = ctx
        .health
        .report()
        .components
        .into_iter()
        .find(|c| c.component == "filter broken")
        .unwrap();
    assert_eq!(broken.status, Status::Degraded);
    assert!(
        broken.reason.contains("not a valid MaxMind database"),
        "{}",
        broken.reason
    );
    let mut e = event(json!("81.2.69.142"));
    assert!(f.apply(&mut e));
    assert!(e.fields().get("geoip").is_none());
}

#[test]
fn each_stage_reports_its_own_health() {
    let ctx = ctx();
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("GeoLite2-Country.mmdb");
    let registry = Registry::new();
    build_in(
        &ctx,
        &registry,
        "geoip",
        &fixture("GeoLite2-City-Test.mmdb"),
    );
    build_in(&ctx, &registry, "geoip_country", missing.to_str().unwrap());
    let report = ctx.health.report();
    let entries: Vec<(&str, Status)> = report
        .components
        .iter()
        .map(|c| (c.component.as_str(), c.status))
        .collect();
    assert_eq!(
        entries,
        [
            ("filter geoip", Status::Ok),
            ("filter geoip_country", Status::Degraded)
        ]
    );
}

#[test]
fn pipelines_keep_their_own_database_state() {
    let db = fixture("GeoLite2-City-Test.mmdb");
    let generation = |f: &GeoipFilter| f.shared.city.current().as_ref().unwrap().generation;
    let ctx = ctx();
    let (a, b) = (Registry::new(), Registry::new());
    let (a1, _) = build_in(&ctx, &a, "geoip", &db);
    let (a2, _) = build_in(&ctx, &a, "geoip", &db);
    let (b1, _) = build_in(&ctx, &b, "geoip", &db);
    // Within one pipeline every opened file has its own generation (cached answers of one
    // never serve the other); another pipeline counts on its own.
    assert_eq!((generation(&a1), generation(&a2)), (1, 2));
    assert_eq!(generation(&b1), 1);
}

#[test]
fn address_text_is_written_canonically() {
    let (f, _, _) = build("");
    let mut e = event(json!(" 81.2.69.142 "));
    assert!(f.apply(&mut e));
    assert_eq!(e.fields()["geoip"]["ip"], json!("81.2.69.142"));
    let mut e = event(json!("2001:0218:0000::0001"));
    assert!(f.apply(&mut e));
    assert_eq!(e.fields()["geoip"]["ip"], json!("2001:218::1"));
    // Leading zeros are not an IPv4 address (they would read as octal elsewhere).
    let mut e = event(json!("081.2.69.142"));
    assert!(!f.apply(&mut e));
    assert!(e.has_tag(TAG_INVALID_IP));
}

#[test]
fn stages_of_one_chain_share_its_registry() {
    let ctx = ctx();
    let state = crate::filters::BuildState::default();
    let stage = crate::filters::FilterConfig::Geoip(
        toml::from_str(&format!(
            "database = '{}'",
            fixture("GeoLite2-City-Test.mmdb")
        ))
        .unwrap(),
    );
    let built: Vec<_> = ["geoip", "geoip_2"]
        .iter()
        .map(|id| stage.build(id, &ctx, &state).unwrap())
        .collect();
    // The chain's own handle and one per stage: both stages verify files through it.
    assert_eq!(Arc::strong_count(&state.geoip), 1 + built.len());
}
