//! Admin accounts and roles through a real gateway, on redb and on
//! PostgreSQL alike: every admin endpoint tried by every role (a table),
//! with the `forbidden` body and "nothing changed" checked after each
//! refusal; a creator's own tokens; the last-admin and bootstrap rules; name
//! validation; the generated password; sessions that follow the account
//! (disabled → gone at once, a role change at the next request); the audit
//! lines' `user`, `via` and the socket's `uid`; and a two-replica cluster
//! sharing accounts and page sessions.

use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};

use crate::common::pg::TestDb;
use crate::common::replica::{Cluster, Replica};
use crate::common::{
    eventually, upstream, Resp, TestClient, TestGateway, Upstream, ADMIN_PASSWORD,
};

/// How long a change on one replica may take to show on another (the
/// feed's bound is a second; this only reports a hang).
const SPREAD: Duration = Duration::from_secs(20);

#[derive(Clone, Copy, Debug)]
enum Kind {
    Redb,
    Postgres,
}

/// A gateway on the backend, with the database (if any) outliving it.
struct Setup {
    gw: TestGateway,
    _up: Upstream,
    _db: Option<TestDb>,
}

async fn gateway(kind: Kind) -> Setup {
    let up = upstream().await;
    let db = match kind {
        Kind::Redb => None,
        Kind::Postgres => Some(TestDb::new()),
    };
    let url = db.as_ref().map(|d| d.url.clone());
    let gw = TestGateway::start_with(up.addr, move |f| {
        if let Some(url) = url {
            f.storage.backend = "postgres".into();
            f.storage.postgres.url = url;
            f.storage.postgres.sslmode = "disable".into();
        }
    })
    .await;
    Setup {
        gw,
        _up: up,
        _db: db,
    }
}

fn basic(user: &str, password: &str) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {b64}")
}

/// An admin API call as `user` (HTTP Basic), with a JSON body if given.
async fn call_as(
    client: &TestClient,
    user: &str,
    password: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Resp {
    let b = Request::builder()
        .method(method)
        .uri(format!("{}{}", client.admin, path))
        .header("authorization", basic(user, password));
    let req = match body {
        Some(v) => b
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(v.to_string()))),
        None => b.body(Full::default()),
    }
    .unwrap();
    client.send(req).await
}

async fn as_admin(client: &TestClient, method: &str, path: &str, body: Option<&Value>) -> Resp {
    call_as(client, "admin", ADMIN_PASSWORD, method, path, body).await
}

