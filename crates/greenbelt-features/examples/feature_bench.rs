//! Feature-store benchmark driver. `bash bench/features.sh` runs it next to
//! Feast (`bench/features/feast_bench.py`) on the same files and the same
//! Redis; see `bench/README.md`.
//!
//! ```text
//! feature_bench gen                 --dir D [sizes]   # Parquet sources, entity rows, definitions
//! feature_bench materialize-offline --dir D           # sources -> offline store
//! feature_bench materialize-online  --dir D --store redb|redis
//! feature_bench online              --dir D --store redb|redis
//! feature_bench historical          --dir D
//! ```
//!
//! Every result is one JSON object on one stdout line; progress goes to
//! stderr. Peak memory is the process's VmHWM from `/proc/self/status`, so
//! each measured phase runs in its own process.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use datafusion::arrow::array::{ArrayRef, Float64Array, Int64Array, TimestampMicrosecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::file::properties::WriterProperties;
use greenbelt_features::Definitions;
use greenbelt_features::offline::{MaterializeOptions, OfflineStore, materialize};
use greenbelt_features::online::OnlineStore;
use greenbelt_features::online::redis::RedisStore;
use greenbelt_features::online::service::{
    CacheOptions, FieldStatus, OnlineRequest, OnlineService,
};
use greenbelt_features::pit::{HistoricalOptions, historical_to_parquet};
use greenbelt_features::source::EngineOptions;
use greenbelt_features::time::{DAY_US, day_start, format_ts, now_us};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::time::Instant;

/// Key prefix of everything this benchmark writes to Redis.
const REDIS_PREFIX: &str = "gbbench:";
/// The feature service holding every feature of every view.
const SERVICE: &str = "bench";
const JOIN_KEY: &str = "driver_id";

#[derive(Parser)]
#[command(about = "Greenbelt feature-store benchmarks (see bench/README.md)")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Write the sources, entity rows, online ids and definitions (skipped
    /// when the same sizes were generated less than a day ago).
    Gen {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 1_000_000)]
        entity_rows: usize,
        /// Rows over all feature views together.
        #[arg(long, default_value_t = 10_000_000)]
        feature_rows: usize,
        #[arg(long, default_value_t = 5)]
        views: usize,
        /// Features over all views together.
        #[arg(long, default_value_t = 50)]
        features: usize,
        /// Distinct entity ids.
        #[arg(long, default_value_t = 100_000)]
        entities: usize,
        /// Days the event times span (ending now).
        #[arg(long, default_value_t = 30)]
        days: i64,
        /// TTL of every view, days.
        #[arg(long, default_value_t = 7)]
        ttl_days: i64,
        /// Entity ids that the online benchmark asks for, cycled.
        #[arg(long, default_value_t = 10_000)]
        online_ids: usize,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Regenerate even when the existing data would do.
        #[arg(long)]
        force: bool,
    },
    /// Materialize every view from its source into the offline store.
    MaterializeOffline {
        #[arg(long)]
        dir: PathBuf,
        /// DataFusion memory pool (spills above it).
        #[arg(long, env = "FEATURE_BENCH_MEMORY_LIMIT_MB", default_value_t = 512)]
        memory_limit_mb: usize,
    },
    /// Materialize every view from the offline store into an online store.
    MaterializeOnline {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        store: StoreKind,
        /// DataFusion memory pool (spills above it).
        #[arg(long, env = "FEATURE_BENCH_MEMORY_LIMIT_MB", default_value_t = 512)]
        memory_limit_mb: usize,
    },
    /// `get_online_features` latency, cache on (hits) and off.
    Online {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        store: StoreKind,
        /// Measured calls with one entity row (after warm-up).
        #[arg(long, env = "FEATURE_BENCH_ONLINE_ITERS", default_value_t = 20_000)]
        iters: usize,
        /// Measured calls with 100 entity rows.
        #[arg(
            long,
            env = "FEATURE_BENCH_ONLINE_BATCH_ITERS",
            default_value_t = 2_000
        )]
        batch_iters: usize,
    },
    /// Point-in-time retrieval of every feature for the entity rows.
    Historical {
        #[arg(long)]
        dir: PathBuf,
        /// DataFusion memory pool (spills above it).
        #[arg(long, env = "FEATURE_BENCH_MEMORY_LIMIT_MB", default_value_t = 512)]
        memory_limit_mb: usize,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum StoreKind {
    Redb,
    Redis,
}

impl StoreKind {
    fn name(self) -> &'static str {
        match self {
            StoreKind::Redb => "redb",
            StoreKind::Redis => "redis",
        }
    }
}

