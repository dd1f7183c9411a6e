//! Accounts and roles in the admin page, in a real headless Chromium: an
//! admin adds a user in the Users section and sees its generated password
//! once; a viewer sees no Create and no Users; a creator sees only its own
//! tokens, named in the "Created by" column; an admin changes a role and
//! disables a user, and the API's refusals are shown in words.
//!
//! Screenshots land in `target/test-artifacts/`.

use base64::Engine;
use bytes::Bytes;
use http::StatusCode;
use http_body_util::Full;
use serde_json::{json, Value};

use crate::common::webdriver::{Browser, ENTER, ESCAPE};
use crate::common::{upstream, Resp, TestGateway, ADMIN_PASSWORD};

fn artifact(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/test-artifacts")
        .join(name)
}

/// A request to the admin API as `user` over HTTP Basic.
async fn as_user(
    gw: &TestGateway,
    user: &str,
    password: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Resp {
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let mut b = http::Request::builder()
        .method(method)
        .uri(format!("{}{}", gw.client.admin, path))
        .header("authorization", format!("Basic {auth}"));
    if body.is_some() || method == "POST" {
        b = b.header("content-type", "application/json");
    }
    let body = body
        .map(|v| Full::new(Bytes::from(v.to_string())))
        .unwrap_or_default();
    gw.client.send(b.body(body).unwrap()).await
}

/// Creates an account through the API (as the bootstrap admin).
async fn add_user(gw: &TestGateway, name: &str, role: &str, password: &str) {
    let r = gw
        .client
        .admin_json(
            "POST",
            "/api/users",
            &json!({"name": name, "role": role, "password": password}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
}

/// The account `name` as `GET /api/users` lists it.
async fn user_row(gw: &TestGateway, name: &str) -> Option<Value> {
    let r = gw.client.admin_call("GET", "/api/users").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    r.json()
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == name)
        .cloned()
}

/// Opens the page and logs in as `user`.
async fn log_in(browser: &Browser, gw: &TestGateway, user: &str, password: &str) {
    let admin = gw.client.admin.replace("localhost", "127.0.0.1");
    browser.goto(&format!("{admin}/")).await;
    let name = browser.wait_visible("#username").await;
    browser
        .eval("document.getElementById('username').value = ''; return true")
        .await;
    browser.type_into(&name, user).await;
    let field = browser.wait_visible("#password").await;
    browser.type_into(&field, password).await;
    browser.type_into(&field, ENTER).await;
    browser.wait_visible("#tokens-view").await;
    browser
        .wait_until(
            "the header names the user",
            &format!("return document.getElementById('who').textContent.includes('{user} (')"),
        )
        .await;
}

/// Whether the element `css` is shown (present and laid out).
async fn shown(browser: &Browser, css: &str) -> bool {
    browser
        .eval(&format!(
            "const e = document.querySelector({}); return !!e && e.getClientRects().length > 0",
            json!(css)
        ))
        .await
        == true
}

/// The texts of the cells of `column` (a class) in the token table.
async fn token_column(browser: &Browser, column: &str) -> Vec<String> {
    let v = browser
        .eval(&format!(
            "return [...document.querySelectorAll('#token-rows tr td.{column}')].map(td => td.textContent)"
        ))
        .await;
    serde_json::from_value(v).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_adds_a_viewer_who_sees_no_create_and_no_users() {
    let up = upstream().await;
    let gw = TestGateway::start(up.addr).await;
    gw.create_token("billing export").await;
    let browser = Browser::start().await;
    log_in(&browser, &gw, "admin", ADMIN_PASSWORD).await;
    let who = browser.text(&browser.wait_visible("#who").await).await;
    assert!(who.contains("admin (admin)"), "{who}");
    browser.wait_visible("#users-view").await;
    browser
        .wait_until(
            "the bootstrap admin listed",
            "return [...document.querySelectorAll('#user-rows th')].some(th => th.textContent === 'admin')",
        )
        .await;
    // The token made before, by the bootstrap admin over HTTP Basic.
    assert_eq!(token_column(&browser, "created-by").await, ["admin"]);

    // Add a user with the keyboard; Escape closes the dialog unsent.
    let open = browser.wait_visible("#user-add-open").await;
    browser.type_into(&open, ENTER).await;
    browser.wait_visible("#user-name").await;
    assert_eq!(
        browser.eval("return document.activeElement.id").await,
        "user-name"
    );
    browser.keys(ESCAPE).await;
    browser
        .wait_until(
            "dialog closed",
            "return !document.getElementById('user-dialog').open",
        )
        .await;

    // A bad name is refused in words before anything is sent.
    browser.type_into(&open, ENTER).await;
    let name = browser.wait_visible("#user-name").await;
    browser.type_into(&name, "vera smith").await;
    browser.type_into(&name, ENTER).await;
    let err = browser
        .text(&browser.wait_visible("#user-error").await)
        .await;
    assert!(err.contains("letters, digits"), "{err}");
    assert!(user_row(&gw, "vera smith").await.is_none());

    // A viewer, no password typed: one is generated and shown this once.
    browser
        .eval("document.getElementById('user-name').value = ''; return true")
        .await;
    browser.type_into(&name, "vera").await;
    assert_eq!(
        browser
            .value(&browser.wait_visible("#user-role").await)
            .await,
        "viewer"
    );
    browser.type_into(&name, ENTER).await;
    let field = browser.wait_visible("#user-created-password").await;
    let password = browser.value(&field).await;
    assert!(password.len() >= 12, "a generated password: {password:?}");
    let panel = browser
        .text(&browser.wait_visible("#user-created").await)
        .await;
    assert!(panel.contains("cannot be shown again"), "{panel}");
    browser
        .click(&browser.wait_visible("#user-copy").await)
        .await;
    browser
        .wait_until(
            "copy confirmation",
            "return document.getElementById('user-copy-status').textContent === 'Copied.'",
        )
        .await;
    browser
        .screenshot(&artifact("users-password-created.png"))
        .await;
    browser
        .click(&browser.wait_visible("#user-created-close").await)
        .await;
    browser
        .wait_until(
            "vera listed",
            "return [...document.querySelectorAll('#user-rows th')].some(th => th.textContent === 'vera')",
        )
        .await;
    let page = browser.eval("return document.body.innerText + document.getElementById('user-created-password').value").await;
    assert!(
        !page.as_str().unwrap().contains(&password),
        "the password is gone from the page after Close"
    );
    browser.screenshot(&artifact("users-section.png")).await;
    // Stored, never shown again: the list has no password.
    let row = user_row(&gw, "vera").await.expect("vera exists");
    assert_eq!(row["role"], "viewer");
    assert!(row.get("password").is_none(), "{row}");

    // Vera logs in with it: the tokens, read-only; no Create, no Users.
    browser.click(&browser.wait_visible("#logout").await).await;
    browser.wait_visible("#login-form").await;
    log_in(&browser, &gw, "vera", &password).await;
    let who = browser.text(&browser.wait_visible("#who").await).await;
    assert!(who.contains("vera (viewer)"), "{who}");
    browser
        .wait_until(
            "the admin's token listed",
            "return document.querySelectorAll('#token-rows tr').length === 1",
        )
        .await;
    assert!(
        !shown(&browser, "#create-open").await,
        "no Create for a viewer"
    );
    assert!(
        !shown(&browser, "#delete-open").await,
        "no Delete for a viewer"
    );
    assert!(
        !shown(&browser, "#users-view").await,
        "no Users for a viewer"
    );
    assert!(
        !shown(&browser, "#token-rows button").await,
        "no Edit or Rotate for a viewer"
    );
    assert!(!shown(&browser, "#token-rows input[type=checkbox]").await);
    browser.screenshot(&artifact("users-viewer.png")).await;

    // A refusal the page gets anyway is shown in words, naming the role.
    browser
        .eval("api('POST', '/api/refresh-tokens', {name: 'sneaky'}).catch((e) => handleError(e)); return true")
        .await;
    browser
        .wait_until(
            "the refusal in words",
            "return document.getElementById('alert').textContent.includes('needs the role creator')",
        )
        .await;
    assert_eq!(
        gw.client
            .admin_call("GET", "/api/refresh-tokens")
            .await
            .json()
            .as_array()
            .unwrap()
            .len(),
        1
    );
    browser.quit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_creator_sees_only_its_own_tokens_named_in_created_by() {
    let up = upstream().await;
    let gw = TestGateway::start(up.addr).await;
    gw.create_token("the admin's").await;
    let pw = "cora's long password";
    add_user(&gw, "cora", "creator", pw).await;
    let browser = Browser::start().await;
    log_in(&browser, &gw, "cora", pw).await;
    browser.wait_visible("#empty").await;
    assert!(
        !shown(&browser, "#users-view").await,
        "no Users for a creator"
    );
    let hint = browser
        .text(&browser.wait_visible("#role-hint").await)
        .await;
    assert!(hint.contains("you created"), "{hint}");

    // Create one through the dialog, by keyboard.
    let open = browser.wait_visible("#create-open").await;
    browser.type_into(&open, ENTER).await;
    let name = browser.wait_visible("#token-name").await;
    browser.type_into(&name, "cora's report").await;
    browser.type_into(&name, ENTER).await;
    let token = browser
        .value(&browser.wait_visible("#created-token").await)
        .await;
    assert!(token.starts_with("tgr_"), "{token:?}");
    browser
        .click(&browser.wait_visible("#created-close").await)
        .await;
    browser
        .wait_until(
            "one row",
            "return document.querySelectorAll('#token-rows tr').length === 1",
        )
        .await;
    // Only its own, and the column names it.
    let names = browser
        .eval("return [...document.querySelectorAll('#token-rows th')].map(th => th.textContent)")
        .await;
    assert_eq!(names, json!(["cora's report"]));
    assert_eq!(token_column(&browser, "created-by").await, ["cora"]);
    assert!(shown(&browser, "button[aria-label=\"Rotate cora's report\"]").await);
    browser.screenshot(&artifact("users-creator.png")).await;

    // The admin sees both, each with its maker.
    let all = gw
        .client
        .admin_call("GET", "/api/refresh-tokens")
        .await
        .json();
    let made: Vec<(String, Value)> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["name"].as_str().unwrap().to_owned(),
                t["created_by"].clone(),
            )
        })
        .collect();
    assert!(
        made.contains(&("cora's report".into(), json!("cora"))),
        "{made:?}"
    );
    assert!(
        made.contains(&("the admin's".into(), json!("admin"))),
        "{made:?}"
    );
    gw.exchange(&token).await;
    browser.quit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_changes_a_role_and_disables_a_user() {
    let up = upstream().await;
    let gw = TestGateway::start(up.addr).await;
    let pw = "max's long password";
    add_user(&gw, "max", "viewer", pw).await;
    let browser = Browser::start().await;
    log_in(&browser, &gw, "admin", ADMIN_PASSWORD).await;
    let row_text = "return [...document.querySelectorAll('#user-rows tr')].filter(r => r.dataset.name === 'max').map(r => r.textContent).join('')";

    // A viewer may not create tokens yet.
    let make = || {
        as_user(
            &gw,
            "max",
            pw,
            "POST",
            "/api/refresh-tokens",
            Some(json!({"name": "max's"})),
        )
    };
    assert_eq!(make().await.status, StatusCode::FORBIDDEN);

    // Change the role to manager through the dialog.
    browser
        .click(
            &browser
                .wait_visible("button[aria-label='Change role max']")
                .await,
        )
        .await;
    let select = browser.wait_visible("#role-select").await;
    assert_eq!(browser.value(&select).await, "viewer");
    browser
        .eval("document.getElementById('role-select').value = 'manager'; return true")
        .await;
    browser.screenshot(&artifact("users-change-role.png")).await;
    browser
        .click(&browser.wait_visible("#role-submit").await)
        .await;
    browser
        .wait_until(
            "the row says manager",
            &format!("return ({})().includes('manager')", wrap(row_text)),
        )
        .await;
    let alert = browser.text(&browser.wait_visible("#alert").await).await;
    assert!(alert.contains("max is now manager"), "{alert}");
    assert_eq!(user_row(&gw, "max").await.unwrap()["role"], "manager");
    // From max's next request.
    assert_eq!(make().await.status, StatusCode::CREATED);

    // A refusal of the API is shown in its own words: the last admin stays.
    let refused = gw
        .client
        .admin_json("PATCH", "/api/users/admin", &json!({"disabled": true}))
        .await;
    assert_eq!(refused.status, StatusCode::CONFLICT, "{}", refused.text());
    let said = refused.json()["error_description"]
        .as_str()
        .unwrap()
        .to_owned();
    browser
        .click(
            &browser
                .wait_visible("button[aria-label='Disable admin']")
                .await,
        )
        .await;
    browser
        .wait_until(
            "the conflict in words",
            &format!(
                "return document.getElementById('alert').textContent.includes({})",
                json!(said)
            ),
        )
        .await;
    assert_eq!(user_row(&gw, "admin").await.unwrap()["disabled"], false);

    // Disable max, by keyboard: logins fail from then on.
    let disable = browser
        .wait_visible("button[aria-label='Disable max']")
        .await;
    browser.type_into(&disable, ENTER).await;
    browser
        .wait_until(
            "the row says disabled",
            &format!("return ({})().includes('Disabled')", wrap(row_text)),
        )
        .await;
    assert_eq!(
        browser
            .eval("return document.activeElement.getAttribute('aria-label')")
            .await,
        "Enable max",
        "focus stays on the row's button"
    );
    assert_eq!(user_row(&gw, "max").await.unwrap()["disabled"], true);
    let r = as_user(&gw, "max", pw, "GET", "/api/session", None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    browser.screenshot(&artifact("users-disabled.png")).await;

    // Delete it after a confirmation naming it.
    browser
        .click(
            &browser
                .wait_visible("button[aria-label='Delete max']")
                .await,
        )
        .await;
    let title = browser
        .text(&browser.wait_visible("#user-delete-title").await)
        .await;
    assert!(title.contains("max"), "{title}");
    browser
        .click(&browser.wait_visible("#user-delete-confirm").await)
        .await;
    browser
        .wait_until(
            "max gone",
            "return ![...document.querySelectorAll('#user-rows tr')].some(r => r.dataset.name === 'max')",
        )
        .await;
    assert!(user_row(&gw, "max").await.is_none());

    // Phone width: the Users table fits too.
    browser.set_size(390, 844).await;
    let fits = browser
        .eval(
            "const w = document.querySelector('#users-view .table-wrap'); \
             return document.documentElement.scrollWidth <= window.innerWidth + 1 && w.scrollWidth <= w.clientWidth + 1",
        )
        .await;
    browser.screenshot(&artifact("users-phone.png")).await;
    assert_eq!(fits, true, "no horizontal scrolling at phone width");
    browser.quit().await;
}

/// A `return …` script body as an expression: `(() => { … })`.
fn wrap(script: &str) -> String {
    format!("() => {{ {script} }}")
}
