//! Metrics a radiologist and an ML engineer read: classification at an operating point,
//! ranking (ROC-AUC, PR-AUC), calibration, and COCO-style detection AP.
//!
//! Each is checked against scikit-learn and pycocotools on committed fixture data
//! (`core/tests/fixtures/metrics/`, made by `make_reference.py` beside it).

pub mod classification;
pub mod detection;

/// A 95 % percentile-bootstrap interval of `statistic` over `samples`: `resamples` draws with
/// replacement, stratified by `stratum` (each draw keeps how many samples each of its two
/// strata has, as a split of fixed composition), from a fixed `seed`. `None` when the
/// statistic is undefined on the samples or on most draws.
pub fn bootstrap_by<T: Clone>(
    samples: &[T],
    stratum: impl Fn(&T) -> bool,
    statistic: impl Fn(&[T]) -> Option<f64>,
    resamples: usize,
    seed: u64,
) -> Option<(f64, f64)> {
    statistic(samples)?;
    let (a, b): (Vec<&T>, Vec<&T>) = samples.iter().partition(|s| stratum(s));
    let mut state = seed;
    // SplitMix64: enough for resampling indices, and the same interval on every machine.
    let mut next = |n: usize| {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) % n as u64) as usize
    };
    let mut values = Vec::with_capacity(resamples);
    let mut draw = Vec::with_capacity(samples.len());
    for _ in 0..resamples {
        draw.clear();
        for stratum in [&a, &b] {
            for _ in 0..stratum.len() {
                draw.push(stratum[next(stratum.len())].clone());
            }
        }
        if let Some(v) = statistic(&draw) {
            values.push(v);
        }
    }
    if values.len() * 2 < resamples.max(1) {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let at =
        |q: f64| values[((q * (values.len() - 1) as f64).round() as usize).min(values.len() - 1)];
    Some((at(0.025), at(0.975)))
}
