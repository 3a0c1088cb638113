//! TensorBoard's `HistogramProto`, and building one from raw values or from ready-made buckets.
//!
//! Bucket convention (TensorFlow's): `bucket[i]` counts values in `[bucket_limit[i-1],
//! bucket_limit[i])`; the first bucket's left edge is `min` and the last bucket's right edge is
//! shown as `max` (TensorBoard's own conversion does exactly this), so a histogram only has to
//! list the buckets between its smallest and largest value.

use std::sync::OnceLock;

use crate::error::TensorboardError;

/// A histogram as TensorBoard stores it (`tensorflow.HistogramProto`).
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    /// Smallest value (left edge of the first bucket).
    pub min: f64,
    /// Largest value (right edge of the last bucket).
    pub max: f64,
    /// Number of values (sum of `bucket`).
    pub num: f64,
    /// Sum of the values.
    pub sum: f64,
    /// Sum of the squared values.
    pub sum_squares: f64,
    /// Right edge (exclusive) of each bucket.
    pub bucket_limit: Vec<f64>,
    /// Count in each bucket.
    pub bucket: Vec<f64>,
}

/// TensorFlow's default bucket limits: `-DBL_MAX, -1e20.., …, -1e-12, 0, 1e-12, ×1.1 …, <1e20, DBL_MAX`
/// (1,551 edges, about 10% wide relative to their value).
fn default_limits() -> &'static [f64] {
    static LIMITS: OnceLock<Vec<f64>> = OnceLock::new();
    LIMITS.get_or_init(|| {
        let mut positive = Vec::new();
        let mut v = 1e-12;
        while v < 1e20 {
            positive.push(v);
            v *= 1.1;
        }
        positive.push(f64::MAX);
        let mut limits: Vec<f64> = positive.iter().rev().map(|v| -v).collect();
        limits.push(0.0);
        limits.extend(positive);
        limits
    })
}

impl Histogram {
    /// An empty histogram (no values): one zero-count bucket at 0 so every reader accepts it.
    fn empty() -> Self {
        Self {
            min: 0.0,
            max: 0.0,
            num: 0.0,
            sum: 0.0,
            sum_squares: 0.0,
            bucket_limit: vec![0.0],
            bucket: vec![0.0],
        }
    }

    /// Histogram of raw values with TensorFlow's default exponential buckets.
    ///
    /// Why these buckets: they are what TensorFlow, `tf.summary` v1 and PyTorch's `SummaryWriter`
    /// (`bins="tensorflow"`) write, they need no range up front and resolve values of any
    /// magnitude to about 10% (gradients near 1e-8 and logits near 1e3 alike), and TensorBoard
    /// re-bins whatever it gets for display anyway. Only buckets between the smallest and largest
    /// value are emitted, and runs of empty buckets inside are merged into one (as TensorFlow
    /// does), so the record stays small. Non-finite values (NaN, ±inf) are left out of every
    /// statistic; log them separately (e.g. as a scalar count) if they matter.
    pub fn from_values(values: &[f64]) -> Self {
        let limits = default_limits();
        let mut counts = vec![0.0f64; limits.len()];
        let (mut min, mut max) = (f64::INFINITY, f64::NEG_INFINITY);
        let (mut num, mut sum, mut sum_squares) = (0.0, 0.0, 0.0);
        for &v in values.iter().filter(|v| v.is_finite()) {
            // First limit strictly greater than v (upper bound), as TensorFlow's Histogram::Add.
            let i = limits.partition_point(|&l| l <= v).min(limits.len() - 1);
            counts[i] += 1.0;
            min = min.min(v);
            max = max.max(v);
            num += 1.0;
            sum += v;
            sum_squares += v * v;
        }
        if num == 0.0 {
            return Self::empty();
        }
        let (bucket_limit, bucket) = compact(limits, &counts);
        Self {
            min,
            max,
            num,
            sum,
            sum_squares,
            bucket_limit,
            bucket,
        }
    }

    /// Histogram of already-bucketed data: `counts[i]` items fell in `[edges[i], edges[i+1])`.
    ///
    /// `edges` must be finite and strictly increasing with `edges.len() == counts.len() + 1`;
    /// counts must be finite and non-negative. `min`/`max` become the outer edges of the first and
    /// last non-empty buckets, and `sum`/`sum_squares` are computed from bucket midpoints (exact
    /// for integer data bucketed as `[k - 0.5, k + 0.5)`, see [`Histogram::from_integer_counts`]).
    pub fn from_buckets(edges: &[f64], counts: &[f64]) -> Result<Self, TensorboardError> {
        let bad = |msg: String| Err(TensorboardError::InvalidHistogram(msg));
        if counts.is_empty() || edges.len() != counts.len() + 1 {
            return bad(format!(
                "expected counts.len() + 1 bucket edges with at least one bucket, got {} edges and {} counts",
                edges.len(),
                counts.len()
            ));
        }
        if let Some(i) = edges.iter().position(|e| !e.is_finite()) {
            return bad(format!("edge {i} is not finite ({})", edges[i]));
        }
        if let Some(i) = edges.windows(2).position(|w| w[0] >= w[1]) {
            return bad(format!(
                "edges must be strictly increasing, but edge {i} = {} >= edge {} = {}",
                edges[i],
                i + 1,
                edges[i + 1]
            ));
        }
        if let Some(i) = counts.iter().position(|c| !c.is_finite() || *c < 0.0) {
            return bad(format!(
                "count {i} must be finite and >= 0, got {}",
                counts[i]
            ));
        }
        let nonempty = |i: &usize| counts[*i] > 0.0;
        let (first, last) = match (
            (0..counts.len()).find(nonempty),
            (0..counts.len()).rev().find(nonempty),
        ) {
            (Some(f), Some(l)) => (f, l),
            // All empty: keep the whole range so the shape is still visible.
            _ => (0, counts.len() - 1),
        };
        let (mut num, mut sum, mut sum_squares) = (0.0, 0.0, 0.0);
        for i in first..=last {
            let mid = 0.5 * (edges[i] + edges[i + 1]);
            num += counts[i];
            sum += counts[i] * mid;
            sum_squares += counts[i] * mid * mid;
        }
        Ok(Self {
            min: edges[first],
            max: edges[last + 1],
            num,
            sum,
            sum_squares,
            bucket_limit: edges[first + 1..=last + 1].to_vec(),
            bucket: counts[first..=last].to_vec(),
        })
    }

