//! The processes of the failover drill's two regions, each behind a guard
//! that stops it when dropped (also when the drill fails half-way): a
//! PostgreSQL cluster of its own (never the machine's server), a
//! redis-server, HAProxy and `greenbelt serve`. Every command the drill
//! runs has a timeout. PostgreSQL refuses to run as root: when the drill
//! runs as root, PostgreSQL's commands run as the `postgres` user through
//! `runuser`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::error::{AppError, Result};

/// How long one administrative command (initdb, pg_ctl, pg_basebackup,
/// psql, redis-cli) may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// The programs the drill runs, found before anything starts.
#[derive(Debug, Clone)]
pub struct Tools {
    /// PostgreSQL's server binaries (initdb, pg_ctl, pg_basebackup, psql).
    pub pg_bin: PathBuf,
    /// Prefix that runs a command as the PostgreSQL user (`runuser -u
    /// postgres --` when the drill runs as root, else nothing).
    pub as_pg: Vec<String>,
    /// uid and gid that own the clusters' directories (root only).
    pub pg_owner: Option<(u32, u32)>,
    pub redis_server: PathBuf,
    pub redis_cli: PathBuf,
    pub haproxy: PathBuf,
    /// The `greenbelt` binary the regions' servers run.
    pub greenbelt: PathBuf,
}

/// `name` on `$PATH` (and the sbin directories a non-root PATH lacks).
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The effective uid of this process (Linux: /proc/self/status).
fn euid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// uid and gid of `user` from /etc/passwd.
fn user_ids(user: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() > 3 && f[0] == user).then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
    })
}

/// Find every program the drill needs; the error says what is missing and
/// how to get it (the drill's test skips on it).
pub fn preflight(pg_bin: &Path, pg_user: &str, greenbelt: &Path) -> Result<Tools> {
    let missing =
        |what: String| AppError::Invalid(format!("the failover drill cannot run here: {what}"));
    for b in ["initdb", "pg_ctl", "pg_basebackup", "psql", "postgres"] {
        if !pg_bin.join(b).is_file() {
            return Err(missing(format!(
                "{} is missing (PostgreSQL's server binaries: apt-get install postgresql, or pass --pg-bin)",
                pg_bin.join(b).display()
            )));
        }
    }
    let find = |name: &str, pkg: &str| {
        which(name).ok_or_else(|| missing(format!("{name} is not on PATH (apt-get install {pkg})")))
    };
    let redis_server = find("redis-server", "redis-server")?;
    let redis_cli = find("redis-cli", "redis-tools")?;
    let haproxy = find("haproxy", "haproxy")?;
    if !greenbelt.is_file() {
        return Err(missing(format!("{} is not a file", greenbelt.display())));
    }
    let (as_pg, pg_owner) = if euid() == Some(0) {
        let ids = user_ids(pg_user).ok_or_else(|| {
            missing(format!(
                "running as root, and PostgreSQL refuses root; there is no user \"{pg_user}\" to run it as (--pg-user)"
            ))
        })?;
        let runuser = find("runuser", "util-linux")?;
        (
            vec![
                runuser.display().to_string(),
                "-u".into(),
                pg_user.into(),
                "--".into(),
            ],
            Some(ids),
        )
    } else {
        (Vec::new(), None)
    };
    Ok(Tools {
        pg_bin: pg_bin.to_path_buf(),
        as_pg,
        pg_owner,
        redis_server,
        redis_cli,
        haproxy,
        greenbelt: greenbelt.to_path_buf(),
    })
}

