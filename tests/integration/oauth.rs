//! The token endpoint's standard companions: RFC 8414 metadata (discovered
//! by authlib, a real OAuth client library), RFC 7009 revocation by the
//! token's holder, `/token/info`, and the RFC 6750 challenges of the bearer
//! check.

use crate::common;
use crate::common::{upstream, TestGateway};
use bytes::Bytes;
use http::StatusCode;
use http_body_util::Full;
use serde_json::{json, Value};
use std::time::Duration;

async fn revoke(gw: &TestGateway, body: &str) -> common::Resp {
    let req = gw
        .client
        .public_req("POST", "/token/revoke")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    gw.client.send(req).await
}

fn events(gw: &TestGateway, name: &str) -> Vec<Value> {
    gw.audit_lines()
        .into_iter()
        .filter(|l| l["event"] == name)
        .collect()
}

#[tokio::test]
async fn the_metadata_names_every_endpoint_under_the_issuer() {
    let up = upstream().await;
    let gw = TestGateway::start(up.addr).await;
    let r = gw
        .client
        .get_with("/.well-known/oauth-authorization-server", None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let m = r.json();
    let issuer = m["issuer"].as_str().unwrap().to_owned();
    // By default the issuer is the host the client asked for.
    assert_eq!(issuer, gw.client.public);
    assert_eq!(
        m["token_endpoint"],
        format!("{issuer}/iwc/api/security/oauth/token")
    );
    assert_eq!(m["revocation_endpoint"], format!("{issuer}/token/revoke"));
    assert_eq!(
        m["introspection_endpoint"],
        format!("{issuer}/token/introspect")
    );
    assert_eq!(m["grant_types_supported"], json!(["refresh_token"]));
    assert_eq!(
        m["revocation_endpoint_auth_methods_supported"],
        json!(["none"])
    );
    assert_eq!(m["token_endpoint_auth_methods_supported"], json!(["none"]));
    let docs = m["service_documentation"].as_str().unwrap();
    let path = docs.strip_prefix(&issuer).unwrap();
    let page = gw.client.get_with(path, None).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.text().contains("access token"), "{}", page.text());
    // Never forwarded: the upstream saw none of it.
    assert_eq!(up.hits(), 0);
    // Only GET (and HEAD).
    let post = gw
        .client
        .send(
            gw.client
                .public_req("POST", "/.well-known/oauth-authorization-server")
                .body(Full::default())
                .unwrap(),
        )
        .await;
    assert_eq!(post.status, StatusCode::METHOD_NOT_ALLOWED);

    // A configured issuer wins over the Host.
    let gw2 = TestGateway::start_with(up.addr, |f| {
        f.public.issuer = Some("https://api.example.com/".into());
    })
    .await;
    let m = gw2
        .client
        .get_with("/.well-known/oauth-authorization-server", None)
        .await
        .json();
    assert_eq!(m["issuer"], "https://api.example.com");
    assert_eq!(
        m["revocation_endpoint"],
        "https://api.example.com/token/revoke"
    );
}

#[tokio::test]
async fn revoking_a_refresh_token_deletes_it_and_ends_its_access_tokens() {
    let up = upstream().await;
    let gw = TestGateway::start(up.addr).await;
    let (id, refresh) = gw.create_token("script").await;
    let (_, other) = gw.create_token("other").await;
    let access = gw.exchange(&refresh).await;
    let other_access = gw.exchange(&other).await;
    assert_eq!(
        gw.client.api_get("/x", &access).await.status,
        StatusCode::OK
    );

    let r = revoke(
        &gw,
        &format!("token={refresh}&token_type_hint=refresh_token"),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.header("cache-control").as_deref(), Some("no-store"));
    // Gone: no exchange, and its access token ends at once.
    let ex = gw
        .client
        .token_form(&format!("grant_type=refresh_token&refresh_token={refresh}"))
        .await;
    assert_eq!(ex.json()["error"], "invalid_grant");
    let r = gw.client.api_get("/x", &access).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // The admin's list no longer has it; the other token is untouched.
    let list = gw
        .client
        .admin_call("GET", "/api/refresh-tokens")
        .await
        .json();
    assert!(
        !list.to_string().contains(&format!("\"id\":{id},")),
        "{list}"
    );
    assert_eq!(
        gw.client.api_get("/x", &other_access).await.status,
        StatusCode::OK
    );
    let lines = events(&gw, "refresh_token.revoked_by_holder");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["token_id"], id);
    assert_eq!(lines[0]["actor"], "client");
    assert!(!lines[0].to_string().contains(&refresh));

    // Revoking it again, or any unknown token: still 200 (RFC 7009 §2.2).
    assert_eq!(
        revoke(&gw, &format!("token={refresh}")).await.status,
        StatusCode::OK
    );
    assert_eq!(revoke(&gw, "token=nonsense").await.status, StatusCode::OK);
}

