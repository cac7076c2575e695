//! The multi-region failover drill. Two regions on this machine, each a
//! `greenbelt serve` with its own registry database and online store:
//! region A's PostgreSQL is a primary the drill `initdb`s (its own cluster
//! on its own port, never the machine's server) and region B's a streaming
//! hot standby of it (`pg_basebackup -R`); A's Redis is a primary and B's
//! its replica. Clients reach the regions through HAProxy, which health
//! checks `/v2/health/ready` and sends traffic to B (a `backup` server)
//! only while A is down. The regions listen on their own loopback address
//! (A on 127.0.0.1, B on 127.0.0.2 where it can be bound) and ports; no
//! network namespaces (they need root and veth plumbing, and the drill's
//! test runs unprivileged too): the drill kills processes, it does not
//! partition a network.
//!
//! Under steady load (the shared open-loop generator, through HAProxy)
//! and a stream of sequence-numbered writes (registry version
//! registrations and feature pushes, through HAProxy), the drill takes
//! region A down (server, database, Redis, at once), waits for HAProxy to
//! mark it down (detection), promotes B (`pg_ctl promote`, `REPLICAOF NO
//! ONE`; B's server keeps its connections, which turn read-write), reads
//! back which acknowledged writes B has (RPO), then fails back: A's
//! database and Redis are rebuilt as replicas of B, A's server starts, a
//! planned switchover (B's database stopped cleanly, A promoted, Redis
//! `FAILOVER`) makes A primary again, B is rebuilt as A's standby, and A
//! must hold every write ever acknowledged.
//!
//! [`failover`] does the I/O; [`judge::judge`] is a pure function.

pub mod judge;
pub mod procs;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::watch;

pub use judge::{
    Failback, Found, Measurements, Objectives, Probe, Region, Verdict, Write, WriteKind, judge,
};
use procs::{PgCluster, Proc, Tools};

use crate::error::{AppError, Result};
use crate::loadgen::{self, OpenOptions, Protocol, Target};

/// The model every region serves (A as version 1, B as version 2, so each
/// answer's `x-greenbelt-model-version` says which region served it).
pub const MODEL: &str = "scorer";
/// The registry model the drill's sequence-numbered writes register.
pub const WRITE_MODEL: &str = "failover-drill";
/// The feature view (and service) the drill's pushes write.
pub const VIEW: &str = "failover_records";

/// What to drill.
#[derive(Debug, Clone)]
pub struct FailoverOptions {
    /// The `greenbelt` binary the regions' servers run.
    pub greenbelt: PathBuf,
    /// The ONNX model the regions serve.
    pub model_file: PathBuf,
    /// PostgreSQL's server binaries.
    pub pg_bin: PathBuf,
    /// Who runs PostgreSQL when the drill runs as root.
    pub pg_user: String,
    /// Predictions per second (open loop).
    pub rate: f64,
    /// Registry writes per second, and as many feature pushes.
    pub write_rate: f64,
    /// Load before region A is taken down.
    pub steady: Duration,
    /// Load on region B before the fail-back starts.
    pub after: Duration,
    /// Longest wait for each step.
    pub timeout: Duration,
    pub objectives: Objectives,
    /// Shell commands that detect and promote instead of the drill's own
    /// (the runbook's), run with [`hook_env`]'s variables.
    pub promote_cmd: Option<String>,
    /// Keep the drill's directory (configs, logs, data) when it ends.
    pub keep: bool,
}

/// Where a region listens.
#[derive(Debug, Clone, Serialize)]
pub struct RegionAddrs {
    pub server: String,
    pub postgres: String,
    pub redis: String,
}

/// The drill's report: the topology and the verdict.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub balancer: String,
    pub region_a: RegionAddrs,
    pub region_b: RegionAddrs,
    pub rate: f64,
    pub write_rate: f64,
    /// `built-in` or `command` (the runbook's commands).
    pub promotion: String,
    pub load_dropped: u64,
    #[serde(flatten)]
    pub verdict: Verdict,
}