/// What `gen` wrote; read by every other step and by `feast_bench.py`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Meta {
    entity_rows: usize,
    feature_rows: usize,
    views: usize,
    features: usize,
    entities: usize,
    days: i64,
    ttl_days: i64,
    online_ids: usize,
    seed: u64,
    /// Event times are in [start_us, end_us).
    start_us: i64,
    end_us: i64,
    generated: String,
    join_key: String,
    /// View name → (source file relative to the directory, feature names).
    view_specs: Vec<ViewMeta>,
    entity_file: String,
    online_ids_file: String,
    definitions: String,
    service: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct ViewMeta {
    name: String,
    source: String,
    rows: usize,
    features: Vec<String>,
}

/// splitmix64: deterministic and dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn peak_rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn emit(v: Value) {
    println!("{v}");
}

fn ts_field(name: &str) -> Field {
    Field::new(
        name,
        DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        false,
    )
}

fn writer(path: &Path, schema: Arc<Schema>) -> anyhow::Result<ArrowWriter<std::fs::File>> {
    let f = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let props = WriterProperties::builder()
        .set_max_row_group_row_count(Some(256 * 1024))
        .build();
    Ok(ArrowWriter::try_new(f, schema, Some(props))?)
}

fn meta_path(dir: &Path) -> PathBuf {
    dir.join("meta.json")
}

fn read_meta(dir: &Path) -> anyhow::Result<Meta> {
    let p = meta_path(dir);
    let text = std::fs::read_to_string(&p)
        .with_context(|| format!("reading {} (run `feature_bench gen` first)", p.display()))?;
    Ok(serde_json::from_str(&text)?)
}

