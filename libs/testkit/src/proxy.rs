//! A TCP proxy on loopback that a test can cut and restore: a real network outage between a
//! service and its backing service, bounded to the test.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use tokio::{
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};

/// Forwards `127.0.0.1:{port}` to `target` while up.
#[derive(Debug)]
pub struct TcpProxy {
    port: u16,
    target: SocketAddr,
    /// The accept loop and every piped connection; aborted by [`TcpProxy::cut`].
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl TcpProxy {
    /// A proxy on a free port, initially down (connections are refused).
    pub async fn down(target: SocketAddr) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a free port")
            .local_addr()
            .expect("its address")
            .port();
        Self {
            port,
            target,
            tasks: Arc::new(Mutex::new(Vec::new())),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Starts forwarding.
    pub async fn restore(&self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port))
            .await
            .expect("rebinding the proxy port");
        let target = self.target;
        let tasks = Arc::clone(&self.tasks);
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let pipe = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                tasks.lock().expect("proxy tasks").push(pipe);
            }
        });
        self.tasks.lock().expect("proxy tasks").push(accept);
    }

    /// Stops forwarding: closes the listener and every open connection.
    pub fn cut(&self) {
        for task in self.tasks.lock().expect("proxy tasks").drain(..) {
            task.abort();
        }
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.cut();
    }
}
