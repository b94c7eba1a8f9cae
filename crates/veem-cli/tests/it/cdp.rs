//! A small client of the Chrome DevTools Protocol: a real headless Chromium (Debian's, installed
//! by `scripts/install-deps`) started by the test, and one page of it driven over its WebSocket:
//! navigate, evaluate JavaScript in the page, wait for what the page shows, take screenshots.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures::{SinkExt as _, StreamExt as _};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long one DevTools call may take (a screenshot of a long page is the slowest).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The Chromium binary, where Debian puts it; `None` (failing under CI) where it is missing.
pub fn chromium() -> Option<PathBuf> {
    let found = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
    veem_guest::testing::require(
        found.is_some(),
        "chromium is not installed; run scripts/install-deps",
    )
    .then_some(found)
    .flatten()
}

/// A headless Chromium and the one page the test drives.
pub struct Browser {
    child: Child,
    page: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    /// What went wrong in the page: uncaught exceptions, and errors of its console and of the
    /// browser about it (a refused Content-Security-Policy, say), but not failed requests,
    /// which the page is expected to meet and show (a wrong token's 401).
    pub page_errors: Vec<String>,
    /// Where a wait that times out leaves a screenshot of what the page showed.
    pub failure_shot: Option<PathBuf>,
    /// Its profile, gone with it.
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts Chromium on a page of `width` x `height` CSS pixels; `None` where it is not
    /// installed (outside CI).
    pub async fn launch(width: u32, height: u32) -> Option<Self> {
        let binary = chromium()?;
        let profile = tempfile::tempdir().expect("a profile directory");
        let mut command = Command::new(binary);
        command
            .arg("--headless")
            .arg("--remote-debugging-port=0")
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(format!("--window-size={width},{height}"))
            .args([
                "--disable-gpu",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--hide-scrollbars",
                "--mute-audio",
                "about:blank",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // Chromium refuses to sandbox itself as root (as tests run here and in CI).
        if is_root() {
            command.arg("--no-sandbox");
        }
        let child = command.spawn().expect("chromium starts");
        let port = wait_devtools_port(profile.path()).await;
        let page_url = page_socket(port).await;
        let (page, _) = tokio_tungstenite::connect_async(page_url.as_str())
            .await
            .expect("the page's DevTools socket opens");
        let mut browser = Self {
            child,
            page,
            next_id: 0,
            page_errors: Vec::new(),
            failure_shot: None,
            _profile: profile,
        };
        browser.call("Page.enable", json!({})).await;
        browser.call("Runtime.enable", json!({})).await;
        browser.call("Log.enable", json!({})).await;
        browser
            .call(
                "Emulation.setDeviceMetricsOverride",
                json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": false}),
            )
            .await;
        Some(browser)
    }

    /// Sends one DevTools command and returns its `result` (events in between are dropped).
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        match self.try_call(method, params).await {
            Ok(result) => result,
            Err(error) => panic!("{method} failed: {error}"),
        }
    }

    /// [`Browser::call`], with the command's `error` given back.
    async fn try_call(&mut self, method: &str, params: Value) -> Result<Value, Value> {
        self.next_id += 1;
        let id = self.next_id;
        let message = json!({"id": id, "method": method, "params": params}).to_string();
        self.page
            .send(Message::text(message))
            .await
            .expect("DevTools takes a command");
        let deadline = Instant::now() + CALL_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let next = tokio::time::timeout(left, self.page.next())
                .await
                .unwrap_or_else(|_| panic!("DevTools did not answer {method} in {CALL_TIMEOUT:?}"));
            let Some(Ok(Message::Text(text))) = next else {
                match next {
                    Some(Ok(_)) => continue,
                    other => panic!("the DevTools socket ended during {method}: {other:?}"),
                }
            };
            let answer: Value = serde_json::from_str(&text).expect("DevTools sends JSON");
            if answer["id"].as_u64() != Some(id) {
                self.note_event(&answer);
                continue;
            }
            if let Some(error) = answer.get("error") {
                return Err(error.clone());
            }
            return Ok(answer["result"].clone());
        }
    }

    /// Keeps what an event says went wrong in the page.
    fn note_event(&mut self, event: &Value) {
        let params = &event["params"];
        match event["method"].as_str() {
            Some("Runtime.exceptionThrown") => {
                let details = &params["exceptionDetails"];
                self.page_errors.push(format!(
                    "exception: {} {}",
                    details["text"], details["exception"]["description"]
                ));
            }
            Some("Runtime.consoleAPICalled") if params["type"] == "error" => {
                self.page_errors
                    .push(format!("console.error: {}", params["args"]));
            }
            Some("Log.entryAdded")
                if params["entry"]["level"] == "error"
                    && params["entry"]["source"] != "network" =>
            {
                self.page_errors.push(format!(
                    "{}: {} ({})",
                    params["entry"]["source"], params["entry"]["text"], params["entry"]["url"]
                ));
            }
            _ => {}
        }
    }