impl Report {
    /// The report as text for people.
    pub fn text(&self) -> String {
        let v = &self.verdict;
        let ms = |x: Option<i64>| x.map_or("-".to_string(), |v| format!("{v} ms"));
        let mut out = format!(
            "failover drill, region A ({}) → region B ({}) and back: {}\n",
            self.region_a.server,
            self.region_b.server,
            if v.passed { "recovered" } else { "FAILED" }
        );
        let mut line = |k: &str, val: String| out.push_str(&format!("  {k:<22} {val}\n"));
        line(
            "setup",
            format!(
                "HAProxy {} health-checks /v2/health/ready; A: PostgreSQL {} + Redis {}, B: standby {} + replica {}",
                self.balancer,
                self.region_a.postgres,
                self.region_a.redis,
                self.region_b.postgres,
                self.region_b.redis
            ),
        );
        line(
            "load",
            format!(
                "{} predictions/s, {} registry writes/s and {} feature pushes/s, promotion {}",
                self.rate, self.write_rate, self.write_rate, self.promotion
            ),
        );
        line(
            "detection",
            format!(
                "{} after region A went down (HAProxy marked it DOWN)",
                ms(v.detection_ms)
            ),
        );
        line(
            "promotion",
            format!(
                "{} after the failure (B's database and Redis read-write)",
                ms(v.promotion_ms)
            ),
        );
        line(
            "RTO",
            format!(
                "{} (first prediction served by B){}",
                ms(v.rto_ms),
                v.objectives
                    .rto_ms
                    .map_or(String::new(), |o| format!(", objective {o} ms"))
            ),
        );
        line(
            "RPO",
            format!(
                "{} ({} registry writes, {} feature pushes acknowledged by A and missing from B){}",
                ms(v.rpo_ms),
                v.registry_writes.lost,
                v.feature_pushes.lost,
                v.objectives
                    .rpo_ms
                    .map_or(String::new(), |o| format!(", objective {o} ms"))
            ),
        );
        line(
            "requests",
            format!(
                "{} total, {} failed ({} during the failover, {} during the fail-back)",
                v.requests, v.failed_requests, v.failed_during_failover, v.failed_during_failback
            ),
        );
        for (what, s) in [
            ("registry writes", &v.registry_writes),
            ("feature pushes", &v.feature_pushes),
        ] {
            line(
                what,
                format!(
                    "{} sent, {} acked by A, {} failed ({} refused by a read-only replica), writable again {} after the failure",
                    s.sent,
                    s.acked_by_a,
                    s.failed,
                    s.refused_read_only,
                    ms(s.recovered_after_ms)
                ),
            );
        }
        line(
            "fail-back",
            format!(
                "{} to A primary and serving again, {} to B streaming as its standby; {} registry writes and {} feature pushes lost",
                ms(v.failback_ms),
                ms(v.redundancy_restored_ms),
                v.registry_writes.lost_in_failback,
                v.feature_pushes.lost_in_failback
            ),
        );
        for n in &v.notes {
            line("note", n.clone());
        }
        line("result", if v.passed { "PASS" } else { "FAIL" }.into());
        out
    }

    /// Why the drill failed, for an error message (`None` when it passed).
    pub fn failure(&self) -> Option<String> {
        (!self.verdict.passed).then(|| self.verdict.notes.join("; "))
    }
}

fn wall_ms() -> i64 {
    greenbelt_control::rollout::controller::wall_ms()
}

/// Wait until `check` says yes, polling every `every`, at most `timeout`.
async fn until<F, Fut>(what: &str, timeout: Duration, every: Duration, mut check: F) -> Result<i64>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return Ok(wall_ms());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(AppError::Task(format!("{what}: not within {timeout:?}")));
        }
        tokio::time::sleep(every).await;
    }
}

/// Ports and addresses of both regions and the balancer.
#[derive(Debug, Clone)]
struct Addrs {
    host_a: String,
    host_b: String,
    http_a: u16,
    http_b: u16,
    pg_a: u16,
    pg_b: u16,
    redis_a: u16,
    redis_b: u16,
    lb: u16,
    stats: u16,
}

impl Addrs {
    fn pick() -> Result<Addrs> {
        let host_a = "127.0.0.1".to_string();
        // Region B on an address of its own where loopback has it.
        let host_b = if std::net::TcpListener::bind(("127.0.0.2", 0)).is_ok() {
            "127.0.0.2".to_string()
        } else {
            host_a.clone()
        };
        Ok(Addrs {
            http_a: procs::free_port(&host_a)?,
            http_b: procs::free_port(&host_b)?,
            pg_a: procs::free_port(&host_a)?,
            pg_b: procs::free_port(&host_b)?,
            redis_a: procs::free_port(&host_a)?,
            redis_b: procs::free_port(&host_b)?,
            lb: procs::free_port(&host_a)?,
            stats: procs::free_port(&host_a)?,
            host_a,
            host_b,
        })
    }

    fn server(&self, r: Region) -> String {
        match r {
            Region::A => format!("http://{}:{}", self.host_a, self.http_a),
            Region::B => format!("http://{}:{}", self.host_b, self.http_b),
        }
    }

    fn balancer(&self) -> String {
        format!("http://{}:{}", self.host_a, self.lb)
    }

    fn stats(&self) -> String {
        format!("http://{}:{}/stats", self.host_a, self.stats)
    }

    fn region(&self, r: Region) -> RegionAddrs {
        let (h, pg, redis) = match r {
            Region::A => (&self.host_a, self.pg_a, self.redis_a),
            Region::B => (&self.host_b, self.pg_b, self.redis_b),
        };
        RegionAddrs {
            server: self.server(r),
            postgres: format!("{h}:{pg}"),
            redis: format!("{h}:{redis}"),
        }
    }
}

