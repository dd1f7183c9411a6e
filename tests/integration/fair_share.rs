//! No single client can starve the others: a per-client connection limit
//! (with load balancers exempt, or counted by the address their PROXY
//! header gives), first-request and idle deadlines on HTTP/2, and a send
//! deadline for clients that stop taking a response.

use std::net::SocketAddr;
use std::time::Duration;

use crate::common;
use crate::common::{closed_by_peer, connect_from, eventually, secs, TestGateway};
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn five_thousand_idle_connections_from_one_address_do_not_starve_anyone() {
    let up = common::upstream().await;
    let gw = TestGateway::start_with(up.addr, |f| {
        // Without the per-client share, the flood below would hold every
        // one of these slots and the normal client would wait in the backlog.
        f.public.max_connections = 600;
        f.public.max_connections_per_client = 50;
        f.public.tls_handshake_timeout = secs(120);
        f.public.workers = 2;
    })
    .await;
    let mut flood = Vec::with_capacity(5000);
    for _ in 0..5000 {
        let s = connect_from("127.0.0.2", gw.public_addr()).await;
        flood.push(s.into_std().unwrap());
    }
    // Another client is served at once.
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        gw.client.get_with("/healthz", None),
    )
    .await
    .expect("a normal client is served while the flood holds its share");
    assert_eq!(r.status, StatusCode::OK);
    // The flood keeps its share and no more: the rest were closed.
    eventually(Duration::from_secs(30), "excess connections closed", || {
        let open = flood.iter().filter(|s| !closed_by_peer(s)).count();
        async move { (open <= 50).then_some(()) }
    })
    .await;
    let still_open = flood.iter().filter(|s| !closed_by_peer(s)).count();
    assert_eq!(still_open, 50, "the client's share stays open");
}

/// An HTTP balancer (`public.trusted_forwarders`) multiplexes its clients
/// over its connections, and they are told apart per request: it holds no
/// per-client share of connections.
#[tokio::test]
async fn a_trusted_http_balancer_with_thousands_of_connections_is_exempt() {
    let up = common::upstream().await;
    let gw = TestGateway::start_with(up.addr, |f| {
        f.public.max_connections_per_client = 20;
        f.public.trusted_forwarders = vec!["127.0.0.3/32".into()];
        f.public.tls_handshake_timeout = secs(120);
    })
    .await;
    // 2,000 connections from the balancer: all kept, though one address
    // holds them.
    let mut held = Vec::new();
    for _ in 0..2000 {
        held.push(
            connect_from("127.0.0.3", gw.public_addr())
                .await
                .into_std()
                .unwrap(),
        );
    }
    eventually(Duration::from_secs(20), "all 2,000 accepted", || {
        let n = gw.open_connections();
        async move { (n >= 2000).then_some(()) }
    })
    .await;
    assert!(
        held.iter().all(|s| !closed_by_peer(s)),
        "none of the balancer's connections was refused"
    );
    let r = gw.client.get_with("/healthz", None).await;
    assert_eq!(r.status, StatusCode::OK);
}

/// A PROXY protocol v2 header naming `client` (TCP over IPv4 or IPv6).
fn proxy_v2(client: SocketAddr) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    match client {
        SocketAddr::V4(c) => {
            h.extend_from_slice(&[0x21, 0x11, 0, 12]);
            h.extend_from_slice(&c.ip().octets());
            h.extend_from_slice(&[127, 0, 0, 1]);
        }
        SocketAddr::V6(c) => {
            h.extend_from_slice(&[0x21, 0x21, 0, 36]);
            h.extend_from_slice(&c.ip().octets());
            h.extend_from_slice(&std::net::Ipv6Addr::LOCALHOST.octets());
        }
    }
    h.extend_from_slice(&client.port().to_be_bytes());
    h.extend_from_slice(&443u16.to_be_bytes());
    h
}