#[tokio::test]
async fn revoking_an_access_token_ends_only_that_token() {
    let up = upstream().await;
    let gw = TestGateway::start(up.addr).await;
    let (id, refresh) = gw.create_token("script").await;
    let a1 = gw.exchange(&refresh).await;
    let a2 = gw.exchange(&refresh).await;
    // No hint, and a JSON body, as the token endpoint takes too.
    let req = gw
        .client
        .public_req("POST", "/token/revoke")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(json!({ "token": a1 }).to_string())))
        .unwrap();
    let r = gw.client.send(req).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(
        gw.client.api_get("/x", &a1).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(gw.client.api_get("/x", &a2).await.status, StatusCode::OK);
    // The refresh token still exchanges.
    let a3 = gw.exchange(&refresh).await;
    assert_eq!(gw.client.api_get("/x", &a3).await.status, StatusCode::OK);
    let lines = events(&gw, "access_token.revoked_by_holder");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["token_id"], id);
}

#[tokio::test]
async fn malformed_revocations_are_invalid_requests_and_guesses_are_throttled() {
    let up = upstream().await;
    let gw = TestGateway::start_with(up.addr, |f| f.public.auth_failures_per_minute = 3).await;
    for (body, ctype, want) in [
        (
            "token_type_hint=access_token",
            "application/x-www-form-urlencoded",
            "token is missing",
        ),
        (
            "token=a&token=b",
            "application/x-www-form-urlencoded",
            "parameter token is repeated",
        ),
        ("token=a", "text/plain", "Content-Type must be"),
        ("[1]", "application/json", "body is not a JSON object"),
    ] {
        let req = gw
            .client
            .public_req("POST", "/token/revoke")
            .header("content-type", ctype)
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let r = gw.client.send(req).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {}", r.text());
        assert_eq!(r.json()["error"], "invalid_request");
        let d = r.json()["error_description"].as_str().unwrap().to_owned();
        assert!(d.starts_with(want), "{body}: {d}");
    }
    // A body over public.token_body_limit: 413, as at the token endpoint.
    let big = format!("token={}", "a".repeat(20_000));
    assert_eq!(
        revoke(&gw, &big).await.status,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    let get = gw.client.get_with("/token/revoke", None).await;
    assert_eq!(get.status, StatusCode::METHOD_NOT_ALLOWED);

    // Garbage cannot be anyone's token: not counted.
    for i in 0..5 {
        let r = revoke(&gw, &format!("token=nonsense{i}")).await;
        assert_eq!(r.status, StatusCode::OK);
    }
    // Well-formed unknown refresh tokens count as failed authentications,
    // as at the token endpoint: the fourth is 429.
    for _ in 0..3 {
        let guess = tokengate::new_refresh_token().unwrap();
        let r = revoke(&gw, &format!("token={guess}")).await;
        assert_eq!(r.status, StatusCode::OK);
    }
    let r = revoke(&gw, "token=nonsense").await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.text());
    assert!(r.header("retry-after").is_some());
}

