//! Shared by the test support and the benchmark (each includes this file with `#[path]`):
//! reading one sample out of the server's /metrics text.

/// The value of the sample named exactly `series` (name and labels as printed).
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}