#[tokio::test]
async fn proxy_protocol_gives_the_client_address_to_limits_and_the_upstream() {
    let up = common::upstream().await;
    let gw = TestGateway::start_with(up.addr, |f| {
        f.public.proxy_protocol = true;
        f.public.trusted_proxies = vec!["127.0.0.4/32".into()];
        f.public.max_connections_per_client = 3;
        f.public.tls_handshake_timeout = secs(120);
    })
    .await;
    let (_, refresh) = gw.create_token("behind-haproxy").await;

    // The balancer carries many clients: each is counted on its own.
    let mut conns = Vec::new();
    for i in 0..30u8 {
        let mut tcp = connect_from("127.0.0.4", gw.public_addr()).await;
        let client: SocketAddr = format!("203.0.113.{}:5000", i + 1).parse().unwrap();
        tcp.write_all(&proxy_v2(client)).await.unwrap();
        conns.push(gw.tls_over(tcp, b"http/1.1").await);
    }
    // One client beyond its share of 3 is refused (closed before TLS).
    let mut same = Vec::new();
    for _ in 0..4 {
        let mut tcp = connect_from("127.0.0.4", gw.public_addr()).await;
        tcp.write_all(&proxy_v2("198.51.100.7:1".parse().unwrap()))
            .await
            .unwrap();
        same.push(tcp.into_std().unwrap());
    }
    eventually(Duration::from_secs(10), "one of the four refused", || {
        let n = same.iter().filter(|s| closed_by_peer(s)).count();
        async move { (n >= 1).then_some(()) }
    })
    .await;
    let refused = same.iter().filter(|s| closed_by_peer(s)).count();
    assert_eq!(
        refused, 1,
        "exactly the fourth connection of one client is refused"
    );

    // The client address reaches the upstream as X-Forwarded-For.
    let access = {
        let mut tcp = connect_from("127.0.0.4", gw.public_addr()).await;
        tcp.write_all(&proxy_v2("192.0.2.44:7000".parse().unwrap()))
            .await
            .unwrap();
        let mut tls = gw.tls_over(tcp, b"http/1.1").await;
        let body = format!("grant_type=refresh_token&refresh_token={refresh}");
        let req = format!(
            "POST /token HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        tls.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        tls.read_to_string(&mut out).await.unwrap();
        let json = &out[out.find("\r\n\r\n").unwrap() + 4..];
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        v["access_token"].as_str().unwrap().to_owned()
    };
    let mut tcp = connect_from("127.0.0.4", gw.public_addr()).await;
    tcp.write_all(&proxy_v2("192.0.2.44:7001".parse().unwrap()))
        .await
        .unwrap();
    let mut tls = gw.tls_over(tcp, b"http/1.1").await;
    let req = format!(
        "GET /whoami HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {access}\r\nX-Forwarded-For: 6.6.6.6\r\nConnection: close\r\n\r\n"
    );
    tls.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    tls.read_to_string(&mut out).await.unwrap();
    let json = &out[out.find("\r\n\r\n").unwrap() + 4..];
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(v["headers"]["x-forwarded-for"][0], "192.0.2.44", "{out}");
    // The usage record names the client too.
    let tokens = gw
        .client
        .admin_call("GET", "/api/refresh-tokens")
        .await
        .json();
    assert_eq!(tokens[0]["last_client_ip"], "192.0.2.44");

    // A connection without a PROXY header is refused when they are required.
    let mut plain = connect_from("127.0.0.4", gw.public_addr()).await;
    plain.write_all(b"\x16\x03\x01\x00\x05hello").await.unwrap();
    let mut b = [0u8; 1];
    let r = tokio::time::timeout(Duration::from_secs(5), plain.read(&mut b)).await;
    assert!(
        matches!(r, Ok(Ok(0)) | Ok(Err(_))),
        "closed without a PROXY header"
    );
    // And PROXY headers from a peer that is not a trusted proxy are refused.
    let mut stranger = connect_from("127.0.0.5", gw.public_addr()).await;
    stranger
        .write_all(&proxy_v2("192.0.2.1:1".parse().unwrap()))
        .await
        .unwrap();
    let r = tokio::time::timeout(Duration::from_secs(5), stranger.read(&mut b)).await;
    assert!(
        matches!(r, Ok(Ok(0)) | Ok(Err(_))),
        "a stranger's PROXY header is refused"
    );
    // Before it sends a byte: more than its share (3) of silent connections
    // from an unlisted peer are all closed, none kept waiting for a header.
    let mut silent = Vec::new();
    for _ in 0..10 {
        silent.push(
            connect_from("127.0.0.5", gw.public_addr())
                .await
                .into_std()
                .unwrap(),
        );
    }
    eventually(Duration::from_secs(10), "all ten closed unread", || {
        let n = silent.iter().filter(|s| closed_by_peer(s)).count();
        async move { (n == 10).then_some(()) }
    })
    .await;
    drop(conns);
}

/// IPv6 shares are hierarchical: clients named by a listed balancer's PROXY
/// headers from many /64s of one /56 hold the /56's share (4 × the /64's)
/// and no more, so one subscriber cannot fill the listener; another /56 is
/// served.
#[tokio::test]
async fn many_64s_of_one_ipv6_56_hold_one_bounded_share() {
    let up = common::upstream().await;
    let gw = TestGateway::start_with(up.addr, |f| {
        f.public.proxy_protocol = true;
        f.public.trusted_proxies = vec!["127.0.0.4/32".into()];
        f.public.max_connections_per_client = 2;
        f.public.max_connections = 40;
        f.public.tls_handshake_timeout = secs(120);
    })
    .await;
    let open = |client: String| {
        let addr = gw.public_addr();
        async move {
            let mut tcp = connect_from("127.0.0.4", addr).await;
            let c: SocketAddr = format!("[{client}]:4000").parse().unwrap();
            tcp.write_all(&proxy_v2(c)).await.unwrap();
            tcp.into_std().unwrap()
        }
    };
    // 16 /64s of 2001:db8:1:200::/56, their share of 2 each: 32 tried.
    let mut held = Vec::new();
    for n in 0..16 {
        for _ in 0..2 {
            held.push(open(format!("2001:db8:1:2{n:02x}::1")).await);
        }
    }
    // The /56 holds 4 x 2 of a listener of 40; the other 24 are closed.
    eventually(Duration::from_secs(10), "the /56's excess closed", || {
        let kept = held.iter().filter(|s| !closed_by_peer(s)).count();
        async move { (kept == 8).then_some(()) }
    })
    .await;
    // Another /56 of the same /48 is served at once.
    let other = open("2001:db8:1:300::1".to_owned()).await;
    let mut tls = gw
        .tls_over(tokio::net::TcpStream::from_std(other).unwrap(), b"http/1.1")
        .await;
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    tls.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
}

#[tokio::test]
async fn forwarded_for_is_believed_from_trusted_forwarders_only() {
    let up = common::upstream().await;
    let gw = TestGateway::start_with(up.addr, |f| {
        f.public.trusted_forwarders = vec!["127.0.0.6/32".into()];
    })
    .await;
    let (_, refresh) = gw.create_token("xff").await;
    let access = gw.exchange(&refresh).await;
    let get = |from: &'static str| {
        let gw = &gw;
        let access = access.clone();
        async move {
            let tcp = connect_from(from, gw.public_addr()).await;
            let mut tls = gw.tls_over(tcp, b"http/1.1").await;
            let req = format!(
                "GET /x HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {access}\r\nX-Forwarded-For: 6.6.6.6, 203.0.113.9\r\nConnection: close\r\n\r\n"
            );
            tls.write_all(req.as_bytes()).await.unwrap();
            let mut out = String::new();
            tls.read_to_string(&mut out).await.unwrap();
            let json = out[out.find("\r\n\r\n").unwrap() + 4..].to_owned();
            serde_json::from_str::<serde_json::Value>(&json).unwrap()
        }
    };
    let v = get("127.0.0.6").await;
    assert_eq!(
        v["headers"]["x-forwarded-for"][0], "203.0.113.9",
        "the balancer's word"
    );
    let v = get("127.0.0.7").await;
    assert_eq!(
        v["headers"]["x-forwarded-for"][0], "127.0.0.7",
        "a client's own claim is not believed"
    );
    // The balancer's request naming no client is refused, not charged to
    // the balancer's address (a budget all its clients would share); its
    // health checks are answered.
    let forwarder = gw.client_from("127.0.0.6");
    let r = forwarder.api_get("/x", &access).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    assert!(r.text().contains("X-Forwarded-For"), "{}", r.text());
    let r = forwarder.get_with("/healthz", None).await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test]