    /// Histogram of integer-valued data given as `counts[k]` = how many items have value `k`
    /// (e.g. how many tokens used `k` experts, or how many tokens expert `k` received).
    /// Bucket `k` is `[k - 0.5, k + 0.5)`, so TensorBoard centres each bar on its integer.
    pub fn from_integer_counts(counts: &[f64]) -> Result<Self, TensorboardError> {
        let edges: Vec<f64> = (0..=counts.len()).map(|k| k as f64 - 0.5).collect();
        Self::from_buckets(&edges, counts)
    }
}

/// Keeps the buckets between the first and last non-empty one, merging each run of empty buckets
/// into a single bucket that ends at the run's last limit.
fn compact(limits: &[f64], counts: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let first = counts.iter().position(|&c| c > 0.0).unwrap_or(0);
    let last = counts.iter().rposition(|&c| c > 0.0).unwrap_or(0);
    let (mut out_limits, mut out_counts) = (Vec::new(), Vec::new());
    let mut i = first;
    while i <= last {
        let mut end = i;
        if counts[i] == 0.0 {
            while end < last && counts[end + 1] == 0.0 {
                end += 1;
            }
        }
        out_limits.push(limits[end]);
        out_counts.push(counts[i]);
        i = end + 1;
    }
    (out_limits, out_counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_limits_match_tensorflow() {
        let l = default_limits();
        assert_eq!(l.len(), 1551);
        assert_eq!(l[0], -f64::MAX);
        assert_eq!(l[l.len() - 1], f64::MAX);
        assert_eq!(l[l.len() / 2], 0.0);
        assert_eq!(l[l.len() / 2 + 1], 1e-12);
        assert!(l.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn from_values_statistics_and_buckets() {
        let values = [1.0, 1.0, 2.0, -3.0, 100.0, f64::NAN, f64::INFINITY];
        let h = Histogram::from_values(&values);
        assert_eq!((h.min, h.max, h.num), (-3.0, 100.0, 5.0));
        assert_eq!(h.sum, 101.0);
        assert_eq!(h.sum_squares, 1.0 + 1.0 + 4.0 + 9.0 + 10000.0);
        assert_eq!(h.bucket.iter().sum::<f64>(), 5.0);
        assert_eq!(h.bucket_limit.len(), h.bucket.len());
        // First and last buckets are non-empty; no two empty buckets are adjacent.
        assert!(h.bucket[0] > 0.0 && *h.bucket.last().unwrap() > 0.0);
        assert!(h.bucket.windows(2).all(|w| w[0] > 0.0 || w[1] > 0.0));
        // Both 1.0 values share the bucket whose limit is the first one above 1.0 (within 10%).
        let i1 = h.bucket_limit.iter().position(|&l| l > 1.0).unwrap();
        assert_eq!(h.bucket[i1], 2.0);
        assert!(h.bucket_limit[i1] <= 1.1 + 1e-9);
        assert!(h.bucket_limit[0] > -3.0 && h.bucket_limit[0] <= -3.0 / 1.1 + 1e-9);
        assert_eq!(h.bucket_limit.iter().filter(|l| **l > 100.0).count(), 1);
    }

    #[test]
    fn empty_and_all_nan_inputs_give_a_valid_empty_histogram() {
        for values in [&[][..], &[f64::NAN][..]] {
            let h = Histogram::from_values(values);
            assert_eq!(h.num, 0.0);
            assert_eq!(h.bucket_limit.len(), h.bucket.len());
        }
    }

    #[test]
    fn integer_counts_trim_empty_ends() {
        let h = Histogram::from_integer_counts(&[0.0, 3.0, 0.0, 1.0, 0.0]).unwrap();
        assert_eq!((h.min, h.max, h.num), (0.5, 3.5, 4.0));
        assert_eq!(h.bucket_limit, [1.5, 2.5, 3.5]);
        assert_eq!(h.bucket, [3.0, 0.0, 1.0]);
        assert_eq!(h.sum, 3.0 * 1.0 + 3.0);
        assert_eq!(h.sum_squares, 3.0 + 9.0);
        let zeros = Histogram::from_integer_counts(&[0.0, 0.0]).unwrap();
        assert_eq!((zeros.min, zeros.max, zeros.num), (-0.5, 1.5, 0.0));
    }

    #[test]
    fn bad_buckets_are_rejected_with_reasons() {
        let err = |e: &[f64], c: &[f64]| Histogram::from_buckets(e, c).unwrap_err().to_string();
        assert!(err(&[0.0, 1.0], &[1.0, 2.0]).contains("2 counts"));
        assert!(err(&[], &[]).contains("at least one bucket"));
        assert!(err(&[0.0, 0.0], &[1.0]).contains("strictly increasing"));
        assert!(err(&[0.0, f64::NAN], &[1.0]).contains("not finite"));
        assert!(err(&[0.0, 1.0], &[-1.0]).contains("count 0"));
    }
}
