//! Connections: what a client may hold and for how long, on both
//! listeners. A listener accepts at most `max_connections` at once (the
//! rest wait in the kernel's backlog); a connection that moves no byte in
//! either direction for `idle_timeout` is closed (a half-sent request line
//! cannot hold it forever); HTTP/1 request headers must arrive within
//! `header_read_timeout`; HTTP/2 connections carry at most
//! `max_concurrent_streams` streams.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::{Instant, Sleep};
use tower::ServiceExt;

/// The connection limits of one server.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub max_concurrent_streams: u32,
}

impl ConnLimits {
    pub fn from_config(s: &crate::config::ServerConfig) -> ConnLimits {
        ConnLimits {
            header_read_timeout: Duration::from_millis(s.header_read_timeout_ms),
            idle_timeout: Duration::from_millis(s.idle_timeout_ms),
            max_connections: s.max_connections,
            max_concurrent_streams: s.max_concurrent_streams,
        }
    }
}

/// A stream that fails with `TimedOut` once no byte has moved either way
/// for `idle`. It holds its connection slot until dropped.
///
/// The timer is re-armed lazily: I/O only records when it last moved a
/// byte, and the timer, when it fires, either closes the connection or
/// moves itself to `idle` past that moment. Resetting a tokio timer on
/// every read and write takes the timer wheel's lock twice per request
/// (about 2% of the server's CPU at c=64 on the serving bench); this costs
/// one clock read per read or write and one timer reset per `idle` of
/// activity.
pub struct Conn {
    inner: TcpStream,
    idle: Duration,
    timer: Pin<Box<Sleep>>,
    /// When a byte last moved either way.
    last_active: Instant,
    _slot: OwnedSemaphorePermit,
}

impl Conn {
    fn new(inner: TcpStream, idle: Duration, slot: OwnedSemaphorePermit) -> Conn {
        // A century stands for "never" and keeps `Instant + idle` in range.
        let idle = idle.min(Duration::from_secs(100 * 365 * 24 * 3600));
        let now = Instant::now();
        Conn {
            inner,
            idle,
            timer: Box::pin(tokio::time::sleep_until(now + idle)),
            last_active: now,
            _slot: slot,
        }
    }

    fn active(&mut self) {
        self.last_active = Instant::now();
    }

    /// Pending I/O: fail once the idle deadline has passed (the timer's
    /// waker is registered, so an idle connection is woken to be closed).
    fn check_idle(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        loop {
            match self.timer.as_mut().poll(cx) {
                Poll::Pending => return Ok(()),
                Poll::Ready(()) => {
                    let deadline = self.last_active + self.idle;
                    if Instant::now() >= deadline {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "connection idle longer than [server] idle_timeout",
                        ));
                    }
                    // Bytes moved since the timer was set: wait for the
                    // rest of the idle period from the last of them (the
                    // next poll registers the waker).
                    self.timer.as_mut().reset(deadline);
                }
            }
        }
    }

    /// A write's result: count the bytes as activity, check idleness while
    /// the socket is full.
    fn wrote(
        &mut self,
        cx: &mut Context<'_>,
        r: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match r {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.active();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match self.check_idle(cx) {
                Ok(()) => Poll::Pending,
                Err(e) => Poll::Ready(Err(e)),
            },
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    self.active();
                }
                Poll::Ready(r)
            }
            Poll::Pending => match self.check_idle(cx) {
                Ok(()) => Poll::Pending,
                Err(e) => Poll::Ready(Err(e)),
            },
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.wrote(cx, r)
    }

    /// Vectored writes pass through (hyper then sends headers and body
    /// with one `writev` instead of copying the body behind the headers).
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.wrote(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = ();
    fn connect_info(&self) {}
}

/// Accepts connections while a slot is free.
pub struct Acceptor {
    listener: TcpListener,
    slots: Arc<Semaphore>,
    limits: ConnLimits,
}

impl Acceptor {
    pub fn new(listener: TcpListener, limits: ConnLimits) -> Acceptor {
        Acceptor {
            listener,
            slots: Arc::new(Semaphore::new(
                limits.max_connections.clamp(1, Semaphore::MAX_PERMITS),
            )),
            limits,
        }
    }

    /// The next connection, once fewer than `max_connections` are open.
    pub async fn accept(&self) -> io::Result<Conn> {
        let slot = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| io::Error::other("acceptor closed"))?;
        loop {
            match self.listener.accept().await {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    return Ok(Conn::new(stream, self.limits.idle_timeout, slot));
                }
                // Too many open files and the like: wait a little, go on.
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// Accepted connections as a stream (for tonic's `serve_with_incoming`).
    pub fn into_stream(self) -> impl futures::Stream<Item = io::Result<Conn>> + Send + 'static {
        futures::stream::unfold(self, |a| async move {
            let next = a.accept().await;
            Some((next, a))
        })
    }

    /// Wait (up to `within`) until every connection has closed.
    async fn closed(&self, within: Duration) {
        let all = u32::try_from(self.limits.max_connections.clamp(1, Semaphore::MAX_PERMITS))
            .unwrap_or(u32::MAX);
        let _ = tokio::time::timeout(within, self.slots.acquire_many(all)).await;
    }
}

/// Serve `router` over HTTP/1 and HTTP/2 until `stop` turns true, then let
/// open connections finish their requests (up to `drain`).
pub async fn serve_http(
    acceptor: Acceptor,
    router: axum::Router,
    mut stop: watch::Receiver<bool>,
    drain: Duration,
) {
    let limits = acceptor.limits;
    // Connections are owned here: when the drain ends (or this task is
    // aborted) the ones still open are cut, so a drain never overruns.
    let mut conns = tokio::task::JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        let conn = tokio::select! {
            c = acceptor.accept() => c,
            _ = stop.wait_for(|s| *s) => break,
        };
        let Ok(conn) = conn else { break };
        let service = hyper_util::service::TowerToHyperService::new(router.clone().map_request(
            |r: axum::http::Request<hyper::body::Incoming>| r.map(axum::body::Body::new),
        ));
        let mut stop = stop.clone();
        conns.spawn(async move {
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout);
            builder
                .http2()
                .timer(TokioTimer::new())
                .max_concurrent_streams(limits.max_concurrent_streams);
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(conn), service);
            tokio::pin!(connection);
            tokio::select! {
                r = connection.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "connection closed with an error");
                    }
                    return;
                }
                _ = stop.wait_for(|s| *s) => {}
            }
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        });
    }
    acceptor.closed(drain).await;
}
