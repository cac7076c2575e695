//! Start-up and shutdown: probe runtimes, load the repository, bind REST and
//! gRPC, and drain in-flight requests on shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::compute::Compute;
use crate::config::Config;
use crate::infer::AppState;
use crate::listen::{Acceptor, ConnLimits};
use crate::metrics::Metrics;
use crate::repository::Repository;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    /// Tokens or exposure: the message names the fix.
    #[error("{0}")]
    Auth(String),
    #[error("{0}")]
    Other(String),
}

/// A bound, loaded server, ready to run.
pub struct Server {
    pub state: Arc<AppState>,
    http: TcpListener,
    grpc: Option<TcpListener>,
    /// Extra REST routes (e.g. the registry API) merged into the V2 router.
    extra: Option<axum::Router>,
}

async fn bind(addr: &str) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind {
            addr: addr.to_string(),
            source,
        })
}

impl Server {
    /// Probe runtimes, load models (when configured to), bind listeners.
    pub async fn build(config: Config) -> Result<Server, StartError> {
        Server::build_with(config, None).await
    }

    /// [`Server::build`] with the online feature store that models with a
    /// `[features]` section read: it is in place before any model loads, so
    /// a model whose input does not fit its feature service fails to load.
    pub async fn build_with(
        config: Config,
        features: Option<Arc<dyn crate::features::FeatureSource>>,
    ) -> Result<Server, StartError> {
        let auth = Arc::new(
            config
                .auth
                .build(
                    std::env::var("GREENBELT_TOKENS").ok().as_deref(),
                    &config.registry.admin_tokens,
                )
                .map_err(|e| StartError::Auth(e.to_string()))?,
        );
        greenbelt_auth::check_exposure(
            &auth,
            &[&config.server.http_addr, &config.server.grpc_addr],
            config.auth.insecure,
        )
        .map_err(|e| StartError::Auth(e.to_string()))?;
        if auth.enabled() {
            tracing::info!(model_control = ?auth.model_control(), "bearer tokens required for writes and request data");
        } else {
            tracing::info!("no tokens configured: every caller may write (loopback only)");
        }
        let traces = Arc::new(
            crate::traces::Tracer::from_config(&config.tracing).map_err(StartError::Other)?,
        );
        let metrics = Arc::new(Metrics::new());
        let compute = Compute::new(config.compute_threads());
        let ort_path = config.runtime.onnxruntime_library.clone();
        let runtimes = tokio::task::spawn_blocking(move || {
            greenbelt_runtime::Runtimes::probe(ort_path.as_deref())
        })
        .await
        .map_err(|e| StartError::Other(format!("runtime probe failed: {e}")))?;
        tracing::info!(runtimes = %runtimes.describe(), "runtimes probed");
        let repository = Arc::new(
            Repository::new(
                config.repository.path.clone(),
                runtimes,
                metrics.clone(),
                compute.clone(),
            )
            .with_features(features)
            .with_drift_rows(config.drift.max_rows_per_request),
        );
        let http = bind(&config.server.http_addr).await?;
        let grpc = if config.server.grpc_addr.is_empty() {
            None
        } else {
            Some(bind(&config.server.grpc_addr).await?)
        };
        let load_on_startup = config.repository.load_on_startup;
        let shadow_concurrency = match config.server.shadow_concurrency {
            0 => config.compute_threads(),
            n => n,
        };
        let state = Arc::new(AppState::new(
            config,
            repository.clone(),
            metrics,
            compute,
            auth,
            traces.clone(),
        ));
        state
            .shadows
            .spawn_workers(state.executor.clone(), shadow_concurrency, traces);
        state.dashboard.clone().spawn(Arc::downgrade(&state));
        if !state.alerts.is_empty() {
            state.alerts.clone().spawn(repository.clone());
        }
        if load_on_startup {
            if !repository.root().is_dir() {
                tracing::warn!(path = %repository.root().display(), "model repository directory does not exist; serving no models");
            }
            let repo = repository.clone();
            tokio::task::spawn_blocking(move || {
                for name in repo.on_disk() {
                    if let Err(e) = repo.load(&name) {
                        tracing::error!(model = %name, error = %e, "model failed to load at start-up");
                    }
                }
            })
            .await
            .map_err(|e| StartError::Other(format!("start-up load failed: {e}")))?;
        }
        // Readiness waits for every model that must serve: those found at
        // start-up and every deployment (whose controller loads it later).
        let mut required = if load_on_startup {
            repository.on_disk()
        } else {
            Vec::new()
        };
        required.extend(state.config.deployments.iter().map(|d| d.name.clone()));
        state.readiness().require(required);
        state.set_ready(true);
        Ok(Server {
            state,
            http,
            grpc,
            extra: None,
        })
    }

