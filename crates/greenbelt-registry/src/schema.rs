//! Versioned migrations, one list per database. Each migration runs once, in
//! order, in a transaction, and is recorded in `gb_schema_migrations`.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// (version, statements) for `dialect`.
pub fn migrations(dialect: Dialect) -> Vec<(i64, Vec<String>)> {
    let serial = match dialect {
        Dialect::Sqlite => "INTEGER PRIMARY KEY AUTOINCREMENT",
        Dialect::Postgres => "BIGSERIAL PRIMARY KEY",
    };
    vec![
    (
        1,
        vec![
            "CREATE TABLE IF NOT EXISTS gb_models (
                name TEXT PRIMARY KEY,
                created_us BIGINT NOT NULL
            )"
            .to_string(),
            "CREATE TABLE IF NOT EXISTS gb_versions (
                model TEXT NOT NULL REFERENCES gb_models(name),
                version BIGINT NOT NULL,
                artifact_uri TEXT NOT NULL,
                sha256 TEXT NOT NULL,
                format TEXT NOT NULL,
                signature TEXT NOT NULL,
                params TEXT NOT NULL,
                metrics TEXT NOT NULL,
                gate_report TEXT NOT NULL,
                lineage TEXT NOT NULL,
                tags TEXT NOT NULL,
                created_us BIGINT NOT NULL,
                created_by TEXT NOT NULL,
                PRIMARY KEY (model, version)
            )"
            .to_string(),
            "CREATE TABLE IF NOT EXISTS gb_aliases (
                model TEXT NOT NULL REFERENCES gb_models(name),
                alias TEXT NOT NULL,
                version BIGINT NOT NULL,
                updated_us BIGINT NOT NULL,
                PRIMARY KEY (model, alias)
            )"
            .to_string(),
            format!(
                "CREATE TABLE IF NOT EXISTS gb_alias_events (
                    id {serial},
                    model TEXT NOT NULL,
                    alias TEXT NOT NULL,
                    from_version BIGINT,
                    to_version BIGINT,
                    at_us BIGINT NOT NULL,
                    actor TEXT NOT NULL,
                    reason TEXT NOT NULL
                )"
            ),
            "CREATE INDEX IF NOT EXISTS gb_alias_events_by_alias ON gb_alias_events (model, alias, at_us)"
                .to_string(),
        ],
    ),
    // 2: rollout state and events (greenbelt-control's rollout controller).
    (
        2,
        vec![
            // Rollout state, one row per deployment: opaque JSON owned by
            // the rollout controller, guarded by a revision number for
            // compare-and-swap between replicas.
            "CREATE TABLE IF NOT EXISTS gb_rollouts (
                deployment TEXT PRIMARY KEY,
                rev BIGINT NOT NULL,
                state TEXT NOT NULL,
                updated_us BIGINT NOT NULL
            )"
            .to_string(),
            format!(
                "CREATE TABLE IF NOT EXISTS gb_rollout_events (
                    id {serial},
                    deployment TEXT NOT NULL,
                    rollout TEXT NOT NULL,
                    at_us BIGINT NOT NULL,
                    event TEXT NOT NULL,
                    detail TEXT NOT NULL
                )"
            ),
            "CREATE INDEX IF NOT EXISTS gb_rollout_events_by_deployment ON gb_rollout_events (deployment, id)"
                .to_string(),
        ],
    ),
    // 3: feature-store definitions, versioned (greenbelt-features; 2 is the rollout tables).
    (
        3,
        vec!["CREATE TABLE IF NOT EXISTS gb_feature_definitions (
                kind TEXT NOT NULL,
                name TEXT NOT NULL,
                version BIGINT NOT NULL,
                spec TEXT NOT NULL,
                applied_us BIGINT NOT NULL,
                applied_by TEXT NOT NULL,
                PRIMARY KEY (kind, name, version)
            )"
        .to_string()],
    ),
    ]
}
