use greenbelt_registry::Registry;
use sqlx::Executor;

/// A fresh SQLite registry in a temp dir (kept alive by the returned guard).
pub async fn sqlite() -> (Registry, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/registry.db", dir.path().display());
    (Registry::open(&url).await.unwrap(), dir)
}

/// A fresh PostgreSQL database, or None (with a SKIP line) when no URL is set.
pub async fn postgres(test: &str) -> Option<Registry> {
    let Ok(admin_url) = std::env::var("GREENBELT_TEST_POSTGRES_URL") else {
        eprintln!("SKIP {test} on PostgreSQL: GREENBELT_TEST_POSTGRES_URL is not set");
        return None;
    };
    sqlx::any::install_default_drivers();
    let db = format!("gb_test_{}_{}", test, std::process::id());
    let admin = sqlx::AnyPool::connect(&admin_url).await.unwrap();
    admin
        .execute(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {db}")))
        .await
        .unwrap();
    admin
        .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
        .await
        .unwrap();
    let (base, _) = admin_url.rsplit_once('/').unwrap();
    Some(Registry::open(&format!("{base}/{db}")).await.unwrap())
}

/// Run `body` on every available backend.
#[macro_export]
macro_rules! on_all_backends {
    ($name:ident, $body:expr) => {
        #[tokio::test]
        async fn $name() {
            let (reg, _guard) = $crate::backends::sqlite().await;
            ($body)(reg).await;
            if let Some(reg) = $crate::backends::postgres(stringify!($name)).await {
                ($body)(reg).await;
            }
        }
    };
}
