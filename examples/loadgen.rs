//! An HTTP/1.1-over-TLS load generator, two modes.
//!
//! **Open loop** (the default, `--mode open`), for tail latency: requests are
//! scheduled at exact intervals (`--rate` per second over all connections,
//! round-robin), and each one's latency counts from its SCHEDULED time to the
//! end of its response body, so a stall delays every request scheduled
//! during it and they all count (no coordinated omission, as in wrk2). A
//! connection carries one request at a time (keep-alive, no pipelining): a
//! request whose connection is still busy goes out as soon as it is free, and
//! its wait is part of its latency.
//!
//! Besides the percentiles it prints the latency over time, per window
//! (`--window-ms`, 100 by default): requests, how many took over
//! `--spike-ms` (10), and the slowest, so a stall shows as a spike with its
//! time, and periodic ones show their period. `--log FILE` writes every
//! request (scheduled offset, latency, connection) for closer study.
//!
//! It reports how late it itself sent requests whose connection was free
//! ("send lag": tokio's timer fires on millisecond ticks), so the tool's own
//! share of a latency is visible.
//!
//! **Closed loop, one request per new connection** (`--mode resume`, or
//! `--mode full` without resumption), for the cost of connection set-up:
//! `--connections` workers, each in a loop: connect, TLS handshake (resuming
//! the session of its previous connection: every worker keeps its own
//! tickets, so only its first handshake is a full one), one GET with
//! `Connection: close`, read the response to the server's close, close. It
//! prints requests per second, errors, latency percentiles (connect to
//! close), how many handshakes resumed (rustls' `handshake_kind()`), and the
//! tool's own CPU time per request, so a run shows both that the server
//! resumed and that the client was not the limit. The request is written by
//! hand (no HTTP library), and each thread runs a single-threaded runtime
//! with its share of the workers, so a connection costs the client little
//! beyond its TLS handshake.
//!
//! Bounded: loopback addresses only, at most 600 s, 20 million requests and
//! 10,000 connections, and every request has a timeout.
//!
//! ```text
//! cargo build --release --example loadgen
//! loadgen --url https://127.0.0.1:8443/api -H 'Authorization: Bearer …' \
//!     --rate 20000 --duration 10 --connections 50 --cacert cert.pem
//! loadgen --mode resume --url https://127.0.0.1:8443/api -H 'Authorization: Bearer …' \
//!     --duration 5 --warmup 0 --connections 50 --threads 2 --cacert cert.pem
//! ```
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use http::{HeaderName, HeaderValue, Request, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

/// How the load is made.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Open loop at `--rate` over keep-alive connections; latency from each request's scheduled time
    Open,
    /// Closed loop, one request per new TLS connection, each resuming its worker's previous session
    Resume,
    /// Closed loop, one request per new TLS connection, every handshake a full one
    Full,
}

#[derive(Parser, Debug)]
#[command(
    about = "HTTP/1.1-over-TLS load: open loop at a fixed rate (latency from each request's scheduled time), \
             or closed loop with one request per new connection, resumed or full (--mode)"
)]
struct Args {
    /// open: fixed rate over keep-alive connections; resume / full: each of
    /// --connections workers connects, makes one request with
    /// `Connection: close`, and connects again, resuming its previous TLS
    /// session (resume) or not (full), until --duration or --requests
    #[arg(long, value_enum, default_value_t = Mode::Open)]
    mode: Mode,
    /// https://127.0.0.1:PORT/path (loopback only)
    #[arg(long)]
    url: String,
    /// A request header, "Name: value" (repeatable)
    #[arg(short = 'H', long = "header")]
    headers: Vec<String>,
    /// Requests per second, over all connections (open mode; required there)
    #[arg(long)]
    rate: Option<u32>,
    /// At most this many requests, warm-up included (resume / full modes)
    #[arg(long, default_value_t = 20_000_000)]
    requests: u64,
    /// Seconds of measured load (after the warm-up)
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of load before the measurement, not counted
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Keep-alive connections (open), or concurrent workers (resume / full)
    #[arg(long, default_value_t = 50)]
    connections: u32,
    /// Threads, each with its own share of the connections and the rate
    #[arg(long, default_value_t = 2)]
    threads: u32,
    /// PEM file of the CA (or the self-signed certificate) to trust
    #[arg(long)]
    cacert: String,
    /// Width of the latency-over-time windows, ms
    #[arg(long, default_value_t = 100)]
    window_ms: u32,
    /// A request slower than this counts as a spike in its window, ms
    #[arg(long, default_value_t = 10.0)]
    spike_ms: f64,
    /// Per-request timeout, seconds (counted as an error)
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
    /// Write every measured request here: scheduled offset µs, latency µs, connection
    #[arg(long)]
    log: Option<String>,
    /// Print every window, not only those with a spike
    #[arg(long)]
    all_windows: bool,
}

