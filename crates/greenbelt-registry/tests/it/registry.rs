use greenbelt_registry::{NewVersion, Registry, RegistryError};
use serde_json::json;

use crate::on_all_backends;

fn new_version(model: &str, n: u8) -> NewVersion {
    NewVersion {
        model: model.into(),
        artifact_uri: format!("file:///artifacts/{n}.onnx"),
        sha256: format!("{:064x}", n),
        format: "onnx".into(),
        metrics: json!({"auc": 0.8 + f64::from(n) / 100.0}),
        lineage: json!({"dataset": "tx.parquet", "dataset_sha256": "ab"}),
        created_by: "test".into(),
        ..Default::default()
    }
}

on_all_backends!(
    versions_are_numbered_per_model,
    |reg: Registry| async move {
        for i in 1..=3 {
            let v = reg.register(new_version("fraud", i)).await.unwrap();
            assert_eq!(v.version, i64::from(i));
        }
        assert_eq!(
            reg.register(new_version("churn", 9)).await.unwrap().version,
            1
        );
        let all = reg.versions("fraud").await.unwrap();
        assert_eq!(
            all.iter().map(|v| v.version).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        let v2 = reg.version("fraud", 2).await.unwrap();
        assert_eq!(v2.metrics, json!({"auc": 0.8 + 2.0 / 100.0}));
        assert_eq!(v2.lineage["dataset"], "tx.parquet");
        assert_eq!(reg.models().await.unwrap(), vec!["churn", "fraud"]);
        assert!(matches!(
            reg.version("fraud", 9).await,
            Err(RegistryError::NotFound(_))
        ));
        assert!(matches!(
            reg.versions("nope").await,
            Err(RegistryError::NotFound(_))
        ));
        let mut bad = new_version("fraud", 1);
        bad.sha256 = "xyz".into();
        assert!(matches!(
            reg.register(bad).await,
            Err(RegistryError::Invalid(_))
        ));
        let mut bad = new_version("../x", 1);
        bad.model = "../x".into();
        assert!(matches!(
            reg.register(bad).await,
            Err(RegistryError::Invalid(_))
        ));
    }
);

on_all_backends!(
    aliases_history_and_time_travel,
    |reg: Registry| async move {
        for i in 1..=3 {
            reg.register(new_version("fraud", i)).await.unwrap();
        }
        let e = reg
            .set_alias("fraud", "champion", 1, "alice", "first")
            .await
            .unwrap()
            .unwrap();
        assert_eq!((e.from_version, e.to_version), (None, Some(1)));
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        let t1 = greenbelt_registry::now_us();
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        reg.set_alias("fraud", "champion", 2, "bob", "gate report 7")
            .await
            .unwrap();
        // Setting the same version again records nothing.
        assert!(
            reg.set_alias("fraud", "champion", 2, "bob", "again")
                .await
                .unwrap()
                .is_none()
        );
        reg.set_alias("fraud", "challenger", 3, "ci", "candidate")
            .await
            .unwrap();
        assert_eq!(reg.alias("fraud", "champion").await.unwrap(), Some(2));
        assert_eq!(
            reg.alias_at("fraud", "champion", t1).await.unwrap(),
            Some(1)
        );
        assert_eq!(
            reg.alias_at("fraud", "champion", greenbelt_registry::now_us())
                .await
                .unwrap(),
            Some(2)
        );
        assert_eq!(reg.alias_at("fraud", "champion", 0).await.unwrap(), None);
        let h = reg.history("fraud", Some("champion")).await.unwrap();
        assert_eq!(h.len(), 2);
        assert_eq!(
            (
                h[1].from_version,
                h[1].to_version,
                h[1].actor.as_str(),
                h[1].reason.as_str()
            ),
            (Some(1), Some(2), "bob", "gate report 7")
        );
        assert_eq!(reg.history("fraud", None).await.unwrap().len(), 3);
        assert_eq!(
            reg.aliases("fraud").await.unwrap(),
            vec![("challenger".to_string(), 3), ("champion".to_string(), 2)]
        );
        // Unknown version, bad alias name.
        assert!(matches!(
            reg.set_alias("fraud", "champion", 42, "x", "").await,
            Err(RegistryError::NotFound(_))
        ));
        assert!(matches!(
            reg.set_alias("fraud", "bad alias", 1, "x", "").await,
            Err(RegistryError::Invalid(_))
        ));
        // Delete is recorded too.
        let e = reg
            .delete_alias("fraud", "challenger", "ci", "done")
            .await
            .unwrap();
        assert_eq!((e.from_version, e.to_version), (Some(3), None));
        assert_eq!(reg.alias("fraud", "challenger").await.unwrap(), None);
    }
);

on_all_backends!(rollback_goes_back_one_move, |reg: Registry| async move {
    for i in 1..=2 {
        reg.register(new_version("fraud", i)).await.unwrap();
    }
    reg.set_alias("fraud", "champion", 1, "a", "")
        .await
        .unwrap();
    assert!(matches!(
        reg.rollback("fraud", "champion", "a", "").await,
        Err(RegistryError::Conflict(_))
    ));
    reg.set_alias("fraud", "champion", 2, "a", "promote")
        .await
        .unwrap();
    let e = reg
        .rollback("fraud", "champion", "oncall", "p99 regression")
        .await
        .unwrap();
    assert_eq!(
        (e.from_version, e.to_version, e.reason.as_str()),
        (Some(2), Some(1), "p99 regression")
    );
    assert_eq!(reg.alias("fraud", "champion").await.unwrap(), Some(1));
    assert!(matches!(
        reg.rollback("fraud", "nope", "a", "").await,
        Err(RegistryError::NotFound(_))
    ));
});

on_all_backends!(concurrent_writers_serialize, |reg: Registry| async move {
    // Concurrent registrations never reuse a number.
    let regs: Vec<_> = (0..12u8)
        .map(|i| {
            let reg = reg.clone();
            tokio::spawn(
                async move { reg.register(new_version("fraud", i)).await.unwrap().version },
            )
        })
        .collect();
    let mut numbers: Vec<i64> = Vec::new();
    for r in regs {
        numbers.push(r.await.unwrap());
    }
    numbers.sort();
    assert_eq!(numbers, (1..=12).collect::<Vec<_>>());
    // Two promoters racing on one alias: the history stays a chain.
    let movers: Vec<_> = (0..2)
        .map(|w| {
            let reg = reg.clone();
            tokio::spawn(async move {
                for i in 0..15i64 {
                    let v = 1 + (i * 2 + w) % 12;
                    reg.set_alias("fraud", "champion", v, &format!("w{w}"), "race")
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for m in movers {
        m.await.unwrap();
    }
    let h = reg.history("fraud", Some("champion")).await.unwrap();
    assert_eq!(h[0].from_version, None);
    for pair in h.windows(2) {
        assert_eq!(
            pair[1].from_version, pair[0].to_version,
            "every move starts where the last ended"
        );
    }
    assert_eq!(
        reg.alias("fraud", "champion").await.unwrap(),
        h.last().unwrap().to_version
    );
});

#[tokio::test]
async fn bad_urls_are_clear_errors() {
    let err = Registry::open("mysql://x").await.err().unwrap().to_string();
    assert!(err.contains("sqlite:// or postgres://"), "{err}");
    let err = Registry::open("postgres://nobody:secret@127.0.0.1:5432/no_such_db_gb")
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("cannot open registry") && !err.contains("secret"),
        "{err}"
    );
}

on_all_backends!(
    tags_are_set_and_deleted_one_at_a_time,
    |reg: Registry| async move {
        let mut first = new_version("fraud", 1);
        first.tags = json!({"team": "risk"});
        reg.register(first).await.unwrap();
        let tags = reg
            .set_tag("fraud", 1, "reviewed", Some("yes"))
            .await
            .unwrap();
        assert_eq!(tags, json!({"team": "risk", "reviewed": "yes"}));
        reg.set_tag("fraud", 1, "team", Some("fraud-ops"))
            .await
            .unwrap();
        let tags = reg.set_tag("fraud", 1, "reviewed", None).await.unwrap();
        assert_eq!(tags, json!({"team": "fraud-ops"}));
        assert_eq!(reg.version("fraud", 1).await.unwrap().tags, tags);
        let e = reg
            .set_tag("fraud", 1, "reviewed", None)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no tag \"reviewed\"") && e.contains("team"),
            "{e}"
        );
        assert!(matches!(
            reg.set_tag("fraud", 7, "x", Some("y")).await,
            Err(RegistryError::NotFound(_))
        ));
        assert!(matches!(
            reg.set_tag("fraud", 1, "", Some("y")).await,
            Err(RegistryError::Invalid(_))
        ));
    }
);