    /// Evaluates `expression` in the page (awaiting a promise) and returns its value.
    pub async fn eval(&mut self, expression: &str) -> Value {
        self.try_eval(expression)
            .await
            .unwrap_or_else(|error| panic!("{expression} failed: {error}"))
    }

    /// [`Browser::eval`], with what went wrong given back (a page that is loading has no
    /// context to evaluate in for a moment).
    async fn try_eval(&mut self, expression: &str) -> Result<Value, Value> {
        let result = self
            .try_call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
            )
            .await?;
        match result.get("exceptionDetails") {
            Some(exception) => Err(exception.clone()),
            None => Ok(result["result"]["value"].clone()),
        }
    }

    /// Evaluates `expression` until it gives a truthy value, for at most `within`, and returns
    /// that value; `what` names it in the failure.
    pub async fn wait_for(&mut self, expression: &str, within: Duration, what: &str) -> Value {
        let deadline = Instant::now() + within;
        loop {
            // While the page (re)loads, an evaluation may fail: that is "not yet".
            let value = self.try_eval(expression).await.unwrap_or(Value::Null);
            let truthy = match &value {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::Number(n) => n.as_f64().is_some_and(|n| n != 0.0),
                Value::String(s) => !s.is_empty(),
                _ => true,
            };
            if truthy {
                return value;
            }
            if Instant::now() >= deadline {
                if let Some(path) = self.failure_shot.clone() {
                    self.screenshot(&path).await;
                }
                let shown = self
                    .eval("document.body ? document.body.innerText.slice(0, 3000) : ''")
                    .await;
                panic!(
                    "the page did not show {what} within {within:?}; it shows:\n{}",
                    shown.as_str().unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    pub async fn navigate(&mut self, url: &str) {
        self.call("Page.navigate", json!({"url": url})).await;
        self.wait_for(
            "document.readyState === 'complete'",
            Duration::from_secs(20),
            "a loaded page",
        )
        .await;
    }

    /// Chooses `file` in the page's `<input type=file>` at `selector`, as a person picking it.
    pub async fn choose_file(&mut self, selector: &str, file: &Path) {
        let document = self.call("DOM.getDocument", json!({})).await;
        let node = self
            .call(
                "DOM.querySelector",
                json!({"nodeId": document["root"]["nodeId"], "selector": selector}),
            )
            .await;
        self.call(
            "DOM.setFileInputFiles",
            json!({"nodeId": node["nodeId"], "files": [file.display().to_string()]}),
        )
        .await;
    }

    /// A PNG of the whole page (also below the window's fold), written to `path`.
    pub async fn screenshot(&mut self, path: &Path) {
        let shot = self
            .call(
                "Page.captureScreenshot",
                json!({"format": "png", "captureBeyondViewport": true}),
            )
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("a screenshot's data"))
            .expect("a screenshot in base64");
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("the screenshots' directory");
        }
        std::fs::write(path, png).expect("the screenshot is written");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn is_root() -> bool {
    // /proc/self/status: "Uid:\t<real>\t<effective>...".
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

/// The port Chromium chose: it writes it to `DevToolsActivePort` in its profile.
async fn wait_devtools_port(profile: &Path) -> u16 {
    let file = profile.join("DevToolsActivePort");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(port) = std::fs::read_to_string(&file)
            .ok()
            .and_then(|s| s.lines().next().and_then(|l| l.trim().parse().ok()))
        {
            return port;
        }
        assert!(
            Instant::now() < deadline,
            "chromium wrote no DevToolsActivePort in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The DevTools socket of the browser's first page.
async fn page_socket(port: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let targets: Option<Vec<Value>> =
            match reqwest::get(format!("http://127.0.0.1:{port}/json/list")).await {
                Ok(response) => response.json().await.ok(),
                Err(_) => None,
            };
        if let Some(url) = targets.iter().flatten().find_map(|t| {
            (t["type"] == "page")
                .then(|| t["webSocketDebuggerUrl"].as_str().map(str::to_owned))
                .flatten()
        }) {
            return url;
        }
        assert!(Instant::now() < deadline, "chromium shows no page target");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
