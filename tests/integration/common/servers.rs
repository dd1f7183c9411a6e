//! Upstream servers that can be killed and restarted on the same port, each
//! answering with its own name (`x-server`), for the tests of several
//! upstream servers and of readiness.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// One stand-in server. `/health` answers 200; everything else answers 200
/// with `x-server: <name>` and the name as body, after reading the request body.
pub struct Server {
    pub name: &'static str,
    pub addr: SocketAddr,
    /// `METHOD path` of every request that reached it, `/health` probes excepted.
    seen: Arc<Mutex<Vec<String>>>,
    /// Connections open right now.
    open: Arc<AtomicUsize>,
    task: Option<tokio::task::JoinHandle<()>>,
    /// While killed: a socket bound to the address but not listening, so
    /// connecting is still refused and the port is not handed to another
    /// test's listener meanwhile (a server of another test answering there
    /// made a dead server look alive but failing, so it was never taken out).
    hold: Option<tokio::net::TcpSocket>,
}

impl Server {
    pub async fn start(name: &'static str) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut s = Server {
            name,
            addr: listener.local_addr().unwrap(),
            seen: Arc::default(),
            open: Arc::default(),
            task: None,
            hold: None,
        };
        s.serve(listener);
        s
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests that reached it so far (`METHOD path`).
    pub fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }

    /// Stops listening and closes every connection (as a crashed server
    /// would); returns once they are all closed.
    pub async fn kill(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
        let open = self.open.clone();
        crate::common::eventually(Duration::from_secs(10), "connections closed", || {
            let n = open.load(Ordering::SeqCst);
            async move { (n == 0).then_some(()) }
        })
        .await;
        // Best effort: without SO_REUSEADDR (so the kernel never shares
        // the port), which fails while closed connections of this server
        // linger in TIME_WAIT; then the port is merely free, as before.
        self.hold = tokio::net::TcpSocket::new_v4()
            .and_then(|s| s.bind(self.addr).map(|()| s))
            .ok();
    }

    /// Listens again on the same address.
    pub async fn restart(&mut self) {
        self.hold = None;
        let listener = TcpListener::bind(self.addr).await.unwrap();
        self.serve(listener);
    }

    fn serve(&mut self, listener: TcpListener) {
        let (name, seen, open) = (self.name, self.seen.clone(), self.open.clone());
        // The accept loop of this test double; its connections live in the
        // set, so aborting the loop closes them all.
        self.task = Some(tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                while conns.try_join_next().is_some() {}
                let seen = seen.clone();
                let counted = Open::new(open.clone());
                conns.spawn(async move {
                    let _counted = counted;
                    let svc =
                        hyper::service::service_fn(move |req| answer(name, req, seen.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        }));
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// Counts an open connection until dropped.
struct Open(Arc<AtomicUsize>);

impl Open {
    fn new(n: Arc<AtomicUsize>) -> Open {
        n.fetch_add(1, Ordering::SeqCst);
        Open(n)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn answer(
    name: &'static str,
    req: Request<Incoming>,
    seen: Arc<Mutex<Vec<String>>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.uri().path() == "/health" {
        return Ok(Response::new(Full::new(Bytes::from_static(b"ok"))));
    }
    seen.lock()
        .unwrap()
        .push(format!("{} {}", req.method(), req.uri().path()));
    let _ = req.into_body().collect().await;
    Ok(Response::builder()
        .header("x-server", name)
        .body(Full::new(Bytes::from_static(name.as_bytes())))
        .unwrap())
}
