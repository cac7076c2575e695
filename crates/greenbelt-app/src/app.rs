//! [`App`]: a running server assembled from the project config. The order
//! matters: the feature store opens first, so the serving state is built
//! with its feature source and every model is checked against it as it
//! loads (a model whose `[features]` service does not fit its input fails
//! to load, instead of answering 500 later); then the registry and
//! rollout APIs are mounted and the background tasks start. The app owns
//! those tasks and stops them when the server stops.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use greenbelt_serve::infer::AppState;
use greenbelt_serve::{Config, Server};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::error::{AppError, Result};
use crate::features::FeatureStore;
use crate::tasks::{SHUTDOWN_WAIT, Tasks};

/// A built server with its APIs mounted and its background tasks running.
pub struct App {
    server: Server,
    tasks: Tasks,
    features: Option<FeatureStore>,
    shutdown_wait: Duration,
}

impl App {
    /// Open the feature store, build the server with it (models load
    /// here), mount the registry, rollout and feature APIs and start the
    /// controller, freshness, canary and autoscaler tasks.
    pub async fn build(config: Config) -> Result<App> {
        let features = FeatureStore::open(&config).await?;
        let mut server =
            Server::build_with(config.clone(), features.as_ref().map(FeatureStore::source)).await?;
        let mut tasks = Tasks::new();
        let attached = crate::registry::attach(&mut server, &config, &mut tasks).await;
        if let Err(e) = attached {
            tasks.shutdown(Duration::ZERO).await;
            return Err(e);
        }
        if let Some(f) = &features {
            let (read, write, retry) = f.service().breakers();
            let breakers = &server.state.breakers;
            breakers.insert(read);
            breakers.insert(write);
            breakers.insert_retry_budget("online_store", retry);
            server.merge(f.router());
            f.spawn_tasks(server.state.metrics.clone(), &mut tasks);
            f.spawn_cost_scans(&server.state, &mut tasks)?;
        }
        crate::autoscale::spawn(server.state.clone(), &mut tasks);
        crate::drift::spawn(server.state.clone(), &mut tasks);
        crate::cost::spawn(server.state.clone(), &mut tasks);
        Ok(App {
            server,
            tasks,
            features,
            shutdown_wait: SHUTDOWN_WAIT,
        })
    }

    /// How long [`App::run`] waits for background tasks after the server
    /// stopped before aborting them (default [`SHUTDOWN_WAIT`]).
    pub fn with_shutdown_wait(mut self, wait: Duration) -> App {
        self.shutdown_wait = wait;
        self
    }

    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.server.http_addr()
    }

    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        self.server.grpc_addr()
    }

    /// The serving state (repository, metrics, config).
    pub fn state(&self) -> &Arc<AppState> {
        &self.server.state
    }

    /// The feature store, when one is configured.
    pub fn features(&self) -> Option<&FeatureStore> {
        self.features.as_ref()
    }

    /// How many background tasks run.
    pub fn tasks(&self) -> usize {
        self.tasks.len()
    }

    /// Serve until `shutdown` resolves; drain in-flight requests, then stop
    /// the background tasks (bounded wait, then abort).
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<()> {
        let App {
            server,
            tasks,
            shutdown_wait,
            ..
        } = self;
        tracing::info!(
            http = ?server.http_addr(),
            grpc = ?server.grpc_addr(),
            "greenbelt serving"
        );
        let served = server.run(shutdown).await;
        tasks.shutdown(shutdown_wait).await;
        Ok(served?)
    }

    /// Serve in the background until [`Running::stop`].
    pub fn spawn(self) -> Running {
        let http = self.http_addr();
        let grpc = self.grpc_addr();
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(self.run(async move {
            let _ = rx.await;
        }));
        Running {
            stop: tx,
            handle,
            http,
            grpc,
        }
    }
}

/// An [`App`] serving in the background.
pub struct Running {
    stop: oneshot::Sender<()>,
    handle: JoinHandle<Result<()>>,
    http: Option<SocketAddr>,
    grpc: Option<SocketAddr>,
}

impl Running {
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http
    }

    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        self.grpc
    }

    /// Stop serving and wait until the server and its tasks are down.
    pub async fn stop(self) -> Result<()> {
        let _ = self.stop.send(());
        self.handle.await.map_err(AppError::from)?
    }
}
