//! The accept loop, written once for HTTP and HTTPS: a TCP connection, the TLS handshake when
//! the server has a certificate, then HTTP/1.1 or HTTP/2 with upgrades (the agents' WebSocket).
//! A client certificate verified in the handshake goes into each request's extensions, where
//! the agents' route finds it. A failed handshake costs only its own connection.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper::service::Service as _;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use veem_tls::{Acceptor, ClientCertificate};

/// A client that has not finished its handshake by then is dropped, so half-open connections
/// do not pile up.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// After a failed `accept` (out of file descriptors, say), a pause before the next one, so the
/// loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// Serves `app` on `listener` until `shutdown` resolves, then stops accepting, lets each
/// connection finish the requests it has begun, and returns when all are closed. With `tls`,
/// every connection is HTTPS.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<Acceptor>,
    shutdown: impl Future<Output = ()>,
) {
    let (stop, stopping) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut shutdown = pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            // Reaps finished connections, so the set holds only live ones.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((tcp, remote)) => {
                    // Answers are small and latency counts: no Nagle delay.
                    let _ = tcp.set_nodelay(true);
                    connections.spawn(connection(
                        tcp,
                        remote,
                        app.clone(),
                        tls.clone(),
                        stopping.clone(),
                    ));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                }
            },
        }
    }
    drop(listener);
    let _ = stop.send(true);
    while connections.join_next().await.is_some() {}
}

async fn connection(
    tcp: TcpStream,
    remote: SocketAddr,
    app: Router,
    tls: Option<Acceptor>,
    mut stopping: watch::Receiver<bool>,
) {
    let Some(acceptor) = tls else {
        return http(tcp, None, app, stopping).await;
    };
    let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp));
    let handshake = tokio::select! {
        result = handshake => result,
        _ = stopping.wait_for(|stop| *stop) => return,
    };
    match handshake {
        Ok(Ok((stream, client))) => {
            if let Some(client) = &client {
                tracing::debug!(%remote, fingerprint = client.fingerprint(), "client certificate verified");
            }
            http(stream, client, app, stopping).await;
        }
        Ok(Err(e)) => tracing::debug!(%remote, error = %e, "TLS handshake failed"),
        Err(_elapsed) => tracing::debug!(%remote, "TLS handshake timed out"),
    }
}

async fn http<IO>(
    io: IO,
    client: Option<ClientCertificate>,
    app: Router,
    mut stopping: watch::Receiver<bool>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let app = TowerToHyperService::new(app);
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        if let Some(client) = &client {
            request.extensions_mut().insert(client.clone());
        }
        app.call(request)
    });
    let builder = Builder::new(TokioExecutor::new());
    let mut connection = pin!(builder.serve_connection_with_upgrades(TokioIo::new(io), service));
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            return;
        }
        _ = stopping.wait_for(|stop| *stop) => connection.as_mut().graceful_shutdown(),
    }
    let _ = connection.await;
}
