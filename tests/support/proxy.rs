//! A TCP proxy between a client and a server that a test can turn into a bad network: pass,
//! delay, cut (close every connection, refuse new ones) or black-hole (stop forwarding
//! without closing anything: a half-open link, the peer just never answers). Black-holing
//! works for the whole proxy or for one connection, named by the local port of its
//! upstream side (what the server sees as the client's port, e.g. `pg_stat_activity.
//! client_port`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::AbortHandle;

/// What the proxy does with traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Pass,
    /// Every chunk waits this long before it is forwarded.
    Delay(Duration),
    /// Nothing is forwarded, nothing is closed; new connections are accepted and then
    /// hang the same way.
    BlackHole,
}

struct Link {
    mode: watch::Sender<Mode>,
    tasks: Vec<AbortHandle>,
}

#[derive(Default)]
struct Links {
    next: u64,
    /// By id; `upstream_port` is the local port of the connection to the server.
    open: HashMap<u64, (Option<u16>, Link)>,
}

pub struct Proxy {
    pub addr: SocketAddr,
    mode: watch::Sender<Mode>,
    refusing: Arc<std::sync::atomic::AtomicBool>,
    links: Arc<Mutex<Links>>,
    accept: AbortHandle,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy").field("addr", &self.addr).finish()
    }
}

impl Proxy {
    /// A proxy on a free loopback port in front of `upstream`.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let (mode, _) = watch::channel(Mode::Pass);
        let refusing = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let links = Arc::new(Mutex::new(Links::default()));
        let accept = {
            let global = mode.clone();
            let refusing = refusing.clone();
            let links = links.clone();
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    if refusing.load(std::sync::atomic::Ordering::SeqCst) {
                        drop(client);
                        continue;
                    }
                    let id = {
                        let mut links = links.lock().expect("lock");
                        links.next += 1;
                        links.next
                    };
                    let (own, _) = watch::channel(Mode::Pass);
                    links.lock().expect("lock").open.insert(
                        id,
                        (
                            None,
                            Link {
                                mode: own.clone(),
                                tasks: Vec::new(),
                            },
                        ),
                    );
                    let task = tokio::spawn(serve(
                        client,
                        upstream,
                        id,
                        global.subscribe(),
                        own.subscribe(),
                        links.clone(),
                    ));
                    if let Some((_, link)) = links.lock().expect("lock").open.get_mut(&id) {
                        link.tasks.push(task.abort_handle());
                    }
                }
            })
            .abort_handle()
        };
        Self {
            addr,
            mode,
            refusing,
            links,
            accept,
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Sets the mode of every connection, open and future.
    pub fn set(&self, mode: Mode) {
        self.refusing
            .store(false, std::sync::atomic::Ordering::SeqCst);
        self.mode.send_replace(mode);
    }

    /// Closes every open connection and refuses new ones until [`Self::set`].
    pub fn cut(&self) {
        self.refusing
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let open: Vec<_> = self.links.lock().expect("lock").open.drain().collect();
        for (_, (_, link)) in open {
            for task in link.tasks {
                task.abort();
            }
        }
    }

    /// Sets the mode of the one open connection whose upstream side has local port `port`.
    /// Returns whether there was one.
    pub fn set_connection(&self, upstream_port: u16, mode: Mode) -> bool {
        let links = self.links.lock().expect("lock");
        match links
            .open
            .values()
            .find(|(port, _)| *port == Some(upstream_port))
        {
            Some((_, link)) => {
                link.mode.send_replace(mode);
                true
            }
            None => false,
        }
    }

    /// How many connections are open.
    pub fn open_connections(&self) -> usize {
        self.links.lock().expect("lock").open.len()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

async fn serve(
    client: TcpStream,
    upstream: SocketAddr,
    id: u64,
    mut global: watch::Receiver<Mode>,
    mut own: watch::Receiver<Mode>,
    links: Arc<Mutex<Links>>,
) {
    // A black hole swallows the connection attempt too: connect only once it lifts.
    if gate(&mut global, &mut own).await.is_err() {
        return;
    }
    let Ok(server) = TcpStream::connect(upstream).await else {
        links.lock().expect("lock").open.remove(&id);
        return;
    };
    let port = server.local_addr().ok().map(|a| a.port());
    if let Some((slot, _)) = links.lock().expect("lock").open.get_mut(&id) {
        *slot = port;
    }
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let up = pump(client_read, server_write, global.clone(), own.clone());
    let down = pump(server_read, client_write, global, own);
    // Both directions end (EOF or error) before the link is forgotten.
    let _ = tokio::join!(up, down);
    links.lock().expect("lock").open.remove(&id);
}

/// Waits until traffic may pass; `Err` when the proxy is gone.
async fn gate(
    global: &mut watch::Receiver<Mode>,
    own: &mut watch::Receiver<Mode>,
) -> Result<(), ()> {
    loop {
        let modes = [*global.borrow_and_update(), *own.borrow_and_update()];
        if modes.contains(&Mode::BlackHole) {
            tokio::select! {
                changed = global.changed() => changed.map_err(|_| ())?,
                changed = own.changed() => changed.map_err(|_| ())?,
            }
            continue;
        }
        let delay = modes
            .iter()
            .filter_map(|m| match m {
                Mode::Delay(d) => Some(*d),
                _ => None,
            })
            .max();
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
        return Ok(());
    }
}

async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut global: watch::Receiver<Mode>,
    mut own: watch::Receiver<Mode>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = from.read(&mut buf).await.unwrap_or(0);
        // The end of the stream is held back by a black hole like data is.
        if gate(&mut global, &mut own).await.is_err() {
            return;
        }
        if n == 0 {
            let _ = to.shutdown().await;
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
