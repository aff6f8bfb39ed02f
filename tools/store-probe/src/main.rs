//! The persisted queue's store, measured: appends N records of SIZE bytes (default 500 of
//! 400,000, about one HTTP body of 1,000 events each) and deletes the old ones, as a FIFO queue
//! does, through redb (one transaction per record) and through an append-only file like
//! `src/journal`, with and without a sync per record. Prints records/s and MB/s.
//!
//! Its own workspace (not built by the project's tests):
//! `cd tools/store-probe && cargo run --release -- 500 400000`
use std::io::Write;
use std::time::Instant;

fn main() {
    let n: usize = std::env::args().nth(1).map(|a| a.parse().unwrap()).unwrap_or(500);
    let size: usize = std::env::args().nth(2).map(|a| a.parse().unwrap()).unwrap_or(400_000);
    let dir = std::env::temp_dir().join(format!("store-probe-{}", std::process::id()));
    let dir = dir.as_path();
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    let record: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    const T: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("q");
    for durable in [false, true] {
        let path = dir.join(format!("redb-{durable}"));
        let db = redb::Database::create(&path).unwrap();
        let t = Instant::now();
        for i in 0..n {
            let mut tx = db.begin_write().unwrap();
            if !durable {
                tx.set_durability(redb::Durability::None);
            }
            {
                let mut table = tx.open_table(T).unwrap();
                table.insert(i as u64, record.as_slice()).unwrap();
                if i >= 8 {
                    table.remove((i - 8) as u64).unwrap();
                }
            }
            tx.commit().unwrap();
        }
        report(&format!("redb, commit per record, durable={durable}"), n, size, t);
        println!("  file size {} MB", std::fs::metadata(&path).unwrap().len() / 1_000_000);
    }
    for durable in [false, true] {
        let path = dir.join(format!("log-{durable}"));
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path).unwrap();
        let t = Instant::now();
        for _ in 0..n {
            let crc = crc32fast::hash(&record);
            f.write_all(&(record.len() as u32).to_le_bytes()).unwrap();
            f.write_all(&crc.to_le_bytes()).unwrap();
            f.write_all(&record).unwrap();
            if durable {
                f.sync_data().unwrap();
            }
        }
        report(&format!("append-only log, durable={durable}"), n, size, t);
    }
    let _ = std::fs::remove_dir_all(dir);
}

fn report(what: &str, n: usize, size: usize, t: Instant) {
    let s = t.elapsed().as_secs_f64();
    println!("{what}: {n} records of {size} B in {s:.3} s: {:.0} records/s, {:.0} MB/s", n as f64 / s, (n * size) as f64 / s / 1e6);
}
