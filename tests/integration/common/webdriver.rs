//! A minimal W3C WebDriver client for Debian's chromium + chromedriver:
//! just the calls the browser tests use, over plain HTTP to a local driver.

use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";
pub const ENTER: &str = "\u{E007}";
pub const ESCAPE: &str = "\u{E00C}";

fn find_program(names: &[&str]) -> Option<String> {
    let path = std::env::var("PATH").unwrap_or_default();
    for name in names {
        for dir in path.split(':').chain(["/usr/bin", "/usr/lib/chromium"]) {
            let p = std::path::Path::new(dir).join(name);
            if p.is_file() {
                return Some(p.display().to_string());
            }
        }
    }
    None
}

/// A running chromedriver and one headless Chromium session.
pub struct Browser {
    driver: tokio::process::Child,
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
    _profile: tempfile::TempDir,
}

pub struct Element(String);

impl Browser {
    pub async fn start() -> Browser {
        let driver_bin = find_program(&["chromedriver"]).expect(
            "chromedriver not found: install Debian's chromium and chromium-driver \
             (apt-get install -y chromium chromium-driver), or run `bash tests/run.sh`, which does",
        );
        let chromium = find_program(&["chromium", "chromium-browser"])
            .expect("chromium not found (apt-get install -y chromium)");
        // A spare port: no other test's bind(0) takes it before chromedriver binds it.
        let port = super::spare_port();
        let driver = tokio::process::Command::new(driver_bin)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver starts");
        let client = Client::builder(TokioExecutor::new()).build_http();
        let profile = tempfile::tempdir().unwrap();
        let mut b = Browser {
            driver,
            client,
            base: format!("http://127.0.0.1:{port}"),
            _profile: profile,
        };
        let driver = &b;
        super::eventually_ok(
            Duration::from_secs(20),
            "chromedriver to become ready",
            move || async move {
                let v = driver.try_call("GET", "/status", None).await?;
                if v["value"]["ready"] == true {
                    Ok(())
                } else {
                    Err(format!("not ready: {v}"))
                }
            },
        )
        .await;
        let args = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1280,900",
            &format!("--user-data-dir={}", b._profile.path().display()),
        ];
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "acceptInsecureCerts": true,
            "goog:chromeOptions": {"binary": chromium, "args": args}
        }}});
        let v = b.call("POST", "/session", Some(caps)).await;
        let id = v["value"]["sessionId"]
            .as_str()
            .expect("session id")
            .to_owned();
        b.base = format!("{}/session/{id}", b.base);
        b
    }

    async fn try_call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, String> {
        let req = http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(
                body.map(|b| b.to_string()).unwrap_or_default(),
            )))
            .unwrap();
        let resp = self.client.request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        let v: Value = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
        if status.is_success() {
            Ok(v)
        } else {
            Err(format!("{method} {path}: {status} {}", v["value"]))
        }
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.try_call(method, path, body)
            .await
            .unwrap_or_else(|e| panic!("webdriver: {e}"))
    }

    pub async fn goto(&self, url: &str) {
        self.call("POST", "/url", Some(json!({ "url": url }))).await;
    }

    pub async fn set_size(&self, width: u32, height: u32) {
        self.call(
            "POST",
            "/window/rect",
            Some(json!({"width": width, "height": height})),
        )
        .await;
    }

    pub async fn find(&self, css: &str) -> Option<Element> {
        let v = self
            .try_call(
                "POST",
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await
            .ok()?;
        v["value"][ELEMENT_KEY]
            .as_str()
            .map(|s| Element(s.to_owned()))
    }

    /// Waits (bounded) until `css` matches a displayed element.
    pub async fn wait_visible(&self, css: &str) -> Element {
        let visible = super::poll_until(Duration::from_secs(15), move || async move {
            let e = self.find(css).await?;
            let displayed = match self
                .try_call("GET", &format!("/element/{}/displayed", e.0), None)
                .await
            {
                Ok(v) => v["value"] == true,
                // The page re-rendered and replaced the element between the
                // find and this question: find it again on the next round.
                Err(e) if e.contains("stale element reference") => false,
                Err(e) => panic!("webdriver: {e}"),
            };
            displayed.then_some(e)
        })
        .await;
        if let Some(e) = visible {
            return e;
        }
        let url = self
            .try_call("GET", "/url", None)
            .await
            .map(|v| v["value"].clone());
        let src = self
            .try_call("GET", "/source", None)
            .await
            .map(|v| v["value"].clone());
        panic!("{css} never became visible; at {url:?}; page: {src:?}");
    }

    /// Waits (bounded) until a script returns true.
    pub async fn wait_until(&self, what: &str, script: &str) {
        super::eventually(Duration::from_secs(15), what, move || async move {
            (self.eval(script).await == true).then_some(())
        })
        .await;
    }

    pub async fn click(&self, e: &Element) {
        self.call("POST", &format!("/element/{}/click", e.0), Some(json!({})))
            .await;
    }

    /// Waits (bounded) for `css` to be displayed and clicks it; if the page
    /// re-renders it between the two (a list redrawn after a save), finds
    /// it again and clicks the new one.
    pub async fn click_visible(&self, css: &str) {
        let clicked = super::poll_until(Duration::from_secs(15), move || async move {
            let e = self.wait_visible(css).await;
            match self
                .try_call("POST", &format!("/element/{}/click", e.0), Some(json!({})))
                .await
            {
                Ok(_) => Some(()),
                Err(err) if err.contains("stale element reference") => None,
                Err(err) => panic!("webdriver: {err}"),
            }
        })
        .await;
        assert!(clicked.is_some(), "{css}: replaced before every click");
    }

    /// Types into an element (focusing it first), as a keyboard user would.
    pub async fn type_into(&self, e: &Element, text: &str) {
        self.call(
            "POST",
            &format!("/element/{}/value", e.0),
            Some(json!({ "text": text })),
        )
        .await;
    }

    /// Presses keys on whatever has focus.
    pub async fn keys(&self, text: &str) {
        let mut actions = Vec::new();
        for c in text.chars() {
            actions.push(json!({"type": "keyDown", "value": c.to_string()}));
            actions.push(json!({"type": "keyUp", "value": c.to_string()}));
        }
        self.call(
            "POST",
            "/actions",
            Some(json!({"actions": [{"type": "key", "id": "keyboard", "actions": actions}]})),
        )
        .await;
    }

    pub async fn value(&self, e: &Element) -> String {
        self.call("GET", &format!("/element/{}/property/value", e.0), None)
            .await["value"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    pub async fn text(&self, e: &Element) -> String {
        self.call("GET", &format!("/element/{}/text", e.0), None)
            .await["value"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    pub async fn eval(&self, script: &str) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
        .await["value"]
            .clone()
    }

    /// Deletes every cookie of the current page's site (HttpOnly ones too).
    pub async fn delete_cookies(&self) {
        self.call("DELETE", "/cookie", None).await;
    }

    /// The names of the current page's cookies (HttpOnly ones too).
    pub async fn cookie_names(&self) -> Vec<String> {
        let v = self.call("GET", "/cookie", None).await;
        v["value"]
            .as_array()
            .map(|cs| {
                cs.iter()
                    .filter_map(|c| c["name"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Saves a PNG screenshot.
    pub async fn screenshot(&self, path: &std::path::Path) {
        use base64::Engine;
        let v = self.call("GET", "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v["value"].as_str().unwrap())
            .unwrap();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(path, png).unwrap();
    }

    pub async fn quit(mut self) {
        let _ = self.try_call("DELETE", "", None).await;
        let _ = self.driver.kill().await;
    }
}
