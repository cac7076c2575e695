//! Rollout state storage: compare-and-swap between writers (replicas, a
//! person's command) and the append-only event log, on every backend.

use greenbelt_registry::{Registry, RegistryError};
use serde_json::json;

use crate::on_all_backends;

on_all_backends!(
    rollout_writes_are_compare_and_swap,
    |reg: Registry| async move {
        assert_eq!(reg.rollout("fraud").await.unwrap(), None);
        let events = vec![("started".to_string(), json!({"candidate": 2}))];
        let rev = reg
            .put_rollout(
                "fraud",
                None,
                &json!({"phase": "progressing"}),
                "r1",
                &events,
            )
            .await
            .unwrap();
        assert_eq!(rev, 1);
        // A second creator loses.
        let e = reg
            .put_rollout("fraud", None, &json!({"phase": "x"}), "r1", &[])
            .await
            .unwrap_err();
        assert!(matches!(e, RegistryError::Conflict(_)), "{e}");
        // Two writers read revision 1; the first wins, the second must re-read.
        let rev2 = reg
            .put_rollout(
                "fraud",
                Some(1),
                &json!({"phase": "paused"}),
                "r1",
                &[("paused".into(), json!({}))],
            )
            .await
            .unwrap();
        assert_eq!(rev2, 2);
        let e = reg
            .put_rollout(
                "fraud",
                Some(1),
                &json!({"phase": "aborted"}),
                "r1",
                &[("aborted".into(), json!({}))],
            )
            .await
            .unwrap_err();
        assert!(matches!(e, RegistryError::Conflict(_)), "{e}");
        let stored = reg.rollout("fraud").await.unwrap().unwrap();
        assert_eq!(
            (stored.rev, stored.state["phase"].as_str()),
            (2, Some("paused"))
        );
        // The losing write's events were not logged.
        let log = reg.rollout_events("fraud", 10).await.unwrap();
        assert_eq!(
            log.iter().map(|e| e.event.as_str()).collect::<Vec<_>>(),
            ["started", "paused"]
        );
        assert_eq!(log[0].detail["candidate"], 2);
        assert!(reg.rollout_events("other", 10).await.unwrap().is_empty());
    }
);

on_all_backends!(
    concurrent_rollout_writers_serialize,
    |reg: Registry| async move {
        reg.put_rollout("d", None, &json!({"n": 0}), "r", &[])
            .await
            .unwrap();
        // Eight writers race from revision 1: exactly one wins.
        let mut tasks = Vec::new();
        for i in 0..8 {
            let reg = reg.clone();
            tasks.push(tokio::spawn(async move {
                reg.put_rollout(
                    "d",
                    Some(1),
                    &json!({"n": i}),
                    "r",
                    &[(format!("w{i}"), json!({}))],
                )
                .await
            }));
        }
        let mut wins = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(rev) => {
                    wins += 1;
                    assert_eq!(rev, 2);
                }
                Err(RegistryError::Conflict(_)) => {}
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(wins, 1);
        assert_eq!(reg.rollout_events("d", 100).await.unwrap().len(), 1);
    }
);
