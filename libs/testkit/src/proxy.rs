//! A TCP proxy on loopback that a test can cut, stall and restore: a real network outage
//! between a service and its backing service, bounded to the test. A cut closes every
//! connection (the peer sees it at once); a stall keeps them open and forwards nothing, as a
//! partition that drops packets does (the peer sees nothing until a time-out or a heartbeat).

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
    task::JoinHandle,
};

/// Forwards `127.0.0.1:{port}` to `target` while up.
#[derive(Debug)]
pub struct TcpProxy {
    port: u16,
    target: SocketAddr,
    /// The accept loop and every piped connection; aborted by [`TcpProxy::cut`].
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
    /// Whether bytes flow; [`TcpProxy::stall`] holds them.
    flowing: watch::Sender<bool>,
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
            flowing: watch::Sender::new(true),
        }
    }

    /// A proxy (down) in front of the server `url` names, whatever its spelling (`localhost`,
    /// an address, the scheme's default port), and `url` pointed at the proxy instead.
    ///
    /// # Panics
    /// If `url` does not parse or its host does not resolve: the test's setting is wrong.
    pub async fn in_front_of(url: &str) -> (Self, String) {
        let mut parsed = url::Url::parse(url).unwrap_or_else(|e| panic!("{url}: {e}"));
        let host = parsed.host_str().expect("a URL with a host").to_owned();
        let port = parsed
            .port_or_known_default()
            .or_else(|| default_port(parsed.scheme()))
            .expect("a URL with a port");
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let target = tokio::net::lookup_host((host, port))
            .await
            .unwrap_or_else(|e| panic!("resolving {host}: {e}"))
            .next()
            .unwrap_or_else(|| panic!("{host} has no address"));
        let proxy = Self::down(target).await;
        parsed.set_host(Some("127.0.0.1")).expect("an address");
        parsed.set_port(Some(proxy.port())).expect("a port");
        (proxy, parsed.into())
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Starts forwarding (after a stall: lets the held bytes and connections through).
    pub async fn restore(&self) {
        let stalled = !*self.flowing.borrow();
        self.flowing.send_replace(true);
        if stalled && !self.tasks.lock().expect("proxy tasks").is_empty() {
            return; // still listening
        }
        let listener = TcpListener::bind(("127.0.0.1", self.port))
            .await
            .expect("rebinding the proxy port");
        let target = self.target;
        let tasks = Arc::clone(&self.tasks);
        let flowing = self.flowing.subscribe();
        let accept = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let flowing = flowing.clone();
                let pipe = tokio::spawn(async move {
                    let mut open = flowing.clone();
                    if open.wait_for(|flows| *flows).await.is_err() {
                        return;
                    }
                    if let Ok(outbound) = TcpStream::connect(target).await {
                        let (mut from_client, mut to_client) = inbound.into_split();
                        let (mut from_server, mut to_server) = outbound.into_split();
                        tokio::select! {
                            _ = forward(&mut from_client, &mut to_server, flowing.clone()) => {}
                            _ = forward(&mut from_server, &mut to_client, flowing) => {}
                        }
                    }
                });
                tasks.lock().expect("proxy tasks").push(pipe);
            }
        });
        self.tasks.lock().expect("proxy tasks").push(accept);
    }

    /// Stops forwarding without closing anything: connections stay open, new ones are
    /// accepted, and no byte passes until [`TcpProxy::restore`] (then the held ones do).
    pub fn stall(&self) {
        self.flowing.send_replace(false);
    }

    /// Stops forwarding: closes the listener and every open connection.
    pub fn cut(&self) {
        for task in self.tasks.lock().expect("proxy tasks").drain(..) {
            task.abort();
        }
    }
}

/// Copies `from` to `to` while bytes flow; holds them (and the connection) while stalled.
async fn forward(
    from: &mut (impl AsyncRead + Unpin),
    to: &mut (impl AsyncWrite + Unpin),
    mut flowing: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let mut buffer = vec![0_u8; 16 * 1024];
    loop {
        let read = from.read(&mut buffer).await?;
        if read == 0 {
            return to.shutdown().await;
        }
        if flowing.wait_for(|flows| *flows).await.is_err() {
            return Ok(());
        }
        to.write_all(&buffer[..read]).await?;
    }
}

/// Ports of the schemes the `url` crate does not know.
fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "amqp" => Some(5672),
        "amqps" => Some(5671),
        "postgres" | "postgresql" => Some(5432),
        _ => None,
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.cut();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_proxy_stands_in_front_of_the_server_a_url_names_however_it_is_spelt() {
        let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = server.local_addr().unwrap().port();
        for url in [
            format!("amqp://guest:guest@localhost:{port}/%2f"),
            format!("amqp://guest:guest@127.0.0.1:{port}/%2f"),
        ] {
            let (proxy, via) = TcpProxy::in_front_of(&url).await;
            assert_eq!(proxy.target.port(), port);
            assert!(proxy.target.ip().is_loopback());
            assert_eq!(
                via,
                format!("amqp://guest:guest@127.0.0.1:{}/%2f", proxy.port())
            );
        }
        let (proxy, _) = TcpProxy::in_front_of("postgres://postgres@localhost/db").await;
        assert_eq!(proxy.target.port(), 5432, "the scheme's default port");
    }
}
