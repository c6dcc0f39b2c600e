//! The agent image's size: `cargo xtask image`'s tar, packed from the release binary the bench
//! has just built.

use anyhow::Result;

use super::report::{Goal, Row, Stat};

pub fn row(quick: bool) -> Result<Row> {
    let built = crate::image::pack(&crate::workspace_root().join("target/release/node-tracer"))?;
    Ok(Row {
        key: "image_mib",
        label: "OCI image, target/image/node-tracer.tar".into(),
        samples: vec![built.size as f64 / (1024.0 * 1024.0)],
        stat: Stat::Median,
        goal: (!quick).then_some(Goal::AtMost(25.0)),
        unit: "MiB",
    })
}
