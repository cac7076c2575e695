//! `greenbelt bench`: arguments for `greenbelt_app::bench`, and its report.

use std::time::Duration;

use anyhow::bail;
use greenbelt_app::bench::{BenchOptions, bench};
use greenbelt_app::loadgen::{Protocol, Target};

#[derive(Clone, Copy, clap::ValueEnum, PartialEq)]
pub enum Proto {
    Rest,
    Grpc,
}

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct Args {
    #[command(subcommand)]
    sub: Option<Sub>,
    /// REST base URL of the server (also used for metadata and /metrics).
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    url: String,
    /// gRPC address, for --protocol grpc.
    #[arg(long, default_value = "http://127.0.0.1:8001")]
    grpc_url: String,
    #[arg(long, value_enum, default_value_t = Proto::Rest)]
    protocol: Proto,
    #[arg(long, required = true)]
    model: Option<String>,
    /// Closed loop: connections, each with one request in flight. Open
    /// loop (--rate): requests outstanding at most (default 1000 then);
    /// one due beyond it is not sent and reported as dropped by the client.
    #[arg(long)]
    concurrency: Option<usize>,
    /// Open loop: send this many requests per second whatever the answers
    /// (an overloaded server cannot slow the offered load down).
    #[arg(long)]
    rate: Option<f64>,
    /// Seconds of measured load (after a 1 s warm-up).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Rows per request of the generated inputs.
    #[arg(long, conflicts_with = "input_file")]
    rows: Option<usize>,
    /// Send these requests in turn instead of generated inputs: one V2
    /// infer body, or JSON Lines with one a line (e.g. entity keys for a
    /// deployment that reads its features from the store).
    #[arg(long, value_name = "FILE")]
    input_file: Option<std::path::PathBuf>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// What this run is (e.g. "onnxruntime"), kept in the report for
    /// `greenbelt cost compare`.
    #[arg(long)]
    label: Option<String>,
}

#[derive(clap::Subcommand)]
enum Sub {
    /// One model on the CPU and on a GPU across batch sizes, in process
    /// (perf_analyzer's stability rule: three windows within 10%), and the
    /// batch size from which the GPU is faster.
    Devices(DevicesArgs),
}

#[derive(clap::Args)]
struct DevicesArgs {
    /// The ONNX model file.
    #[arg(long)]
    model_file: std::path::PathBuf,
    /// Devices: cpu, cuda, cuda:N.
    #[arg(long, value_delimiter = ',', default_value = "cpu,cuda")]
    devices: Vec<greenbelt_runtime::Device>,
    /// Rows per call.
    #[arg(long, value_delimiter = ',', default_value = "1,8,64,256,1024")]
    batch_sizes: Vec<usize>,
    /// The backend (a GPU always runs on ONNX Runtime).
    #[arg(long, value_enum, default_value_t = crate::score_cmd::BackendArg::Auto)]
    backend: crate::score_cmd::BackendArg,
    /// Milliseconds per measurement window.
    #[arg(long, default_value_t = 500)]
    window_ms: u64,
    /// Windows per batch size at most, when three never agree.
    #[arg(long, default_value_t = 10)]
    max_windows: usize,
    /// libonnxruntime.so to load (else ORT_DYLIB_PATH and the usual places).
    #[arg(long)]
    onnxruntime_library: Option<std::path::PathBuf>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

async fn devices(a: DevicesArgs) -> anyhow::Result<()> {
    if a.window_ms == 0 || a.max_windows == 0 {
        bail!("--window-ms and --max-windows must be positive");
    }
    let mut o = greenbelt_app::bench_devices::DevicesOptions::new(a.model_file);
    o.devices = a.devices;
    o.batch_sizes = a.batch_sizes;
    o.backend = a.backend.into();
    o.window = Duration::from_millis(a.window_ms);
    o.max_windows = a.max_windows;
    o.onnxruntime_library = a.onnxruntime_library;
    let report =
        tokio::task::spawn_blocking(move || greenbelt_app::bench_devices::run(&o)).await??;
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", report.text());
    }
    Ok(())
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    if let Some(Sub::Devices(a)) = args.sub {
        return devices(a).await;
    }
    let Some(model) = args.model else {
        bail!("--model is required");
    };
    if !(args.duration > 0.0 && args.duration.is_finite()) {
        bail!("--concurrency, --rows and --duration must be positive");
    }
    if let Some(r) = args.rate
        && !(greenbelt_app::loadgen::MIN_RATE..=greenbelt_app::loadgen::MAX_RATE).contains(&r)
    {
        bail!(
            "--rate must be between {} and {} requests per second, got {r}",
            greenbelt_app::loadgen::MIN_RATE,
            greenbelt_app::loadgen::MAX_RATE
        );
    }
    let requests = match &args.input_file {
        Some(path) => Some(greenbelt_app::loadgen::read_requests(path)?),
        None => None,
    };
    let concurrency = args
        .concurrency
        .unwrap_or(if args.rate.is_some() { 1000 } else { 1 });
    let progress = crate::progress::Progress::timed(
        Duration::from_secs(1) + Duration::from_secs_f64(args.duration),
        &format!("bench {model}"),
    );
    let report = bench(&BenchOptions {
        target: Target {
            rest_url: args.url,
            grpc_url: args.grpc_url,
            protocol: match args.protocol {
                Proto::Rest => Protocol::Rest,
                Proto::Grpc => Protocol::Grpc,
            },
            model,
            timeout: Duration::from_secs(30),
        },
        connections: concurrency,
        rate: args.rate,
        duration: Duration::from_secs_f64(args.duration),
        warmup: Duration::from_secs(1),
        rows: args.rows.unwrap_or(1),
        requests,
        label: args.label,
    })
    .await;
    progress.finish();
    let report = report?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", report.text());
    }
    if report.errors > 0 && report.requests == 0 {
        bail!("every request failed");
    }
    Ok(())
}
