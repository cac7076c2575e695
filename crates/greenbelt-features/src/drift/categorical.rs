//! Categorical (string, bool) columns: counts per category by a DataFusion
//! group-by (it spills past the memory limit), capped at `max_categories`,
//! then chi-square, Jensen–Shannon and PSI over the union of categories.

use std::collections::BTreeMap;

use datafusion::arrow::array::{Array, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::functions_aggregate::expr_fn::count;
use datafusion::prelude::{DataFrame, cast as cast_expr, col, ident, lit};
use futures::StreamExt;
use greenbelt_drift::{ChiSquare, chisquare, jensenshannon, psi};

use super::numeric::{as_f64, reading};
use super::{CategoricalStats, Category, Counts, stat_error};
use crate::error::{FeatureError, Result};

/// One file's counts per category of one column.
#[derive(Debug, Clone, Default)]
pub(super) struct Tally {
    pub counts: BTreeMap<String, u64>,
    pub missing: u64,
    /// More categories than the cap: counting stopped.
    pub overflow: bool,
}

impl Tally {
    pub fn counts(&self) -> Counts {
        Counts {
            values: self.counts.values().sum(),
            missing: self.missing,
        }
    }
}

/// Count the categories of `name` (as text; bools are `true`/`false`).
pub(super) async fn counts(df: DataFrame, name: &str, max: usize, label: &str) -> Result<Tally> {
    let grouped = df
        .select(vec![cast_expr(ident(name), DataType::Utf8).alias("v")])
        .and_then(|d| d.aggregate(vec![col("v")], vec![count(lit(1)).alias("n")]))
        .map_err(reading(label))?;
    let mut stream = grouped.execute_stream().await.map_err(reading(label))?;
    let mut tally = Tally::default();
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(reading(label))?;
        let (Some(values), Some(ns)) = (batch.columns().first(), batch.columns().get(1)) else {
            continue;
        };
        let values = cast(values, &DataType::Utf8)?;
        let values = values
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or_else(|| FeatureError::Data("categories did not cast to text".into()))?;
        let ns = as_f64(ns)?;
        for (v, n) in values.iter().zip(ns.iter()) {
            let n = n.unwrap_or(0.0) as u64;
            match v {
                None => tally.missing += n,
                Some(v) => *tally.counts.entry(v.to_string()).or_default() += n,
            }
        }
        if tally.counts.len() > max {
            tally.overflow = true;
            break;
        }
    }
    Ok(tally)
}

/// The statistics of two tallies with values; `None` when there are more
/// than `max` categories.
pub(super) fn compare(r: &Tally, c: &Tally, max: usize) -> Result<Option<CategoricalStats>> {
    if r.overflow || c.overflow {
        return Ok(None);
    }
    let mut union: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for (k, n) in &r.counts {
        union.entry(k).or_default().0 += n;
    }
    for (k, n) in &c.counts {
        union.entry(k).or_default().1 += n;
    }
    if union.len() > max {
        return Ok(None);
    }
    let (nr, nc) = (r.counts().values as f64, c.counts().values as f64);
    let reference: Vec<f64> = union.values().map(|(a, _)| *a as f64).collect();
    let current: Vec<f64> = union.values().map(|(_, b)| *b as f64).collect();
    let r_shares: Vec<f64> = reference.iter().map(|a| a / nr).collect();
    let c_shares: Vec<f64> = current.iter().map(|b| b / nc).collect();
    let chi = if union.len() < 2 {
        // One category in both files: the distributions are equal.
        ChiSquare {
            statistic: 0.0,
            pvalue: 1.0,
            dof: 0,
        }
    } else {
        // A category the reference never had is floored at PSI_EPS there
        // (greenbelt-drift's convention), so the statistic stays finite.
        chisquare(&current, &r_shares).map_err(|e| stat_error("chi-square", e))?
    };
    Ok(Some(CategoricalStats {
        chisquare: chi,
        jensenshannon: jensenshannon(&reference, &current)
            .map_err(|e| stat_error("Jensen-Shannon", e))?,
        psi: psi(&r_shares, &c_shares).map_err(|e| stat_error("PSI", e))?,
        categories: union
            .into_iter()
            .map(|(k, (a, b))| Category {
                value: k.to_string(),
                reference: a,
                current: b,
            })
            .collect(),
    }))
}