/// Everything the drill started. Fields drop in order: servers and the
/// balancer, then Redis, then PostgreSQL, then the directory.
struct World {
    balancer: Option<Proc>,
    server_a: Option<Proc>,
    server_b: Option<Proc>,
    redis_a: Option<Proc>,
    redis_b: Option<Proc>,
    pg_a: Option<PgCluster>,
    pg_b: Option<PgCluster>,
    addrs: Addrs,
    tools: Tools,
    http: reqwest::Client,
    timeout: Duration,
    dir: tempfile::TempDir,
}

/// The server config of a region.
fn server_toml(host: &str, http: u16, pg_url: &str) -> String {
    format!(
        "# greenbelt drill failover: one region's server\n[server]\nhttp_addr = \"{host}:{http}\"\ngrpc_addr = \"\"\n\n[telemetry]\nlog_requests = false\n\n[repository]\npath = \"models\"\n\n[registry]\nurl = \"{pg_url}\"\nartifacts = \"artifacts\"\nstartup_timeout = \"3s\"\n\n[features]\ndefinitions = \"features.toml\"\n"
    )
}

/// The feature store of a region: one view the drill pushes to.
fn features_toml(host: &str, redis: u16) -> String {
    format!(
        "[store]\noffline = \"offline\"\nonline = \"redis://{host}:{redis}/0\"\nonline_cache_ttl = \"0s\"\n\n[[entity]]\nname = \"record\"\njoin_keys = [{{ name = \"record_id\", type = \"string\" }}]\n\n[[source]]\nname = \"records\"\npath = \"records.csv\"\nevent_timestamp = \"event_ts\"\n\n[[feature_view]]\nname = \"{VIEW}\"\nentities = [\"record\"]\nsource = \"records\"\nttl = \"1h\"\nfeatures = [{{ name = \"seq\", type = \"int64\" }}]\n\n[[feature_service]]\nname = \"{VIEW}\"\nfeatures = [\"{VIEW}:*\"]\n"
    )
}

/// HAProxy: A active, B backup, both health-checked on readiness.
fn haproxy_cfg(a: &Addrs) -> String {
    format!(
        "global\n  maxconn 2000\n\ndefaults\n  mode http\n  timeout connect 500ms\n  timeout client 10s\n  timeout server 10s\n  retries 1\n\nfrontend regions\n  bind {ha}:{lb}\n  default_backend regions\n\nbackend regions\n  option httpchk GET /v2/health/ready\n  http-check expect status 200\n  default-server inter 100ms fastinter 100ms downinter 100ms fall 2 rise 2\n  server a {ha}:{pa} check\n  server b {hb}:{pb} check backup\n\nfrontend stats\n  bind {ha}:{st}\n  stats enable\n  stats uri /stats\n",
        ha = a.host_a,
        hb = a.host_b,
        lb = a.lb,
        st = a.stats,
        pa = a.http_a,
        pb = a.http_b
    )
}

/// Write a region's project: config, features, the model as `version`.
fn write_region(
    dir: &Path,
    model: &Path,
    version: u32,
    server: &str,
    features: &str,
) -> Result<()> {
    let io = |what: &Path| AppError::io(format!("writing {}", what.display()));
    let mdir = dir.join("models").join(MODEL).join(version.to_string());
    std::fs::create_dir_all(&mdir).map_err(io(&mdir))?;
    std::fs::copy(model, mdir.join("model.onnx")).map_err(io(&mdir))?;
    std::fs::write(dir.join("greenbelt.toml"), server).map_err(io(dir))?;
    std::fs::write(dir.join("features.toml"), features).map_err(io(dir))?;
    std::fs::write(dir.join("records.csv"), "record_id,event_ts,seq\n").map_err(io(dir))?;
    Ok(())
}