async fn a_silent_http2_connection_is_dropped_at_the_first_request_deadline() {
    let up = common::upstream().await;
    let gw = TestGateway::start_with(up.addr, |f| {
        f.public.header_read_timeout = secs(1);
    })
    .await;
    // TLS with ALPN h2, then nothing: no preface, no request.
    let silent = gw.tls_connect(b"h2").await;
    // The preface and SETTINGS, then nothing.
    let mut preface_only = gw.tls_connect(b"h2").await;
    preface_only
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    eventually(
        Duration::from_secs(10),
        "both connections were dropped",
        || {
            let n = gw.open_connections();
            async move { (n == 0).then_some(()) }
        },
    )
    .await;
    drop((silent, preface_only));
}

#[tokio::test]
async fn an_idle_http2_connection_is_closed() {
    let up = common::upstream().await;
    let gw = TestGateway::start_with(up.addr, |f| {
        f.public.idle_timeout = secs(1);
    })
    .await;
    let tls = gw.tls_connect(b"h2").await;
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    let driver = tokio::spawn(conn);
    let req = http::Request::get("https://localhost/healthz")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let r = send.send_request(req).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // Then idle: the gateway says goodbye and the connection ends.
    // (Whether hyper's client reports the GOAWAY as an error does not matter.)
    let _ = tokio::time::timeout(Duration::from_secs(10), driver)
        .await
        .expect("the idle connection was closed by the gateway")
        .unwrap();
    eventually(Duration::from_secs(5), "the gateway let go of it", || {
        let n = gw.open_connections();
        async move { (n == 0).then_some(()) }
    })
    .await;
}