#[allow(clippy::too_many_arguments)]
fn gen_data(
    dir: &Path,
    entity_rows: usize,
    feature_rows: usize,
    views: usize,
    features: usize,
    entities: usize,
    days: i64,
    ttl_days: i64,
    online_ids: usize,
    seed: u64,
    force: bool,
) -> anyhow::Result<()> {
    if views == 0 || features < views || entities == 0 || days <= 0 {
        bail!("gen: need views >= 1, features >= views, entities >= 1, days >= 1");
    }
    let now = now_us();
    if !force && let Ok(old) = read_meta(dir) {
        let same = old.entity_rows == entity_rows
            && old.feature_rows == feature_rows
            && old.views == views
            && old.features == features
            && old.entities == entities
            && old.days == days
            && old.ttl_days == ttl_days
            && old.online_ids == online_ids
            && old.seed == seed;
        // Online values must stay inside the views' TTL: regenerate daily.
        if same && now - old.end_us < DAY_US {
            eprintln!(
                "gen: reusing data in {} (generated {})",
                dir.display(),
                old.generated
            );
            emit(json!({"bench": "gen", "reused": true, "generated": old.generated}));
            return Ok(());
        }
    }
    let started = Instant::now();
    let data = dir.join("data");
    std::fs::create_dir_all(&data)?;
    // Everything derived from the old data goes.
    for p in ["offline", "online.redb", "historical_greenbelt.parquet"] {
        let p = dir.join(p);
        if p.is_dir() {
            std::fs::remove_dir_all(&p)?;
        } else if p.exists() {
            std::fs::remove_file(&p)?;
        }
    }
    let end_us = now - now % 60_000_000;
    let span = days * DAY_US;
    let start_us = end_us - span;
    let mut rng = Rng(seed);
    let mut view_specs = Vec::new();
    let mut fnum = 0;
    for v in 0..views {
        let name = format!("fv{v}");
        // Spread features and rows evenly; the first views take the remainder.
        let nf = features / views + usize::from(v < features % views);
        let rows = feature_rows / views + usize::from(v < feature_rows % views);
        let fnames: Vec<String> = (0..nf).map(|j| format!("{name}_f{}", fnum + j)).collect();
        fnum += nf;
        let mut fields = vec![
            Field::new(JOIN_KEY, DataType::Int64, false),
            ts_field("event_timestamp"),
        ];
        fields.extend(
            fnames
                .iter()
                .map(|f| Field::new(f, DataType::Float64, true)),
        );
        let schema = Arc::new(Schema::new(fields));
        let file = format!("data/{name}.parquet");
        let mut w = writer(&dir.join(&file), schema.clone())?;
        let chunk = 65_536;
        let step = span as f64 / rows.max(1) as f64;
        let mut at = 0;
        while at < rows {
            let n = chunk.min(rows - at);
            let ids: Vec<i64> = (0..n).map(|_| rng.below(entities as u64) as i64).collect();
            // Event times ascend through the file, like a log.
            let ts: Vec<i64> = (0..n)
                .map(|i| start_us + (((at + i) as f64 + rng.unit()) * step) as i64)
                .map(|t| t.min(end_us - 1))
                .collect();
            let mut cols: Vec<ArrayRef> = vec![
                Arc::new(Int64Array::from(ids)),
                Arc::new(TimestampMicrosecondArray::from(ts).with_timezone("UTC")),
            ];
            for _ in &fnames {
                cols.push(Arc::new(Float64Array::from(
                    (0..n).map(|_| rng.unit()).collect::<Vec<_>>(),
                )));
            }
            w.write(&RecordBatch::try_new(schema.clone(), cols)?)?;
            at += n;
        }
        w.close()?;
        eprintln!("gen: {file}: {rows} rows x {nf} features");
        view_specs.push(ViewMeta {
            name,
            source: file,
            rows,
            features: fnames,
        });
    }
    // Entity rows: random ids and times, unsorted, after one TTL of history
    // (so that nearly every row has a value in every view; Feast's file
    // store drops an entity row for which a view has rows but none in time).
    let ttl_us = ttl_days * DAY_US;
    let first = start_us + ttl_us.min(span / 2);
    let schema = Arc::new(Schema::new(vec![
        Field::new(JOIN_KEY, DataType::Int64, false),
        ts_field("event_timestamp"),
    ]));
    let entity_file = "data/entities.parquet".to_string();
    let mut w = writer(&dir.join(&entity_file), schema.clone())?;
    let mut at = 0;
    while at < entity_rows {
        let n = 65_536.min(entity_rows - at);
        let ids: Vec<i64> = (0..n).map(|_| rng.below(entities as u64) as i64).collect();
        let ts: Vec<i64> = (0..n)
            .map(|_| first + rng.below((end_us - first) as u64) as i64)
            .collect();
        w.write(&RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from(ids)),
                Arc::new(TimestampMicrosecondArray::from(ts).with_timezone("UTC")),
            ],
        )?)?;
        at += n;
    }
    w.close()?;
    eprintln!("gen: {entity_file}: {entity_rows} rows");
    let ids: Vec<i64> = (0..online_ids)
        .map(|_| rng.below(entities as u64) as i64)
        .collect();
    let online_ids_file = "online_ids.json".to_string();
    std::fs::write(dir.join(&online_ids_file), serde_json::to_vec(&ids)?)?;

    // Greenbelt's definitions over the same files.
    let mut toml = String::from(
        "# Written by feature_bench gen; the Feast repo of feast_bench.py reads the same files.\n\
         [store]\noffline = \"offline\"\nonline = \"online.redb\"\n\n\
         [[entity]]\nname = \"driver\"\njoin_keys = [{ name = \"driver_id\", type = \"int64\" }]\n",
    );
    for v in &view_specs {
        toml.push_str(&format!(
            "\n[[source]]\nname = \"{n}_src\"\npath = \"{p}\"\nevent_timestamp = \"event_timestamp\"\n\n\
             [[feature_view]]\nname = \"{n}\"\nentities = [\"driver\"]\nsource = \"{n}_src\"\nttl = \"{ttl_days}days\"\nfeatures = [{f}]\n",
            n = v.name,
            p = v.source,
            f = v
                .features
                .iter()
                .map(|f| format!("{{ name = \"{f}\", type = \"float64\" }}"))
                .collect::<Vec<_>>()
                .join(", "),
        ));
    }
    toml.push_str(&format!(
        "\n[[feature_service]]\nname = \"{SERVICE}\"\nfeatures = [{}]\n",
        view_specs
            .iter()
            .map(|v| format!("\"{}:*\"", v.name))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let definitions = "features.toml".to_string();
    std::fs::write(dir.join(&definitions), toml)?;
    Definitions::load(&dir.join(&definitions)).context("the generated definitions")?;
    let meta = Meta {
        entity_rows,
        feature_rows,
        views,
        features,
        entities,
        days,
        ttl_days,
        online_ids,
        seed,
        start_us,
        end_us,
        generated: format_ts(now),
        join_key: JOIN_KEY.into(),
        view_specs,
        entity_file,
        online_ids_file,
        definitions,
        service: SERVICE.into(),
    };
    std::fs::write(meta_path(dir), serde_json::to_vec_pretty(&meta)?)?;
    emit(json!({
        "bench": "gen", "reused": false, "generated": meta.generated,
        "seconds": started.elapsed().as_secs_f64(),
        "feature_rows": feature_rows, "entity_rows": entity_rows,
    }));
    Ok(())
}

fn load_defs(dir: &Path, meta: &Meta) -> anyhow::Result<Definitions> {
    Ok(Definitions::load(&dir.join(&meta.definitions))?)
}

fn redis_url() -> String {
    std::env::var("FEATURE_BENCH_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/15".into())
}

/// Delete every key of this benchmark (prefix `gbbench:`), nothing else.
async fn clear_redis(url: &str) -> anyhow::Result<u64> {
    let client = redis::Client::open(url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let mut cursor: u64 = 0;
    let mut deleted = 0u64;
    loop {
        let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{REDIS_PREFIX}*"))
            .arg("COUNT")
            .arg(10_000)
            .query_async(&mut conn)
            .await?;
        if !keys.is_empty() {
            let n: u64 = redis::cmd("UNLINK")
                .arg(keys)
                .query_async(&mut conn)
                .await?;
            deleted += n;
        }
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    Ok(deleted)
}

async fn open_store(dir: &Path, kind: StoreKind) -> anyhow::Result<OnlineStore> {
    Ok(match kind {
        StoreKind::Redb => {
            let p = dir.join("online.redb");
            OnlineStore::open(p.to_str().context("non-UTF-8 path")?).await?
        }
        StoreKind::Redis => {
            OnlineStore::Redis(RedisStore::connect(&redis_url(), REDIS_PREFIX).await?)
        }
    })
}

fn engine(memory_limit_mb: usize) -> EngineOptions {
    EngineOptions {
        memory_limit: memory_limit_mb.max(16) * 1024 * 1024,
        ..EngineOptions::default()
    }
}

async fn materialize_offline(dir: &Path, memory_limit_mb: usize) -> anyhow::Result<()> {
    let meta = read_meta(dir)?;
    let defs = load_defs(dir, &meta)?;
    let offline = dir.join("offline");
    if offline.exists() {
        std::fs::remove_dir_all(&offline)?;
    }
    let store = OfflineStore::open(&offline)?;
    let opts = MaterializeOptions {
        engine: engine(memory_limit_mb),
        now_us: None,
    };
    let start = day_start(meta.start_us);
    let started = Instant::now();
    let mut rows = 0;
    let mut per_view = Vec::new();
    for v in &meta.view_specs {
        let t = Instant::now();
        let r = materialize(&defs, &store, &v.name, start, meta.end_us, &opts).await?;
        eprintln!(
            "materialize-offline: {}: {} rows in {:.2}s",
            v.name,
            r.rows,
            t.elapsed().as_secs_f64()
        );
        rows += r.rows;
        per_view.push(
            json!({"view": v.name, "rows": r.rows, "seconds": t.elapsed().as_secs_f64(),
            "partitions": r.partitions_written.len()}),
        );
    }
    let secs = started.elapsed().as_secs_f64();
    emit(json!({
        "bench": "materialize", "system": "greenbelt", "phase": "offline",
        "target": "offline store (Parquet)", "rows": rows, "seconds": secs,
        "rows_per_s": rows as f64 / secs, "peak_rss_bytes": peak_rss_bytes(),
        "memory_limit_bytes": opts.engine.memory_limit, "views": per_view,
    }));
    Ok(())
}

async fn materialize_online(
    dir: &Path,
    kind: StoreKind,
    memory_limit_mb: usize,
) -> anyhow::Result<()> {
    let meta = read_meta(dir)?;
    let defs = Arc::new(load_defs(dir, &meta)?);
    let cleared = match kind {
        StoreKind::Redb => {
            let p = dir.join("online.redb");
            if p.exists() {
                std::fs::remove_file(&p)?;
            }
            0
        }
        StoreKind::Redis => clear_redis(&redis_url()).await?,
    };
    let store = open_store(dir, kind).await?;
    // As `greenbelt features materialize` does: no cache while writing.
    let svc = OnlineService::new(
        defs.clone(),
        store,
        CacheOptions {
            enabled: false,
            ..CacheOptions::default()
        },
    );
    let offline = OfflineStore::open(&dir.join("offline"))?;
    let engine = engine(memory_limit_mb);
    let start = day_start(meta.start_us);
    let started = Instant::now();
    let mut keys = 0;
    let mut per_view = Vec::new();
    for v in &meta.view_specs {
        let t = Instant::now();
        let k = svc
            .materialize_online(&offline, &v.name, start, meta.end_us, &engine)
            .await?;
        eprintln!(
            "materialize-online {}: {}: {k} keys in {:.2}s",
            kind.name(),
            v.name,
            t.elapsed().as_secs_f64()
        );
        keys += k;
        per_view
            .push(json!({"view": v.name, "keys_written": k, "seconds": t.elapsed().as_secs_f64()}));
    }
    let secs = started.elapsed().as_secs_f64();
    let rows = meta.feature_rows as u64;
    emit(json!({
        "bench": "materialize", "system": "greenbelt", "phase": "online",
        "target": kind.name(), "rows": rows, "keys_written": keys, "seconds": secs,
        "rows_per_s": rows as f64 / secs, "peak_rss_bytes": peak_rss_bytes(),
        "redis_keys_cleared_before": cleared, "memory_limit_bytes": engine.memory_limit,
        "views": per_view,
    }));
    Ok(())
}

fn request(ids: &[i64]) -> OnlineRequest {
    let mut entities = std::collections::BTreeMap::new();
    entities.insert(
        JOIN_KEY.to_string(),
        ids.iter().map(|i| Value::from(*i)).collect(),
    );
    OnlineRequest {
        entities,
        feature_service: Some(SERVICE.into()),
        features: None,
        full_feature_names: false,
    }
}

struct Shape {
    name: &'static str,
    rows: usize,
    iters: usize,
}

async fn run_online(
    dir: &Path,
    kind: StoreKind,
    iters: usize,
    batch_iters: usize,
) -> anyhow::Result<()> {
    let meta = read_meta(dir)?;
    let defs = Arc::new(load_defs(dir, &meta)?);
    let ids: Vec<i64> = serde_json::from_slice(&std::fs::read(dir.join(&meta.online_ids_file))?)?;
    if ids.len() < 100 {
        bail!("online: need at least 100 online ids, have {}", ids.len());
    }
    let store = open_store(dir, kind).await?;
    let shapes = [
        Shape {
            name: "1x50",
            rows: 1,
            iters,
        },
        Shape {
            name: "100x50",
            rows: 100,
            iters: batch_iters,
        },
    ];
    for cache in [true, false] {
        let svc = OnlineService::new(
            defs.clone(),
            store.clone(),
            CacheOptions {
                enabled: cache,
                // Room for every key the benchmark asks for.
                max_entries: (ids.len() * meta.views * 2) as u64,
                ttl: std::time::Duration::from_secs(3600),
            },
        );
        // Warm-up: every id once (fills the cache), then a few more calls.
        let mut present = 0u64;
        let mut values = 0u64;
        let mut checks = Vec::new();
        for (i, chunk) in ids.chunks(100).enumerate() {
            let r = svc.get_online_features(&request(chunk)).await?;
            let feats = &r.results[1..];
            for c in feats {
                values += c.statuses.len() as u64;
                present += c
                    .statuses
                    .iter()
                    .filter(|s| **s == FieldStatus::Present)
                    .count() as u64;
            }
            if i == 0 {
                // The first three ids' values, for the cross-check with Feast.
                for (row, id) in chunk.iter().take(3).enumerate() {
                    let mut m = serde_json::Map::new();
                    for (n, c) in r.metadata.feature_names[1..].iter().zip(feats) {
                        m.insert(n.clone(), c.values[row].clone());
                    }
                    checks.push(json!({"id": id, "values": m}));
                }
            }
        }
        let features = meta.features;
        for shape in &shapes {
            let reqs: Vec<OnlineRequest> = (0..ids.len())
                .step_by(shape.rows)
                .filter(|s| s + shape.rows <= ids.len())
                .map(|s| request(&ids[s..s + shape.rows]))
                .collect();
            let warm = (shape.iters / 10).max(10);
            for i in 0..warm {
                svc.get_online_features(&reqs[i % reqs.len()]).await?;
            }
            let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
            let t = Instant::now();
            for i in 0..shape.iters {
                let r = &reqs[i % reqs.len()];
                let s = Instant::now();
                let out = svc.get_online_features(r).await?;
                let ns = s.elapsed().as_nanos() as u64;
                std::hint::black_box(out);
                h.record(ns.max(1))?;
            }
            let wall = t.elapsed().as_secs_f64();
            let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
            emit(json!({
                "bench": "online", "system": "greenbelt", "store": kind.name(),
                "cache": if cache { "hit" } else { "off" },
                "shape": shape.name, "entity_rows": shape.rows, "features": features,
                "iters": shape.iters, "warmup": warm,
                "p50_us": us(0.5), "p90_us": us(0.9), "p99_us": us(0.99), "p999_us": us(0.999),
                "max_us": h.max() as f64 / 1000.0, "mean_us": h.mean() / 1000.0,
                "calls_per_s": shape.iters as f64 / wall,
                "present_fraction": if values > 0 { present as f64 / values as f64 } else { 0.0 },
                "check": checks,
            }));
        }
    }
    if kind == StoreKind::Redis {
        emit(redis_ping(iters).await?);
    }
    Ok(())
}

/// Round trips to Redis alone (PING on a multiplexed connection like the
/// store's): the floor under any read through Redis on this machine.
async fn redis_ping(iters: usize) -> anyhow::Result<Value> {
    let client = redis::Client::open(redis_url())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    for i in 0..iters + iters / 10 {
        let s = Instant::now();
        let _: String = redis::cmd("PING").query_async(&mut conn).await?;
        if i >= iters / 10 {
            h.record((s.elapsed().as_nanos() as u64).max(1))?;
        }
    }
    let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    Ok(json!({
        "bench": "online", "system": "greenbelt", "store": "redis", "what": "ping",
        "iters": iters, "p50_us": us(0.5), "p90_us": us(0.9), "p99_us": us(0.99),
        "p999_us": us(0.999), "mean_us": h.mean() / 1000.0,
    }))
}

async fn run_historical(dir: &Path, memory_limit_mb: usize) -> anyhow::Result<()> {
    let meta = read_meta(dir)?;
    let defs = load_defs(dir, &meta)?;
    let refs = defs.service(SERVICE)?.features.clone();
    let out = dir.join("historical_greenbelt.parquet");
    let opts = HistoricalOptions {
        engine: engine(memory_limit_mb),
        ..HistoricalOptions::default()
    };
    let started = Instant::now();
    let rows = match historical_to_parquet(&defs, &refs, &dir.join(&meta.entity_file), &out, &opts)
        .await
    {
        Ok(rows) => rows,
        Err(e) => {
            // Recorded as a result: a limit the retrieval does not fit in is a finding.
            let msg = e.to_string();
            emit(json!({
                "bench": "historical", "system": "greenbelt", "failed": true,
                "error": msg.lines().next().unwrap_or_default(),
                "seconds": started.elapsed().as_secs_f64(), "peak_rss_bytes": peak_rss_bytes(),
                "memory_limit_bytes": opts.engine.memory_limit,
                "entity_rows": meta.entity_rows, "feature_rows": meta.feature_rows,
            }));
            let _ = std::fs::remove_file(out.with_extension("parquet.tmp"));
            return Err(e.into());
        }
    };
    let secs = started.elapsed().as_secs_f64();
    let peak = peak_rss_bytes();
    // Order-independent checksum for the cross-check with Feast (not timed).
    let (sum, nulls) = checksum(&out, &refs)?;
    emit(json!({
        "bench": "historical", "system": "greenbelt", "entity_rows": rows,
        "feature_rows": meta.feature_rows, "features": refs.len(), "seconds": secs,
        "peak_rss_bytes": peak, "memory_limit_bytes": opts.engine.memory_limit,
        "output": "Parquet file", "checksum": {"sum": sum, "nulls": nulls},
    }));
    Ok(())
}

/// Sum and null count of every feature column of a Parquet file.
fn checksum(path: &Path, refs: &[greenbelt_features::FeatureRef]) -> anyhow::Result<(f64, u64)> {
    use datafusion::arrow::array::Array;
    use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let r = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(path)?)?.build()?;
    let mut sum = 0.0;
    let mut nulls = 0u64;
    for b in r {
        let b = b?;
        for f in refs {
            let c = b
                .column_by_name(&f.feature)
                .with_context(|| format!("output has no column {}", f.feature))?;
            let a = c
                .as_any()
                .downcast_ref::<Float64Array>()
                .with_context(|| format!("column {} is not float64", f.feature))?;
            nulls += a.null_count() as u64;
            sum += a.iter().flatten().sum::<f64>();
        }
    }
    Ok((sum, nulls))
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // As in `greenbelt serve`: a multi-threaded runtime, the work in a
    // spawned task (a request handler runs in one).
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let work = async move {
        match cli.cmd {
            Cmd::Gen {
                dir,
                entity_rows,
                feature_rows,
                views,
                features,
                entities,
                days,
                ttl_days,
                online_ids,
                seed,
                force,
            } => gen_data(
                &dir,
                entity_rows,
                feature_rows,
                views,
                features,
                entities,
                days,
                ttl_days,
                online_ids,
                seed,
                force,
            ),
            Cmd::MaterializeOffline {
                dir,
                memory_limit_mb,
            } => materialize_offline(&dir, memory_limit_mb).await,
            Cmd::MaterializeOnline {
                dir,
                store,
                memory_limit_mb,
            } => materialize_online(&dir, store, memory_limit_mb).await,
            Cmd::Online {
                dir,
                store,
                iters,
                batch_iters,
            } => run_online(&dir, store, iters, batch_iters).await,
            Cmd::Historical {
                dir,
                memory_limit_mb,
            } => run_historical(&dir, memory_limit_mb).await,
        }
    };
    rt.block_on(async move { tokio::spawn(work).await? })
}
