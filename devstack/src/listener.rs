//! The accept loop both servers share: bind (port 0 for any), `TCP_NODELAY` on every accepted
//! socket (else keep-alive requests wait ~40 ms for delayed ACKs), one task per connection,
//! and a prompt stop that also ends open connections.

use std::future::Future;
use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A listening server.
#[derive(Debug)]
pub(crate) struct Listener {
    addr: SocketAddr,
    cancel: CancellationToken,
    tracker: TaskTracker,
}

impl Listener {
    /// Binds `bind` and runs `handle` for every connection until [`Listener::stop`].
    pub(crate) async fn start<F, Fut>(bind: SocketAddr, handle: F) -> std::io::Result<Self>
    where
        F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind(bind).await?;
        let addr = listener.local_addr()?;
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        let (c, t) = (cancel.clone(), tracker.clone());
        tracker.spawn(async move {
            loop {
                let sock = tokio::select! {
                    () = c.cancelled() => break,
                    r = listener.accept() => match r {
                        Ok((sock, _)) => sock,
                        Err(e) => {
                            tracing::warn!(error = %e, %addr, "accept failed");
                            continue;
                        }
                    },
                };
                let _ = sock.set_nodelay(true);
                let (conn, c2) = (handle(sock), c.clone());
                t.spawn(async move {
                    tokio::select! {
                        () = c2.cancelled() => {}
                        () = conn => {}
                    }
                });
            }
        });
        Ok(Self {
            addr,
            cancel,
            tracker,
        })
    }

    /// The bound address.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, ends open connections, and waits for their tasks.
    pub(crate) async fn stop(&self) {
        self.cancel.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}
