//! Small statistics used for thresholds and for comparing the int8 model with the float one.
//!
//! Both functions are deterministic and defined for every finite input (ties and constant
//! series included), because their results end up in artifact metadata.

/// The `q` quantile (0 ≤ q ≤ 1) of `values` by linear interpolation between closest ranks
/// (the "type 7" definition of R and NumPy's default). `None` for an empty slice, a NaN in
/// `values`, or `q` outside [0, 1].
///
/// ```
/// use loopline_model::stats::quantile;
/// assert_eq!(quantile(&[3.0, 1.0, 2.0, 4.0], 0.5), Some(2.5));
/// assert_eq!(quantile(&[3.0, 1.0, 2.0], 1.0), Some(3.0));
/// assert_eq!(quantile(&[], 0.5), None);
/// ```
pub fn quantile(values: &[f32], q: f64) -> Option<f32> {
    if values.is_empty() || !(0.0..=1.0).contains(&q) || values.iter().any(|v| v.is_nan()) {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f32::total_cmp);
    let position = q * (sorted.len() - 1) as f64;
    let below = position.floor() as usize;
    let above = position.ceil() as usize;
    let low = f64::from(*sorted.get(below)?);
    let high = f64::from(*sorted.get(above)?);
    Some((low + (high - low) * (position - below as f64)) as f32)
}

/// Spearman's rank correlation of two equally long series, with tied values given their
/// average rank. `None` when the lengths differ, there are fewer than two points, or either
/// series is constant (the correlation is undefined).
///
/// ```
/// use loopline_model::stats::spearman;
/// // Any increasing relation has rank correlation 1.
/// assert_eq!(spearman(&[1.0, 2.0, 3.0], &[10.0, 200.0, 3000.0]), Some(1.0));
/// assert_eq!(spearman(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]), Some(-1.0));
/// ```
pub fn spearman(a: &[f32], b: &[f32]) -> Option<f64> {
    if a.len() != b.len() || a.len() < 2 {
        return None;
    }
    let ra = ranks(a);
    let rb = ranks(b);
    let n = ra.len() as f64;
    let mean = (n + 1.0) / 2.0;
    let (mut cov, mut va, mut vb) = (0.0, 0.0, 0.0);
    for (x, y) in ra.iter().zip(&rb) {
        cov += (x - mean) * (y - mean);
        va += (x - mean) * (x - mean);
        vb += (y - mean) * (y - mean);
    }
    if va == 0.0 || vb == 0.0 {
        return None;
    }
    Some(cov / (va * vb).sqrt())
}

/// 1-based ranks, ties averaged.
fn ranks(values: &[f32]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&i, &j| values[i].total_cmp(&values[j]));
    let mut ranks = vec![0.0; values.len()];
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        while end < order.len() && values[order[end]] == values[order[start]] {
            end += 1;
        }
        // Positions start..end (0-based) share the average of ranks start+1..=end.
        let rank = (start + end + 1) as f64 / 2.0;
        for &i in &order[start..end] {
            ranks[i] = rank;
        }
        start = end;
    }
    ranks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantile_interpolates_and_rejects_bad_input() {
        let v: Vec<f32> = (0..=100).map(|i| i as f32).collect();
        assert_eq!(quantile(&v, 0.995), Some(99.5));
        assert_eq!(quantile(&v, 0.0), Some(0.0));
        assert_eq!(quantile(&[7.0], 0.3), Some(7.0));
        assert_eq!(quantile(&v, 1.5), None);
        assert_eq!(quantile(&[1.0, f32::NAN], 0.5), None);
    }

    #[test]
    fn ranks_average_ties() {
        assert_eq!(ranks(&[10.0, 20.0, 10.0, 5.0]), [2.5, 4.0, 2.5, 1.0]);
    }

    #[test]
    fn spearman_handles_ties_and_constants() {
        let r = spearman(&[1.0, 2.0, 2.0, 3.0], &[1.0, 2.0, 3.0, 4.0]).unwrap();
        assert!(r > 0.9 && r < 1.0, "{r}");
        assert_eq!(spearman(&[1.0, 1.0], &[1.0, 2.0]), None);
        assert_eq!(spearman(&[1.0], &[1.0]), None);
        assert_eq!(spearman(&[1.0, 2.0], &[1.0]), None);
    }
}
