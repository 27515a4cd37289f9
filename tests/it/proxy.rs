//! A TCP proxy in front of the test database, for faults a test must cause on one client's
//! connections only: a server that hangs (`freeze`), connections that break (`cut`), and a count
//! of the statements that went through (`statements`), to measure what a client costs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::support::database_url;

/// A proxy to the test database; dropped, it closes every connection.
pub struct Proxy {
    port: u16,
    shared: Arc<Shared>,
    accept: tokio::task::JoinHandle<()>,
}

struct Shared {
    /// While true, nothing the clients send is forwarded.
    to_server_held: watch::Sender<bool>,
    /// While true, nothing the server sends is forwarded.
    to_clients_held: watch::Sender<bool>,
    /// Execute ('E') and simple query ('Q') messages the clients sent.
    statements: AtomicU64,
    connections: Mutex<JoinSet<()>>,
}

impl Proxy {
    pub async fn start() -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("address").port();
        let target = server_address();
        let shared = Arc::new(Shared {
            to_server_held: watch::channel(false).0,
            to_clients_held: watch::channel(false).0,
            statements: AtomicU64::new(0),
            connections: Mutex::new(JoinSet::new()),
        });
        let accept = tokio::spawn({
            let shared = Arc::clone(&shared);
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    let shared_for_task = Arc::clone(&shared);
                    let target = target.clone();
                    shared.connections.lock().unwrap().spawn(async move {
                        if let Ok(server) = TcpStream::connect(&target).await {
                            forward(client, server, shared_for_task).await;
                        }
                    });
                }
            }
        });
        Proxy {
            port,
            shared,
            accept,
        }
    }

    /// The test database's URL through this proxy, without TLS (so that the proxy can read
    /// what the client sends).
    pub fn url(&self) -> String {
        let url = database_url();
        let (scheme, rest) = url.split_once("://").expect("a URL");
        let (credentials, rest) = match rest.split_once('@') {
            Some((credentials, rest)) => (format!("{credentials}@"), rest),
            None => (String::new(), rest),
        };
        let path = rest.find('/').map_or("", |slash| &rest[slash..]);
        let separator = if path.contains('?') { '&' } else { '?' };
        format!(
            "{scheme}://{credentials}127.0.0.1:{}{path}{separator}sslmode=disable",
            self.port
        )
    }

    /// Stops forwarding in both directions, connections left open: the server hangs.
    pub fn freeze(&self) {
        self.shared.to_server_held.send_replace(true);
        self.shared.to_clients_held.send_replace(true);
    }

    /// Forwards what clients send, but none of the server's replies: a statement runs, and
    /// commits, but its client never learns of it.
    pub fn hold_replies(&self) {
        self.shared.to_clients_held.send_replace(true);
    }

    /// Forwards again, both ways.
    pub fn thaw(&self) {
        self.shared.to_server_held.send_replace(false);
        self.shared.to_clients_held.send_replace(false);
    }

    /// Closes every connection made so far, as a network failure or a server restart would.
    pub fn cut(&self) {
        self.shared.connections.lock().unwrap().abort_all();
    }

    /// How many statements clients have sent through the proxy.
    pub fn statements(&self) -> u64 {
        self.shared.statements.load(Ordering::Relaxed)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

fn server_address() -> String {
    let url = database_url();
    let rest = url.split_once("://").map_or(url.as_str(), |(_, rest)| rest);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, rest)| rest);
    let host = rest.split(['/', '?']).next().unwrap_or("127.0.0.1:5432");
    if host.contains(':') {
        host.to_owned()
    } else {
        format!("{host}:5432")
    }
}

async fn forward(client: TcpStream, server: TcpStream, shared: Arc<Shared>) {
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    tokio::select! {
        () = pump(client_read, server_write, &shared.to_server_held, Some(&shared.statements)) => {}
        () = pump(server_read, client_write, &shared.to_clients_held, None) => {}
    }
}

/// Copies one direction, but not while `held`; counts the client's statements when given a
/// counter.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    held: &watch::Sender<bool>,
    statements: Option<&AtomicU64>,
) {
    let mut held = held.subscribe();
    let mut parser = Messages::default();
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        if held.wait_for(|held| !held).await.is_err() {
            return;
        }
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if let Some(counter) = statements {
            counter.fetch_add(parser.statements(&buffer[..n]), Ordering::Relaxed);
        }
        // A hold that came while reading holds these bytes back too.
        if held.wait_for(|held| !held).await.is_err() {
            return;
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}

/// Splits the client's byte stream into protocol messages: the untyped start-up messages,
/// then typed ones (a type byte, then a length that counts itself).
#[derive(Default)]
struct Messages {
    started: bool,
    header: Vec<u8>,
    /// Bytes of the current message's body still to skip.
    skip: usize,
}

impl Messages {
    fn statements(&mut self, mut bytes: &[u8]) -> u64 {
        let mut count = 0;
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                self.skip -= n;
                bytes = &bytes[n..];
                continue;
            }
            let header_len = if self.started { 5 } else { 8 };
            let n = (header_len - self.header.len()).min(bytes.len());
            self.header.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            if self.header.len() < header_len {
                break;
            }
            let (kind, length) = if self.started {
                let length = u32::from_be_bytes(self.header[1..5].try_into().unwrap());
                (Some(self.header[0]), length as usize - 4)
            } else {
                let length = u32::from_be_bytes(self.header[0..4].try_into().unwrap());
                let code = u32::from_be_bytes(self.header[4..8].try_into().unwrap());
                // The start-up message proper (protocol 3.0) ends the untyped ones; an SSL or
                // GSS request does not.
                if code == 196_608 {
                    self.started = true;
                }
                (None, length as usize - 8)
            };
            if matches!(kind, Some(b'E' | b'Q')) {
                count += 1;
            }
            self.skip = length;
            self.header.clear();
        }
        count
    }
}
