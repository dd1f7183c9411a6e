//! Cluster mode: several `tokengate` replicas — the built binary,
//! one process each, on loopback — sharing one real PostgreSQL, some of them
//! behind a real HAProxy. Each test checks one promise of the "Behaviour"
//! list: tokens made on one replica work on the others; a delete on one is
//! enforced by all within 1 s; a clean restart retires only that replica's
//! access tokens, a crash retires them within `cluster.node_timeout`;
//! PostgreSQL down → 503 after `cluster.max_staleness`, then recovery with no
//! restart and no acknowledged write lost; a dropped LISTEN connection loses
//! nothing; three replicas start at once on an empty database; a replica
//! with another secret is refused; `cluster rotate`; audit lines name the
//! replica; lists and use counts agree across replicas.
//!
//! The only times asserted are the product's own stated bounds (1 s for
//! revocation, the node timeout, the staleness bound), each counted from the
//! event it is promised from (see `common::within_bound`); everything else
//! waits with `eventually`.
//!
//! Needs Debian's `postgresql` and `haproxy` (tests/run.sh installs them);
//! the shared server can be `TOKENGATE_TEST_POSTGRES_URL`, but the outage
//! test always starts a server of its own, since it stops it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common;
use crate::common::haproxy::haproxy;
use crate::common::pg::{PgServer, TestDb};
use crate::common::replica::{Cluster, Replica, BIN, START_TIMEOUT};
use crate::common::{eventually, eventually_ok, within_bound, Resp, TestClient, ADMIN_PASSWORD};
use http::StatusCode;
use serde_json::Value;
use tokio::time::Instant;

/// A deleted refresh token (and a rotation) is enforced by every replica
/// within this: what docs/cluster.md promises.
const REVOCATION_BOUND: Duration = Duration::from_secs(1);
/// `cluster.node_timeout` for the crash test (the default is 10 s).
const NODE_TIMEOUT: Duration = Duration::from_secs(2);
/// `cluster.max_staleness` for the outage test (the default is 5 s).
const MAX_STALENESS: Duration = Duration::from_secs(1);
/// What heartbeat and check periods and our own polling may add to the
/// node timeout and the staleness bound.
const SLACK: Duration = Duration::from_millis(1500);
/// For waits that are no promise of the product (recovery, flushes): only
/// a generous report-a-hang limit.
const PATIENCE: Duration = Duration::from_secs(30);

/// Two replicas, "alpha" and "beta", on `db_url`.
async fn two(cluster: &Cluster) -> (Replica, Replica) {
    (cluster.start("alpha").await, cluster.start("beta").await)
}

/// Waits until each replica in `rs` accepts the others' access tokens.
///
/// A replica hears of a peer's boot (a process start, or a new boot after a
/// rotation) from the replica registry, so the moment right after a boot is
/// a case of its own, checked by
/// `a_new_boots_access_tokens_are_accepted_by_its_peers_at_once`; the tests
/// that check something else start from a settled cluster.
async fn settled(rs: &[&Replica]) {
    let (_, refresh) = rs[0].create_token("settling").await;
    for issuer in rs {
        let access = issuer.exchange(&refresh).await;
        for r in rs {
            let access = &access;
            eventually_ok(
                PATIENCE,
                &format!("{} accepting {}'s access tokens", r.name, issuer.name),
                || async move {
                    let c = r.call(access).await;
                    if c.status == StatusCode::OK {
                        Ok(())
                    } else {
                        Err(format!("{} {}", c.status, c.text()))
                    }
                },
            )
            .await;
        }
    }
}

