//! `s3://` outputs: the scored file is written locally (a temporary file
//! beside nothing the user owns), then uploaded in parts with the feature
//! store's S3 client (the standard `AWS_*` environment), and a partition
//! whose output object exists counts as done, as a local file does.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use datafusion::object_store::buffered::BufWriter;
use datafusion::object_store::path::Path as ObjectPath;
use datafusion::object_store::{Error as StoreError, ObjectStoreExt};
use tokio::io::AsyncWriteExt;

use crate::error::{AppError, Result};

/// `s3://bucket/key` split, or None for a local path.
fn split(output: &Path) -> Result<Option<(String, String)>> {
    let Some(rest) = output.to_str().and_then(|s| s.strip_prefix("s3://")) else {
        return Ok(None);
    };
    match rest.split_once('/') {
        Some((bucket, key)) if !bucket.is_empty() && !key.is_empty() && !key.ends_with('/') => {
            Ok(Some((bucket.to_string(), key.to_string())))
        }
        _ => Err(AppError::Invalid(format!(
            "--output {}: an S3 output is s3://BUCKET/KEY (a key, not a prefix)",
            output.display()
        ))),
    }
}

/// Whether `output` exists: a local file, or an S3 object.
pub async fn exists(output: &Path) -> Result<bool> {
    let Some((bucket, key)) = split(output)? else {
        return Ok(output.exists());
    };
    let store = greenbelt_features::source::s3_store(&bucket)?;
    match store.head(&ObjectPath::from(key)).await {
        Ok(_) => Ok(true),
        Err(StoreError::NotFound { .. }) => Ok(false),
        Err(e) => Err(AppError::Invalid(format!(
            "--output {}: {e}",
            output.display()
        ))),
    }
}

/// An output to upload once written.
pub struct Upload {
    local: PathBuf,
    bucket: String,
    key: String,
}

impl Upload {
    /// For an `s3://` output: where to write it first. None for a local path.
    pub fn for_output(output: &Path) -> Result<Option<Upload>> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let Some((bucket, key)) = split(output)? else {
            return Ok(None);
        };
        let ext = Path::new(&key)
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("parquet");
        let local = std::env::temp_dir().join(format!(
            "greenbelt-score-{}-{}.{ext}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        Ok(Some(Upload { local, bucket, key }))
    }

    pub fn local(&self) -> &Path {
        &self.local
    }

    /// Upload the finished local file in parts, then remove it. The object
    /// appears only when the upload completes (a failed one leaves none).
    pub async fn send(self) -> Result<()> {
        let result = self.copy().await;
        let _ = tokio::fs::remove_file(&self.local).await;
        result
    }

    async fn copy(&self) -> Result<()> {
        let url = format!("s3://{}/{}", self.bucket, self.key);
        let err = |e: &dyn std::fmt::Display| AppError::Invalid(format!("uploading {url}: {e}"));
        let store = greenbelt_features::source::s3_store(&self.bucket)?;
        let mut file = tokio::fs::File::open(&self.local)
            .await
            .map_err(|e| err(&e))?;
        let mut writer = BufWriter::new(store, ObjectPath::from(self.key.as_str()));
        if let Err(e) = tokio::io::copy(&mut file, &mut writer).await {
            let _ = writer.abort().await;
            return Err(err(&e));
        }
        writer.shutdown().await.map_err(|e| err(&e))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn s3_outputs_need_a_bucket_and_a_key() {
        assert_eq!(split(Path::new("out.parquet")).unwrap(), None);
        assert_eq!(
            split(Path::new("s3://b/scores/out.parquet")).unwrap(),
            Some(("b".into(), "scores/out.parquet".into()))
        );
        for bad in ["s3://b", "s3://b/", "s3:///k", "s3://b/dir/"] {
            let e = split(Path::new(bad)).unwrap_err().to_string();
            assert!(e.contains("s3://BUCKET/KEY"), "{bad}: {e}");
        }
        let u = Upload::for_output(Path::new("s3://b/k/out.csv"))
            .unwrap()
            .unwrap();
        assert!(u.local().to_str().unwrap().ends_with(".csv"));
    }
}