    /// Serve `router`'s routes beside the V2 API.
    pub fn merge(&mut self, router: axum::Router) {
        self.extra = Some(match self.extra.take() {
            Some(r) => r.merge(router),
            None => router,
        });
    }

    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.local_addr().ok()
    }

    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        self.grpc.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Serve until `shutdown` resolves, then stop accepting, refuse new
    /// requests with 503, and wait (bounded) for in-flight ones. Every REST
    /// route, merged ones included, is behind the auth layer.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), StartError> {
        let (tx, rx) = watch::channel(false);
        let wait = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|stop| *stop).await;
        };
        let mut router = crate::http::router(self.state.clone());
        if let Some(extra) = self.extra {
            router = router.merge(extra);
        }
        // API metrics (outside auth, so refusals count) on every route but
        // inference, which has metrics of its own.
        let auth = greenbelt_auth::AuthLayer(self.state.auth.clone());
        let router = router
            .layer(auth.clone())
            .route_layer(axum::middleware::from_fn_with_state(
                self.state.metrics.clone(),
                crate::http::api_metrics,
            ))
            .merge(crate::http::infer_router(self.state.clone()).layer(auth));
        let limits = ConnLimits::from_config(&self.state.config.server);
        let drain = Duration::from_millis(self.state.config.server.drain_timeout_ms);
        let http = tokio::spawn(crate::listen::serve_http(
            Acceptor::new(self.http, limits),
            router,
            rx.clone(),
            drain,
        ));
        let grpc = self.grpc.map(|listener| {
            let svc = crate::grpc::service(self.state.clone());
            let incoming = Acceptor::new(listener, limits).into_stream();
            tokio::spawn(
                tonic::transport::Server::builder()
                    .max_concurrent_streams(limits.max_concurrent_streams)
                    .http2_keepalive_interval(Some(limits.idle_timeout))
                    .layer(tower::util::MapResponseLayer::new(
                        crate::grpc::too_large_is_resource_exhausted,
                    ))
                    .add_service(svc)
                    .serve_with_incoming_shutdown(incoming, wait(rx.clone())),
            )
        });
        shutdown.await;
        // Phase 1: not ready, still serving, so endpoints are removed
        // before anything is refused.
        self.state.readiness().begin_stopping();
        let delay = Duration::from_millis(self.state.config.server.shutdown_delay_ms);
        if !delay.is_zero() {
            tracing::info!(
                delay_ms = self.state.config.server.shutdown_delay_ms,
                "shutting down: not ready, serving for shutdown_delay before draining"
            );
            tokio::time::sleep(delay).await;
        }
        // Phase 2: refuse new requests, wait (bounded) for in-flight ones.
        tracing::info!("shutting down: draining in-flight requests");
        self.state.start_draining();
        let _ = tx.send(true);
        let (http_abort, grpc_abort) =
            (http.abort_handle(), grpc.as_ref().map(|g| g.abort_handle()));
        let done = async {
            let _ = http.await;
            if let Some(g) = grpc {
                let _ = g.await;
            }
        };
        if tokio::time::timeout(drain, done).await.is_err() {
            // The drain never overruns its timeout: what is still open is
            // cut here.
            http_abort.abort();
            if let Some(g) = grpc_abort {
                g.abort();
            }
            tracing::warn!(
                drain_ms = drain.as_millis() as u64,
                "drain timed out; stopping with requests in flight"
            );
        }
        // The last spans go out before the process ends (bounded by the
        // exporter's timeout; off the runtime's worker threads).
        let traces = self.state.traces.clone();
        let _ = tokio::time::timeout(
            Duration::from_millis(self.state.config.tracing.export_timeout_ms + 1000),
            tokio::task::spawn_blocking(move || traces.shutdown()),
        )
        .await;
        tracing::info!("stopped");
        Ok(())
    }
}