/// Creates an account (as `admin`) with `password`.
async fn add_user(client: &TestClient, name: &str, role: &str, password: &str) {
    let r = as_admin(
        client,
        "POST",
        "/api/users",
        Some(&json!({"name": name, "role": role, "password": password})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
}

const PW: &str = "a long enough password";

/// The roles' accounts every matrix test uses.
const PEOPLE: [(&str, &str); 4] = [
    ("ada", "admin"),
    ("max", "manager"),
    ("cy", "creator"),
    ("vi", "viewer"),
];

async fn add_people(client: &TestClient) {
    for (name, role) in PEOPLE {
        add_user(client, name, role, PW).await;
    }
}

/// What a refusal must leave as it was: the tokens and the accounts.
async fn snapshot(client: &TestClient) -> (Vec<Value>, Vec<Value>) {
    let tokens = as_admin(client, "GET", "/api/refresh-tokens", None)
        .await
        .json();
    let tokens = tokens
        .as_array()
        .unwrap()
        .iter()
        .map(|t| json!([t["id"], t["name"], t["expires_at"], t["created_by"]]))
        .collect();
    let users = as_admin(client, "GET", "/api/users", None).await.json();
    let users = users
        .as_array()
        .unwrap()
        .iter()
        .map(|u| json!([u["name"], u["role"], u["disabled"]]))
        .collect();
    (tokens, users)
}

/// Creates a token as `admin`; (id, secret).
async fn admin_token(client: &TestClient, name: &str) -> (u64, String) {
    let r = as_admin(
        client,
        "POST",
        "/api/refresh-tokens",
        Some(&json!({"name": name})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let v = r.json();
    (
        v["id"].as_u64().unwrap(),
        v["token"].as_str().unwrap().to_owned(),
    )
}

async fn exchanges(client: &TestClient, refresh: &str) -> bool {
    client
        .token_form(&format!("grant_type=refresh_token&refresh_token={refresh}"))
        .await
        .status
        == StatusCode::OK
}

/// One row of the matrix: the request, and for each role (in `PEOPLE`'s
/// order) the status it gets; a 403 names `required`.
struct Row {
    method: &'static str,
    /// `{victim}` is a token `admin` made just before; `{me}` the caller.
    path: &'static str,
    body: Option<Value>,
    statuses: [u16; 4],
    required: &'static str,
}

fn matrix() -> Vec<Row> {
    let row = |method, path, body: Option<Value>, statuses, required| Row {
        method,
        path,
        body,
        statuses,
        required,
    };
    vec![
        row("GET", "/api/session", None, [200, 200, 200, 200], ""),
        row("GET", "/api/stats", None, [200, 200, 403, 200], "viewer"),
        row("GET", "/metrics", None, [200, 200, 403, 200], "viewer"),
        row("GET", "/api/refresh-tokens", None, [200, 200, 200, 200], ""),
        row(
            "POST",
            "/api/refresh-tokens",
            Some(json!({"name": "made by {me}"})),
            [201, 201, 201, 403],
            "creator",
        ),
        row(
            "PATCH",
            "/api/refresh-tokens/{victim}",
            Some(json!({"name": "renamed"})),
            [200, 200, 403, 403],
            "manager|creator",
        ),
        row(
            "POST",
            "/api/refresh-tokens/{victim}/rotate",
            Some(json!({})),
            [200, 200, 403, 403],
            "manager|creator",
        ),
        row(
            "DELETE",
            "/api/refresh-tokens/{victim}",
            None,
            [204, 204, 403, 403],
            "manager|creator",
        ),
        row(
            "POST",
            "/api/refresh-tokens/delete",
            Some(json!({"ids": ["{victim}"]})),
            [200, 200, 403, 403],
            "manager|creator",
        ),
        row(
            "POST",
            "/api/reload",
            Some(json!({})),
            [200, 403, 403, 403],
            "admin",
        ),
        row(
            "POST",
            "/api/cluster/rotate",
            Some(json!({})),
            [200, 403, 403, 403],
            "admin",
        ),
        row("GET", "/api/users", None, [200, 403, 403, 403], "admin"),
        row(
            "POST",
            "/api/users",
            Some(json!({"name": "new-{me}", "role": "viewer"})),
            [201, 403, 403, 403],
            "admin",
        ),
        row(
            "PATCH",
            "/api/users/spare-{me}",
            Some(json!({"role": "creator"})),
            [200, 403, 403, 403],
            "admin",
        ),
        row(
            "DELETE",
            "/api/users/spare-{me}",
            None,
            [204, 403, 403, 403],
            "admin",
        ),
        row(
            "POST",
            "/api/logout",
            Some(json!({})),
            [204, 204, 204, 204],
            "",
        ),
    ]
}

/// The role a refusal of `who` (index in `PEOPLE`) must name.
fn required_for(row: &Row, who: usize) -> &'static str {
    match row.required.split_once('|') {
        // Changing another's token: a creator lacks "manager", a viewer "creator".
        Some((creator, viewer)) => {
            if PEOPLE[who].1 == "creator" {
                creator
            } else {
                viewer
            }
        }
        None => row.required,
    }
}

async fn every_endpoint_for_every_role(kind: Kind) {
    let s = gateway(kind).await;
    let client = &s.gw.client;
    add_people(client).await;
    for row in matrix() {
        for (i, (me, _)) in PEOPLE.iter().enumerate() {
            let (victim, secret) = admin_token(client, &format!("victim of {me}")).await;
            if row.path.contains("spare") {
                add_user(client, &format!("spare-{me}"), "viewer", PW).await;
            }
            let fill = |t: &str| {
                t.replace("{victim}", &victim.to_string())
                    .replace("{me}", me)
            };
            let path = fill(row.path);
            let body = row.body.as_ref().map(|b| {
                let text = fill(&b.to_string());
                let mut v: Value = serde_json::from_str(&text).unwrap();
                // Ids are numbers on the wire.
                if let Some(ids) = v.get_mut("ids") {
                    *ids = json!([victim]);
                }
                v
            });
            let before = snapshot(client).await;
            let r = call_as(client, me, PW, row.method, &path, body.as_ref()).await;
            let want = StatusCode::from_u16(row.statuses[i]).unwrap();
            assert_eq!(
                r.status,
                want,
                "{kind:?}: {} {path} as {me}: {}",
                row.method,
                r.text()
            );
            if want == StatusCode::FORBIDDEN {
                let v = r.json();
                assert_eq!(v["error"], "forbidden", "{}", r.text());
                let needed = required_for(&row, i);
                assert_eq!(
                    v["required_role"],
                    needed,
                    "{} {path} as {me}: {}",
                    row.method,
                    r.text()
                );
                let text = v["error_description"].as_str().unwrap();
                assert!(
                    text.contains(&format!("needs the role {needed}")) && text.contains(me),
                    "{text}"
                );
                assert_eq!(
                    snapshot(client).await,
                    before,
                    "{} {path} as {me} was refused but changed something",
                    row.method
                );
                assert!(
                    exchanges(client, &secret).await,
                    "the victim token still works after a refused {} {path}",
                    row.method
                );
            }
            // Leave no account behind for the next row.
            for extra in ["spare", "new"] {
                let path = format!("/api/users/{extra}-{me}");
                let _ = as_admin(client, "DELETE", &path, None).await;
            }
        }
    }
    // Unauthenticated is still 401, whatever the route.
    let r = client.admin_get_anonymous("/api/users").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

async fn creators_see_and_change_only_their_own(kind: Kind) {
    let s = gateway(kind).await;
    let client = &s.gw.client;
    add_people(client).await;
    let (theirs, _) = admin_token(client, "the admin's").await;
    let r = call_as(
        client,
        "cy",
        PW,
        "POST",
        "/api/refresh-tokens",
        Some(&json!({"name": "mine"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    assert_eq!(r.json()["created_by"], "cy");
    let mine = r.json()["id"].as_u64().unwrap();
    // The list: a creator sees its own; a viewer and the admin see both,
    // with who created each.
    let listed = |r: Resp| -> Vec<(u64, Value)> {
        r.json()
            .as_array()
            .unwrap()
            .iter()
            .map(|t| (t["id"].as_u64().unwrap(), t["created_by"].clone()))
            .collect()
    };
    let own = listed(call_as(client, "cy", PW, "GET", "/api/refresh-tokens", None).await);
    assert_eq!(own, vec![(mine, json!("cy"))]);
    let all = listed(call_as(client, "vi", PW, "GET", "/api/refresh-tokens", None).await);
    assert_eq!(all, vec![(theirs, json!("admin")), (mine, json!("cy"))]);
    // Its own: edit and rotate.
    let path = format!("/api/refresh-tokens/{mine}");
    let r = call_as(
        client,
        "cy",
        PW,
        "PATCH",
        &path,
        Some(&json!({"name": "mine, renamed"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let r = call_as(
        client,
        "cy",
        PW,
        "POST",
        &format!("{path}/rotate"),
        Some(&json!({})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    // A delete of many naming another's token is refused whole.
    let r = call_as(
        client,
        "cy",
        PW,
        "POST",
        "/api/refresh-tokens/delete",
        Some(&json!({"ids": [mine, theirs]})),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text());
    assert_eq!(r.json()["required_role"], "manager");
    let left = listed(as_admin(client, "GET", "/api/refresh-tokens", None).await);
    assert_eq!(left.len(), 2, "nothing was deleted");
    let r = call_as(client, "cy", PW, "DELETE", &path, None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text());
    // A manager changes anyone's.
    let r = call_as(
        client,
        "max",
        PW,
        "PATCH",
        &format!("/api/refresh-tokens/{theirs}"),
        Some(&json!({"name": "managed"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
}

async fn last_admin_bootstrap_and_names(kind: Kind) {
    let s = gateway(kind).await;
    let client = &s.gw.client;
    for (body, what) in [
        (json!({"role": "viewer"}), "demoting"),
        (json!({"disabled": true}), "disabling"),
    ] {
        let r = as_admin(client, "PATCH", "/api/users/admin", Some(&body)).await;
        assert_eq!(r.status, StatusCode::CONFLICT, "{what}: {}", r.text());
        assert_eq!(r.json()["error"], "conflict");
    }
    let r = as_admin(client, "DELETE", "/api/users/admin", None).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text());
    assert!(r.text().contains("configuration"), "{}", r.text());
    let r = as_admin(
        client,
        "PATCH",
        "/api/users/admin",
        Some(&json!({"password": "a brand new password"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text());
    assert!(r.text().contains("configuration"), "{}", r.text());
    // With a second admin, the bootstrap account may be disabled: its
    // password stops working, and the other admin is then the last.
    add_user(client, "ada", "admin", PW).await;
    let r = as_admin(
        client,
        "PATCH",
        "/api/users/admin",
        Some(&json!({"disabled": true})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["disabled"], true);
    let r = as_admin(client, "GET", "/api/session", None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(
        r.text().contains("wrong user name or password"),
        "{}",
        r.text()
    );
    for (method, body) in [
        ("DELETE", None),
        ("PATCH", Some(json!({"role": "manager"}))),
        ("PATCH", Some(json!({"disabled": true}))),
    ] {
        let r = call_as(client, "ada", PW, method, "/api/users/ada", body.as_ref()).await;
        assert_eq!(r.status, StatusCode::CONFLICT, "{method}: {}", r.text());
    }
    let r = call_as(
        client,
        "ada",
        PW,
        "PATCH",
        "/api/users/admin",
        Some(&json!({"disabled": false})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(
        as_admin(client, "GET", "/api/session", None).await.status,
        StatusCode::OK
    );
    // Names, roles and passwords: each error names its field.
    for (body, field) in [
        (json!({"name": "", "role": "viewer"}), "name"),
        (json!({"name": "with space", "role": "viewer"}), "name"),
        (json!({"name": "x".repeat(65), "role": "viewer"}), "name"),
        (json!({"name": "émile", "role": "viewer"}), "name"),
        (json!({"name": "ok", "role": "root"}), "role"),
        (
            json!({"name": "ok", "role": "viewer", "password": "short"}),
            "password",
        ),
    ] {
        let r = as_admin(client, "POST", "/api/users", Some(&body)).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {}", r.text());
        let v = r.json();
        assert_eq!(v["error"], "invalid_request");
        assert!(
            v["error_description"].as_str().unwrap().contains(field),
            "{body}: {v}"
        );
    }
    let r = as_admin(
        client,
        "POST",
        "/api/users",
        Some(&json!({"name": "eve.o-k_1@example.com", "role": "viewer"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let r = as_admin(
        client,
        "POST",
        "/api/users",
        Some(&json!({"name": "admin", "role": "viewer"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text());
    let r = as_admin(
        client,
        "PATCH",
        "/api/users/nobody",
        Some(&json!({"role": "viewer"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text());
    assert_eq!(r.json()["error"], "not_found");
    let r = as_admin(client, "DELETE", "/api/users/eve.o-k_1%40example.com", None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text());
}

async fn the_generated_password_is_shown_once_and_works(kind: Kind) {
    let s = gateway(kind).await;
    let client = &s.gw.client;
    let r = as_admin(
        client,
        "POST",
        "/api/users",
        Some(&json!({"name": "gen", "role": "manager"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    assert_eq!(r.header("location").as_deref(), Some("/api/users/gen"));
    let v = r.json();
    let password = v["password"]
        .as_str()
        .expect("a generated password")
        .to_owned();
    assert!(password.len() >= 12);
    assert_eq!(
        (&v["role"], &v["source"], &v["disabled"]),
        (&json!("manager"), &json!("local"), &json!(false))
    );
    let r = call_as(client, "gen", &password, "GET", "/api/session", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["role"], "manager");
    assert_eq!(r.json()["via"], "password");
    // Never shown again.
    let listed = as_admin(client, "GET", "/api/users", None).await;
    assert!(!listed.text().contains(&password));
    let gen = listed
        .json()
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == "gen")
        .cloned()
        .unwrap();
    assert!(gen.get("password").is_none(), "{gen}");
    assert!(gen["last_login_at"].is_string(), "{gen}");
    // A given password is not echoed.
    let r = as_admin(
        client,
        "POST",
        "/api/users",
        Some(&json!({"name": "given", "role": "viewer", "password": PW})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert!(r.json()["password"].is_null());
    // A new password replaces the old at once.
    let r = as_admin(
        client,
        "PATCH",
        "/api/users/gen",
        Some(&json!({"password": "another long password"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let old = call_as(client, "gen", &password, "GET", "/api/session", None).await;
    assert_eq!(old.status, StatusCode::UNAUTHORIZED);
    let new = call_as(
        client,
        "gen",
        "another long password",
        "GET",
        "/api/session",
        None,
    )
    .await;
    assert_eq!(new.status, StatusCode::OK);
}

/// A page login: (cookie header value, CSRF token).
async fn page_login(client: &TestClient, user: &str, password: &str) -> (String, String) {
    let req = Request::post(format!("{}/api/login", client.admin))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(
            json!({"username": user, "password": password}).to_string(),
        )))
        .unwrap();
    let r = client.send(req).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let set = r.header("set-cookie").expect("a session cookie");
    let cookie = set.split(';').next().unwrap().to_owned();
    let csrf = r.json()["csrf"].as_str().unwrap().to_owned();
    (cookie, csrf)
}

async fn with_session(
    client: &TestClient,
    session: &(String, String),
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Resp {
    let b = Request::builder()
        .method(method)
        .uri(format!("{}{}", client.admin, path))
        .header("cookie", &session.0)
        .header("x-csrf-token", &session.1)
        .header("x-requested-with", "tokengate");
    let req = match body {
        Some(v) => b
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(v.to_string()))),
        None => b.body(Full::default()),
    }
    .unwrap();
    client.send(req).await
}

async fn sessions_follow_the_account(kind: Kind) {
    let s = gateway(kind).await;
    let client = &s.gw.client;
    add_user(client, "bob", "manager", PW).await;
    let session = page_login(client, "bob", PW).await;
    let r = with_session(client, &session, "GET", "/api/session", None).await;
    assert_eq!(r.json()["role"], "manager");
    assert_eq!(r.json()["user"], "bob");
    // A role change applies at the next request.
    let r = as_admin(
        client,
        "PATCH",
        "/api/users/bob",
        Some(&json!({"role": "viewer"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = with_session(client, &session, "GET", "/api/session", None).await;
    assert_eq!(r.json()["role"], "viewer");
    let r = with_session(
        client,
        &session,
        "POST",
        "/api/refresh-tokens",
        Some(&json!({"name": "no"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text());
    assert_eq!(r.json()["required_role"], "creator");
    // Disabled: the session is over at once, and so are its logins.
    let r = as_admin(
        client,
        "PATCH",
        "/api/users/bob",
        Some(&json!({"disabled": true})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = with_session(client, &session, "GET", "/api/session", None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text());
    let r = call_as(client, "bob", PW, "GET", "/api/session", None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.text().contains("wrong user name or password"));
    // Enabled again, the old session stays ended; a new login works.
    as_admin(
        client,
        "PATCH",
        "/api/users/bob",
        Some(&json!({"disabled": false})),
    )
    .await;
    let r = with_session(client, &session, "GET", "/api/session", None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let again = page_login(client, "bob", PW).await;
    // Deleted: gone at once too.
    let r = as_admin(client, "DELETE", "/api/users/bob", None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = with_session(client, &again, "GET", "/api/session", None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = call_as(client, "bob", PW, "GET", "/api/session", None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // An unknown name and a wrong password answer alike.
    let unknown = call_as(client, "nobody", PW, "GET", "/api/session", None).await;
    assert_eq!(unknown.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        unknown.json()["error_description"],
        "wrong user name or password"
    );
}

/// Sends one request over the admin Unix socket (plain HTTP/1.1).
async fn over_socket(socket: &std::path::Path, method: &str, path: &str, body: &Value) -> Value {
    let stream = tokio::net::UnixStream::connect(socket).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let r = send.send_request(req).await.unwrap();
    let bytes = r.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes).unwrap()
}

async fn audit_lines_name_the_person(kind: Kind) {
    let s = gateway(kind).await;
    let client = &s.gw.client;
    add_user(client, "bob", "creator", PW).await;
    let r = call_as(
        client,
        "bob",
        PW,
        "POST",
        "/api/refresh-tokens",
        Some(&json!({"name": "bob's"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let failed = call_as(
        client,
        "bob",
        "not the password",
        "GET",
        "/api/session",
        None,
    )
    .await;
    assert_eq!(failed.status, StatusCode::UNAUTHORIZED);
    let session = page_login(client, "bob", PW).await;
    with_session(client, &session, "POST", "/api/logout", Some(&json!({}))).await;
    // The socket acts as admin, and records the peer's Unix user id.
    let socket = s.gw.data_dir().join("admin.sock");
    let made = over_socket(
        &socket,
        "POST",
        "/api/refresh-tokens",
        &json!({"name": "from the host"}),
    )
    .await;
    assert_eq!(made["created_by"], "admin", "{made}");
    let uid = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&socket).unwrap().uid()
    };
    let lines = s.gw.audit_lines();
    let find = |event: &str, pred: &dyn Fn(&Value) -> bool| -> Value {
        lines
            .iter()
            .find(|l| l["event"] == event && pred(l))
            .cloned()
            .unwrap_or_else(|| panic!("no {event} line in {lines:#?}"))
    };
    let created = find("admin.user_created", &|l| l["target_user"] == "bob");
    assert_eq!(
        (&created["user"], &created["via"]),
        (&json!("admin"), &json!("password"))
    );
    let bobs = find("refresh_token.created", &|l| l["token_name"] == "bob's");
    assert_eq!(
        (&bobs["user"], &bobs["via"]),
        (&json!("bob"), &json!("password"))
    );
    assert!(bobs.get("uid").is_none());
    let f = find("admin.login_failed", &|l| l["user"] == "bob");
    assert_eq!(f["via"], "password");
    let login = find("admin.login", &|l| l["user"] == "bob");
    assert_eq!(login["via"], "password");
    let logout = find("admin.logout", &|l| l["user"] == "bob");
    assert_eq!(logout["via"], "password");
    let host = find("refresh_token.created", &|l| {
        l["token_name"] == "from the host"
    });
    assert_eq!(
        (&host["user"], &host["via"], &host["uid"]),
        (&json!("admin"), &json!("socket"), &json!(uid))
    );
}

/// An account change the API acknowledged holds from that answer on: a
/// change-feed read from before it (PostgreSQL) never puts the old account
/// back, so a disabled account is never enabled again, not even for a
/// moment. Changes follow each other as fast as the API answers, so a
/// feed round woken by one change often reads before the next commits.
async fn an_acknowledged_account_change_holds_from_its_answer_on(kind: Kind) {
    let s = gateway(kind).await;
    let client = &s.gw.client;
    add_user(client, "ops", "viewer", PW).await;
    let disabled = |users: &Value| {
        users
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["name"] == "ops")
            .map(|u| u["disabled"].clone())
    };
    let mut wrong = Vec::new();
    for round in 0..40 {
        for want in [true, false] {
            let body = json!({ "disabled": want });
            let r = as_admin(client, "PATCH", "/api/users/ops", Some(&body)).await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.text());
            let users = as_admin(client, "GET", "/api/users", None).await.json();
            if disabled(&users) != Some(json!(want)) {
                wrong.push(format!("round {round}, disabled {want}: {users}"));
            }
        }
    }
    // And after the feed's later rounds (they poll at least every 250 ms).
    tokio::time::sleep(Duration::from_millis(600)).await;
    let users = as_admin(client, "GET", "/api/users", None).await.json();
    if disabled(&users) != Some(json!(false)) {
        wrong.push(format!("at the end: {users}"));
    }
    assert!(wrong.is_empty(), "changes undone: {wrong:?}");
}

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod redb {
            $( #[tokio::test] async fn $name() { super::$name(super::Kind::Redb).await } )*
        }
        mod postgres {
            $( #[tokio::test] async fn $name() { super::$name(super::Kind::Postgres).await } )*
        }
    };
}

on_both_backends!(
    every_endpoint_for_every_role,
    creators_see_and_change_only_their_own,
    last_admin_bootstrap_and_names,
    the_generated_password_is_shown_once_and_works,
    sessions_follow_the_account,
    audit_lines_name_the_person,
    an_acknowledged_account_change_holds_from_its_answer_on,
);

/// Guesses at one account from many addresses are slowed down for that
/// account (a 401 saying so), while the addresses themselves and other
/// accounts are unaffected. The account `admin` here has a plain configured
/// password (no argon2 per guess). Eight guesses, the last three each after
/// its wait, make the account's wait 8 s, still running when the right
/// password comes however loaded the machine.
#[tokio::test]
async fn failed_logins_are_throttled_per_account_too() {
    let s = gateway(Kind::Redb).await;
    add_user(&s.gw.client, "eve", "viewer", PW).await;
    // Five wrong guesses, each from an address of its own.
    for i in 0..5 {
        let c = s.gw.client_from(&format!("127.0.1.{}", i + 1));
        let r = call_as(&c, "admin", "wrong guess", "GET", "/api/session", None).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text());
        assert!(r.text().contains("wrong user name or password"));
    }
    for (i, wait) in [1, 2, 4].into_iter().enumerate() {
        s.gw.clock.advance(Duration::from_secs(wait));
        let c = s.gw.client_from(&format!("127.0.1.{}", i + 6));
        let r = call_as(&c, "admin", "wrong guess", "GET", "/api/session", None).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text());
        assert!(r.text().contains("wrong user name or password"));
    }
    // A ninth address, with the right password: the account must wait.
    let fresh = s.gw.client_from("127.0.1.9");
    let r = call_as(&fresh, "admin", ADMIN_PASSWORD, "GET", "/api/session", None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text());
    assert!(
        r.text().contains("too many failed logins for this account"),
        "{}",
        r.text()
    );
    // Another account from the same address is not held back.
    let r = call_as(&fresh, "eve", PW, "GET", "/api/session", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    // Once the wait has passed, the right password works again.
    s.gw.clock.advance(Duration::from_secs(9));
    let r = call_as(&fresh, "admin", ADMIN_PASSWORD, "GET", "/api/session", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
}

async fn status_of(r: &Replica, session: &(String, String)) -> StatusCode {
    with_session(r.client(), session, "GET", "/api/session", None)
        .await
        .status
}

#[tokio::test]
async fn accounts_and_sessions_are_shared_by_the_replicas() {
    let db = TestDb::new();
    let up = upstream().await;
    let cluster = Cluster::new(&db.url, up.addr);
    let a = cluster.start("a").await;
    let b = cluster.start("b").await;
    // Made on A, it signs in on B.
    add_user(a.client(), "bob", "manager", PW).await;
    eventually(SPREAD, "the account reaches replica b", || async {
        let r = call_as(b.client(), "bob", PW, "GET", "/api/session", None).await;
        (r.status == StatusCode::OK).then_some(())
    })
    .await;
    // A session started on A works on B (read from the database there).
    let session = page_login(a.client(), "bob", PW).await;
    let r = with_session(b.client(), &session, "GET", "/api/session", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["user"], "bob");
    let r = with_session(
        b.client(),
        &session,
        "POST",
        "/api/refresh-tokens",
        Some(&json!({"name": "via b"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    assert_eq!(r.json()["created_by"], "bob");
    // A role change on B applies on A.
    as_admin(
        b.client(),
        "PATCH",
        "/api/users/bob",
        Some(&json!({"role": "viewer"})),
    )
    .await;
    eventually(SPREAD, "the new role reaches replica a", || async {
        let r = with_session(a.client(), &session, "GET", "/api/session", None).await;
        (r.json()["role"] == "viewer").then_some(())
    })
    .await;
    // Disabled on B: the session ends on A (and on B at once).
    let r = as_admin(
        b.client(),
        "PATCH",
        "/api/users/bob",
        Some(&json!({"disabled": true})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(status_of(&b, &session).await, StatusCode::UNAUTHORIZED);
    eventually(SPREAD, "the session ends on replica a", || async {
        (status_of(&a, &session).await == StatusCode::UNAUTHORIZED).then_some(())
    })
    .await;
    // A logout on one replica ends the session on the other, which had it cached.
    as_admin(
        a.client(),
        "PATCH",
        "/api/users/bob",
        Some(&json!({"disabled": false})),
    )
    .await;
    let carol = {
        add_user(a.client(), "carol", "viewer", PW).await;
        eventually(SPREAD, "carol reaches replica b", || async {
            let r = call_as(b.client(), "carol", PW, "GET", "/api/session", None).await;
            (r.status == StatusCode::OK).then_some(())
        })
        .await;
        page_login(b.client(), "carol", PW).await
    };
    assert_eq!(status_of(&a, &carol).await, StatusCode::OK);
    let r = with_session(b.client(), &carol, "POST", "/api/logout", Some(&json!({}))).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    eventually(SPREAD, "the logout reaches replica a", || async {
        (status_of(&a, &carol).await == StatusCode::UNAUTHORIZED).then_some(())
    })
    .await;
    // The audit line on B names who disabled bob.
    let line = b
        .audit_line("admin.user_edited", |l| l["target_user"] == "bob")
        .await;
    assert_eq!(
        (&line["user"], &line["via"]),
        (&json!("admin"), &json!("password"))
    );
}
