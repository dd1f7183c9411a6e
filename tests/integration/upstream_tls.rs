//! An HTTPS upstream: trusted through `upstream.ca_file`, refused when its
//! certificate is not trusted, and reachable with the explicit
//! `upstream.insecure_skip_verify`.

use crate::common;
use crate::common::{upstream_tls, TestGateway};
use http::StatusCode;

#[tokio::test]
async fn https_upstream_with_ca_file_verification_and_the_insecure_switch() {
    let certs = tempfile::tempdir().unwrap();
    let up = upstream_tls(certs.path()).await;
    let url = format!("https://127.0.0.1:{}", up.addr.port());
    let ca = certs.path().join("upstream.crt");

    let trusted = TestGateway::start_with(up.addr, |f| {
        f.upstream.url = url.clone();
        f.upstream.ca_file = Some(ca.clone());
    })
    .await;
    let (_, refresh) = trusted.create_token("t").await;
    let access = trusted.exchange(&refresh).await;
    let r = trusted.client.api_get("/over/tls?a=1", &access).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["path"], "/over/tls");

    // Same upstream, its certificate not trusted (system roots only): 502.
    let untrusted = TestGateway::start_with(up.addr, |f| f.upstream.url = url.clone()).await;
    let (_, refresh) = untrusted.create_token("t").await;
    let access = untrusted.exchange(&refresh).await;
    let r = untrusted.client.api_get("/over/tls", &access).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.text());

    // Explicitly skipping verification reaches it.
    let insecure = TestGateway::start_with(up.addr, |f| {
        f.upstream.url = url.clone();
        f.upstream.insecure_skip_verify = true;
    })
    .await;
    let (_, refresh) = insecure.create_token("t").await;
    let access = insecure.exchange(&refresh).await;
    assert_eq!(
        insecure.client.api_get("/x", &access).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn upstream_url_path_prefixes_every_call() {
    let up = common::upstream().await;
    let gw = TestGateway::start_with(up.addr, |f| {
        f.upstream.url = format!("http://{}/base/", up.addr)
    })
    .await;
    let (_, refresh) = gw.create_token("t").await;
    let access = gw.exchange(&refresh).await;
    let r = gw.client.api_get("/iwc/api/x?y=1", &access).await;
    assert_eq!(r.json()["path"], "/base/iwc/api/x");
    assert_eq!(r.json()["query"], "y=1");
}