#[tokio::test]
async fn token_info_says_what_the_token_is_and_may_do() {
    let up = upstream().await;
    let gw = TestGateway::start(up.addr).await;
    let r = gw
        .client
        .admin_json(
            "POST",
            "/api/refresh-tokens",
            &json!({
                "name": "reporting",
                "scopes": [{"methods": ["GET"], "path": "/reports/**"}],
                "rate_limit": {"per_second": 5, "burst": 10},
            }),
        )
        .await;
    assert!(r.status.is_success(), "{}", r.text());
    let (id, refresh) = (
        r.json()["id"].as_u64().unwrap(),
        r.json()["token"].as_str().unwrap().to_owned(),
    );
    let access = gw.exchange(&refresh).await;
    // The scopes do not cover /token/info: asking about itself is allowed.
    let r = gw.client.api_get("/token/info", &access).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.header("cache-control").as_deref(), Some("no-store"));
    let info = r.json();
    assert_eq!(info["refresh_token_id"], id);
    assert_eq!(info["name"], "reporting");
    let left = info["expires_in"].as_u64().unwrap();
    assert!(left > 800 && left <= 900, "{info}");
    assert!(info["expires_at"].as_u64().unwrap() > 1_700_000_000);
    assert!(info["refresh_token_expires_at"].as_u64().is_some());
    assert_eq!(
        info["restrictions"]["scopes"],
        json!([{"methods": ["GET"], "path": "/reports/**"}])
    );
    assert_eq!(info["rate_limit"]["per_second"], 5);
    assert_eq!(info["rate_limit"]["burst"], 10);
    assert!(info["rate_limit"]["remaining"].as_u64().unwrap() <= 10);
    assert_eq!(up.hits(), 0, "never forwarded");

    // A full-access token: no restrictions, no rate.
    let (_, plain) = gw.create_token("plain").await;
    let a = gw.exchange(&plain).await;
    let info = gw.client.api_get("/token/info", &a).await.json();
    assert_eq!(info["restrictions"], Value::Null);
    assert_eq!(info["rate_limit"], Value::Null);

    // Without a token, or with a bad one: the bearer check's refusals.
    let r = gw.client.get_with("/token/info", None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        r.header("www-authenticate").as_deref(),
        Some(r#"Bearer realm="tokengate""#)
    );
    let r = gw.client.api_get("/token/info", "tga_nope").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r
        .header("www-authenticate")
        .unwrap()
        .contains(r#"error="invalid_token""#));
}

#[tokio::test]
async fn every_bearer_refusal_carries_its_rfc_6750_challenge() {
    let up = upstream().await;
    let gw = TestGateway::start(up.addr).await;
    // No token sent: the realm alone.
    for auth in [None, Some("Basic YWRtaW46eA=="), Some("Bearer ")] {
        let r = gw.client.get_with("/api/x", auth).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{auth:?}");
        assert_eq!(
            r.header("www-authenticate").as_deref(),
            Some(r#"Bearer realm="tokengate""#),
            "{auth:?}"
        );
        assert_eq!(r.json()["error"], "invalid_token", "the body is unchanged");
    }
    // A token sent and refused: invalid_token with the body's description.
    let r = gw.client.api_get("/api/x", "tga_nope").await;
    let www = r.header("www-authenticate").unwrap();
    let said = r.json()["error_description"].as_str().unwrap().to_owned();
    assert_eq!(
        www,
        format!(r#"Bearer realm="tokengate", error="invalid_token", error_description="{said}""#)
    );
    // Expired (a valid token past its life).
    let (_, refresh) = gw.create_token("t").await;
    let access = gw.exchange(&refresh).await;
    gw.clock.advance(Duration::from_secs(901));
    let r = gw.client.api_get("/api/x", &access).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r
        .header("www-authenticate")
        .unwrap()
        .contains(r#"error_description="the access token expired""#));
    // Outside the scopes: 403 insufficient_scope naming the scope needed.
    let r = gw
        .client
        .admin_json(
            "POST",
            "/api/refresh-tokens",
            &json!({"name": "ro", "scopes": [{"methods": ["GET"], "path": "/reports/**"}]}),
        )
        .await;
    let scoped = gw.exchange(r.json()["token"].as_str().unwrap()).await;
    let r = gw.client.api_get("/admin/x", &scoped).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let www = r.header("www-authenticate").unwrap();
    assert!(
        www.starts_with(
            r#"Bearer realm="tokengate", error="insufficient_scope", error_description=""#
        ) && www.ends_with(r#", scope="GET:/admin/x""#),
        "{www}"
    );
    assert_eq!(r.json()["error"], "insufficient_scope");
}

/// authlib discovers the endpoints from the metadata and revokes through
/// the revocation endpoint it names, as an OAuth client library does.
#[tokio::test]
async fn authlib_discovers_the_endpoints_and_revokes_through_them() {
    let up = upstream().await;
    let gw = TestGateway::start(up.addr).await;
    let (_, refresh) = gw.create_token("authlib").await;
    let access = gw.exchange(&refresh).await;
    let script = r#"
import json, sys
from authlib.integrations.requests_client import OAuth2Session
from authlib.oauth2.rfc8414 import AuthorizationServerMetadata
base, ca, refresh, access = sys.argv[1:5]
s = OAuth2Session(token_endpoint_auth_method="none", revocation_endpoint_auth_method="none")
s.verify = ca
meta = AuthorizationServerMetadata(s.get(base + "/.well-known/oauth-authorization-server", withhold_token=True).json())
meta.validate_issuer()
meta.validate_token_endpoint()
meta.validate_revocation_endpoint()
meta.validate_grant_types_supported()
# The refresh grant through the token endpoint it names.
tok = s.refresh_token(meta["token_endpoint"], refresh_token=refresh)
print(json.dumps({"phase": "refreshed", "type": tok["token_type"]}), flush=True)
r = s.revoke_token(meta["revocation_endpoint"], token=access, token_type_hint="access_token")
print(json.dumps({"phase": "access", "status": r.status_code}), flush=True)
r = s.revoke_token(meta["revocation_endpoint"], token=refresh, token_type_hint="refresh_token")
print(json.dumps({"phase": "refresh", "status": r.status_code}), flush=True)
"#;
    let out = tokio::process::Command::new(common::python3())
        // requests lets these override a session's own `verify`.
        .env("REQUESTS_CA_BUNDLE", gw.file.tls.cert.as_ref().unwrap())
        .env_remove("CURL_CA_BUNDLE")
        .args(["-c", script, &gw.client.public])
        .arg(gw.file.tls.cert.as_ref().unwrap())
        .args([&refresh, &access])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["type"], "bearer");
    assert_eq!(lines[1]["status"], 200);
    assert_eq!(lines[2]["status"], 200);
    // Both took effect.
    assert_eq!(
        gw.client.api_get("/x", &access).await.status,
        StatusCode::UNAUTHORIZED
    );
    let ex = gw
        .client
        .token_form(&format!("grant_type=refresh_token&refresh_token={refresh}"))
        .await;
    assert_eq!(ex.json()["error"], "invalid_grant");
    assert_eq!(events(&gw, "refresh_token.revoked_by_holder").len(), 1);
}

/// Cluster mode: a revocation made on one replica is enforced by the other
/// within the revocation bound (1 s), for a refresh token (deleted, its
/// access tokens ended) and for one access token, including one the other
/// replica has never seen (it would otherwise verify it from its claims).
#[tokio::test]
async fn revocations_reach_every_replica_within_the_bound() {
    use crate::common::pg::TestDb;
    use crate::common::replica::{Cluster, Replica};
    use crate::common::{eventually_ok, within_bound};

    const BOUND: Duration = Duration::from_secs(1);
    async fn revoke_on(r: &Replica, token: &str) {
        let req = r
            .client()
            .public_req("POST", "/token/revoke")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from(format!("token={token}"))))
            .unwrap();
        let resp = r.client().send(req).await;
        assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    }
    async fn refused(r: &Replica, access: &str) -> Result<(), String> {
        let c = r.call(access).await;
        match c.status {
            StatusCode::UNAUTHORIZED => Ok(()),
            s => Err(format!("{} answered {s}", r.name)),
        }
    }

    let db = TestDb::new();
    let up = upstream().await;
    let cluster = Cluster::new(&db.url, up.addr);
    let (a, b) = (cluster.start("alpha").await, cluster.start("beta").await);
    let (_, refresh) = a.create_token("replicated").await;
    // Settled: beta knows alpha's boot and the token.
    let settle = a.exchange(&refresh).await;
    eventually_ok(
        Duration::from_secs(30),
        "beta accepts alpha's tokens",
        || async {
            match b.call(&settle).await.status {
                StatusCode::OK => Ok(()),
                s => Err(s.to_string()),
            }
        },
    )
    .await;

    // One access token, seen by beta before; another beta never saw.
    let seen = a.exchange(&refresh).await;
    let unseen = a.exchange(&refresh).await;
    assert_eq!(b.call(&seen).await.status, StatusCode::OK);
    revoke_on(&a, &seen).await;
    revoke_on(&a, &unseen).await;
    let acked = tokio::time::Instant::now();
    within_bound(
        acked,
        BOUND,
        "beta refuses a revoked access token it had cached",
        || refused(&b, &seen),
    )
    .await;
    within_bound(
        acked,
        BOUND,
        "beta refuses a revoked access token it never saw",
        || refused(&b, &unseen),
    )
    .await;
    assert_eq!(
        a.call(&settle).await.status,
        StatusCode::OK,
        "others live on"
    );
    assert_eq!(
        b.call(&settle).await.status,
        StatusCode::OK,
        "others live on"
    );

    // The refresh token, revoked on beta: alpha's access token and the
    // exchange end on alpha too.
    revoke_on(&b, &refresh).await;
    let acked = tokio::time::Instant::now();
    within_bound(
        acked,
        BOUND,
        "alpha refuses the access tokens of a revoked refresh token",
        || refused(&a, &settle),
    )
    .await;
    within_bound(
        acked,
        BOUND,
        "alpha refuses the revoked refresh token",
        || async {
            match a.try_exchange(&refresh).await.status {
                StatusCode::BAD_REQUEST => Ok(()),
                s => Err(s.to_string()),
            }
        },
    )
    .await;
}

/// `POST /token/introspect` with `authorization` (a whole header value)
/// and a form body.
async fn introspect_as(
    c: &common::TestClient,
    authorization: Option<&str>,
    body: &str,
) -> common::Resp {
    let mut b = c
        .public_req("POST", "/token/introspect")
        .header("content-type", "application/x-www-form-urlencoded");
    if let Some(a) = authorization {
        b = b.header("authorization", a);
    }
    c.send(b.body(Full::new(Bytes::from(body.to_owned()))).unwrap())
        .await
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {b64}")
}

fn admin_basic() -> String {
    basic("admin", common::ADMIN_PASSWORD)
}

/// Introspects `token` as the admin account; the answer must be a 200.
async fn introspect(gw: &TestGateway, token: &str) -> Value {
    let r = introspect_as(&gw.client, Some(&admin_basic()), &format!("token={token}")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.header("cache-control").as_deref(), Some("no-store"));
    r.json()
}

/// Creates a token through the admin API with `body`'s fields: (id, token).
async fn create(gw: &TestGateway, body: Value) -> (u64, String) {
    let r = gw
        .client
        .admin_json("POST", "/api/refresh-tokens", &body)
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    (
        r.json()["id"].as_u64().unwrap(),
        r.json()["token"].as_str().unwrap().to_owned(),
    )
}

fn www_all(r: &common::Resp) -> Vec<String> {
    r.headers
        .get_all("www-authenticate")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn introspection_answers_every_field_of_access_and_refresh_tokens() {
    let up = upstream().await;
    let gw = TestGateway::start(up.addr).await;
    let (id, refresh) = create(
        &gw,
        json!({
            "name": "reporting",
            "expires": "30d",
            "scopes": [{"methods": ["GET", "HEAD"], "path": "/reports/**"}, {"methods": ["*"], "path": "/status"}],
            "networks": ["127.0.0.0/8", "::1/128"],
            "rate_limit": {"per_second": 1, "burst": 2},
        }),
    )
    .await;
    let access = gw.exchange(&refresh).await;
    let before = gw.clock.unix();
    let a = introspect(&gw, &access).await;
    assert_eq!(a["active"], true, "{a}");
    assert_eq!(a["token_type"], "access_token");
    assert_eq!(a["client_id"], id.to_string());
    assert_eq!(a["sub"], "reporting");
    let exp = a["exp"].as_u64().unwrap();
    assert!(exp > before + 800 && exp <= before + 900, "{a}");
    assert_eq!(a["iat"].as_u64().unwrap(), exp - 900);
    assert_eq!(a["scope"], "GET:/reports/** HEAD:/reports/** *:/status");
    assert_eq!(a["read_only"], false);
    assert_eq!(a["networks"], json!(["127.0.0.0/8", "::1/128"]));
    assert_eq!(a["rate_limit"], json!({"per_second": 1, "burst": 2}));
    // Never a hash or a token string in the answer.
    assert!(!a.to_string().contains("tga_") && !a.to_string().contains("tgr_"));

    let r = introspect(&gw, &refresh).await;
    assert_eq!(r["active"], true, "{r}");
    assert_eq!(r["token_type"], "refresh_token");
    assert_eq!(r["client_id"], id.to_string());
    assert_eq!(r["sub"], "reporting");
    let list = gw
        .client
        .admin_call("GET", "/api/refresh-tokens")
        .await
        .json();
    let row = &list[0];
    let created = tokengate::clock::parse_rfc3339(row["created_at"].as_str().unwrap()).unwrap();
    let expires = tokengate::clock::parse_rfc3339(row["expires_at"].as_str().unwrap()).unwrap();
    assert_eq!(r["iat"].as_i64().unwrap(), created);
    assert_eq!(r["exp"].as_i64().unwrap(), expires);
    assert_eq!(r["scope"], a["scope"]);
    assert_eq!(r["networks"], a["networks"]);
    assert_eq!(r["rate_limit"], a["rate_limit"]);

    // Introspecting is not a use: the rate (burst 2) is all there after
    // many introspections, and the refresh token's use count is the one exchange.
    for _ in 0..5 {
        introspect(&gw, &access).await;
        introspect(&gw, &refresh).await;
    }
    for _ in 0..2 {
        assert_eq!(
            gw.client.api_get("/reports/1", &access).await.status,
            StatusCode::OK
        );
    }
    let list = gw
        .client
        .admin_call("GET", "/api/refresh-tokens")
        .await
        .json();
    assert_eq!(list[0]["use_count"], 1, "{list}");

    // A full-access token: no scope, networks or rate; read_only false; a
    // read-only one: its rule as scope. A token that never expires: no exp.
    let (_, plain) = create(&gw, json!({"name": "plain", "expires": "never"})).await;
    let p = introspect(&gw, &plain).await;
    assert_eq!(p["active"], true);
    assert_eq!(p["read_only"], false);
    for absent in ["scope", "networks", "rate_limit", "exp"] {
        assert!(p.get(absent).is_none(), "{absent}: {p}");
    }
    let pa = introspect(&gw, &gw.exchange(&plain).await).await;
    assert!(pa.get("scope").is_none() && pa["exp"].is_u64(), "{pa}");
    let (_, ro) = create(&gw, json!({"name": "ro", "read_only": true})).await;
    let ro = introspect(&gw, &gw.exchange(&ro).await).await;
    assert_eq!(ro["read_only"], true);
    assert_eq!(ro["scope"], "GET:/** HEAD:/**");
    assert_eq!(up.hits(), 2, "introspection is never forwarded");
}

#[tokio::test]
async fn anything_not_live_introspects_as_active_false_alone() {
    let up = upstream().await;
    let gw = TestGateway::start(up.addr).await;
    let inactive = json!({"active": false});
    for token in [
        "nonsense".to_owned(),
        "tga_nope".to_owned(),
        tokengate::new_refresh_token().unwrap(),
        format!("tga_{}", "A".repeat(80)),
    ] {
        assert_eq!(introspect(&gw, &token).await, inactive, "{token}");
    }
    // Revoked: deleted by an administrator, and revoked by its holder.
    let (id, deleted) = gw.create_token("deleted").await;
    let deleted_access = gw.exchange(&deleted).await;
    let r = gw
        .client
        .admin_call("DELETE", &format!("/api/refresh-tokens/{id}"))
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(introspect(&gw, &deleted).await, inactive);
    assert_eq!(introspect(&gw, &deleted_access).await, inactive);
    let (_, held) = gw.create_token("held").await;
    let held_access = gw.exchange(&held).await;
    assert_eq!(introspect(&gw, &held_access).await["active"], true);
    assert_eq!(
        revoke(&gw, &format!("token={held_access}")).await.status,
        StatusCode::OK
    );
    assert_eq!(introspect(&gw, &held_access).await, inactive);
    assert_eq!(introspect(&gw, &held).await["active"], true);
    // Rotated out at once: the old secret and its access token.
    let (rid, rotated) = gw.create_token("rotated").await;
    let rotated_access = gw.exchange(&rotated).await;
    let r = gw
        .client
        .admin_json(
            "POST",
            &format!("/api/refresh-tokens/{rid}/rotate"),
            &json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(introspect(&gw, &rotated).await, inactive);
    assert_eq!(introspect(&gw, &rotated_access).await, inactive);
    let new = r.json()["token"].as_str().unwrap().to_owned();
    assert_eq!(introspect(&gw, &new).await["active"], true);
    // Expired: the access token after its lifetime, the refresh token after its own.
    let (_, short) = create(&gw, json!({"name": "short", "expires": "1h"})).await;
    let short_access = gw.exchange(&short).await;
    gw.clock.advance(Duration::from_secs(901));
    assert_eq!(introspect(&gw, &short_access).await, inactive);
    assert_eq!(introspect(&gw, &short).await["active"], true);
    gw.clock.advance(Duration::from_secs(3600));
    assert_eq!(introspect(&gw, &short).await, inactive);

    // Malformed requests: 400 invalid_request; other methods 405.
    let r = introspect_as(
        &gw.client,
        Some(&admin_basic()),
        "token_type_hint=access_token",
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    assert_eq!(r.json()["error"], "invalid_request");
    assert_eq!(r.header("cache-control").as_deref(), Some("no-store"));
    let r = gw
        .client
        .get_with("/token/introspect", Some(&admin_basic()))
        .await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn who_may_introspect_accounts_of_every_role_and_granted_tokens() {
    let up = upstream().await;
    let gw = TestGateway::start(up.addr).await;
    let (_, subject) = gw.create_token("subject").await;
    let body = format!("token={subject}");
    const PW: &str = "a long enough password";
    for (name, role) in [
        ("ada", "admin"),
        ("max", "manager"),
        ("cy", "creator"),
        ("vi", "viewer"),
    ] {
        let r = gw
            .client
            .admin_json(
                "POST",
                "/api/users",
                &json!({"name": name, "role": role, "password": PW}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
        let r = introspect_as(&gw.client, Some(&basic(name, PW)), &body).await;
        assert_eq!(r.status, StatusCode::OK, "{role}: {}", r.text());
        assert_eq!(r.json()["active"], true, "{role}");
    }

    // Nothing sent: 401 with both challenges.
    let r = introspect_as(&gw.client, None, &body).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.header("cache-control").as_deref(), Some("no-store"));
    assert_eq!(
        www_all(&r),
        vec![
            r#"Bearer realm="tokengate""#.to_owned(),
            r#"Basic realm="tokengate", charset="UTF-8""#.to_owned()
        ]
    );
    assert_eq!(r.json()["error"], "invalid_client");
    // A wrong password: 401, audited as a failed login, never the password.
    let r = introspect_as(&gw.client, Some(&basic("vi", "wrong password here")), &body).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(www_all(&r).len(), 2);
    let failed = events(&gw, "admin.login_failed");
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0]["reason"], "introspection");
    assert_eq!(failed[0]["user"], "vi");
    assert!(!failed[0].to_string().contains("wrong password"));
    // A disabled account: refused like a wrong password.
    let r = gw
        .client
        .admin_json("PATCH", "/api/users/cy", &json!({"disabled": true}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let r = introspect_as(&gw.client, Some(&basic("cy", PW)), &body).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text());

    // A bearer token without the grant: 403 insufficient_scope.
    let (_, plain) = gw.create_token("plain").await;
    let plain_access = gw.exchange(&plain).await;
    let bearer = |t: &str| format!("Bearer {t}");
    let r = introspect_as(&gw.client, Some(&bearer(&plain_access)), &body).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text());
    assert_eq!(r.json()["error"], "insufficient_scope");
    assert!(r
        .header("www-authenticate")
        .unwrap()
        .contains(r#"error="insufficient_scope""#));
    // With the grant (and scopes that do not name this endpoint): 200.
    let (_, granted) = create(
        &gw,
        json!({"name": "resource server", "introspect": true,
               "scopes": [{"methods": ["GET"], "path": "/reports/**"}]}),
    )
    .await;
    let granted_access = gw.exchange(&granted).await;
    let r = introspect_as(&gw.client, Some(&bearer(&granted_access)), &body).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["sub"], "subject");
    // A bad bearer token: 401 invalid_token, with the Basic challenge too.
    let r = introspect_as(&gw.client, Some(&bearer("tga_nope")), &body).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let www = www_all(&r);
    assert!(www[0].contains(r#"error="invalid_token""#), "{www:?}");
    assert!(www[1].starts_with("Basic "), "{www:?}");
    // Taking the grant back ends it at once for the live access token.
    let list = gw
        .client
        .admin_call("GET", "/api/refresh-tokens")
        .await
        .json();
    let gid = list
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "resource server")
        .unwrap()["id"]
        .as_u64()
        .unwrap();
    let r = gw
        .client
        .admin_json(
            "PATCH",
            &format!("/api/refresh-tokens/{gid}"),
            &json!({"introspect": false}),
        )
        .await;
    assert_eq!(r.json()["introspect"], false, "{}", r.text());
    let r = introspect_as(&gw.client, Some(&bearer(&granted_access)), &body).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn the_introspect_grant_round_trips_through_the_api_and_the_cli() {
    let up = upstream().await;
    let gw = TestGateway::start(up.addr).await;
    let r = gw
        .client
        .admin_json(
            "POST",
            "/api/refresh-tokens",
            &json!({"name": "rs", "introspect": true}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    assert_eq!(r.json()["introspect"], true);
    let id = r.json()["id"].as_u64().unwrap();
    let row = |list: &Value, id: u64| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|t| t["id"] == id)
            .cloned()
            .unwrap()
    };
    let list = gw
        .client
        .admin_call("GET", "/api/refresh-tokens")
        .await
        .json();
    assert_eq!(row(&list, id)["introspect"], true);
    // An edit of something else keeps it; an edit of it changes it.
    let path = format!("/api/refresh-tokens/{id}");
    let r = gw
        .client
        .admin_json("PATCH", &path, &json!({"read_only": true}))
        .await;
    assert_eq!(r.json()["introspect"], true, "{}", r.text());
    let r = gw
        .client
        .admin_json(
            "PATCH",
            &path,
            &json!({"introspect": false, "read_only": false}),
        )
        .await;
    assert_eq!(r.json()["introspect"], false, "{}", r.text());
    let r = gw
        .client
        .admin_json("PATCH", &path, &json!({"introspect": "yes"}))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.json()["error_description"]
        .as_str()
        .unwrap()
        .contains("introspect"));

    // The CLI: create --introspect, list, edit --no-introspect.
    async fn cli(gw: &TestGateway, args: &[&str]) -> String {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_tokengate"))
            .arg("token")
            .args(args)
            .arg("--ca-file")
            .arg(gw.file.tls.cert.clone().unwrap())
            .env_clear()
            .env("TOKENGATE_ADMIN_URL", &gw.client.admin)
            .env("TOKENGATE_ADMIN_PASSWORD", common::ADMIN_PASSWORD)
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
    let token = cli(&gw, &["create", "--name", "cli rs", "--introspect"]).await;
    assert!(token.trim().starts_with("tgr_"), "{token}");
    let list: Value = serde_json::from_str(&cli(&gw, &["list", "--json"]).await).unwrap();
    let made = list
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "cli rs")
        .cloned()
        .unwrap();
    assert_eq!(made["introspect"], true);
    assert!(cli(&gw, &["list"]).await.contains("may introspect"));
    let cid = made["id"].as_u64().unwrap().to_string();
    let edited = cli(&gw, &["edit", &cid, "--no-introspect"]).await;
    assert!(!edited.contains("may introspect"), "{edited}");
    let list: Value = serde_json::from_str(&cli(&gw, &["list", "--json"]).await).unwrap();
    assert_eq!(
        row(&list, made["id"].as_u64().unwrap())["introspect"],
        false
    );
    cli(&gw, &["edit", &cid, "--introspect"]).await;
    let list: Value = serde_json::from_str(&cli(&gw, &["list", "--json"]).await).unwrap();
    assert_eq!(row(&list, made["id"].as_u64().unwrap())["introspect"], true);
    // It survives a restart (the redb record).
    let gw = gw.restart().await;
    let list = gw
        .client
        .admin_call("GET", "/api/refresh-tokens")
        .await
        .json();
    assert_eq!(row(&list, made["id"].as_u64().unwrap())["introspect"], true);
}

/// authlib's `introspect_token`, with an admin account's HTTP Basic
/// credentials (client_secret_basic) and with a granted bearer token.
#[tokio::test]
async fn authlib_introspects_with_basic_credentials_and_with_a_granted_token() {
    let up = upstream().await;
    let gw = TestGateway::start(up.addr).await;
    let (id, refresh) = gw.create_token("authlib subject").await;
    let access = gw.exchange(&refresh).await;
    let (_, granted) = create(&gw, json!({"name": "rs", "introspect": true})).await;
    let granted_access = gw.exchange(&granted).await;
    let script = r#"
import json, sys
from authlib.integrations.requests_client import OAuth2Session
base, ca, password, access, refresh, granted = sys.argv[1:7]
s = OAuth2Session(client_id="admin", client_secret=password, token_endpoint_auth_method="client_secret_basic")
s.verify = ca
meta = s.get(base + "/.well-known/oauth-authorization-server", withhold_token=True).json()
url = meta["introspection_endpoint"]
for tok, hint in [(access, "access_token"), (refresh, "refresh_token"), ("tga_gone", None)]:
    r = s.introspect_token(url, token=tok, token_type_hint=hint)
    print(json.dumps({"status": r.status_code, "body": r.json()}), flush=True)
b = OAuth2Session(token={"access_token": granted, "token_type": "Bearer"})
b.verify = ca
r = b.introspect_token(url, token=access, auth=b.token_auth)
print(json.dumps({"status": r.status_code, "body": r.json()}), flush=True)
"#;
    let out = tokio::process::Command::new(common::python3())
        .env("REQUESTS_CA_BUNDLE", gw.file.tls.cert.as_ref().unwrap())
        .env_remove("CURL_CA_BUNDLE")
        .args(["-c", script, &gw.client.public])
        .arg(gw.file.tls.cert.as_ref().unwrap())
        .args([common::ADMIN_PASSWORD, &access, &refresh, &granted_access])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4, "{stdout}");
    assert_eq!(lines[0]["status"], 200);
    assert_eq!(lines[0]["body"]["token_type"], "access_token");
    assert_eq!(lines[0]["body"]["client_id"], id.to_string());
    assert_eq!(lines[1]["body"]["token_type"], "refresh_token");
    assert_eq!(lines[2]["body"], json!({"active": false}));
    assert_eq!(lines[3]["status"], 200, "{stdout}");
    assert_eq!(lines[3]["body"]["sub"], "authlib subject");
}

/// Cluster mode: a token revoked on one replica introspects inactive on
/// the other within the revocation bound.
#[tokio::test]
async fn a_token_revoked_on_one_replica_introspects_inactive_on_the_other() {
    use crate::common::pg::TestDb;
    use crate::common::replica::{Cluster, Replica};
    use crate::common::{eventually_ok, within_bound};

    const BOUND: Duration = Duration::from_secs(1);
    async fn active(r: &Replica, token: &str) -> Result<bool, String> {
        let resp = introspect_as(r.client(), Some(&admin_basic()), &format!("token={token}")).await;
        match resp.status {
            StatusCode::OK => Ok(resp.json()["active"] == true),
            s => Err(format!("{} answered {s}: {}", r.name, resp.text())),
        }
    }
    async fn inactive(r: &Replica, token: &str) -> Result<(), String> {
        match active(r, token).await? {
            false => Ok(()),
            true => Err(format!("{} still calls it active", r.name)),
        }
    }

    let db = TestDb::new();
    let up = upstream().await;
    let cluster = Cluster::new(&db.url, up.addr);
    let (a, b) = (cluster.start("alpha").await, cluster.start("beta").await);
    let (id, refresh) = a.create_token("replicated").await;
    let access = a.exchange(&refresh).await;
    let other = a.exchange(&refresh).await;
    // Beta knows the token and alpha's boot.
    eventually_ok(
        Duration::from_secs(30),
        "beta sees both as active",
        || async {
            match (active(&b, &refresh).await?, active(&b, &access).await?) {
                (true, true) => Ok(()),
                x => Err(format!("{x:?}")),
            }
        },
    )
    .await;
    // One access token revoked by its holder on alpha.
    let req = a
        .client()
        .public_req("POST", "/token/revoke")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from(format!("token={access}"))))
        .unwrap();
    assert_eq!(a.client().send(req).await.status, StatusCode::OK);
    let acked = tokio::time::Instant::now();
    within_bound(
        acked,
        BOUND,
        "beta: the revoked access token is inactive",
        || inactive(&b, &access),
    )
    .await;
    assert_eq!(active(&b, &other).await, Ok(true));
    // The refresh token deleted on alpha: it and its access tokens, on beta.
    assert_eq!(a.delete(id).await.status, StatusCode::NO_CONTENT);
    let acked = tokio::time::Instant::now();
    within_bound(
        acked,
        BOUND,
        "beta: the deleted refresh token is inactive",
        || inactive(&b, &refresh),
    )
    .await;
    within_bound(acked, BOUND, "beta: its access token is inactive", || {
        inactive(&b, &other)
    })
    .await;
}
