//! The Refresh Token Management page in a real headless Chromium (Debian's
//! chromium + chromium-driver over WebDriver), used as an administrator would:
//! log in, create a token through the dialog (by keyboard), read it from the
//! page, use it, delete it through the page, and see it refused.
//!
//! Screenshots land in `target/test-artifacts/`.

use crate::common::webdriver::{Browser, ENTER, ESCAPE};
use crate::common::{upstream, TestGateway, ADMIN_PASSWORD};
use http::StatusCode;

fn artifact(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/test-artifacts")
        .join(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_administrator_manages_tokens_in_the_browser() {
    let up = upstream().await;
    let gw = TestGateway::start(up.addr).await;
    // One token made over the API, so the table has a neighbour row to keep.
    let (_, kept) = gw.create_token("billing export").await;
    let browser = Browser::start().await;
    let admin = gw.client.admin.replace("localhost", "127.0.0.1");
    browser.goto(&format!("{admin}/")).await;

    // Log in: a wrong password first, shown in words.
    let password = browser.wait_visible("#password").await;
    browser.type_into(&password, "not it").await;
    browser.type_into(&password, ENTER).await;
    browser
        .wait_until("login error", "return document.getElementById('alert').textContent.includes('Wrong user name or password')")
        .await;
    browser
        .eval("document.getElementById('password').value = ''; return true")
        .await;
    browser.type_into(&password, ADMIN_PASSWORD).await;
    browser.type_into(&password, ENTER).await;
    browser.wait_visible("#tokens-view").await;
    browser
        .wait_until(
            "table rows",
            "return document.querySelectorAll('#token-rows tr').length === 1",
        )
        .await;

    // Open "Create token" with the keyboard; Escape closes it again.
    let open = browser.wait_visible("#create-open").await;
    browser.type_into(&open, ENTER).await;
    let name = browser.wait_visible("#token-name").await;
    assert_eq!(
        browser.eval("return document.activeElement.id").await,
        "token-name",
        "focus moves into the dialog"
    );
    let preset = browser
        .value(&browser.wait_visible("#expires-date").await)
        .await;
    assert_eq!(preset.len(), 10, "expiry preset to a date: {preset:?}");
    browser.keys(ESCAPE).await;
    browser
        .wait_until(
            "dialog closed",
            "return !document.getElementById('create-dialog').open",
        )
        .await;

    // Now for real: the "never" choice shows its warning; pick a date instead.
    browser.type_into(&open, ENTER).await;
    let name = {
        let _ = name;
        browser.wait_visible("#token-name").await
    };
    browser
        .click(&browser.wait_visible("#expiry-never").await)
        .await;
    browser.wait_visible("#never-warning").await;
    browser
        .click(&browser.wait_visible("#expiry-date").await)
        .await;
    browser
        .wait_until(
            "warning hidden",
            "return document.getElementById('never-warning').hidden",
        )
        .await;
    browser.type_into(&name, "ci pipeline").await;
    let hidden = browser
        .eval("return document.getElementById('created').getClientRects().length === 0")
        .await;
    assert_eq!(
        hidden, true,
        "the token part of the dialog is not shown before creating"
    );
    browser
        .screenshot(&artifact("admin-create-dialog.png"))
        .await;
    browser.type_into(&name, ENTER).await;

    // The token appears once, with the copy button and the reminder.
    let field = browser.wait_visible("#created-token").await;
    let token = browser.value(&field).await;
    assert!(
        token.starts_with("tgr_"),
        "token read from the page: {token:?}"
    );
    let created = browser.text(&browser.wait_visible("#created").await).await;
    assert!(created.contains("cannot be shown again"), "{created}");
    browser.click(&browser.wait_visible("#copy").await).await;
    browser
        .wait_until(
            "copy confirmation",
            "return document.getElementById('copy-status').textContent === 'Copied.'",
        )
        .await;
    browser
        .screenshot(&artifact("admin-token-created.png"))
        .await;
    browser
        .click(&browser.wait_visible("#created-close").await)
        .await;
    browser
        .wait_until(
            "two rows",
            "return document.querySelectorAll('#token-rows tr').length === 2",
        )
        .await;
    let page = browser.eval("return document.body.innerText").await;
    assert!(
        !page.as_str().unwrap().contains(&token),
        "the string is gone from the page after Close"
    );

    // The token works at the public endpoint and for API calls.
    let access = gw.exchange(&token).await;
    assert_eq!(
        gw.client.api_get("/iwc/api/x", &access).await.status,
        StatusCode::OK
    );

    // Sorting by name puts "billing export" first, then descending.
    browser
        .click(&browser.wait_visible("button.sort[data-key=name]").await)
        .await;
    browser
        .wait_until(
            "descending sort",
            "return document.querySelector('#token-rows tr th').textContent === 'ci pipeline'",
        )
        .await;
    browser.screenshot(&artifact("admin-table.png")).await;

    // Select the new token's row and delete it after the confirmation naming it.
    browser
        .click(
            &browser
                .wait_visible("input[aria-label='Select ci pipeline']")
                .await,
        )
        .await;
    browser
        .click(&browser.wait_visible("#delete-open").await)
        .await;
    let list = browser
        .text(&browser.wait_visible("#delete-list").await)
        .await;
    assert_eq!(list.trim(), "ci pipeline");
    browser
        .screenshot(&artifact("admin-delete-dialog.png"))
        .await;
    browser
        .click(&browser.wait_visible("#delete-confirm").await)
        .await;
    browser
        .wait_until(
            "one row",
            "return document.querySelectorAll('#token-rows tr').length === 1",
        )
        .await;
    let alert = browser.text(&browser.wait_visible("#alert").await).await;
    assert!(alert.contains("Deleted ci pipeline"), "{alert}");

    // Both the exchange and the access token are refused now; the other token lives.
    assert_refused(&gw, &token, &access).await;
    gw.exchange(&kept).await;

    // Phone width: the layout still fits.
    assert!(
        fits_a_phone(&browser, "admin-phone.png").await,
        "no horizontal scrolling at phone width, in the page or the table"
    );

    // Log out: back to the login form, and the session no longer works.
    browser.set_size(1280, 900).await;
    browser.click(&browser.wait_visible("#logout").await).await;
    browser.wait_visible("#login-form").await;
    // The page shows its login form whatever the logout answered; the
    // session's cookie must really be dead (the logout POST went through
    // the admin API's cross-site checks).
    browser
        .eval(
            "window.__session = null; fetch('/api/session', {headers: {'X-Requested-With': 'tokengate-ui'}}).then(r => { window.__session = r.status; }); return true",
        )
        .await;
    browser
        .wait_until("the session ended", "return window.__session === 401")
        .await;
    browser.quit().await;
}

/// Issue 13 items 4-6 in the page: a read-only token made through the
/// create dialog has its writes refused (and never forwarded); the table
/// shows each token's access at a glance and flags one expiring soon; an
/// edit through the page reaches the live access token at once; a rotation
/// through the page shows the new string once and ends the old one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restricted_tokens_are_made_edited_and_rotated_in_the_page() {
    let up = upstream().await;
    let gw = TestGateway::start(up.addr).await;
    let r = gw
        .client
        .admin_json(
            "POST",
            "/api/refresh-tokens",
            &serde_json::json!({"name": "lapsing", "expires": "3d",
                "networks": ["10.0.0.0/8"], "rate_limit": {"per_second": 5, "burst": 10}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let browser = Browser::start().await;
    let admin = gw.client.admin.replace("localhost", "127.0.0.1");
    browser.goto(&format!("{admin}/")).await;
    let password = browser.wait_visible("#password").await;
    browser.type_into(&password, ADMIN_PASSWORD).await;
    browser.type_into(&password, ENTER).await;
    browser.wait_visible("#tokens-view").await;
    let row_text = |name: &str| {
        format!(
            "return [...document.querySelectorAll('#token-rows tr')].filter(r => r.querySelector('th').textContent === '{name}').map(r => r.innerText).join('')"
        )
    };
    browser
        .wait_until(
            "the lapsing token listed",
            &format!(
                "return ({})().includes('Expires soon')",
                wrap(&row_text("lapsing"))
            ),
        )
        .await;
    let lapsing = browser.eval(&row_text("lapsing")).await;
    let lapsing = lapsing.as_str().unwrap();
    assert!(lapsing.contains("From 10.0.0.0/8"), "{lapsing}");
    assert!(lapsing.contains("5/s, burst 10"), "{lapsing}");

    // Create a read-only token through the dialog.
    browser
        .click(&browser.wait_visible("#create-open").await)
        .await;
    let name = browser.wait_visible("#token-name").await;
    browser.type_into(&name, "reader").await;
    browser
        .click(&browser.wait_visible("#access-read").await)
        .await;
    browser
        .screenshot(&artifact("admin-create-read-only.png"))
        .await;
    browser
        .click(&browser.wait_visible("#create-submit").await)
        .await;
    let token = browser
        .value(&browser.wait_visible("#created-token").await)
        .await;
    assert!(token.starts_with("tgr_"), "{token:?}");
    browser
        .click(&browser.wait_visible("#created-close").await)
        .await;
    browser
        .wait_until(
            "the reader row",
            &format!(
                "return ({})().includes('Read-only')",
                wrap(&row_text("reader"))
            ),
        )
        .await;
    browser
        .screenshot(&artifact("admin-access-column.png"))
        .await;

    // Its writes are refused with insufficient_scope and never forwarded.
    let access = gw.exchange(&token).await;
    let write = || {
        let req = gw
            .client
            .public_req("DELETE", "/iwc/api/databases/1")
            .header("authorization", format!("Bearer {access}"))
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        let client = gw.client.clone();
        async move { client.send(req).await }
    };
    let hits = up.hits();
    let r = write().await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text());
    assert!(r
        .header("www-authenticate")
        .unwrap_or_default()
        .contains("insufficient_scope"));
    assert_eq!(
        up.hits(),
        hits,
        "the refused write never reached the upstream"
    );
    assert_eq!(
        gw.client
            .api_get("/iwc/api/databases/1", &access)
            .await
            .status,
        StatusCode::OK
    );

    // Edit it in the page to full access: the same access token may write.
    browser
        .click(
            &browser
                .wait_visible("button[aria-label='Edit reader']")
                .await,
        )
        .await;
    browser
        .wait_until(
            "the edit form filled in",
            "return document.getElementById('access-read').checked && document.getElementById('create-submit').textContent === 'Save'",
        )
        .await;
    browser
        .click(&browser.wait_visible("#access-full").await)
        .await;
    browser
        .click(&browser.wait_visible("#create-submit").await)
        .await;
    browser
        .wait_until(
            "saved",
            "return document.getElementById('alert').textContent.includes('Saved')",
        )
        .await;
    assert_eq!(write().await.status, StatusCode::OK);

    // Rotate it in the page, at once: a new string, the old one refused.
    // The list is redrawn after the save: the button may be replaced
    // between finding and clicking it.
    browser
        .click_visible("button[aria-label='Rotate reader']")
        .await;
    browser
        .screenshot(&artifact("admin-rotate-dialog.png"))
        .await;
    browser
        .click(&browser.wait_visible("#rotate-confirm").await)
        .await;
    let new = browser
        .value(&browser.wait_visible("#created-token").await)
        .await;
    assert!(new.starts_with("tgr_") && new != token, "{new:?}");
    let title = browser
        .text(&browser.wait_visible("#created-title").await)
        .await;
    assert!(title.contains("no longer works"), "{title}");
    browser
        .click(&browser.wait_visible("#created-close").await)
        .await;
    assert_refused(&gw, &token, &access).await;
    gw.exchange(&new).await;

    // Phone width: the new column and the row buttons still fit.
    assert!(
        fits_a_phone(&browser, "admin-phone-access.png").await,
        "no horizontal scrolling at phone width"
    );
    browser.quit().await;
}

/// Both the exchange of `refresh` and the access token are refused.
async fn assert_refused(gw: &TestGateway, refresh: &str, access: &str) {
    let r = gw
        .client
        .token_form(&format!("grant_type=refresh_token&refresh_token={refresh}"))
        .await;
    assert_eq!(r.json()["error"], "invalid_grant");
    assert_eq!(
        gw.client.api_get("/iwc/api/x", access).await.status,
        StatusCode::UNAUTHORIZED
    );
}

/// At a phone's width, whether neither the page nor the table scrolls
/// sideways; a screenshot either way.
async fn fits_a_phone(browser: &Browser, shot: &str) -> bool {
    browser.set_size(390, 844).await;
    let fits = browser
        .eval(
            "const w = document.querySelector('.table-wrap'); \
             return document.documentElement.scrollWidth <= window.innerWidth + 1 && w.scrollWidth <= w.clientWidth + 1",
        )
        .await;
    browser.screenshot(&artifact(shot)).await;
    fits == true
}

/// A `return …` script body as an expression: `(() => { … })`.
fn wrap(script: &str) -> String {
    format!("() => {{ {script} }}")
}
