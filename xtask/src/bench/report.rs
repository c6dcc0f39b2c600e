//! Medians, spreads, the printed table and `target/bench/summary.json`.

use std::fmt::Write as _;

use serde_json::{Map, Value, json};

/// One figure of the summary: its key, its samples, and its goal.
pub struct Row {
    pub key: &'static str,
    pub label: String,
    pub samples: Vec<f64>,
    /// How the median is computed from the samples (p99 for latencies).
    pub stat: Stat,
    pub goal: Option<Goal>,
    pub unit: &'static str,
}

#[derive(Clone, Copy)]
pub enum Stat {
    Median,
    P99,
    /// Of ratios: the mean of their logarithms, back (see `floor::ratio_ci`).
    GeoMean,
}

#[derive(Clone, Copy)]
pub enum Goal {
    AtLeast(f64),
    AtMost(f64),
}

impl Goal {
    fn met(self, v: f64) -> bool {
        match self {
            Goal::AtLeast(g) => v >= g,
            Goal::AtMost(g) => v <= g,
        }
    }

    fn text(self) -> String {
        // A goal relative to a figure that was not measured (2 x the empty program).
        let v = |g: f64| {
            if g.is_finite() {
                fmt_num(g)
            } else {
                "n/a".into()
            }
        };
        match self {
            Goal::AtLeast(g) => format!(">= {}", v(g)),
            Goal::AtMost(g) => format!("<= {}", v(g)),
        }
    }
}

pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => f64::midpoint(s[n / 2 - 1], s[n / 2]),
    }
}

pub fn geo_mean(v: &[f64]) -> f64 {
    if v.is_empty() || v.iter().any(|x| *x <= 0.0) {
        return f64::NAN;
    }
    (v.iter().map(|x| x.ln()).sum::<f64>() / v.len() as f64).exp()
}

/// Nearest-rank percentile.
pub fn percentile(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
    s[rank.clamp(1, s.len()) - 1]
}

fn min_max(v: &[f64]) -> (f64, f64) {
    v.iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
            (a.min(*x), b.max(*x))
        })
}

impl Row {
    /// "ok" or "MISSED" against the goal; none without a goal or without samples (a part left
    /// out with `--only` is not a miss).
    fn verdict(&self) -> Option<&'static str> {
        let g = self.goal?;
        let v = self.value();
        v.is_finite()
            .then_some(if g.met(v) { "ok" } else { "MISSED" })
    }

    pub fn value(&self) -> f64 {
        match self.stat {
            Stat::Median => median(&self.samples),
            Stat::P99 => percentile(&self.samples, 99.0),
            Stat::GeoMean => geo_mean(&self.samples),
        }
    }
}

fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        "n/a".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

/// The table, as Markdown (it reads fine in a terminal and pastes into the README).
pub fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "| figure | value | spread (min–max, n) | goal | |");
    let _ = writeln!(out, "|---|---|---|---|---|");
    for r in rows {
        let v = r.value();
        let (lo, hi) = min_max(&r.samples);
        let spread = if r.samples.len() > 1 {
            format!("{}–{} (n={})", fmt_num(lo), fmt_num(hi), r.samples.len())
        } else {
            String::new()
        };
        let (goal, verdict) = match r.goal {
            Some(g) => (g.text(), r.verdict().unwrap_or("not measured")),
            None => (String::new(), ""),
        };
        let stat = match r.stat {
            Stat::Median => "",
            Stat::P99 => " (p99)",
            Stat::GeoMean => " (geometric mean)",
        };
        let _ = writeln!(
            out,
            "| {}{stat} | {} {} | {spread} | {goal} | {verdict} |",
            r.label,
            fmt_num(v),
            r.unit
        );
    }
    out
}

/// `summary.json`: every key's value, plus its samples and goal under `detail`.
pub fn summary(rows: &[Row], meta: Map<String, Value>) -> Value {
    let mut top = Map::new();
    let mut detail = Map::new();
    for r in rows {
        let v = r.value();
        top.insert(
            r.key.to_string(),
            if v.is_finite() { json!(v) } else { Value::Null },
        );
        let (lo, hi) = min_max(&r.samples);
        detail.insert(
            r.key.to_string(),
            json!({
                "label": r.label,
                "unit": r.unit,
                "samples": r.samples,
                "min": if lo.is_finite() { json!(lo) } else { Value::Null },
                "max": if hi.is_finite() { json!(hi) } else { Value::Null },
                "goal": r.goal.map(Goal::text),
                "met": r.verdict().map(|v| v == "ok"),
            }),
        );
    }
    top.insert("detail".into(), Value::Object(detail));
    top.insert("run".into(), Value::Object(meta));
    Value::Object(top)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_p99() {
        assert!((median(&[3.0, 1.0, 2.0]) - 2.0).abs() < 1e-9);
        assert!((median(&[4.0, 1.0, 2.0, 3.0]) - 2.5).abs() < 1e-9);
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert!((percentile(&v, 99.0) - 99.0).abs() < 1e-9);
        assert!((percentile(&[5.0], 99.0) - 5.0).abs() < 1e-9);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn goals() {
        assert!(Goal::AtLeast(0.95).met(0.96));
        assert!(!Goal::AtMost(50.0).met(51.0));
    }

    #[test]
    fn a_row_without_samples_is_not_a_miss() {
        let row = |samples: Vec<f64>| Row {
            key: "k",
            label: "l".into(),
            samples,
            stat: Stat::Median,
            goal: Some(Goal::AtMost(5.0)),
            unit: "s",
        };
        assert_eq!(row(vec![]).verdict(), None);
        assert_eq!(row(vec![4.0]).verdict(), Some("ok"));
        assert_eq!(row(vec![6.0]).verdict(), Some("MISSED"));
        let t = table(&[row(vec![])]);
        assert!(t.contains("not measured") && !t.contains("MISSED"), "{t}");
    }
}