#[tokio::test]
async fn a_client_that_stops_reading_is_dropped_at_the_send_deadline() {
    let up = common::upstream().await;
    let gw = TestGateway::start_with(up.addr, |f| {
        f.public.send_timeout = secs(1);
        // The echo upstream takes a while to read and answer 24 MiB on a
        // loaded machine; a 504 in between would be a small answer that fits
        // the socket buffers and never stalls.
        f.upstream.response_timeout = secs(120);
    })
    .await;
    let (_, refresh) = gw.create_token("reader").await;
    let access = gw.exchange(&refresh).await;
    // The test client keeps its own connection alive; count only ours.
    let before = gw.open_connections();
    // The echo upstream answers with the request body: 24 MiB to send back,
    // far more than the loopback socket buffers hold.
    let body = vec![b'a'; 24 << 20];
    let mut tls = gw.tls_connect(b"http/1.1").await;
    let head = format!(
        "POST /echo HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {access}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    tls.write_all(&body).await.unwrap();
    tls.flush().await.unwrap();
    // Never read: the gateway gives up on this client and frees the slot.
    eventually(
        Duration::from_secs(5),
        "the stalled connection is open",
        || {
            let n = gw.open_connections();
            async move { (n == before + 1).then_some(()) }
        },
    )
    .await;
    eventually(
        Duration::from_secs(20),
        "the stalled connection was dropped",
        || {
            let n = gw.open_connections();
            async move { (n == before).then_some(()) }
        },
    )
    .await;
    drop(tls);
}

/// HTTP/2 requests in progress are capped per client across all its
/// connections (each holds an upstream connection); beyond the cap a request
/// answers 429 at once without reaching the upstream, other clients and
/// HTTP/1.1 (bounded by the connection limit) are unaffected, and a finished
/// request frees its place.
#[tokio::test]
async fn http2_requests_in_progress_are_capped_per_client() {
    let up = common::upstream().await;
    let gw = TestGateway::start_with(up.addr, |f| {
        f.public.max_streams_per_client = 4;
    })
    .await;
    let (_, refresh) = gw.create_token("streams").await;
    let access = gw.exchange(&refresh).await;
    let bearer = format!("Bearer {access}");
    let get = |c: &common::TestClient, path: &str| {
        c.public_req("GET", path)
            .header("authorization", &bearer)
            .body(http_body_util::Full::default())
            .unwrap()
    };
    // Two connections from one address, two held requests on each.
    let (a, b) = (gw.client_from("127.0.0.4"), gw.client_from("127.0.0.4"));
    let mut held = Vec::new();
    for c in [&a, &a, &b, &b] {
        let (c, req) = (c.clone(), get(c, "/pause"));
        held.push(tokio::spawn(async move { c.send_h2(req).await }));
    }
    eventually(
        Duration::from_secs(10),
        "four requests held upstream",
        || {
            let n = up.paused();
            async move { (n == 4).then_some(()) }
        },
    )
    .await;

    for c in [&a, &b] {
        let r = tokio::time::timeout(Duration::from_secs(10), c.send_h2(get(c, "/pause")))
            .await
            .expect("a fifth request is answered at once, not held upstream");
        assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.text());
        assert_eq!(r.headers["retry-after"], "1");
        assert_eq!(r.json()["error"], "too_many_requests");
        assert!(r.json()["error_description"]
            .as_str()
            .unwrap()
            .contains("4 requests in progress"));
    }
    assert_eq!(
        up.paused(),
        4,
        "refused requests never reached the upstream"
    );
    // Another address has its own share; HTTP/1.1 is not counted here.
    let other = gw.client_from("127.0.0.5");
    assert_eq!(
        other.send_h2(get(&other, "/x")).await.status,
        StatusCode::OK
    );
    assert_eq!(a.send(get(&a, "/x")).await.status, StatusCode::OK);

    up.release_paused();
    for h in held {
        assert_eq!(h.await.unwrap().status, StatusCode::OK);
    }
    let r = a.send_h2(get(&a, "/x")).await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "finished requests free their places"
    );
}
