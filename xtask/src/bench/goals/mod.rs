//! The figures of the table and of `summary.json`: which samples of which part each one takes,
//! and the goal it is judged against (goals only on a full run; a part that did not run leaves
//! its figures without samples, which the table shows as "not measured").

mod node;
mod path;

use super::{
    Settings, events, floor, prog,
    report::{Goal, Row, Stat},
    scale, traffic,
};

/// Every figure, in the order of the table: the packet path first, then the node.
#[allow(clippy::many_single_char_names)] // s, p, t, f, e, b: the result sets
pub fn rows(
    s: &Settings,
    p: &prog::Results,
    t: &traffic::Results,
    f: &floor::Results,
    e: &events::Results,
    b: &scale::Results,
) -> Vec<Row> {
    let mut rows = path::traffic(s, t);
    rows.extend(path::floor(s, f));
    rows.extend(path::events(e));
    rows.extend(path::prog(s, p));
    rows.extend(node::scale(s, t, b));
    rows
}

/// Goals are only judged on a full run.
fn judged(s: &Settings, goal: Goal) -> Option<Goal> {
    (!s.quick).then_some(goal)
}

fn row(
    key: &'static str,
    label: String,
    samples: Vec<f64>,
    stat: Stat,
    goal: Option<Goal>,
    unit: &'static str,
) -> Row {
    Row {
        key,
        label,
        samples,
        stat,
        goal,
        unit,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::report;

    #[test]
    fn parts_not_run_are_not_measured_rather_than_zero() {
        let s = Settings::new(false, None);
        let rows = rows(
            &s,
            &prog::Results::default(),
            &traffic::Results::default(),
            &floor::Results::default(),
            &events::Results::default(),
            &scale::Results::default(),
        );
        for r in &rows {
            assert!(r.samples.is_empty(), "{}: {:?}", r.key, r.samples);
        }
        let t = report::table(&rows);
        assert!(
            !t.contains("| ok |") && !t.contains("MISSED") && !t.contains("NaN"),
            "{t}"
        );
        assert!(t.contains("not measured"), "{t}");
    }
}