/// HAProxy's status (`UP`, `DOWN`, ...) of each region's server.
async fn balancer_status(http: &reqwest::Client, stats: &str) -> Option<(String, String)> {
    let text = http
        .get(format!("{stats};csv"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    parse_stats(&text)
}

/// The `status` of servers `a` and `b` of backend `regions` in HAProxy's
/// stats CSV.
pub fn parse_stats(csv: &str) -> Option<(String, String)> {
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next()?.trim_start_matches("# ").split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name);
    let (px, sv, st) = (col("pxname")?, col("svname")?, col("status")?);
    let mut a = None;
    let mut b = None;
    for l in lines {
        let f: Vec<&str> = l.split(',').collect();
        if f.get(px) != Some(&"regions") {
            continue;
        }
        match f.get(sv) {
            Some(&"a") => a = f.get(st).map(|s| s.to_string()),
            Some(&"b") => b = f.get(st).map(|s| s.to_string()),
            _ => {}
        }
    }
    Some((a?, b?))
}

impl World {
    async fn ready(&mut self, r: Region) -> Result<()> {
        let url = format!("{}/v2/health/ready", self.addrs.server(r));
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            let ok = self
                .http
                .get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ok {
                return Ok(());
            }
            let proc = match r {
                Region::A => self.server_a.as_mut(),
                Region::B => self.server_b.as_mut(),
            };
            let dir = self.dir.path().join(if r == Region::A { "a" } else { "b" });
            let log = || std::fs::read_to_string(dir.join("serve.log")).unwrap_or_default();
            if let Some(status) = proc.and_then(Proc::exited) {
                return Err(AppError::Task(format!(
                    "region {r:?}'s server exited ({status}):\n{}",
                    log()
                )));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(AppError::Task(format!(
                    "region {r:?}'s server not ready within {:?}:\n{}",
                    self.timeout,
                    log()
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn start_server(&mut self, r: Region) -> Result<()> {
        let dir = self.dir.path().join(if r == Region::A { "a" } else { "b" });
        let p = Proc::spawn(
            &format!("greenbelt serve (region {r:?})"),
            &self.tools.greenbelt,
            &["serve".into(), "--config".into(), "greenbelt.toml".into()],
            &dir,
            &dir.join("serve.log"),
        )?;
        match r {
            Region::A => self.server_a = Some(p),
            Region::B => self.server_b = Some(p),
        }
        Ok(())
    }

    /// Streaming standbys of the cluster at `host:port`.
    async fn streaming(&self, host: &str, port: u16) -> bool {
        self.tools
            .sql(
                host,
                port,
                "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'",
            )
            .await
            .is_ok_and(|n| n.parse::<u32>().unwrap_or(0) > 0)
    }

    async fn redis_info(&self, host: &str, port: u16) -> String {
        self.tools
            .redis(host, port, &["INFO", "replication"])
            .await
            .unwrap_or_default()
    }

    async fn wait_redis_link(&self, host: &str, port: u16) -> Result<i64> {
        until(
            "the Redis replica's link to its primary",
            self.timeout,
            Duration::from_millis(50),
            || async {
                self.redis_info(host, port)
                    .await
                    .contains("master_link_status:up")
            },
        )
        .await
    }

    async fn wait_balancer(&self, want: impl Fn(&str, &str) -> bool) -> Result<i64> {
        let stats = self.addrs.stats();
        until(
            "HAProxy's view of the regions",
            self.timeout,
            Duration::from_millis(25),
            || async {
                balancer_status(&self.http, &stats)
                    .await
                    .is_some_and(|(a, b)| want(&a, &b))
            },
        )
        .await
    }

    /// Both regions up: A primary, B its replica, HAProxy in front.
    async fn create(
        opts: &FailoverOptions,
        tools: Tools,
        progress: &(dyn Fn(&str) + Send + Sync),
    ) -> Result<World> {
        let dir = tempfile::Builder::new()
            .prefix("greenbelt-failover-")
            .tempdir()
            .map_err(AppError::io("creating the drill's directory"))?;
        #[allow(clippy::disallowed_methods)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).map_err(
                AppError::io("opening the drill's directory to the PostgreSQL user"),
            )?;
        }
        let addrs = Addrs::pick()?;
        let mut w = World {
            balancer: None,
            server_a: None,
            server_b: None,
            redis_a: None,
            redis_b: None,
            pg_a: None,
            pg_b: None,
            addrs,
            tools,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(2))
                .build()?,
            timeout: opts.timeout,
            dir,
        };
        let a = w.addrs.clone();
        let d = w.dir.path().to_path_buf();
        progress(&format!(
            "failover: region A's PostgreSQL primary on {}:{} (initdb)",
            a.host_a, a.pg_a
        ));
        w.tools.pg_dir(&d.join("pg"))?;
        let mut pg_a = PgCluster::init_primary(&w.tools, d.join("pg/a"), &a.host_a, a.pg_a).await?;
        pg_a.start().await?;
        let pg_url_a = pg_a.url();
        w.pg_a = Some(pg_a);
        w.redis_a = Some(procs::redis(&w.tools, &d, &a.host_a, a.redis_a, None)?);
        w.redis_b = Some(procs::redis(
            &w.tools,
            &d,
            &a.host_b,
            a.redis_b,
            Some((&a.host_a, a.redis_a)),
        )?);
        for (r, h, p) in [
            (Region::A, &a.host_a, a.http_a),
            (Region::B, &a.host_b, a.http_b),
        ] {
            let (pg, redis) = match r {
                Region::A => (pg_url_a.clone(), a.redis_a),
                Region::B => (
                    format!("postgres://postgres@{}:{}/postgres", a.host_b, a.pg_b),
                    a.redis_b,
                ),
            };
            let version = if r == Region::A { 1 } else { 2 };
            let sub = d.join(if r == Region::A { "a" } else { "b" });
            write_region(
                &sub,
                &opts.model_file,
                version,
                &server_toml(h, p, &pg),
                &features_toml(h, redis),
            )?;
        }
        // A migrates the registry; B's standby is cloned after, schema included.
        w.start_server(Region::A)?;
        w.ready(Region::A).await?;
        progress(&format!(
            "failover: region B's hot standby on {}:{} (pg_basebackup -R)",
            a.host_b, a.pg_b
        ));
        let mut pg_b = PgCluster::standby_of(
            &w.tools,
            (&a.host_a, a.pg_a),
            d.join("pg/b"),
            &a.host_b,
            a.pg_b,
        )
        .await?;
        pg_b.start().await?;
        w.pg_b = Some(pg_b);
        until(
            "region B's standby streaming",
            w.timeout,
            Duration::from_millis(50),
            || w.streaming(&a.host_a, a.pg_a),
        )
        .await?;
        w.wait_redis_link(&a.host_b, a.redis_b).await?;
        w.start_server(Region::B)?;
        w.ready(Region::B).await?;
        let cfg = d.join("haproxy.cfg");
        std::fs::write(&cfg, haproxy_cfg(&a)).map_err(AppError::io("writing haproxy.cfg"))?;
        let hap = w.tools.haproxy.clone();
        w.balancer = Some(Proc::spawn(
            "haproxy",
            &hap,
            &["-f".into(), cfg.display().to_string(), "-db".into()],
            &d,
            &d.join("haproxy.log"),
        )?);
        w.wait_balancer(|a, b| a == "UP" && b == "UP").await?;
        progress(&format!(
            "failover: both regions up behind HAProxy {}",
            a.balancer()
        ));
        Ok(w)
    }

    /// Region A dies: server, database and Redis at once.
    async fn take_down_a(&mut self) -> Result<()> {
        let (server, redis, pg) = (&mut self.server_a, &mut self.redis_a, &mut self.pg_a);
        let kill_server = async {
            if let Some(s) = server.as_mut() {
                s.kill().await;
            }
        };
        let kill_redis = async {
            if let Some(r) = redis.as_mut() {
                r.kill().await;
            }
        };
        let stop_pg = async {
            match pg.as_mut() {
                Some(p) => p.stop("immediate").await,
                None => Ok(()),
            }
        };
        let ((), (), r) = tokio::join!(kill_server, kill_redis, stop_pg);
        *server = None;
        *redis = None;
        r
    }

    /// Promote B: its database (`pg_ctl promote`) and Redis (`REPLICAOF
    /// NO ONE`), or whatever `cmd` (the runbook's commands) does.
    async fn promote_b(&self, cmd: Option<&str>) -> Result<()> {
        let a = &self.addrs;
        match cmd {
            None => {
                if let Some(pg) = &self.pg_b {
                    pg.promote().await?;
                }
                self.tools
                    .redis(&a.host_b, a.redis_b, &["REPLICAOF", "NO", "ONE"])
                    .await?;
            }
            Some(cmd) => {
                let mut c = tokio::process::Command::new("bash");
                c.args(["-e", "-o", "pipefail", "-c", cmd])
                    .envs(self.hook_env());
                c.kill_on_drop(true);
                let out = tokio::time::timeout(self.timeout, c.output())
                    .await
                    .map_err(|_| {
                        AppError::Task("the promotion commands did not finish in time".into())
                    })?
                    .map_err(AppError::io("running the promotion commands"))?;
                if !out.status.success() {
                    return Err(AppError::Task(format!(
                        "the promotion commands failed ({}):\n{}\n{}",
                        out.status,
                        String::from_utf8_lossy(&out.stdout),
                        String::from_utf8_lossy(&out.stderr)
                    )));
                }
            }
        }
        let (h, p) = (a.host_b.clone(), a.pg_b);
        until(
            "region B's database read-write",
            self.timeout,
            Duration::from_millis(50),
            || async {
                self.tools
                    .sql(&h, p, "SELECT pg_is_in_recovery()")
                    .await
                    .is_ok_and(|r| r == "f")
            },
        )
        .await?;
        until(
            "region B's Redis primary",
            self.timeout,
            Duration::from_millis(50),
            || async {
                self.redis_info(&a.host_b, a.redis_b)
                    .await
                    .contains("role:master")
            },
        )
        .await?;
        Ok(())
    }

    /// The variables the runbook's commands use.
    fn hook_env(&self) -> Vec<(String, String)> {
        let a = &self.addrs;
        let pg_b = self.dir.path().join("pg/b");
        [
            ("PG_BIN", self.tools.pg_bin.display().to_string()),
            ("MODEL", MODEL.to_string()),
            ("AS_POSTGRES", self.tools.as_pg_prefix()),
            ("BALANCER", a.balancer()),
            ("BALANCER_STATS", a.stats()),
            ("A_SERVER", a.server(Region::A)),
            ("A_PGHOST", a.host_a.clone()),
            ("A_PGPORT", a.pg_a.to_string()),
            ("A_REDIS_HOST", a.host_a.clone()),
            ("A_REDIS_PORT", a.redis_a.to_string()),
            ("B_SERVER", a.server(Region::B)),
            ("B_PGDATA", pg_b.display().to_string()),
            ("B_PGHOST", a.host_b.clone()),
            ("B_PGPORT", a.pg_b.to_string()),
            ("B_REDIS_HOST", a.host_b.clone()),
            ("B_REDIS_PORT", a.redis_b.to_string()),
            ("PGUSER", "postgres".into()),
            ("PGPASSFILE", "/dev/null".into()),
            ("REDIS_CLI", self.tools.redis_cli.display().to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// Fail back: A rebuilt as B's replica, A's server started, a planned
    /// switchover to A, B rebuilt as A's standby.
    async fn fail_back(
        &mut self,
        fb: &mut Failback,
        progress: &(dyn Fn(&str) + Send + Sync),
    ) -> Result<()> {
        let a = self.addrs.clone();
        let d = self.dir.path().to_path_buf();
        progress("failover: fail-back: rebuilding region A as region B's replica");
        self.pg_a = None;
        remove_dir(&d.join("pg/a"))?;
        let mut pg_a = PgCluster::standby_of(
            &self.tools,
            (&a.host_b, a.pg_b),
            d.join("pg/a"),
            &a.host_a,
            a.pg_a,
        )
        .await?;
        pg_a.start().await?;
        self.pg_a = Some(pg_a);
        self.redis_a = Some(procs::redis(
            &self.tools,
            &d,
            &a.host_a,
            a.redis_a,
            Some((&a.host_b, a.redis_b)),
        )?);
        until(
            "region A's standby streaming",
            self.timeout,
            Duration::from_millis(50),
            || self.streaming(&a.host_b, a.pg_b),
        )
        .await?;
        self.wait_redis_link(&a.host_a, a.redis_a).await?;
        // The primary's side: the full sync done, the replica online (the
        // only replica, so `FAILOVER` below picks it).
        fb.a_caught_up_ms = Some(
            until(
                "region A's Redis replica online",
                self.timeout,
                Duration::from_millis(50),
                || async {
                    self.redis_info(&a.host_b, a.redis_b)
                        .await
                        .contains("state=online")
                },
            )
            .await?,
        );
        self.start_server(Region::A)?;
        self.ready(Region::A).await?;
        self.wait_balancer(|a, _| a == "UP").await?;
        progress("failover: fail-back: switching over to region A");
        if let Some(pg) = self.pg_b.as_mut() {
            pg.stop("fast").await?;
        }
        if let Some(pg) = &self.pg_a {
            pg.promote().await?;
        }
        self.tools
            .redis(&a.host_b, a.redis_b, &["FAILOVER", "TIMEOUT", "5000"])
            .await?;
        until(
            "region A's Redis primary again",
            self.timeout,
            Duration::from_millis(25),
            || async {
                self.redis_info(&a.host_a, a.redis_a)
                    .await
                    .contains("role:master")
                    && self
                        .redis_info(&a.host_b, a.redis_b)
                        .await
                        .contains("role:slave")
            },
        )
        .await?;
        fb.a_promoted_ms = Some(wall_ms());
        progress("failover: fail-back: rebuilding region B as region A's standby");
        self.pg_b = None;
        remove_dir(&d.join("pg/b"))?;
        let mut pg_b = PgCluster::standby_of(
            &self.tools,
            (&a.host_a, a.pg_a),
            d.join("pg/b"),
            &a.host_b,
            a.pg_b,
        )
        .await?;
        pg_b.start().await?;
        self.pg_b = Some(pg_b);
        fb.b_standby_ms = Some(
            until(
                "region B's standby streaming again",
                self.timeout,
                Duration::from_millis(50),
                || self.streaming(&a.host_a, a.pg_a),
            )
            .await?,
        );
        Ok(())
    }

    /// The sequence numbers region `r`'s registry and online store hold.
    /// [`World::found`], retried until the drill's timeout (a server whose
    /// registry reconnects, a breaker that half-opens); the last error is
    /// reported through `progress`.
    async fn found_within(
        &self,
        r: Region,
        max_seq: u64,
        progress: &(dyn Fn(&str) + Send + Sync),
    ) -> Option<Found> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            match self.found(r, max_seq).await {
                Ok(f) => return Some(f),
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    progress(&format!("failover: reading region {r:?}'s records: {e}"));
                    return None;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    async fn found(&self, r: Region, max_seq: u64) -> Result<Found> {
        let base = self.addrs.server(r);
        let read_ms = wall_ms();
        let url = format!("{base}/registry/models/{WRITE_MODEL}/versions");
        let resp = self.http.get(&url).send().await?;
        if !resp.status().is_success() {
            return Err(AppError::Remote(format!(
                "GET {url}: HTTP {}: {}",
                resp.status(),
                resp.text().await.unwrap_or_default()
            )));
        }
        let v: Value = resp.json().await?;
        let registry = v["versions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v["tags"]["failover_seq"].as_u64())
            .collect();
        let keys: Vec<u64> = (1..=max_seq).collect();
        let mut feature = std::collections::BTreeSet::new();
        for chunk in keys.chunks(200) {
            let body = json!({
                "feature_service": VIEW,
                "entities": {"record_id": chunk.iter().map(|s| record_key(*s)).collect::<Vec<_>>()},
            });
            let url = format!("{base}/features/online");
            let resp = self.http.post(&url).json(&body).send().await?;
            if !resp.status().is_success() {
                return Err(AppError::Remote(format!(
                    "POST {url}: HTTP {}: {}",
                    resp.status(),
                    resp.text().await.unwrap_or_default()
                )));
            }
            feature.extend(present_seqs(&resp.json().await?));
        }
        Ok(Found {
            registry,
            feature,
            read_ms,
        })
    }
}

fn remove_dir(p: &Path) -> Result<()> {
    match std::fs::remove_dir_all(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(AppError::io(format!("removing {}", p.display()))(e)),
    }
}

fn record_key(seq: u64) -> String {
    format!("r{seq:07}")
}

/// The `seq` values an online read found PRESENT.
pub fn present_seqs(resp: &Value) -> Vec<u64> {
    let names = resp["metadata"]["feature_names"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let Some(i) = names.iter().position(|n| {
        n.as_str()
            .is_some_and(|n| n == "seq" || n.ends_with("__seq") || n.ends_with(":seq"))
    }) else {
        return Vec::new();
    };
    let col = &resp["results"][i];
    let values = col["values"].as_array().cloned().unwrap_or_default();
    let statuses = col["statuses"].as_array().cloned().unwrap_or_default();
    values
        .iter()
        .zip(statuses.iter())
        .filter(|(_, s)| *s == "PRESENT")
        .filter_map(|(v, _)| v.as_u64())
        .collect()
}

/// Whether a failed write's answer says a read-only replica refused it.
fn read_only(body: &str) -> bool {
    let b = body.to_ascii_lowercase();
    b.contains("read-only") || b.contains("readonly") || b.contains("read only")
}

/// One registry write and one feature push, both numbered `seq`.
async fn write_pair(http: &reqwest::Client, lb: &str, seq: u64) -> [Write; 2] {
    let reg = json!({
        "artifact_uri": format!("file:///greenbelt-failover-drill/{seq}"),
        "sha256": "0".repeat(64),
        "tags": {"failover_seq": seq},
    });
    let push = json!({
        "feature_view": VIEW,
        "df": {
            "record_id": [record_key(seq)],
            "event_timestamp": [greenbelt_features::time::format_ts(wall_ms() * 1000)],
            "seq": [seq],
        },
    });
    let send = |kind: WriteKind, url: String, body: Value| async move {
        let sent_ms = wall_ms();
        let (acked_ms, ro) = match http.post(&url).json(&body).send().await {
            Ok(r) if r.status().is_success() => (Some(wall_ms()), false),
            Ok(r) => (None, read_only(&r.text().await.unwrap_or_default())),
            Err(_) => (None, false),
        };
        Write {
            kind,
            seq,
            sent_ms,
            acked_ms,
            read_only: ro,
        }
    };
    let (r, f) = tokio::join!(
        send(
            WriteKind::Registry,
            format!("{lb}/registry/models/{WRITE_MODEL}/versions"),
            reg
        ),
        send(WriteKind::Feature, format!("{lb}/features/push"), push),
    );
    [r, f]
}

/// Sequence-numbered writes at `rate` per second until `stop`; `sent`
/// is the last sequence number sent.
async fn writer(
    http: reqwest::Client,
    lb: String,
    rate: f64,
    sent: Arc<AtomicU64>,
    mut stop: watch::Receiver<bool>,
) -> Vec<Write> {
    let mut out = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.clamp(0.1, 1000.0)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => break,
        }
        if *stop.borrow() {
            break;
        }
        seq += 1;
        sent.store(seq, Ordering::Relaxed);
        out.extend(write_pair(&http, &lb, seq).await);
    }
    out
}

/// Run the failover drill; `progress` hears what it is doing.
pub async fn failover(
    opts: &FailoverOptions,
    progress: &(dyn Fn(&str) + Send + Sync),
) -> Result<Report> {
    if !opts.model_file.is_file() {
        return Err(AppError::Invalid(format!(
            "--model {}: not a file (an ONNX model the regions serve)",
            opts.model_file.display()
        )));
    }
    let tools = procs::preflight(&opts.pg_bin, &opts.pg_user, &opts.greenbelt)?;
    let mut w = World::create(opts, tools, progress).await?;
    if opts.keep {
        progress(&format!(
            "failover: keeping {} (configs, serve.log, PostgreSQL and Redis logs)",
            w.dir.path().display()
        ));
        w.dir.disable_cleanup(true);
    }
    let lb = w.addrs.balancer();
    let specs = loadgen::model_inputs(&w.http, &lb, MODEL).await?;
    let inputs = Arc::new(
        specs
            .iter()
            .map(|s| loadgen::make_input(s, 1))
            .collect::<Result<Vec<_>>>()?,
    );
    let (stop_tx, stop_rx) = watch::channel(false);
    let target = Target {
        rest_url: lb.clone(),
        grpc_url: String::new(),
        protocol: Protocol::Rest,
        model: MODEL.into(),
        timeout: Duration::from_secs(2),
    };
    let open = OpenOptions {
        rate: opts.rate,
        max_outstanding: 64,
        warmup: Duration::ZERO,
        duration: opts.timeout * 10,
        stop: Some(stop_rx.clone()),
        keep_samples: true,
    };
    let load = {
        let inputs = inputs.clone();
        tokio::spawn(async move {
            loadgen::run_open(&target, std::slice::from_ref(&inputs), open).await
        })
    };
    let sent = Arc::new(AtomicU64::new(0));
    let writes = tokio::spawn(writer(
        w.http.clone(),
        lb.clone(),
        opts.write_rate,
        sent.clone(),
        stop_rx,
    ));
    let mut m = Measurements::default();
    let phases = run_phases(&mut w, opts, &sent, &mut m, progress).await;
    let _ = stop_tx.send(true);
    let load = load.await??;
    m.writes = writes.await?;
    phases?;
    m.in_a = w
        .found_within(Region::A, sent.load(Ordering::Relaxed), progress)
        .await;
    m.probes = load
        .samples
        .iter()
        .map(|s| Probe {
            sent_ms: s.sent_ms,
            done_ms: s.sent_ms + i64::try_from(s.latency.as_millis()).unwrap_or(i64::MAX),
            ok: s.ok,
            region: match s.version {
                Some(1) => Some(Region::A),
                Some(2) => Some(Region::B),
                _ => None,
            },
        })
        .collect();
    m.probes.sort_by_key(|p| p.sent_ms);
    let verdict = judge(&m, &opts.objectives);
    progress("failover: stopping both regions");
    Ok(Report {
        balancer: lb,
        region_a: w.addrs.region(Region::A),
        region_b: w.addrs.region(Region::B),
        rate: opts.rate,
        write_rate: opts.write_rate,
        promotion: if opts.promote_cmd.is_some() {
            "command"
        } else {
            "built-in"
        }
        .into(),
        load_dropped: load.dropped,
        verdict,
    })
}

/// Steady, failure, detection, promotion, load on B, fail-back. Region
/// B's contents are read while writes still flow (only writes
/// acknowledged before the read count).
async fn run_phases(
    w: &mut World,
    opts: &FailoverOptions,
    sent: &AtomicU64,
    m: &mut Measurements,
    progress: &(dyn Fn(&str) + Send + Sync),
) -> Result<()> {
    progress(&format!("failover: steady load for {:?}", opts.steady));
    tokio::time::sleep(opts.steady).await;
    progress("failover: taking region A down (server, PostgreSQL primary, Redis primary)");
    m.fail_ms = Some(wall_ms());
    w.take_down_a().await?;
    m.detected_ms = Some(w.wait_balancer(|a, _| a.starts_with("DOWN")).await?);
    progress("failover: HAProxy marked region A down; promoting region B");
    w.promote_b(opts.promote_cmd.as_deref()).await?;
    m.promoted_ms = Some(wall_ms());
    progress(&format!(
        "failover: region B promoted; load on B for {:?}",
        opts.after
    ));
    tokio::time::sleep(opts.after).await;
    // What B holds now: everything acknowledged so far should be there.
    m.in_b = Some(w.found(Region::B, sent.load(Ordering::Relaxed)).await?);
    let mut fb = Failback {
        started_ms: wall_ms(),
        ..Failback::default()
    };
    let r = w.fail_back(&mut fb, progress).await;
    m.failback = Some(fb);
    r?;
    progress("failover: region A primary again; load on A for 1s");
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok(())
}
