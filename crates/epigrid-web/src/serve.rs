//! The HTTP/1.1 server loop: axum's router on hyper connections that a slow or silent client
//! cannot hold open. `axum::serve` sets no timer, so a client that sends its headers a byte at
//! a time (or nothing at all after a response) kept its connection, and a file descriptor,
//! for ever; a few hundred such clients could shut everyone else out.
//!
//! Here each request's headers must arrive within [`HEADER_TIMEOUT`] of the server starting to
//! read them, which also closes a kept-alive connection idle that long. A response that is
//! being streamed (the live feed) is not affected: no headers are read while it runs.

use std::future::Future;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::ServiceExt;

/// How long a client has to send a request's headers (and how long a kept-alive connection
/// may sit idle).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves `app` on `listener` until `shutdown` completes, then stops accepting, lets the
/// requests in progress finish and returns once every connection has closed. Handlers see
/// the client's address as `ConnectInfo<SocketAddr>`, as with
/// `into_make_service_with_connect_info`.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    header_timeout: Duration,
    shutdown: impl Future<Output = ()>,
) {
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // out of file descriptors, say: wait rather than spin
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let svc = app
            .clone()
            .map_request(move |mut req: hyper::Request<Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                req.map(Body::new)
            });
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(TokioIo::new(stream), TowerToHyperService::new(svc));
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => return,
                _ = stop.wait_for(|s| *s) => {}
            }
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    // every connection task holds a receiver until it ends
    drop(stop_rx);
    stop_tx.closed().await;
}

/// [`serve`] with [`HEADER_TIMEOUT`] and no shutdown but the runtime's.
pub async fn serve_forever(listener: TcpListener, app: Router) {
    serve(listener, app, HEADER_TIMEOUT, std::future::pending()).await
}