fn error_code(r: &Resp) -> String {
    serde_json::from_slice::<Value>(&r.body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// Which replica proxied a call: the test upstream echoes the request's
/// headers, and each replica adds `X-Served-By: <name>` (see the harness).
fn served_by(r: &Resp) -> String {
    r.json()["headers"]["x-served-by"][0]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Panics unless `access` is accepted on `replica` (a proxied call, 200).
async fn assert_accepted(replica: &Replica, access: &str, what: &str) {
    let r = replica.call(access).await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{what}: on {}: {}",
        replica.name,
        r.text()
    );
    assert_eq!(served_by(&r), replica.name, "{what}");
}

/// `Ok` once `replica` refuses `access` as a bad token (401
/// `invalid_token`); anything but 200 or that 401 is a failure at once.
async fn refused(replica: &Replica, access: &str) -> Result<(), String> {
    let r = replica.call(access).await;
    match r.status {
        StatusCode::UNAUTHORIZED if error_code(&r) == "invalid_token" => Ok(()),
        StatusCode::OK => Err(format!("{} still accepts it", replica.name)),
        _ => panic!(
            "{} answered neither 200 nor 401 invalid_token: {} {}",
            replica.name,
            r.status,
            r.text()
        ),
    }
}

/// `Ok` once `replica` refuses to exchange `refresh` (400 `invalid_grant`).
async fn exchange_refused(replica: &Replica, refresh: &str) -> Result<(), String> {
    let r = replica.try_exchange(refresh).await;
    match r.status {
        StatusCode::BAD_REQUEST if error_code(&r) == "invalid_grant" => Ok(()),
        StatusCode::OK => Err(format!("{} still exchanges it", replica.name)),
        _ => panic!(
            "{} answered neither 200 nor 400 invalid_grant: {} {}",
            replica.name,
            r.status,
            r.text()
        ),
    }
}

/// Items 1 and 2: a refresh token created on one replica is exchanged on
/// the other at once (a miss there falls back to the database), and an
/// access token from either replica is accepted by both.
#[tokio::test]
async fn tokens_made_on_one_replica_work_on_the_other_at_once() {
    let db = TestDb::new();
    let up = common::upstream().await;
    let cluster = Cluster::new(&db.url, up.addr);
    let (a, b) = two(&cluster).await;
    settled(&[&a, &b]).await;

    let (_, refresh) = a.create_token("made on alpha").await;
    // No wait: beta has never heard of it, and must look it up.
    let from_b = b.exchange(&refresh).await;
    assert_accepted(&a, &from_b, "beta's access token on alpha").await;
    assert_accepted(&b, &from_b, "beta's access token on beta").await;
    let from_a = a.exchange(&refresh).await;
    assert_accepted(&b, &from_a, "alpha's access token on beta").await;

    let (_, refresh) = b.create_token("made on beta").await;
    let from_a = a.exchange(&refresh).await;
    assert_accepted(&b, &from_a, "alpha's access token on beta").await;

    // A token neither replica made is still refused by both.
    let forged = format!("tga_{}", "A".repeat(from_a.len() - 4));
    for r in [&a, &b] {
        refused(r, &forged).await.unwrap();
    }
}

/// Items 1 and 2 as deployed: scripts behind HAProxy (round robin over two
/// replicas, a new connection per request, so consecutive requests land on
/// different replicas) exchange and call; every call is accepted, and the
/// exchanges and calls were spread over both replicas, with access tokens
/// used on a replica other than the one that issued them.
#[tokio::test]
async fn behind_haproxy_scripts_spread_over_the_replicas() {
    let db = TestDb::new();
    let up = common::upstream().await;
    let cluster = Cluster::new(&db.url, up.addr);
    let (a, b) = two(&cluster).await;
    settled(&[&a, &b]).await;
    let lb = haproxy(&[a.public_addr(), b.public_addr()], false).await;
    // A fresh client per request: a new TCP connection, which HAProxy hands
    // to the next replica.
    let fresh = || TestClient::new(&cluster.cert, lb.addr, a.admin_addr());

    // Per script: its refresh token's id, and who served its calls.
    let mut scripts: Vec<(u64, Vec<String>)> = Vec::new();
    for i in 0..8 {
        let maker = if i % 2 == 0 { &a } else { &b };
        let (id, refresh) = maker.create_token(&format!("script {i}")).await;
        let t = fresh()
            .token_form(&format!("grant_type=refresh_token&refresh_token={refresh}"))
            .await;
        assert_eq!(t.status, StatusCode::OK, "script {i}: {}", t.text());
        let access = t.json()["access_token"].as_str().unwrap().to_owned();
        let mut calls = Vec::new();
        // Two calls: three requests per script, so with two replicas in turn
        // the scripts' exchanges alternate between them too.
        for _ in 0..2 {
            let r = fresh().api_get("/whoami", &access).await;
            assert_eq!(r.status, StatusCode::OK, "script {i}: {}", r.text());
            calls.push(served_by(&r));
        }
        scripts.push((id, calls));
    }

    // Who did each exchange: the replica whose audit log has it.
    let mut exchanged_on = BTreeMap::new();
    for (id, _) in &scripts {
        let id = *id;
        let who = eventually(PATIENCE, "the exchange's audit line", || {
            let who = [&a, &b].into_iter().find_map(|r| {
                r.audit_lines()
                    .iter()
                    .any(|l| l["event"] == "token.exchanged" && l["token_id"] == id)
                    .then(|| r.name.clone())
            });
            async move { who }
        })
        .await;
        exchanged_on.insert(id, who);
    }
    let exchangers: BTreeSet<&String> = exchanged_on.values().collect();
    let callers: BTreeSet<&String> = scripts.iter().flat_map(|(_, c)| c).collect();
    assert_eq!(exchangers.len(), 2, "exchanges on both: {exchanged_on:?}");
    assert_eq!(callers.len(), 2, "calls on both: {scripts:?}");
    let crossed = scripts
        .iter()
        .filter(|(id, calls)| calls.iter().any(|c| *c != exchanged_on[id]))
        .count();
    assert!(
        crossed > 0,
        "some script called a replica other than the one that issued its token: \
         {scripts:?} {exchanged_on:?}"
    );
}

/// Item 3: a delete on beta (either API form) is enforced on alpha within
/// 1 s of its acknowledgement: alpha refuses the access tokens (401) and
/// the exchanges (400 invalid_grant).
#[tokio::test]
async fn a_delete_on_one_replica_is_enforced_on_the_other_within_one_second() {
    let db = TestDb::new();
    let up = common::upstream().await;
    let cluster = Cluster::new(&db.url, up.addr);
    let (a, b) = two(&cluster).await;

    for how in [
        "DELETE /api/refresh-tokens/{id}",
        "POST /api/refresh-tokens/delete",
    ] {
        let (id, refresh) = a.create_token(how).await;
        let access = a.exchange(&refresh).await;
        // Both replicas have verified (and cached) it.
        assert_accepted(&a, &access, "before the delete").await;
        assert_accepted(&b, &access, "before the delete").await;

        let r = if how.starts_with("DELETE") {
            b.delete(id).await
        } else {
            b.delete_many(&[id]).await
        };
        assert!(
            r.status.is_success(),
            "{how} on beta: {} {}",
            r.status,
            r.text()
        );
        if how.starts_with("POST") {
            assert_eq!(r.json()["deleted"][0]["id"], id, "{}", r.text());
        }
        let acked = Instant::now();
        within_bound(
            acked,
            REVOCATION_BOUND,
            &format!("alpha refuses the access token after {how} on beta"),
            || refused(&a, &access),
        )
        .await;
        within_bound(
            acked,
            REVOCATION_BOUND,
            &format!("alpha refuses the exchange after {how} on beta"),
            || exchange_refused(&a, &refresh),
        )
        .await;
        refused(&b, &access).await.unwrap();
        exchange_refused(&b, &refresh).await.unwrap();
    }
}

/// Item 4: a clean restart (SIGTERM) of alpha retires the access tokens of
/// alpha's old process everywhere at once (within the revocation bound of
/// its exit), and nothing else: beta's stay valid on beta and on the new
/// alpha, and the refresh token keeps working.
#[tokio::test]
async fn a_clean_restart_retires_only_that_replicas_access_tokens() {
    let db = TestDb::new();
    let up = common::upstream().await;
    let cluster = Cluster::new(&db.url, up.addr);
    let (mut a, b) = two(&cluster).await;
    let (_, refresh) = a.create_token("restart").await;
    let from_a = a.exchange(&refresh).await;
    let from_b = b.exchange(&refresh).await;
    for r in [&a, &b] {
        assert_accepted(r, &from_a, "alpha's before the restart").await;
        assert_accepted(r, &from_b, "beta's before the restart").await;
    }

    let status = a.terminate().await;
    assert!(status.success(), "SIGTERM: {status}\n{}", a.log());
    let exited = Instant::now();
    within_bound(
        exited,
        REVOCATION_BOUND,
        "beta refuses alpha's access token after alpha's clean shutdown",
        || refused(&b, &from_a),
    )
    .await;
    assert_accepted(&b, &from_b, "beta's, with alpha down").await;

    a.restart().await;
    refused(&a, &from_a).await.unwrap();
    refused(&b, &from_a).await.unwrap();
    assert_accepted(&a, &from_b, "beta's on the new alpha").await;
    assert_accepted(&b, &from_b, "beta's on beta").await;
    // (The new alpha's own tokens on beta: see
    // a_new_boots_access_tokens_are_accepted_by_its_peers_at_once.)
    let again = a.exchange(&refresh).await;
    assert_accepted(&a, &again, "the new alpha's on the new alpha").await;
}

/// Item 5: alpha killed with SIGKILL (no word to anyone): beta refuses its
/// access tokens once its heartbeat lapses, within `cluster.node_timeout`
/// (2 s here) plus polling slack; beta's own tokens stay valid.
#[tokio::test]
async fn a_killed_replicas_access_tokens_die_within_the_node_timeout() {
    let db = TestDb::new();
    let up = common::upstream().await;
    let cluster = Cluster::new(&db.url, up.addr).with_env(
        "TOKENGATE_CLUSTER__NODE_TIMEOUT",
        &format!("{}s", NODE_TIMEOUT.as_secs()),
    );
    let (mut a, b) = two(&cluster).await;
    let (_, refresh) = a.create_token("crash").await;
    let from_a = a.exchange(&refresh).await;
    let from_b = b.exchange(&refresh).await;
    assert_accepted(&b, &from_a, "alpha's before the crash").await;

    a.kill9().await;
    let killed = Instant::now();
    within_bound(
        killed,
        NODE_TIMEOUT + SLACK,
        "beta refuses the killed alpha's access token",
        || refused(&b, &from_a),
    )
    .await;
    assert_accepted(&b, &from_b, "beta's own, after alpha's death").await;
    let fresh = b.exchange(&refresh).await;
    assert_accepted(&b, &fresh, "a new one from beta").await;
}

/// Creates tokens through `client` one after another until an answer is
/// not 201, putting each acknowledged one (id, refresh token) in `acked` as
/// it comes; returns that last answer.
async fn create_until_refused(
    client: TestClient,
    acked: Arc<Mutex<Vec<(u64, String)>>>,
) -> (u16, String) {
    for i in 0.. {
        let r = client
            .admin_json(
                "POST",
                "/api/refresh-tokens",
                &serde_json::json!({ "name": format!("written during the outage {i}") }),
            )
            .await;
        if r.status != StatusCode::CREATED {
            return (r.status.as_u16(), r.text());
        }
        let v = r.json();
        let token = v["token"].as_str().unwrap().to_owned();
        acked
            .lock()
            .unwrap()
            .push((v["id"].as_u64().unwrap(), token));
    }
    unreachable!()
}

/// `Ok` once `replica` answers a call with `access` with 503
/// `temporarily_unavailable`; while it still says 200 `Err`; anything else
/// (a 401 above all: the token is not known to be bad) fails at once.
async fn stale(replica: &Replica, access: &str) -> Result<(), String> {
    let r = replica.call(access).await;
    match r.status {
        StatusCode::SERVICE_UNAVAILABLE if error_code(&r) == "temporarily_unavailable" => {
            let v = r.json();
            assert!(
                v["error_description"].is_string(),
                "503 with an error_description: {}",
                r.text()
            );
            Ok(())
        }
        StatusCode::OK => Err(format!("{} still accepts it", replica.name)),
        _ => panic!(
            "{} answered neither 200 nor 503 temporarily_unavailable: {} {}",
            replica.name,
            r.status,
            r.text()
        ),
    }
}

/// Item 6: PostgreSQL stopped as in a crash (`pg_ctl stop -m immediate`)
/// while tokens are being created. Both replicas keep accepting verified
/// access tokens for at most `cluster.max_staleness` (1 s here), then answer
/// 503 `temporarily_unavailable` (never 401); exchanges answer 503,
/// `/readyz` 503 `not_ready`, admin writes 503 `storage_unavailable`.
/// PostgreSQL started again on the same port: both replicas become ready
/// with no restart, every token whose creation was acknowledged (201) is
/// there and exchanges, and deletes propagate again within 1 s.
#[tokio::test]
async fn postgres_down_fails_closed_then_recovers_without_losing_acknowledged_writes() {
    let pg = PgServer::new();
    let up = common::upstream().await;
    let cluster = Cluster::new(&pg.url(), up.addr).with_env(
        "TOKENGATE_CLUSTER__MAX_STALENESS",
        &format!("{}s", MAX_STALENESS.as_secs()),
    );
    let (a, b) = two(&cluster).await;
    for r in [&a, &b] {
        let ready = r.readyz().await;
        assert_eq!(ready.status, StatusCode::OK, "{}", ready.text());
        assert_eq!(ready.json()["status"], "ok", "{}", ready.text());
    }
    let (victim_id, victim) = b.create_token("deleted during the outage?").await;
    let (refresh_id, refresh) = a.create_token("verified before the outage").await;
    let access = a.exchange(&refresh).await;
    assert_accepted(&a, &access, "before the outage").await;
    assert_accepted(&b, &access, "before the outage").await;

    // Creations in flight when the database goes.
    let acked = Arc::new(Mutex::new(vec![
        (refresh_id, refresh.clone()),
        (victim_id, victim.clone()),
    ]));
    let writer = tokio::spawn(create_until_refused(a.client().clone(), acked.clone()));
    eventually(PATIENCE, "a few creations acknowledged", || {
        let n = acked.lock().unwrap().len();
        async move { (n >= 5).then_some(()) }
    })
    .await;

    pg.stop_immediate();
    let stopped = Instant::now();
    for r in [&a, &b] {
        within_bound(
            stopped,
            MAX_STALENESS + SLACK,
            &format!("{} answers 503 once stale", r.name),
            || stale(r, &access),
        )
        .await;
    }
    let (status, body) = tokio::time::timeout(PATIENCE, writer)
        .await
        .expect("the writer stops being acknowledged")
        .unwrap();
    assert_eq!(status, 503, "a create during the outage: {body}");
    assert!(body.contains("storage_unavailable"), "{body}");
    let acked: Vec<(u64, String)> = acked.lock().unwrap().clone();

    for r in [&a, &b] {
        let t = r.try_exchange(&refresh).await;
        assert_eq!(
            t.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "exchange on {}: {}",
            r.name,
            t.text()
        );
        assert_eq!(error_code(&t), "temporarily_unavailable", "{}", t.text());
        let ready = r.readyz().await;
        assert_eq!(
            ready.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "/readyz on {}: {}",
            r.name,
            ready.text()
        );
        assert_eq!(ready.json()["status"], "not_ready", "{}", ready.text());
        assert!(ready.json()["reason"].is_string(), "{}", ready.text());
        let c = r.try_create("while the database is down").await;
        assert_eq!(
            c.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "create on {}: {}",
            r.name,
            c.text()
        );
        assert_eq!(error_code(&c), "storage_unavailable", "{}", c.text());
        // Still stale: no way back to 200 without the database.
        stale(r, &access).await.unwrap();
    }
    let d = b.delete(victim_id).await;
    assert_eq!(
        d.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "delete during the outage: {}",
        d.text()
    );
    assert_eq!(error_code(&d), "storage_unavailable", "{}", d.text());

    pg.start();
    for r in [&a, &b] {
        eventually_ok(
            PATIENCE,
            &format!("{} ready again", r.name),
            || async move {
                let ready = r.readyz().await;
                if ready.status == StatusCode::OK && ready.json()["status"] == "ok" {
                    Ok(())
                } else {
                    Err(format!("{} {}", ready.status, ready.text()))
                }
            },
        )
        .await;
    }
    // Every acknowledged creation survived, on either replica, and the
    // delete that was refused did not happen.
    for (i, (_, token)) in acked.iter().enumerate() {
        let (here, there) = if i % 2 == 0 { (&a, &b) } else { (&b, &a) };
        let access = here.exchange(token).await;
        assert_accepted(there, &access, "after the outage").await;
    }
    let ids_a: BTreeSet<u64> = a
        .list()
        .await
        .iter()
        .map(|t| t["id"].as_u64().unwrap())
        .collect();
    let ids_b: BTreeSet<u64> = b
        .list()
        .await
        .iter()
        .map(|t| t["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids_a, ids_b, "both list the same tokens");
    let acked_ids: BTreeSet<u64> = acked.iter().map(|(id, _)| *id).collect();
    assert!(
        acked_ids.is_subset(&ids_a),
        "acknowledged {acked_ids:?}, listed {ids_a:?}"
    );
    // At most one more: the create in flight when the server died may have
    // committed without its answer getting through (503 is then a false
    // negative, which is allowed; a false positive is not).
    assert!(
        ids_a.len() <= acked_ids.len() + 1,
        "acknowledged {acked_ids:?}, listed {ids_a:?}"
    );

    // Changes flow again.
    let (id, refresh) = b.create_token("after the outage").await;
    let access = a.exchange(&refresh).await;
    assert_accepted(&b, &access, "after the outage").await;
    let r = a.delete(id).await;
    assert!(r.status.is_success(), "{}", r.text());
    within_bound(
        Instant::now(),
        REVOCATION_BOUND,
        "beta refuses a token deleted on alpha after the outage",
        || refused(&b, &access),
    )
    .await;
    drop(pg);
}

/// The server processes of the replicas' listening connections
/// (`application_name = 'tokengate-listener'`) on `db`'s database.
fn listener_pids(db: &TestDb) -> BTreeSet<u32> {
    db.query_text(
        "SELECT coalesce(string_agg(pid::text, ','), '') FROM pg_stat_activity \
         WHERE application_name = 'tokengate-listener' AND datname = current_database()",
    )
    .unwrap_or_default()
    .split(',')
    .filter_map(|p| p.parse().ok())
    .collect()
}

/// Waits until at least two listening connections other than `gone` exist.
async fn two_listeners(db: &TestDb, gone: &BTreeSet<u32>, what: &str) -> BTreeSet<u32> {
    eventually_ok(PATIENCE, what, || async {
        let now: BTreeSet<u32> = listener_pids(db).difference(gone).copied().collect();
        if now.len() >= 2 {
            Ok(now)
        } else {
            Err(format!("listening: {now:?}"))
        }
    })
    .await
}

/// Item 7: the listening connections terminated by the server
/// (`pg_terminate_backend`): a delete made right afterwards still reaches
/// every replica within 1 s; the replicas listen again, and a later delete
/// does too.
#[tokio::test]
async fn terminated_listening_connections_lose_no_change() {
    let db = TestDb::new();
    let up = common::upstream().await;
    let cluster = Cluster::new(&db.url, up.addr);
    let (a, b) = two(&cluster).await;
    let first = two_listeners(&db, &BTreeSet::new(), "both replicas listening").await;
    let mut tokens = Vec::new();
    for i in 0..2 {
        let (id, refresh) = a.create_token(&format!("listener {i}")).await;
        let access = a.exchange(&refresh).await;
        assert_accepted(&a, &access, "before").await;
        assert_accepted(&b, &access, "before").await;
        tokens.push((id, access));
    }

    // The statement, kept to this test's database.
    let killed = db
        .query_text(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) AS done \
             FROM pg_stat_activity WHERE application_name = 'tokengate-listener' \
             AND datname = current_database()) t WHERE done",
        )
        .unwrap();
    assert!(killed.parse::<usize>().unwrap() >= 2, "terminated {killed}");

    // At once: whatever the replicas do about their lost connection.
    let (id, access) = &tokens[0];
    let r = b.delete(*id).await;
    assert!(r.status.is_success(), "{}", r.text());
    let acked = Instant::now();
    for r in [&a, &b] {
        within_bound(
            acked,
            REVOCATION_BOUND,
            &format!(
                "{} refuses a token deleted just after the listeners died",
                r.name
            ),
            || refused(r, access),
        )
        .await;
    }

    // Terminated ones can linger in pg_stat_activity for a moment: new pids only.
    two_listeners(&db, &first, "both replicas listening again").await;
    let (id, access) = &tokens[1];
    let r = a.delete(*id).await;
    assert!(r.status.is_success(), "{}", r.text());
    let acked = Instant::now();
    for r in [&a, &b] {
        within_bound(
            acked,
            REVOCATION_BOUND,
            &format!(
                "{} refuses a token deleted after the listeners came back",
                r.name
            ),
            || refused(r, access),
        )
        .await;
    }
}

/// Item 8: three replicas started at the same moment on an empty database
/// (each applies the migrations at start, under an advisory lock) all
/// become ready, and work together.
#[tokio::test]
async fn three_replicas_started_at_once_on_an_empty_database_all_start() {
    let db = TestDb::new();
    let up = common::upstream().await;
    let cluster = Cluster::new(&db.url, up.addr);
    let mut rs = Vec::new();
    for name in ["alpha", "beta", "gamma"] {
        rs.push(cluster.spawn(name, &[]).await);
    }
    let (r0, rest) = rs.split_at_mut(1);
    let (r1, r2) = rest.split_at_mut(1);
    let (x, y, z) = tokio::join!(r0[0].wait_ready(), r1[0].wait_ready(), r2[0].wait_ready());
    for (r, result) in rs.iter().zip([x, y, z]) {
        if let Err(e) = result {
            panic!("{} did not start: {e}", r.name);
        }
    }
    // Working together: each accepts the others' access tokens.
    settled(&[&rs[0], &rs[1], &rs[2]]).await;
    let (_, refresh) = rs[2].create_token("three").await;
    let access = rs[1].exchange(&refresh).await;
    for r in &rs {
        assert_accepted(r, &access, "beta's").await;
    }
}

/// Item 3 of "what must exist" (one secret for the cluster): a replica whose
/// server secret differs from the one the database was set up with exits
/// non-zero, saying it is about the secret; the cluster is undisturbed.
#[tokio::test]
async fn a_replica_with_another_secret_refuses_to_start() {
    let db = TestDb::new();
    let up = common::upstream().await;
    let cluster = Cluster::new(&db.url, up.addr);
    let a = cluster.start("alpha").await;
    let other = cluster.another_secret();
    let mut intruder = cluster
        .spawn(
            "intruder",
            &[(
                "TOKENGATE_STORAGE__SECRET_FILE",
                &other.display().to_string(),
            )],
        )
        .await;
    let (status, log) = intruder.wait_exit(START_TIMEOUT).await;
    assert!(!status.success(), "exit status {status}\n{log}");
    assert!(log.to_lowercase().contains("secret"), "{log}");

    let (_, refresh) = a.create_token("still fine").await;
    let access = a.exchange(&refresh).await;
    assert_accepted(&a, &access, "after the intruder").await;
}

/// `Ok` once all four (replica, token) pairs are refused.
async fn all_refused(rs: [&Replica; 2], tokens: [&str; 2]) -> Result<(), String> {
    for r in rs {
        for t in tokens {
            refused(r, t).await?;
        }
    }
    Ok(())
}

/// Item 9: `tokengate cluster rotate` (against beta), and then the admin
/// API's `POST /api/cluster/rotate` (on alpha), each retire every access
/// token of every replica within 1 s; refresh tokens keep working.
#[tokio::test]
async fn rotate_retires_every_access_token_of_every_replica() {
    let db = TestDb::new();
    let up = common::upstream().await;
    let cluster = Cluster::new(&db.url, up.addr);
    let (a, b) = two(&cluster).await;
    let (_, refresh) = a.create_token("rotate").await;

    for how in ["tokengate cluster rotate", "POST /api/cluster/rotate"] {
        let from_a = a.exchange(&refresh).await;
        let from_b = b.exchange(&refresh).await;
        for r in [&a, &b] {
            assert_accepted(r, &from_a, "before the rotation").await;
            assert_accepted(r, &from_b, "before the rotation").await;
        }
        if how.starts_with("tokengate") {
            let out = tokio::process::Command::new(BIN)
                .args(["cluster", "rotate", "--url", &b.admin_url(), "--ca-file"])
                .arg(&cluster.cert)
                .env_clear()
                .env("TOKENGATE_ADMIN_PASSWORD", ADMIN_PASSWORD)
                .current_dir(std::env::temp_dir())
                .output()
                .await
                .unwrap();
            assert!(
                out.status.success(),
                "{how}: {}\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        } else {
            let r = a
                .client()
                .admin_json("POST", "/api/cluster/rotate", &serde_json::json!({}))
                .await;
            assert!(r.status.is_success(), "{how}: {} {}", r.status, r.text());
        }
        within_bound(
            Instant::now(),
            REVOCATION_BOUND,
            &format!("every access token refused everywhere after {how}"),
            || all_refused([&a, &b], [&from_a, &from_b]),
        )
        .await;
        // New exchanges work. (On a peer at once after the rotation: see
        // a_new_boots_access_tokens_are_accepted_by_its_peers_at_once.)
        let fresh = b.exchange(&refresh).await;
        assert_accepted(&b, &fresh, "a new one after the rotation").await;
        settled(&[&a, &b]).await;
        assert_accepted(&a, &fresh, "a new one after the rotation").await;
    }
}

/// `Ok` if `replica` accepts `access` now, else what it answered.
async fn accepted_now(replica: &Replica, access: &str, what: &str) -> Result<(), String> {
    let r = replica.call(access).await;
    if r.status == StatusCode::OK {
        Ok(())
    } else {
        Err(format!(
            "{what}: {} answered {} {}",
            replica.name,
            r.status,
            r.text()
        ))
    }
}

/// Item 2 where it is hardest: right after a process starts (a first start,
/// a restart) and right after a rotation (every replica draws a new boot),
/// the access tokens it issues are accepted by its peers at once. Behind a
/// load balancer a script exchanges on the new process and calls on an
/// older one; a 401 there tells it that its valid token is bad (the cluster promise:
/// "replicas that reject each other's tokens", "rolling restarts").
#[tokio::test]
async fn a_new_boots_access_tokens_are_accepted_by_its_peers_at_once() {
    let db = TestDb::new();
    let up = common::upstream().await;
    let cluster = Cluster::new(&db.url, up.addr);
    let a = cluster.start("alpha").await;
    let (_, refresh) = a.create_token("new boots").await;
    // Every moment is checked; the failures are reported together.
    let mut failures = Vec::new();

    let mut b = cluster.start("beta").await;
    let from_b = b.exchange(&refresh).await;
    failures.extend(accepted_now(&a, &from_b, "beta's first start").await.err());

    assert!(b.terminate().await.success());
    b.restart().await;
    let from_b = b.exchange(&refresh).await;
    failures.extend(accepted_now(&a, &from_b, "beta's restart").await.err());

    settled(&[&a, &b]).await;
    let old = [a.exchange(&refresh).await, b.exchange(&refresh).await];
    let r = a
        .client()
        .admin_json("POST", "/api/cluster/rotate", &serde_json::json!({}))
        .await;
    assert!(r.status.is_success(), "rotate: {} {}", r.status, r.text());
    within_bound(
        Instant::now(),
        REVOCATION_BOUND,
        "the rotation applied everywhere",
        || all_refused([&a, &b], [&old[0], &old[1]]),
    )
    .await;
    let from_b = b.exchange(&refresh).await;
    let from_a = a.exchange(&refresh).await;
    failures.extend(
        accepted_now(&a, &from_b, "beta's new boot after the rotation")
            .await
            .err(),
    );
    failures.extend(
        accepted_now(&b, &from_a, "alpha's new boot after the rotation")
            .await
            .err(),
    );
    assert!(
        failures.is_empty(),
        "a peer refused a live boot's access token:\n{}",
        failures.join("\n")
    );
}

/// Item 10: every audit line names the replica that wrote it
/// (`"replica": <cluster.name>`).
#[tokio::test]
async fn audit_lines_name_the_replica() {
    let db = TestDb::new();
    let up = common::upstream().await;
    let cluster = Cluster::new(&db.url, up.addr);
    let (a, b) = two(&cluster).await;
    let (id, refresh) = a.create_token("audited").await;
    b.exchange(&refresh).await;
    let created = a
        .audit_line("alpha's create", |l| {
            l["event"] == "refresh_token.created" && l["token_id"] == id
        })
        .await;
    assert_eq!(created["replica"], "alpha", "{created}");
    let exchanged = b
        .audit_line("beta's exchange", |l| {
            l["event"] == "token.exchanged" && l["token_id"] == id
        })
        .await;
    assert_eq!(exchanged["replica"], "beta", "{exchanged}");
    for r in [&a, &b] {
        for line in r.audit_lines() {
            assert_eq!(line["replica"], r.name.as_str(), "{line}");
        }
    }
}

/// Item 11: both replicas list the same tokens, and use counts made on both
/// add up once flushed (`storage.usage_flush_interval`, 1 s here).
#[tokio::test]
async fn lists_and_use_counts_agree_across_replicas() {
    let db = TestDb::new();
    let up = common::upstream().await;
    let cluster =
        Cluster::new(&db.url, up.addr).with_env("TOKENGATE_STORAGE__USAGE_FLUSH_INTERVAL", "1s");
    let (a, b) = two(&cluster).await;
    let (id_a, on_a) = a.create_token("made on alpha").await;
    let (id_b, on_b) = b.create_token("made on beta").await;
    for _ in 0..3 {
        a.exchange(&on_a).await;
    }
    for _ in 0..2 {
        b.exchange(&on_a).await;
    }
    a.exchange(&on_b).await;
    let want: BTreeMap<u64, u64> = [(id_a, 5), (id_b, 1)].into();

    // Each replica's rows: id → (name, use count, last use).
    let rows = |list: Vec<Value>| -> BTreeMap<u64, (String, u64, Value)> {
        list.iter()
            .map(|t| {
                (
                    t["id"].as_u64().unwrap(),
                    (
                        t["name"].as_str().unwrap().to_owned(),
                        t["use_count"].as_u64().unwrap(),
                        t["last_used_at"].clone(),
                    ),
                )
            })
            .collect()
    };
    eventually_ok(PATIENCE, "both lists add up and agree", || async {
        let (on_a, on_b) = (rows(a.list().await), rows(b.list().await));
        let counts: BTreeMap<u64, u64> = on_a.iter().map(|(id, r)| (*id, r.1)).collect();
        // The same rows on both, last use included (the latest time wins).
        if counts == want && on_a == on_b && on_a.values().all(|r| r.2.is_string()) {
            Ok(())
        } else {
            Err(format!("alpha {on_a:?}, beta {on_b:?}"))
        }
    })
    .await;
}

/// Issue 13: a restricted token created on one replica carries its
/// restrictions to the other (through the change feed, or the catch-up a
/// token unknown there triggers), which enforces every one of them.
#[tokio::test]
async fn a_restricted_token_made_on_one_replica_is_enforced_on_the_other() {
    let db = TestDb::new();
    let up = common::upstream().await;
    let cluster = Cluster::new(&db.url, up.addr);
    let (a, b) = two(&cluster).await;
    settled(&[&a, &b]).await;

    let restrictions = serde_json::json!({
        "scopes": [{"methods": ["GET"], "path": "/whoami"}],
        "read_only": false,
        "networks": ["127.0.0.1/32"],
        "rate_limit": {"per_second": 1, "burst": 2}
    });
    let mut body = restrictions.clone();
    body["name"] = serde_json::json!("restricted on alpha");
    let r = a
        .client()
        .admin_json("POST", "/api/refresh-tokens", &body)
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let refresh = r.json()["token"].as_str().unwrap().to_owned();

    // No wait: beta looks the token up, restrictions and all.
    let access = b.exchange(&refresh).await;
    assert_accepted(&b, &access, "in scope, on beta").await;
    let before = up.hits();
    let r = b.client().api_get("/elsewhere", &access).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text());
    assert_eq!(error_code(&r), "insufficient_scope");
    let r = b.client_from("127.0.0.2").api_get("/whoami", &access).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text());
    let r = b
        .client_from("127.0.0.2")
        .token_form(&format!("grant_type=refresh_token&refresh_token={refresh}"))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    // The rate is per replica (each holds its own bucket): beta's burst of
    // two is one used above, one left, then 429. Six calls: the refused
    // requests above take a loaded machine long enough to refill the
    // bucket (refusals cost no rate), and six in a row cannot all find a
    // token at one a second.
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(b.call(&access).await.status);
    }
    assert!(
        statuses.contains(&StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );
    let allowed = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    assert_eq!(up.hits() - before, allowed);
    // And the list on beta shows what alpha stored.
    let on_b = eventually(PATIENCE, "beta lists the token", || {
        let b = &b;
        async move {
            b.list()
                .await
                .into_iter()
                .find(|t| t["name"] == "restricted on alpha")
        }
    })
    .await;
    for k in ["scopes", "read_only", "networks", "rate_limit"] {
        assert_eq!(on_b[k], restrictions[k], "{k} on beta");
    }
}

/// Issue 13 item 4 across replicas: an edit made on one replica holds the
/// token's access tokens on the other to it within the revocation bound,
/// and a rotation with no grace period ends the old secret and its access
/// tokens there just as a delete does, while the new secret works at once.
#[tokio::test]
async fn edits_and_rotations_on_one_replica_reach_the_other() {
    let db = TestDb::new();
    let up = common::upstream().await;
    let cluster = Cluster::new(&db.url, up.addr);
    let (a, b) = two(&cluster).await;
    settled(&[&a, &b]).await;
    let (id, refresh) = a.create_token("edited on alpha").await;
    let on_b = b.exchange(&refresh).await;
    assert_accepted(&b, &on_b, "before the edit").await;

    // A scope that excludes what `call` requests: beta refuses within the bound.
    let r = a
        .client()
        .admin_json(
            "PATCH",
            &format!("/api/refresh-tokens/{id}"),
            &serde_json::json!({"scopes": [{"methods": ["GET"], "path": "/elsewhere/**"}]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let since = Instant::now();
    within_bound(since, REVOCATION_BOUND, "an edit reaching beta", || {
        let (b, on_b) = (&b, &on_b);
        async move {
            let r = b.call(on_b).await;
            match r.status {
                StatusCode::FORBIDDEN if error_code(&r) == "insufficient_scope" => Ok(()),
                s => Err(format!("{s} {}", r.text())),
            }
        }
    })
    .await;
    let listed = eventually(PATIENCE, "beta lists the edit", || {
        let b = &b;
        async move {
            b.list()
                .await
                .into_iter()
                .find(|t| t["id"] == id && t["scopes"].as_array().is_some_and(|s| !s.is_empty()))
        }
    })
    .await;
    assert_eq!(listed["scopes"][0]["path"], "/elsewhere/**");

    // Rotation with no grace period, on alpha: beta ends the old secret and
    // the access tokens issued under it within the bound.
    let r = a
        .client()
        .admin_json(
            "POST",
            &format!("/api/refresh-tokens/{id}/rotate"),
            &serde_json::json!({"grace_seconds": 0}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let since = Instant::now();
    let new_secret = r.json()["token"].as_str().unwrap().to_owned();
    within_bound(
        since,
        REVOCATION_BOUND,
        "the old secret refused on beta",
        || exchange_refused(&b, &refresh),
    )
    .await;
    within_bound(
        since,
        REVOCATION_BOUND,
        "the old secret's access tokens refused on beta",
        || {
            // 403 (the scope) until the rotation lands, then 401.
            let (b, on_b) = (&b, &on_b);
            async move {
                let r = b.call(on_b).await;
                match r.status {
                    StatusCode::UNAUTHORIZED if error_code(&r) == "invalid_token" => Ok(()),
                    s => Err(format!("{s} {}", r.text())),
                }
            }
        },
    )
    .await;
    // The new secret works on beta at once, held to the same scope.
    let fresh = b.exchange(&new_secret).await;
    let r = b.call(&fresh).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text());
    assert_eq!(error_code(&r), "insufficient_scope");
}

/// `POST /api/refresh-tokens/{id}/rotate` on `replica`; the new secret.
async fn rotate_at_once(replica: &Replica, id: u64) -> String {
    let r = replica
        .client()
        .admin_json(
            "POST",
            &format!("/api/refresh-tokens/{id}/rotate"),
            &serde_json::json!({"grace_seconds": 0}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    r.json()["token"].as_str().unwrap().to_owned()
}

/// Each replica that still accepts one of `tokens` (named), or `Ok`.
async fn every_one_refused(rs: [&Replica; 2], tokens: &[(&str, &str)]) -> Result<(), String> {
    let mut accepted = Vec::new();
    for r in rs {
        for (what, t) in tokens {
            if let Err(e) = refused(r, t).await {
                accepted.push(format!("{what}: {e}"));
            }
        }
    }
    if accepted.is_empty() {
        Ok(())
    } else {
        Err(accepted.join("; "))
    }
}

/// A rotation with no grace period ends every access token issued under
/// the old secret on every replica within the revocation bound, whoever
/// minted it and whether or not the replica ever saw it: a peer's token is
/// verified from its claims, and those carry the secret's generation, so
/// an old one cannot pass as the refresh token's current version. Cases:
/// (a) minted on alpha, first used on beta after the rotation; (b) minted
/// on beta and cached on alpha; (c) minted on beta and never used; (d)
/// minted on beta for a token edited (its access token not used since, so
/// it still holds the superseded version) and then rotated. The new secret's
/// access tokens work everywhere at once, even on a replica that has not
/// heard of the rotation yet.
#[tokio::test]
async fn a_rotation_at_once_ends_the_old_access_tokens_on_every_replica() {
    let db = TestDb::new();
    let up = common::upstream().await;
    let cluster = Cluster::new(&db.url, up.addr);
    let (a, b) = two(&cluster).await;
    settled(&[&a, &b]).await;
    let (id, refresh) = a.create_token("rotated at once").await;
    let minted_on_a = a.exchange(&refresh).await;
    let cached_on_a = b.exchange(&refresh).await;
    assert_accepted(&a, &cached_on_a, "(b) before the rotation").await;
    let never_used = b.exchange(&refresh).await;

    // (d): edited on alpha, then rotated; beta's token was minted before the
    // edit and not used after it.
    let (edited_id, edited_refresh) = a.create_token("edited, then rotated").await;
    let edited_on_b = b.exchange(&edited_refresh).await;
    assert_accepted(&b, &edited_on_b, "(d) before the edit").await;
    let r = a
        .client()
        .admin_json(
            "PATCH",
            &format!("/api/refresh-tokens/{edited_id}"),
            &serde_json::json!({"name": "edited"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    eventually(PATIENCE, "beta applying the edit", || {
        let b = &b;
        async move {
            b.list()
                .await
                .iter()
                .any(|t| t["id"] == edited_id && t["name"] == "edited")
                .then_some(())
        }
    })
    .await;

    let new_secret = rotate_at_once(&a, id).await;
    let since = Instant::now();
    let new_edited = rotate_at_once(&a, edited_id).await;
    // A new access token, presented on beta at once: accepted even if beta
    // has not applied the rotation yet (it catches up first).
    let fresh = a.exchange(&new_secret).await;
    accepted_now(&b, &fresh, "a token of the new secret on beta")
        .await
        .unwrap();
    // Beta has applied both rotations once it refuses the old secrets; only
    // then are (a) and (d) presented there for the first time since.
    within_bound(
        since,
        REVOCATION_BOUND,
        "beta refusing the old secrets",
        || {
            let (b, refresh, edited_refresh) = (&b, &refresh, &edited_refresh);
            async move {
                exchange_refused(b, refresh).await?;
                exchange_refused(b, edited_refresh).await
            }
        },
    )
    .await;
    within_bound(
        since,
        REVOCATION_BOUND,
        "every old access token refused on both replicas",
        || {
            let tokens = [
                ("(a) minted on alpha", minted_on_a.as_str()),
                ("(b) minted on beta, cached on alpha", cached_on_a.as_str()),
                ("(c) minted on beta, never used", never_used.as_str()),
                ("(d) edited, then rotated", edited_on_b.as_str()),
            ];
            let (a, b) = (&a, &b);
            async move { every_one_refused([b, a], &tokens).await }
        },
    )
    .await;
    // The new secrets work on both.
    for r in [&a, &b] {
        for secret in [&new_secret, &new_edited] {
            let t = r.exchange(secret).await;
            for s in [&a, &b] {
                assert_accepted(s, &t, "a token of the new secret").await;
            }
        }
    }
    assert_accepted(&a, &fresh, "the first token of the new secret").await;
}

/// An edit that narrows a token applies to every access token it issued on
/// every replica, including tokens minted elsewhere and never seen here,
/// and tokens that still hold a version superseded by an earlier edit.
#[tokio::test]
async fn a_narrowing_edit_applies_to_every_access_token_on_every_replica() {
    let db = TestDb::new();
    let up = common::upstream().await;
    let cluster = Cluster::new(&db.url, up.addr);
    let (a, b) = two(&cluster).await;
    settled(&[&a, &b]).await;
    let (id, refresh) = a.create_token("narrowed").await;
    let minted_on_a = a.exchange(&refresh).await;
    let minted_on_b = b.exchange(&refresh).await;
    let used_on_b = b.exchange(&refresh).await;
    assert_accepted(&b, &used_on_b, "before the edits").await;
    assert_accepted(&a, &used_on_b, "before the edits").await;
    // A first edit (a rename) that beta applies; its tokens are not used
    // after it, so they hold the superseded version.
    let path = format!("/api/refresh-tokens/{id}");
    let r = a
        .client()
        .admin_json("PATCH", &path, &serde_json::json!({"name": "renamed"}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    eventually(PATIENCE, "beta applying the rename", || {
        let b = &b;
        async move {
            b.list()
                .await
                .iter()
                .any(|t| t["id"] == id && t["name"] == "renamed")
                .then_some(())
        }
    })
    .await;
    // Then a scope that excludes what `call` requests.
    let r = a
        .client()
        .admin_json(
            "PATCH",
            &path,
            &serde_json::json!({"scopes": [{"methods": ["GET"], "path": "/elsewhere/**"}]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let since = Instant::now();
    within_bound(
        since,
        REVOCATION_BOUND,
        "the scope on every replica",
        || {
            let (a, b) = (&a, &b);
            let tokens = [&minted_on_a, &minted_on_b, &used_on_b];
            async move {
                for r in [b, a] {
                    for t in tokens {
                        let c = r.call(t).await;
                        if !(c.status == StatusCode::FORBIDDEN
                            && error_code(&c) == "insufficient_scope")
                        {
                            return Err(format!("{}: {} {}", r.name, c.status, c.text()));
                        }
                    }
                }
                Ok(())
            }
        },
    )
    .await;
}