/// One measured request.
#[derive(Clone, Copy)]
struct Sample {
    /// Scheduled time, µs after the measurement started.
    at_us: u64,
    /// From the scheduled time to the end of the body; `u64::MAX` for an error.
    latency_us: u64,
    conn: u32,
}

/// What one thread measured.
#[derive(Default)]
struct Tally {
    samples: Vec<Sample>,
    /// How late requests went out whose connection was free, µs.
    lag_us: Vec<u64>,
    errors: u64,
    reconnects: u64,
    /// The first error met, to print.
    first_error: Option<String>,
}

type Fail = Box<dyn std::error::Error + Send + Sync>;

struct Target {
    addr: SocketAddr,
    name: ServerName<'static>,
    uri: Uri,
    host: HeaderValue,
    headers: Vec<(HeaderName, HeaderValue)>,
    tls: TlsConnector,
    /// The client configuration `tls` was made from (closed-loop workers
    /// each take a copy with a session store of their own).
    config: Arc<rustls::ClientConfig>,
    /// The closed-loop modes' request, whole: `GET path HTTP/1.1`, Host,
    /// the `-H` headers and `Connection: close`.
    request: Vec<u8>,
}

fn main() {
    let args = Args::parse();
    if let Err(e) = run(args) {
        eprintln!("loadgen: {e}");
        std::process::exit(2);
    }
}

fn run(args: Args) -> Result<(), Fail> {
    if !(0.1..=600.0).contains(&args.duration) || !(0.0..=60.0).contains(&args.warmup) {
        return Err("duration must be 0.1-600 s and warm-up 0-60 s".into());
    }
    if !(1..=10_000).contains(&args.connections) || !(1..=64).contains(&args.threads) {
        return Err("connections must be 1-10000 and threads 1-64".into());
    }
    if args.window_ms == 0 || !(0.1..=60.0).contains(&args.timeout) {
        return Err("window-ms must be > 0 and timeout 0.1-60 s".into());
    }
    if args.mode != Mode::Open {
        if !(1..=20_000_000).contains(&args.requests) {
            return Err("requests must be 1-20 million".into());
        }
        return closed_loop(&args, target(&args)?);
    }
    let rate = args.rate.ok_or("--rate is required in open mode")?;
    if rate == 0 || f64::from(rate) * (args.duration + args.warmup) > 20e6 {
        return Err("rate must be > 0 and rate x (duration + warm-up) at most 20 million".into());
    }
    let target = Arc::new(target(&args)?);
    let threads = args.threads.min(args.connections);
    let t0 = std::time::Instant::now() + Duration::from_millis(500);
    let mut handles = Vec::new();
    for t in 0..threads {
        let target = target.clone();
        let plan = Plan {
            rate: f64::from(rate),
            total_conns: args.connections,
            first_conn: t,
            stride: threads,
            warmup: args.warmup,
            duration: args.duration,
            timeout: Duration::from_secs_f64(args.timeout),
        };
        handles.push(std::thread::spawn(move || -> Result<Tally, String> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(thread_load(target, plan, t0))
                .map_err(|e| e.to_string())
        }));
    }
    let mut all = Tally::default();
    for h in handles {
        let t = h.join().map_err(|_| "a load thread panicked")??;
        all.samples.extend(t.samples);
        all.lag_us.extend(t.lag_us);
        all.errors += t.errors;
        all.reconnects += t.reconnects;
        all.first_error = all.first_error.or(t.first_error);
    }
    report(&args, rate, all)
}