/// Run `program args` to completion within [`COMMAND_TIMEOUT`]; its stdout,
/// or an error with its stderr.
async fn run(mut cmd: Command, what: &str) -> Result<String> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = tokio::time::timeout(COMMAND_TIMEOUT, cmd.output())
        .await
        .map_err(|_| AppError::Task(format!("{what}: no answer within {COMMAND_TIMEOUT:?}")))?
        .map_err(AppError::io(what.to_string()))?;
    if !out.status.success() {
        return Err(AppError::Task(format!(
            "{what}: {} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

impl Tools {
    /// A PostgreSQL program, run as the PostgreSQL user.
    fn pg(&self, program: &str) -> Command {
        let bin = self.pg_bin.join(program);
        let mut cmd = match self.as_pg.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        // libpq's default passfile is under $HOME, which may be root's.
        cmd.env("PGPASSFILE", "/dev/null");
        cmd
    }

    /// The shell prefix the runbook's `$AS_POSTGRES` stands for.
    pub fn as_pg_prefix(&self) -> String {
        self.as_pg.join(" ")
    }

    /// Make `dir` and hand it to the PostgreSQL user.
    pub fn pg_dir(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir)
            .map_err(AppError::io(format!("creating {}", dir.display())))?;
        if let Some((uid, gid)) = self.pg_owner {
            std::os::unix::fs::chown(dir, Some(uid), Some(gid)).map_err(AppError::io(format!(
                "handing {} to the PostgreSQL user",
                dir.display()
            )))?;
        }
        Ok(())
    }

    /// One SQL statement through psql; its unaligned output.
    pub async fn sql(&self, host: &str, port: u16, sql: &str) -> Result<String> {
        let mut cmd = Command::new(self.pg_bin.join("psql"));
        cmd.args([
            "-X",
            "-q",
            "-t",
            "-A",
            "-h",
            host,
            "-p",
            &port.to_string(),
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-c",
            sql,
        ])
        .env("PGPASSFILE", "/dev/null")
        .env("PGCONNECT_TIMEOUT", "3");
        Ok(run(cmd, &format!("psql {host}:{port}: {sql}"))
            .await?
            .trim()
            .to_string())
    }

    /// One redis-cli command; its output.
    pub async fn redis(&self, host: &str, port: u16, args: &[&str]) -> Result<String> {
        let mut cmd = Command::new(&self.redis_cli);
        cmd.args(["-h", host, "-p", &port.to_string()]).args(args);
        let out = run(cmd, &format!("redis-cli -p {port} {}", args.join(" "))).await?;
        if out.starts_with("ERR") || out.starts_with("(error)") {
            return Err(AppError::Task(format!(
                "redis-cli -p {port} {}: {}",
                args.join(" "),
                out.trim()
            )));
        }
        Ok(out)
    }
}

/// A PostgreSQL cluster the drill created; stopped (immediate) on drop.
#[derive(Debug)]
pub struct PgCluster {
    pub data: PathBuf,
    pub host: String,
    pub port: u16,
    tools: Tools,
    running: bool,
}

impl PgCluster {
    /// `initdb` a new primary in `data` listening on `host:port`, with
    /// replication open to the loopback network.
    pub async fn init_primary(
        tools: &Tools,
        data: PathBuf,
        host: &str,
        port: u16,
    ) -> Result<PgCluster> {
        let mut cmd = tools.pg("initdb");
        cmd.arg("-D").arg(&data).args([
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-sync",
            "--no-instructions",
        ]);
        run(cmd, "initdb").await?;
        let hba = "host all all 127.0.0.0/8 trust\nhost replication all 127.0.0.0/8 trust\n";
        append(&data.join("pg_hba.conf"), hba)?;
        let c = PgCluster {
            data,
            host: host.to_string(),
            port,
            tools: tools.clone(),
            running: false,
        };
        c.configure()?;
        Ok(c)
    }

    /// A hot standby of `primary` in `data` (`pg_basebackup -R`: a copy
    /// plus `primary_conninfo` and `standby.signal`), on `host:port`.
    pub async fn standby_of(
        tools: &Tools,
        primary: (&str, u16),
        data: PathBuf,
        host: &str,
        port: u16,
    ) -> Result<PgCluster> {
        let mut cmd = tools.pg("pg_basebackup");
        cmd.args([
            "-h",
            primary.0,
            "-p",
            &primary.1.to_string(),
            "-U",
            "postgres",
            "-D",
        ])
        .arg(&data)
        .args(["-R", "-X", "stream", "-c", "fast", "--no-sync"]);
        run(cmd, "pg_basebackup").await?;
        let c = PgCluster {
            data,
            host: host.to_string(),
            port,
            tools: tools.clone(),
            running: false,
        };
        c.configure()?;
        Ok(c)
    }

    /// This cluster's own address and settings (later lines win over the
    /// copied primary's).
    fn configure(&self) -> Result<()> {
        append(
            &self.data.join("postgresql.conf"),
            &format!(
                "\n# greenbelt drill failover\nlisten_addresses = '{}'\nport = {}\nunix_socket_directories = ''\nfsync = off\nwal_keep_size = '64MB'\nmax_wal_senders = 4\nhot_standby = on\n",
                self.host, self.port
            ),
        )
    }

    pub async fn start(&mut self) -> Result<()> {
        let mut cmd = self.tools.pg("pg_ctl");
        cmd.arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(self.data.with_extension("log"))
            .args(["-w", "-t", "30", "start"]);
        run(cmd, &format!("pg_ctl start {}", self.data.display())).await?;
        self.running = true;
        Ok(())
    }

    /// Stop: `immediate` is a crash (no shutdown checkpoint, walsenders
    /// die at once); `fast` first sends the standbys every WAL record.
    pub async fn stop(&mut self, mode: &str) -> Result<()> {
        let mut cmd = self.tools.pg("pg_ctl");
        cmd.arg("-D")
            .arg(&self.data)
            .args(["-m", mode, "-w", "-t", "30", "stop"]);
        run(
            cmd,
            &format!("pg_ctl stop -m {mode} {}", self.data.display()),
        )
        .await?;
        self.running = false;
        Ok(())
    }

    /// `pg_ctl promote`: a standby becomes a read-write primary.
    pub async fn promote(&self) -> Result<()> {
        let mut cmd = self.tools.pg("pg_ctl");
        cmd.arg("-D")
            .arg(&self.data)
            .args(["-w", "-t", "30", "promote"]);
        run(cmd, &format!("pg_ctl promote {}", self.data.display())).await?;
        Ok(())
    }

    pub async fn sql(&self, sql: &str) -> Result<String> {
        self.tools.sql(&self.host, self.port, sql).await
    }

    /// The registry URL of this cluster.
    pub fn url(&self) -> String {
        format!("postgres://postgres@{}:{}/postgres", self.host, self.port)
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if !self.running {
            return;
        }
        let mut cmd = std::process::Command::new(
            self.tools
                .as_pg
                .first()
                .map_or_else(|| self.tools.pg_bin.join("pg_ctl"), PathBuf::from),
        );
        if let Some((_, rest)) = self.tools.as_pg.split_first() {
            cmd.args(rest).arg(self.tools.pg_bin.join("pg_ctl"));
        }
        let stopped = cmd
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "-t", "10", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !stopped {
            // The postmaster's pid is the first line of postmaster.pid.
            let pid = std::fs::read_to_string(self.data.join("postmaster.pid"))
                .ok()
                .and_then(|t| t.lines().next().map(str::to_string));
            if let Some(pid) = pid.filter(|p| p.chars().all(|c| c.is_ascii_digit())) {
                let _ = std::process::Command::new("kill")
                    .args(["-KILL", &pid])
                    .status();
            }
        }
    }
}

fn append(path: &Path, text: &str) -> Result<()> {
    use std::io::Write as _;
    let what = format!("writing {}", path.display());
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(AppError::io(what.clone()))?;
    f.write_all(text.as_bytes()).map_err(AppError::io(what))
}

/// A long-running child (redis-server, HAProxy, `greenbelt serve`), killed
/// when dropped; its output goes to `log`.
#[derive(Debug)]
pub struct Proc {
    pub name: String,
    child: Option<Child>,
}

impl Proc {
    pub fn spawn(
        name: &str,
        program: &Path,
        args: &[String],
        dir: &Path,
        log: &Path,
    ) -> Result<Proc> {
        let what = format!("starting {name} ({})", program.display());
        // Appended: a region's server restarted in the fail-back keeps its
        // first run's log.
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(AppError::io(what.clone()))?;
        let err = out.try_clone().map_err(AppError::io(what.clone()))?;
        let child = Command::new(program)
            .args(args)
            .current_dir(dir)
            .env("GREENBELT_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .map_err(AppError::io(what))?;
        Ok(Proc {
            name: name.to_string(),
            child: Some(child),
        })
    }

    /// SIGKILL and reap: the region's process dies without a goodbye.
    pub async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
    }

    /// Whether it exited on its own (a server that failed to start).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.start_kill();
            let _ = c.try_wait();
        }
    }
}

/// A redis-server with no persistence; `replica_of` makes it a replica.
pub fn redis(
    tools: &Tools,
    dir: &Path,
    host: &str,
    port: u16,
    replica_of: Option<(&str, u16)>,
) -> Result<Proc> {
    let mut args: Vec<String> = [
        "--bind",
        host,
        "--port",
        &port.to_string(),
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(dir.display().to_string());
    if let Some((h, p)) = replica_of {
        args.extend(["--replicaof".to_string(), h.to_string(), p.to_string()]);
    }
    Proc::spawn(
        &format!("redis-server {host}:{port}"),
        &tools.redis_server,
        &args,
        dir,
        &dir.join(format!("redis-{port}.log")),
    )
}

/// A TCP port on `host` that was free a moment ago.
pub fn free_port(host: &str) -> Result<u16> {
    let l = std::net::TcpListener::bind((host, 0))
        .map_err(AppError::io(format!("finding a free port on {host}")))?;
    Ok(l.local_addr()
        .map_err(AppError::io(format!("finding a free port on {host}")))?
        .port())
}
