use super::*;
use crate::metrics::{Gauge, Registry};
use crate::queue::bounded;

fn settings(dir: &std::path::Path, max_bytes: u64) -> Settings {
    Settings {
        dir: dir.join("queue"),
        max_bytes,
        sync: Sync::Interval(Duration::from_millis(50)),
    }
}

fn record(ns: std::ops::Range<u32>) -> RecordBuilder {
    let mut r = RecordBuilder::new("http", None, &[], 64);
    for n in ns {
        r.push(DocKind::Json, 1, format!("{{\"n\":{n}}}").as_bytes());
    }
    r
}

fn numbers(events: &[crate::event::Event]) -> Vec<i64> {
    events
        .iter()
        .map(|e| e.fields().get("n").and_then(|v| v.as_i64()).unwrap())
        .collect()
}

#[tokio::test]
async fn unconfirmed_records_are_replayed_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let budget = MemoryBudget::unmetered(1 << 30);
    {
        let j = Journal::open(&settings(dir.path(), 1 << 30), &Registry::default()).unwrap();
        let first = j.append(record(0..3), None).await.unwrap();
        let second = j.append(record(3..5), None).await.unwrap();
        let third = j.append(record(5..6), None).await.unwrap();
        first.confirm();
        third.confirm();
        assert_eq!(j.unconfirmed(), (1, 2));
        // `second` is never delivered: dropped unconfirmed, as when the process stops.
        drop(second);
        j.close().await;
    }
    let j = Journal::open(&settings(dir.path(), 1 << 30), &Registry::default()).unwrap();
    let (tx, rx) = bounded(100, 100, Gauge::default());
    assert_eq!(j.replay(&tx, &budget).await, 2);
    let mut batch = rx.recv().await.unwrap();
    assert_eq!(
        numbers(&batch.events),
        [3, 4],
        "only the unconfirmed record"
    );
    crate::ack::confirm(batch.hold.take());
    drop(batch);
    assert_eq!(j.unconfirmed(), (0, 0));
    j.close().await;
    drop(j);
    let j = Journal::open(&settings(dir.path(), 1 << 30), &Registry::default()).unwrap();
    assert_eq!(
        j.replay(&tx, &budget).await,
        0,
        "the confirmation was recorded"
    );
}

#[tokio::test]
async fn a_full_queue_waits_for_confirmations_then_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let j = Arc::new(Journal::open(&settings(dir.path(), 1 << 20), &Registry::default()).unwrap());
    let big = || {
        let mut r = RecordBuilder::new("http", None, &[], 700_000);
        r.push(DocKind::Json, 1, &vec![b' '; 600_000]);
        r
    };
    let held = j.append(big(), None).await.unwrap();
    assert!(matches!(
        j.append(big(), Some(Duration::from_millis(50))).await,
        Err(JournalError::Full)
    ));
    let waiting = {
        let j = j.clone();
        tokio::spawn(async move { j.append(big(), Some(Duration::from_secs(10))).await })
    };
    tokio::time::sleep(Duration::from_millis(30)).await;
    held.confirm();
    let second = waiting
        .await
        .unwrap()
        .expect("room appeared once the first was confirmed");
    second.confirm();
    j.close().await;
}

#[tokio::test]
async fn a_failed_delivery_is_delivered_again_from_the_record() {
    let dir = tempfile::tempdir().unwrap();
    let j = Arc::new(Journal::open(&settings(dir.path(), 1 << 30), &Registry::default()).unwrap());
    let (tx, rx) = bounded(100, 100, Gauge::default());
    let shutdown = CancellationToken::new();
    let budget = MemoryBudget::unmetered(1 << 30);
    tokio::spawn(j.clone().redeliver(tx.clone(), budget, shutdown.clone()));
    let hold = j.append(record(7..9), None).await.unwrap();
    hold.fail();
    let mut batch = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("delivered again")
        .unwrap();
    assert_eq!(numbers(&batch.events), [7, 8]);
    assert_eq!(j.unconfirmed(), (1, 2));
    crate::ack::confirm(batch.hold.take());
    drop(batch);
    assert_eq!(j.unconfirmed(), (0, 0));
    shutdown.cancel();
    j.close().await;
}

#[test]
fn sync_settings_parse() {
    assert_eq!(Sync::parse("always"), Ok(Sync::Always));
    assert_eq!(
        Sync::parse("200ms"),
        Ok(Sync::Interval(Duration::from_millis(200)))
    );
    assert!(Sync::parse("0s").is_err());
    assert!(Sync::parse("sometimes").unwrap_err().contains("neither"));
}
