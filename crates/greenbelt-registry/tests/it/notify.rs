//! Alias moves are announced on PostgreSQL (LISTEN/NOTIFY) at commit; SQLite
//! has no listener.

use std::time::Duration;

use greenbelt_registry::{AliasChange, NewVersion, Notice, Registry};

async fn version(reg: &Registry) -> i64 {
    reg.register(NewVersion {
        model: "fraud".into(),
        artifact_uri: "file:///nowhere/x.onnx".into(),
        sha256: "a".repeat(64),
        ..NewVersion::default()
    })
    .await
    .unwrap()
    .version
}

async fn next(listener: &mut greenbelt_registry::AliasListener) -> Notice {
    tokio::time::timeout(Duration::from_secs(5), listener.recv())
        .await
        .expect("no notification within 5 s")
        .unwrap()
}

#[tokio::test]
async fn alias_moves_are_announced_on_postgres_only() {
    let (sqlite, _dir) = crate::backends::sqlite().await;
    assert!(sqlite.alias_listener().await.unwrap().is_none());

    let Some(reg) = crate::backends::postgres("alias_notify").await else {
        return;
    };
    let mut listener = reg.alias_listener().await.unwrap().unwrap();
    let v1 = version(&reg).await;
    let v2 = version(&reg).await;
    let change = |version| {
        Notice::Changed(AliasChange {
            model: "fraud".into(),
            alias: "champion".into(),
            version,
        })
    };
    reg.set_alias("fraud", "champion", v1, "t", "")
        .await
        .unwrap();
    assert_eq!(next(&mut listener).await, change(Some(v1)));
    reg.set_alias("fraud", "champion", v2, "t", "")
        .await
        .unwrap();
    assert_eq!(next(&mut listener).await, change(Some(v2)));
    reg.rollback("fraud", "champion", "t", "").await.unwrap();
    assert_eq!(next(&mut listener).await, change(Some(v1)));
    // A refused move (no such version) commits nothing and announces nothing.
    assert!(
        reg.set_alias("fraud", "champion", 99, "t", "")
            .await
            .is_err()
    );
    reg.delete_alias("fraud", "champion", "t", "")
        .await
        .unwrap();
    assert_eq!(next(&mut listener).await, change(None));
}
