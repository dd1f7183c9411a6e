//! Prometheus' text exposition format (version 0.0.4): `# HELP` and
//! `# TYPE` once per family, then its samples.

use std::fmt::{Display, Write};

use super::{HistogramSnapshot, BUCKETS};

/// The `Content-Type` of a scrape.
pub(crate) const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Default)]
pub(super) struct Text(pub(super) String);

impl Text {
    pub(super) fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    pub(super) fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        self.0.push_str(name);
        self.labels(labels, None);
        let _ = writeln!(self.0, " {value}");
    }

    /// A histogram's buckets (cumulative, as the format wants), sum and count.
    pub(super) fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &HistogramSnapshot) {
        let mut seen = 0;
        for (i, n) in h.buckets.iter().enumerate() {
            seen += n;
            let le = BUCKETS.get(i).map_or("+Inf".to_owned(), f64::to_string);
            let _ = write!(self.0, "{name}_bucket");
            self.labels(labels, Some(&le));
            let _ = writeln!(self.0, " {seen}");
        }
        // Nanoseconds to seconds: the format's base unit.
        #[allow(
            clippy::cast_precision_loss,
            reason = "a sum of durations, shown as a float anyway"
        )]
        let sum = h.sum_ns as f64 / 1e9;
        self.sample(&format!("{name}_sum"), labels, sum);
        self.sample(&format!("{name}_count"), labels, seen);
    }

    fn labels(&mut self, labels: &[(&str, &str)], le: Option<&str>) {
        if labels.is_empty() && le.is_none() {
            return;
        }
        self.0.push('{');
        let all = labels.iter().copied().chain(le.map(|v| ("le", v)));
        for (i, (k, v)) in all.enumerate() {
            if i > 0 {
                self.0.push(',');
            }
            let _ = write!(self.0, "{k}=\"");
            escape(&mut self.0, v);
            self.0.push('"');
        }
        self.0.push('}');
    }
}

/// A label value's backslashes, quotes and newlines escaped.
fn escape(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_and_histograms() {
        let mut t = Text::default();
        t.family("x_total", "counter", "X.");
        t.sample("x_total", &[("a", "q\"\\\n")], 3);
        let mut h = HistogramSnapshot::default();
        h.buckets[0] = 2;
        h.buckets[BUCKETS.len()] = 1;
        h.sum_ns = 1_500_000_000;
        t.histogram("d_seconds", &[("r", "p")], &h);
        let s = t.0;
        assert!(s.starts_with("# HELP x_total X.\n# TYPE x_total counter\n"));
        assert!(s.contains("x_total{a=\"q\\\"\\\\\\n\"} 3\n"));
        assert!(s.contains("d_seconds_bucket{r=\"p\",le=\"0.0005\"} 2\n"));
        assert!(s.contains("d_seconds_bucket{r=\"p\",le=\"60\"} 2\n"));
        assert!(s.contains("d_seconds_bucket{r=\"p\",le=\"+Inf\"} 3\n"));
        assert!(s.contains("d_seconds_sum{r=\"p\"} 1.5\n"));
        assert!(s.contains("d_seconds_count{r=\"p\"} 3\n"));
    }
}
