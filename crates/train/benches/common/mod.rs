//! What the trainer benches measure about their own process (Linux `/proc`; NaN/0 elsewhere).

/// Peak resident memory of this process (`VmHWM`), MiB.
pub fn peak_mib() -> f64 {
    status_mib("VmHWM:")
}

/// Resident memory of this process now (`VmRSS`), in MiB.
#[allow(dead_code)] // used by one of the two benches that include this module
pub fn resident_mib() -> f64 {
    status_mib("VmRSS:")
}

fn status_mib(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Minor and major page faults of this process so far (`/proc/self/stat` fields 10 and 12).
///
/// Minor faults are mostly the kernel handing out (and zeroing) fresh pages: memory an allocator
/// returned to the OS and asked for again.
pub fn faults() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The command name (field 2) may hold spaces; count from the `)` that closes it.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| fields.get(i).and_then(|f| f.parse().ok()).unwrap_or(0);
    (field(7), field(9))
}

/// Median of a non-empty sample.
#[allow(dead_code)] // used by one of the two benches that include this module
pub fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}