fn target(args: &Args) -> Result<Target, Fail> {
    let uri: Uri = args.url.parse()?;
    if uri.scheme_str() != Some("https") {
        return Err("the URL must be https://".into());
    }
    let host = uri.host().ok_or("the URL has no host")?;
    let port = uri.port_u16().unwrap_or(443);
    let ip: IpAddr = match host {
        "localhost" => IpAddr::from([127, 0, 0, 1]),
        h => h.trim_start_matches('[').trim_end_matches(']').parse()?,
    };
    if !ip.is_loopback() {
        return Err("only loopback targets (127.0.0.0/8, ::1)".into());
    }
    let name = ServerName::try_from(host.trim_start_matches('[').trim_end_matches(']'))?.to_owned();
    let mut headers = Vec::new();
    for h in &args.headers {
        let (k, v) = h.split_once(':').ok_or("a header is \"Name: value\"")?;
        headers.push((
            HeaderName::try_from(k.trim())?,
            HeaderValue::try_from(v.trim())?,
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    let mut pinned = Vec::new();
    for cert in CertificateDer::pem_file_iter(&args.cacert)? {
        let cert = cert?;
        pinned.push(cert.clone());
        roots.add(cert)?;
    }
    let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()?;
    let verifier = Arc::new(Pinned {
        pinned,
        webpki,
        algs: provider.signature_verification_algorithms,
    });
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let authority = uri.authority().ok_or("the URL has no authority")?.as_str();
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\n").into_bytes();
    for (k, v) in &headers {
        request.extend_from_slice(k.as_str().as_bytes());
        request.extend_from_slice(b": ");
        request.extend_from_slice(v.as_bytes());
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"Connection: close\r\n\r\n");
    let config = Arc::new(config);
    Ok(Target {
        addr: SocketAddr::new(ip, port),
        name,
        host: HeaderValue::try_from(authority)?,
        uri: path.parse()?,
        headers,
        tls: TlsConnector::from(config.clone()),
        config,
        request,
    })
}

/// Trusts a server certificate that is one of `--cacert`'s own (the
/// benchmarks' self-signed certificate is its own CA, which webpki refuses
/// as an end entity), and otherwise what chains to them.
#[derive(Debug)]
struct Pinned {
    pinned: Vec<CertificateDer<'static>>,
    webpki: Arc<rustls::client::WebPkiServerVerifier>,
    algs: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl rustls::client::danger::ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        if self
            .pinned
            .iter()
            .any(|c| c.as_ref() == end_entity.as_ref())
        {
            return Ok(rustls::client::danger::ServerCertVerified::assertion());
        }
        self.webpki
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// One thread's share of the schedule: connections `first_conn`,
/// `first_conn + stride`, ...; connection c's k-th request is due at
/// `(k * total_conns + c) / rate` seconds after the start.
#[derive(Clone, Copy)]
struct Plan {
    rate: f64,
    total_conns: u32,
    first_conn: u32,
    stride: u32,
    warmup: f64,
    duration: f64,
    timeout: Duration,
}

async fn thread_load(
    target: Arc<Target>,
    plan: Plan,
    t0: std::time::Instant,
) -> Result<Tally, Fail> {
    let mut conns = Vec::new();
    let mut c = plan.first_conn;
    while c < plan.total_conns {
        conns.push((c, connect(&target).await?));
        c += plan.stride;
    }
    let start = Instant::from_std(t0);
    let mut tasks = tokio::task::JoinSet::new();
    for (c, sender) in conns {
        tasks.spawn(conn_load(target.clone(), plan, start, c, sender));
    }
    let mut tally = Tally::default();
    while let Some(t) = tasks.join_next().await {
        let t = t?;
        tally.samples.extend(t.samples);
        tally.lag_us.extend(t.lag_us);
        tally.errors += t.errors;
        tally.reconnects += t.reconnects;
        tally.first_error = tally.first_error.or(t.first_error);
    }
    Ok(tally)
}

async fn connect(target: &Target) -> Result<http1::SendRequest<Empty<Bytes>>, Fail> {
    let tcp = TcpStream::connect(target.addr).await?;
    tcp.set_nodelay(true)?;
    let tls = target.tls.connect(target.name.clone(), tcp).await?;
    let (sender, driver) = http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(async move {
        let _ = driver.await;
    });
    Ok(sender)
}

async fn conn_load(
    target: Arc<Target>,
    plan: Plan,
    start: Instant,
    c: u32,
    mut sender: http1::SendRequest<Empty<Bytes>>,
) -> Tally {
    let mut tally = Tally::default();
    let per_conn = plan.rate / f64::from(plan.total_conns);
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    // bounded above by 20 million
    let expected = (per_conn * (plan.duration + plan.warmup)) as usize + 1;
    tally.samples.reserve(expected);
    tally.lag_us.reserve(expected);
    let end = plan.warmup + plan.duration;
    let mut k: u64 = 0;
    loop {
        #[allow(clippy::cast_precision_loss)] // k stays far below 2^52
        let due_s = (k as f64 * f64::from(plan.total_conns) + f64::from(c)) / plan.rate;
        k += 1;
        if due_s >= end {
            break;
        }
        let due = start + Duration::from_secs_f64(due_s);
        let now = Instant::now();
        let free_late = if now < due {
            tokio::time::sleep_until(due).await;
            Some(Instant::now().saturating_duration_since(due))
        } else {
            None
        };
        let measured = due_s >= plan.warmup;
        let outcome = tokio::time::timeout(plan.timeout, one_request(&target, &mut sender)).await;
        let done = Instant::now();
        let ok = matches!(outcome, Ok(Ok(())));
        if tally.first_error.is_none() {
            match &outcome {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tally.first_error = Some(e.to_string()),
                Err(_) => tally.first_error = Some("timed out".into()),
            }
        }
        if measured {
            let at_us = micros(Duration::from_secs_f64(due_s - plan.warmup));
            let latency_us = if ok {
                micros(done.saturating_duration_since(due))
            } else {
                u64::MAX
            };
            tally.samples.push(Sample {
                at_us,
                latency_us,
                conn: c,
            });
            if let Some(l) = free_late {
                tally.lag_us.push(micros(l));
            }
            if !ok {
                tally.errors += 1;
            }
        }
        if outcome.is_err() || sender.is_closed() {
            // A new connection for the next request (after a timeout this
            // one is still busy); failures count as errors there.
            match connect(&target).await {
                Ok(s) => {
                    sender = s;
                    tally.reconnects += 1;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }
    tally
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX - 1)
}

async fn one_request(
    target: &Target,
    sender: &mut http1::SendRequest<Empty<Bytes>>,
) -> Result<(), Fail> {
    sender.ready().await?;
    let mut req = Request::get(target.uri.clone()).body(Empty::<Bytes>::new())?;
    let h = req.headers_mut();
    h.insert(http::header::HOST, target.host.clone());
    for (k, v) in &target.headers {
        h.append(k.clone(), v.clone());
    }
    let resp = sender.send_request(req).await?;
    let resp_status = resp.status();
    let ok = resp_status.is_success();
    resp.into_body().collect().await?;
    if ok {
        Ok(())
    } else {
        Err(format!("status {resp_status}").into())
    }
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    #[allow(
        clippy::cast_precision_loss,
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss
    )]
    let i = ((p / 100.0) * (sorted.len() as f64)).ceil() as usize;
    ms(sorted[i.clamp(1, sorted.len()) - 1])
}

#[allow(clippy::cast_precision_loss)]
fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

fn report(args: &Args, rate: u32, mut all: Tally) -> Result<(), Fail> {
    all.samples.sort_by_key(|s| s.at_us);
    if let Some(path) = &args.log {
        let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
        writeln!(f, "scheduled_us\tlatency_us\tconn")?;
        for s in &all.samples {
            if s.latency_us == u64::MAX {
                writeln!(f, "{}\terror\t{}", s.at_us, s.conn)?;
            } else {
                writeln!(f, "{}\t{}\t{}", s.at_us, s.latency_us, s.conn)?;
            }
        }
        f.flush()?;
    }
    let mut lat: Vec<u64> = all
        .samples
        .iter()
        .map(|s| s.latency_us)
        .filter(|&l| l != u64::MAX)
        .collect();
    lat.sort_unstable();
    all.lag_us.sort_unstable();
    let count = all.samples.len();
    println!(
        "requests {count} ({:.0}/s scheduled {}/s) errors {} reconnects {}",
        count as f64 / args.duration,
        rate,
        all.errors,
        all.reconnects
    );
    if let Some(e) = &all.first_error {
        println!("first error: {e}");
    }
    println!(
        "latency ms: p50 {:.2} p90 {:.2} p99 {:.2} p99.9 {:.2} max {:.2}",
        pct(&lat, 50.0),
        pct(&lat, 90.0),
        pct(&lat, 99.0),
        pct(&lat, 99.9),
        lat.last().map_or(0.0, |&m| ms(m))
    );
    println!(
        "send lag ms (tool's own timer, connection free): p50 {:.2} p99 {:.2} max {:.2}",
        pct(&all.lag_us, 50.0),
        pct(&all.lag_us, 99.0),
        all.lag_us.last().map_or(0.0, |&m| ms(m))
    );
    // Latency over time, by scheduled time.
    let w_us = u64::from(args.window_ms) * 1000;
    let spike_us = micros(Duration::from_secs_f64(args.spike_ms / 1000.0));
    let mut windows: Vec<(u64, u64, u64)> = Vec::new(); // count, over spike, max
    for s in &all.samples {
        let i = usize::try_from(s.at_us / w_us).unwrap_or(usize::MAX);
        if i >= windows.len() {
            windows.resize(i + 1, (0, 0, 0));
        }
        let w = &mut windows[i];
        w.0 += 1;
        if s.latency_us > spike_us {
            w.1 += 1;
        }
        if s.latency_us != u64::MAX {
            w.2 = w.2.max(s.latency_us);
        }
    }
    let spiky: Vec<usize> = (0..windows.len()).filter(|&i| windows[i].1 > 0).collect();
    println!(
        "windows of {} ms with a request over {} ms: {} of {}",
        args.window_ms,
        args.spike_ms,
        spiky.len(),
        windows.len()
    );
    for (i, w) in windows.iter().enumerate() {
        if args.all_windows || w.1 > 0 {
            #[allow(clippy::cast_precision_loss)]
            let t = (i as f64) * f64::from(args.window_ms) / 1000.0;
            println!(
                "  t={t:7.2}s n={:6} over={:5} max={:8.2}ms",
                w.0,
                w.1,
                ms(w.2)
            );
        }
    }
    println!(
        "RESULT count={count} errors={} p50={:.3} p90={:.3} p99={:.3} p999={:.3} max={:.3} spiky_windows={}",
        all.errors,
        pct(&lat, 50.0),
        pct(&lat, 90.0),
        pct(&lat, 99.0),
        pct(&lat, 99.9),
        lat.last().map_or(0.0, |&m| ms(m)),
        spiky.len()
    );
    Ok(())
}

// ---- closed loop: one request per new connection ------------------------

/// What closed-loop workers measured (requests that started after the
/// warm-up).
#[derive(Default)]
struct ConnTally {
    /// Connect to close, µs, of each request that succeeded.
    latency_us: Vec<u64>,
    errors: u64,
    /// Successful requests whose TLS handshake resumed a session.
    resumed: u64,
    first_error: Option<String>,
}

impl ConnTally {
    fn absorb(&mut self, other: ConnTally) {
        self.latency_us.extend(other.latency_us);
        self.errors += other.errors;
        self.resumed += other.resumed;
        self.first_error = self.first_error.take().or(other.first_error);
    }
}

#[derive(Clone, Copy)]
struct ClosedPlan {
    /// Requests started before this are not counted.
    warm_end: std::time::Instant,
    /// No request starts after this.
    end: std::time::Instant,
    /// At most this many requests start, over all workers.
    limit: u64,
    timeout: Duration,
}

fn closed_loop(args: &Args, target: Target) -> Result<(), Fail> {
    let resume = args.mode == Mode::Resume;
    let target = Arc::new(target);
    let threads = args.threads.min(args.connections);
    let issued = Arc::new(AtomicU64::new(0));
    let start = std::time::Instant::now();
    let warm_end = start + Duration::from_secs_f64(args.warmup);
    let plan = ClosedPlan {
        warm_end,
        end: warm_end + Duration::from_secs_f64(args.duration),
        limit: args.requests,
        timeout: Duration::from_secs_f64(args.timeout),
    };
    let mut handles = Vec::new();
    for t in 0..threads {
        let target = target.clone();
        let issued = issued.clone();
        // Workers t, t + threads, ...
        let workers = (args.connections - t).div_ceil(threads);
        handles.push(std::thread::spawn(move || -> Result<ConnTally, String> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(async move {
                let mut tasks = tokio::task::JoinSet::new();
                for _ in 0..workers {
                    // A session store per worker: like a browser tab or
                    // curl, each worker offers the ticket its own previous
                    // connection received, and no store is shared between
                    // threads.
                    let mut config = (*target.config).clone();
                    config.resumption = if resume {
                        rustls::client::Resumption::in_memory_sessions(8)
                    } else {
                        rustls::client::Resumption::disabled()
                    };
                    let connector = TlsConnector::from(Arc::new(config));
                    tasks.spawn(closed_worker(
                        target.clone(),
                        connector,
                        plan,
                        issued.clone(),
                    ));
                }
                let mut tally = ConnTally::default();
                while let Some(t) = tasks.join_next().await {
                    tally.absorb(t.map_err(|e| e.to_string())?);
                }
                Ok(tally)
            })
        }));
    }
    // The tool's own CPU time over the measured part (the threads add
    // theirs to the process when they end).
    if let Some(wait) = warm_end.checked_duration_since(std::time::Instant::now()) {
        std::thread::sleep(wait);
    }
    let cpu0 = process_cpu_us();
    let mut all = ConnTally::default();
    for h in handles {
        all.absorb(h.join().map_err(|_| "a load thread panicked")??);
    }
    let elapsed = std::time::Instant::now()
        .saturating_duration_since(warm_end)
        .as_secs_f64();
    let cpu_us = process_cpu_us().saturating_sub(cpu0);
    closed_report(args, threads, elapsed, cpu_us, all);
    Ok(())
}

async fn closed_worker(
    target: Arc<Target>,
    connector: TlsConnector,
    plan: ClosedPlan,
    issued: Arc<AtomicU64>,
) -> ConnTally {
    let mut tally = ConnTally::default();
    // One response buffer per worker, reused by every connection.
    let mut buf = Vec::with_capacity(4096);
    loop {
        let started = std::time::Instant::now();
        if started >= plan.end || issued.fetch_add(1, Ordering::Relaxed) >= plan.limit {
            break;
        }
        let outcome =
            match tokio::time::timeout(plan.timeout, one_connection(&target, &connector, &mut buf))
                .await
            {
                Ok(r) => r,
                Err(_) => Err("timed out".into()),
            };
        if started < plan.warm_end {
            continue;
        }
        match outcome {
            Ok(resumed) => {
                tally.latency_us.push(micros(started.elapsed()));
                tally.resumed += u64::from(resumed);
            }
            Err(e) => {
                tally.errors += 1;
                if tally.first_error.is_none() {
                    tally.first_error = Some(e.to_string());
                }
                // Not a busy loop against a server that refuses.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
    tally
}

/// One request on a new connection: connect, handshake, the request, the
/// response up to the server's close. True when the handshake resumed.
async fn one_connection(
    target: &Target,
    connector: &TlsConnector,
    buf: &mut Vec<u8>,
) -> Result<bool, Fail> {
    let tcp = TcpStream::connect(target.addr).await?;
    tcp.set_nodelay(true)?;
    let mut tls = connector.connect(target.name.clone(), tcp).await?;
    let resumed = tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    tls.write_all(&target.request).await?;
    tls.flush().await?;
    buf.clear();
    loop {
        match tls.read_buf(buf).await {
            Ok(0) => break,
            Ok(_) if buf.len() > 1 << 20 => return Err("a response over 1 MiB".into()),
            Ok(_) => {}
            // A close without close_notify is fine once the response is
            // whole (its Content-Length says so).
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && complete(buf).is_ok() => {
                break;
            }
            Err(e) => return Err(e.into()),
        }
    }
    complete(buf)?;
    Ok(resumed)
}

/// A whole `200` response: its head, and as many body bytes as its
/// Content-Length (when it has one).
fn complete(buf: &[u8]) -> Result<(), String> {
    let head_end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no complete response head")?
        + 4;
    let head = &buf[..head_end];
    if !(head.starts_with(b"HTTP/1.1 200 ") || head.starts_with(b"HTTP/1.0 200 ")) {
        let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
        return Err(format!("status line {:?}", String::from_utf8_lossy(line)));
    }
    const CL: &[u8] = b"content-length:";
    for line in head.split(|&b| b == b'\n') {
        if line.len() > CL.len() && line[..CL.len()].eq_ignore_ascii_case(CL) {
            let n: usize = std::str::from_utf8(&line[CL.len()..])
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .ok_or("a bad Content-Length")?;
            let body = buf.len() - head_end;
            if body != n {
                return Err(format!("a body of {body} bytes, Content-Length {n}"));
            }
        }
    }
    Ok(())
}

/// User + system CPU time of this process (all its threads, ended ones
/// included), µs, from /proc/self/stat (Linux; 0 elsewhere).
fn process_cpu_us() -> u64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0;
    };
    // Fields after the command name, which is in parentheses: utime and
    // stime are the 12th and 13th, in clock ticks (USER_HZ, 100 on Linux).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let mut f = rest.split_whitespace().skip(11);
    let utime: u64 = f.next().and_then(|v| v.parse().ok()).unwrap_or(0);
    let stime: u64 = f.next().and_then(|v| v.parse().ok()).unwrap_or(0);
    (utime + stime) * 10_000
}

#[allow(clippy::cast_precision_loss)]
fn closed_report(args: &Args, threads: u32, elapsed: f64, cpu_us: u64, mut all: ConnTally) {
    all.latency_us.sort_unstable();
    let lat = &all.latency_us;
    let ok = lat.len() as u64;
    let mode = if args.mode == Mode::Resume {
        "resume"
    } else {
        "full"
    };
    let rps = if elapsed > 0.0 {
        ok as f64 / elapsed
    } else {
        0.0
    };
    let per_req = if ok > 0 {
        cpu_us as f64 / ok as f64
    } else {
        0.0
    };
    println!(
        "mode {mode}: {ok} requests, one per new connection, in {elapsed:.2} s ({rps:.0}/s), errors {}; {} workers on {threads} threads",
        all.errors, args.connections
    );
    if let Some(e) = &all.first_error {
        println!("first error: {e}");
    }
    println!(
        "handshakes resumed: {} of {ok} ({:.1} %)",
        all.resumed,
        if ok > 0 {
            100.0 * all.resumed as f64 / ok as f64
        } else {
            0.0
        }
    );
    println!(
        "latency ms (connect to close): p50 {:.2} p90 {:.2} p99 {:.2} p99.9 {:.2} max {:.2}",
        pct(lat, 50.0),
        pct(lat, 90.0),
        pct(lat, 99.0),
        pct(lat, 99.9),
        lat.last().map_or(0.0, |&m| ms(m))
    );
    println!(
        "client CPU: {:.2} s ({:.2} CPUs), {per_req:.1} µs per request",
        cpu_us as f64 / 1e6,
        if elapsed > 0.0 {
            cpu_us as f64 / 1e6 / elapsed
        } else {
            0.0
        }
    );
    println!(
        "RESULT mode={mode} count={ok} errors={} resumed={} elapsed={elapsed:.3} rps={rps:.1} p50={:.3} p90={:.3} p99={:.3} p999={:.3} max={:.3} client_cpu_us={cpu_us} client_cpu_us_per_req={per_req:.1}",
        all.errors,
        all.resumed,
        pct(lat, 50.0),
        pct(lat, 90.0),
        pct(lat, 99.0),
        pct(lat, 99.9),
        lat.last().map_or(0.0, |&m| ms(m)),
    );
}
