//! Content-addressed artifact storage through `object_store`: a local
//! directory by default, an S3-compatible bucket with the `s3` feature.
//! Objects live at `sha256/<2 hex>/<64 hex>.<ext>`; every read re-hashes the
//! bytes and refuses a mismatch.

use std::sync::Arc;

use bytes::Bytes;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use sha2::{Digest, Sha256};

use crate::RegistryError;

#[derive(Clone)]
pub struct ArtifactStore {
    store: Arc<dyn ObjectStore>,
    /// The URI prefix artifact URIs start with, without a trailing slash.
    base: String,
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let mut out = String::with_capacity(64);
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

impl ArtifactStore {
    /// `file:///abs/dir`, a plain directory path, or (feature `s3`)
    /// `s3://bucket/prefix` with credentials and endpoint from the usual AWS
    /// environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
    /// `AWS_REGION`, `AWS_ENDPOINT` for an S3-compatible service,
    /// `AWS_ALLOW_HTTP=true` for a plain-HTTP one).
    pub fn open(location: &str) -> Result<ArtifactStore, RegistryError> {
        ArtifactStore::open_with(location, &[])
    }

    /// [`ArtifactStore::open`] with S3 settings given explicitly, as
    /// object_store's `AmazonS3ConfigKey` names (`endpoint`, `allow_http`,
    /// `access_key_id`, `secret_access_key`, `region`, ...); they override the
    /// environment. Ignored for a local directory.
    pub fn open_with(
        location: &str,
        s3_options: &[(&str, &str)],
    ) -> Result<ArtifactStore, RegistryError> {
        if let Some(rest) = location.strip_prefix("s3://") {
            return open_s3(rest, s3_options);
        }
        let dir = location.strip_prefix("file://").unwrap_or(location);
        std::fs::create_dir_all(dir).map_err(|e| {
            RegistryError::Artifact(format!("cannot create artifact directory {dir}: {e}"))
        })?;
        let abs = std::fs::canonicalize(dir)
            .map_err(|e| RegistryError::Artifact(format!("artifact directory {dir}: {e}")))?;
        let store = object_store::local::LocalFileSystem::new_with_prefix(&abs).map_err(|e| {
            RegistryError::Artifact(format!("artifact directory {}: {e}", abs.display()))
        })?;
        Ok(ArtifactStore {
            store: Arc::new(store),
            base: format!("file://{}", abs.display()),
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// Store `bytes`; returns (uri, sha256). Storing the same bytes twice is a no-op.
    pub async fn put(&self, bytes: Bytes, ext: &str) -> Result<(String, String), RegistryError> {
        let sha = sha256_hex(&bytes);
        let key = format!("sha256/{}/{sha}.{ext}", &sha[..2]);
        let path = ObjectPath::from(key.as_str());
        self.store
            .put(&path, bytes.into())
            .await
            .map_err(|e| RegistryError::Artifact(format!("writing {key}: {e}")))?;
        Ok((format!("{}/{key}", self.base), sha))
    }

    /// The size in bytes of the object at `uri` (a HEAD: nothing is read).
    pub async fn size(&self, uri: &str) -> Result<u64, RegistryError> {
        let key = self.key(uri)?;
        let meta = self
            .store
            .head(&ObjectPath::from(key))
            .await
            .map_err(|e| RegistryError::Artifact(format!("reading {uri}: {e}")))?;
        Ok(meta.size)
    }

    /// The store key of `uri`; an error names the store a foreign URI is
    /// not in.
    fn key<'a>(&self, uri: &'a str) -> Result<&'a str, RegistryError> {
        uri.strip_prefix(&self.base)
            .and_then(|k| k.strip_prefix('/'))
            .ok_or_else(|| {
                RegistryError::Corrupt(format!(
                    "artifact {uri} is not in this store ({}); point [registry] artifacts at the store that holds it",
                    self.base
                ))
            })
    }

    /// Read `uri` and check it hashes to `sha256`.
    pub async fn get(&self, uri: &str, sha256: &str) -> Result<Bytes, RegistryError> {
        let key = self.key(uri)?;
        let bytes = self
            .store
            .get(&ObjectPath::from(key))
            .await
            .map_err(|e| RegistryError::Artifact(format!("reading {uri}: {e}")))?
            .bytes()
            .await
            .map_err(|e| RegistryError::Artifact(format!("reading {uri}: {e}")))?;
        let got = sha256_hex(&bytes);
        if got != sha256 {
            return Err(RegistryError::Corrupt(format!(
                "{uri} is corrupted: sha256 is {got}, the registry recorded {sha256}; refusing to load it"
            )));
        }
        Ok(bytes)
    }
}

#[cfg(feature = "s3")]
fn open_s3(rest: &str, options: &[(&str, &str)]) -> Result<ArtifactStore, RegistryError> {
    use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(RegistryError::Artifact(format!(
            "s3://{rest}: no bucket name; write s3://BUCKET or s3://BUCKET/PREFIX"
        )));
    }
    let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
    for (key, value) in options {
        let key: AmazonS3ConfigKey = key.parse().map_err(|e| {
            RegistryError::Artifact(format!(
                "s3://{bucket}: option \"{key}\" is not an S3 setting ({e}); use names like endpoint, region, allow_http"
            ))
        })?;
        builder = builder.with_config(key, *value);
    }
    let s3 = builder.build().map_err(|e| {
        RegistryError::Artifact(format!(
            "s3://{bucket}: {e}; set AWS_REGION, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (and AWS_ENDPOINT for a non-AWS service)"
        ))
    })?;
    let prefix = prefix.trim_matches('/');
    let store: Arc<dyn ObjectStore> = if prefix.is_empty() {
        Arc::new(s3)
    } else {
        Arc::new(object_store::prefix::PrefixStore::new(s3, prefix))
    };
    Ok(ArtifactStore {
        store,
        base: if prefix.is_empty() {
            format!("s3://{bucket}")
        } else {
            format!("s3://{bucket}/{prefix}")
        },
    })
}

#[cfg(not(feature = "s3"))]
fn open_s3(rest: &str, _options: &[(&str, &str)]) -> Result<ArtifactStore, RegistryError> {
    Err(RegistryError::Artifact(format!(
        "s3://{rest}: this build has no S3 support; rebuild with `--features greenbelt-registry/s3`"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn put_get_and_corruption_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path().to_str().unwrap()).unwrap();
        let (uri, sha) = store
            .put(Bytes::from_static(b"model bytes"), "onnx")
            .await
            .unwrap();
        assert!(
            uri.starts_with("file://") && uri.ends_with(&format!("{sha}.onnx")),
            "{uri}"
        );
        assert_eq!(
            store.get(&uri, &sha).await.unwrap(),
            Bytes::from_static(b"model bytes")
        );
        // Same bytes, same place.
        assert_eq!(
            store
                .put(Bytes::from_static(b"model bytes"), "onnx")
                .await
                .unwrap()
                .0,
            uri
        );
        // Flip the file on disk: refused with a clear message.
        let file = uri.strip_prefix("file://").unwrap();
        std::fs::write(file, b"tampered").unwrap();
        let err = store.get(&uri, &sha).await.unwrap_err().to_string();
        assert!(err.contains("corrupted") && err.contains(&sha), "{err}");
        let err = store
            .get("file:///elsewhere/x.onnx", &sha)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("not in this store"), "{err}");
        let err = ArtifactStore::open("s3://bucket")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            cfg!(feature = "s3") || err.contains("no S3 support"),
            "{err}"
        );
    }
}
