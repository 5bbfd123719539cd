//! Soak with faults: images stream into `fv-edge run` while the broker restarts and the
//! daemon is SIGKILLed at random moments. Every result written at the unit must reach the
//! subscriber (at least once), every input must end in done/, and the daemon's memory must
//! stay flat.
//!
//! CI runs the short version (defaults below). The full one, as recorded in RELIABILITY.md:
//!
//! ```sh
//! FV_SOAK_IMAGES=10000 FV_SOAK_BROKER_RESTARTS=100 FV_SOAK_KILLS=20 \
//!   cargo test -p fv-edge --test soak -- --nocapture
//! ```
//!
//! FV_SOAK_SEED replays a run's fault schedule (the seed is printed).

mod common;

use common::*;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

fn env_or(k: &str, default: u64) -> u64 {
    std::env::var(k)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{k}={v}: not a number"))
        })
        .unwrap_or(default)
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Resident and peak memory of a process, in KiB, from /proc.
fn rss_kib(pid: u32) -> Option<(u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |k: &str| {
        s.lines()
            .find(|l| l.starts_with(k))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

#[test]
fn soak_with_broker_restarts_and_kills_loses_nothing() {
    let images = env_or("FV_SOAK_IMAGES", 300) as usize;
    let restarts = env_or("FV_SOAK_BROKER_RESTARTS", 5);
    let kills = env_or("FV_SOAK_KILLS", 2);
    let seed = env_or(
        "FV_SOAK_SEED",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            | 1,
    );
    eprintln!(
        "soak: {images} images, {restarts} broker restarts, {kills} kills, FV_SOAK_SEED={seed}"
    );
    let mut rng = Rng(seed);
    let started = Instant::now();

    let tmp = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(&tmp.path().join("broker"), free_port());
    let sub = Subscriber::start(broker.port, "soak-sub");
    // Over a slow, dropping link when asked: FV_SOAK_DELAY_MS each way, the connection cut
    // every FV_SOAK_CUT_S seconds (0: never), through a proxy on loopback.
    let delay_ms = env_or("FV_SOAK_DELAY_MS", 0);
    let cut_s = env_or("FV_SOAK_CUT_S", 0);
    let proxy = (delay_ms > 0 || cut_s > 0).then(|| {
        DelayProxy::start(
            broker.port,
            Duration::from_millis(delay_ms),
            (cut_s > 0).then(|| Duration::from_secs(cut_s)),
        )
    });
    let url = proxy.as_ref().map_or_else(|| broker.url(), |p| p.url());
    eprintln!("soak: link {delay_ms} ms each way, cut every {cut_s} s (0: never)");
    let mut daemon = Daemon::start(tmp.path(), Some(&url), &[]);

    // Faults fall at random input counts; sorted, they are taken in order as inputs go in.
    let mut faults: Vec<(usize, &str)> = Vec::new();
    for _ in 0..restarts {
        faults.push((rng.below(images as u64) as usize, "restart"));
    }
    for _ in 0..kills {
        faults.push((rng.below(images as u64) as usize, "kill"));
    }
    faults.sort();
    let mut faults = faults.into_iter().peekable();

    // A small real radiograph (373×454), under a new name each time.
    let src = sample("IMG0002588.jpg");
    let mut rss_samples: Vec<(usize, u64)> = Vec::new();
    let mut peak_kib = 0;
    let mut lifetime_start = 0;
    for i in 0..images {
        while faults.peek().is_some_and(|(at, _)| *at <= i) {
            let (_, what) = faults.next().unwrap();
            match what {
                "restart" => {
                    broker.stop();
                    std::thread::sleep(Duration::from_millis(rng.below(1500)));
                    broker.restart();
                }
                _ => {
                    // Mid-work: let it pick up what is waiting, then kill it at a random moment.
                    std::thread::sleep(Duration::from_millis(rng.below(800)));
                    let _ = daemon.stop("KILL");
                    daemon = Daemon::start(tmp.path(), Some(&url), &[]);
                    lifetime_start = i;
                    rss_samples.clear();
                }
            }
        }
        daemon.drop_file(&src, &format!("s{i:05}.jpg"));
        // Keep the backlog modest: the unit sees images at a human pace, in bursts.
        if i % 20 == 19 {
            let done_before = i + 1 - 40.min(i + 1);
            wait_until("the backlog to shrink", Duration::from_secs(120), || {
                done_count(&daemon) >= done_before
            });
            if let Some((rss, hwm)) = rss_kib(daemon.child.id()) {
                rss_samples.push((i - lifetime_start, rss));
                peak_kib = peak_kib.max(hwm);
                // For BENCHMARKS.md's 1k → 10k images in one lifetime.
                if (i + 1) % 1000 == 0 {
                    eprintln!(
                        "soak: image {}, {} in this lifetime: RSS {} MiB",
                        i + 1,
                        i + 1 - lifetime_start,
                        rss / 1024
                    );
                }
            }
        }
    }
    wait_until("every input done", Duration::from_secs(600), || {
        done_count(&daemon) == images
    });
    let local = ids(&daemon.done_results());
    assert_eq!(local.len(), images, "one local result per input");
    let deadline = Instant::now() + Duration::from_secs(300);
    while !local.is_subset(&sub.result_ids()) {
        if Instant::now() > deadline {
            let got = sub.result_ids();
            let missing: Vec<&String> = local.difference(&got).collect();
            let log = std::fs::read_to_string(tmp.path().join("fv-edge.log")).unwrap_or_default();
            let names: Vec<String> = daemon
                .done_results()
                .iter()
                .filter(|r| missing.iter().take(3).any(|m| r["id"] == m.as_str()))
                .map(|r| r["source"]["name"].as_str().unwrap_or("").to_owned())
                .collect();
            let about: Vec<&str> = log
                .lines()
                .filter(|l| names.iter().any(|n| l.contains(n.as_str())))
                .collect();
            panic!(
                "{} of {} local results never reached the subscriber, e.g. {:?}; outbox depth {}; log lines about them: {about:#?}\nbroker log (tail): {}",
                missing.len(),
                local.len(),
                &missing[..missing.len().min(5)],
                daemon.outbox_depth(),
                broker.log().lines().rev().take(20).collect::<Vec<_>>().join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    wait_until("the outbox to drain", Duration::from_secs(120), || {
        daemon.outbox_depth() == 0
    });
    // The broker kept its sessions across every restart (else the subscriber's queue was lost
    // and the check above could not pass).
    assert!(
        restarts == 0 || tmp.path().join("broker/mosquitto.db").exists(),
        "the broker wrote no persistence file: {}",
        broker.log()
    );
    let received = sub.on("/result");
    let distinct: BTreeSet<String> = sub.result_ids();
    let elapsed = started.elapsed();
    eprintln!(
        "soak: {} results received ({} distinct ids; {} duplicates, {} from re-reads after kills) for {images} inputs in {:.0} s",
        received.len(),
        distinct.len(),
        received.len() - distinct.len(),
        distinct.len() - local.len(),
        elapsed.as_secs_f64()
    );
    // Memory over the last daemon lifetime: after warm-up it must not grow with the count.
    if rss_samples.len() >= 4 {
        let warm = rss_samples[rss_samples.len() / 4].1;
        let last = rss_samples.last().unwrap().1;
        eprintln!(
            "soak: RSS {} MiB after warm-up, {} MiB at the end ({} samples), peak {} MiB",
            warm / 1024,
            last / 1024,
            rss_samples.len(),
            peak_kib / 1024
        );
        assert!(
            last <= warm + warm / 4 + 32 * 1024,
            "RSS grew from {warm} KiB to {last} KiB: {rss_samples:?}"
        );
    }
    for m in received.iter().take(50) {
        assert_valid(&m.json);
    }
    assert!(daemon.stop("TERM").success());
}

fn done_count(d: &Daemon) -> usize {
    std::fs::read_dir(d.watch.join("done"))
        .map(|r| {
            r.flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".result.json"))
                .count()
        })
        .unwrap_or(0)
}
