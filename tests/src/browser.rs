//! A real browser for the dashboard's tests: Debian's chromium, headless, driven through
//! chromedriver (TESTING.md's flags: no background networking, a fresh profile). Screenshots
//! go to `target/test-artifacts/dashboard/`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use thirtyfour::prelude::*;

/// chromedriver and a browser session; both end on drop.
pub struct Browser {
    pub driver: WebDriver,
    chromedriver: Child,
    _profile: tempfile::TempDir,
    shots: PathBuf,
}

impl Browser {
    /// Starts chromedriver on a free local port and opens a headless chromium session.
    pub async fn start() -> Self {
        let port = crate::server::free_port();
        let mut cmd = Command::new("chromedriver");
        cmd.arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // Its own process group: the browser it starts goes with it on drop.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let chromedriver = cmd.spawn().expect("starting chromedriver");
        let url = format!("http://127.0.0.1:{port}");
        let t0 = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "chromedriver did not listen"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile = tempfile::tempdir().expect("a browser profile");
        let mut caps = DesiredCapabilities::chrome();
        caps.set_binary("/usr/bin/chromium").unwrap();
        for arg in [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1366,900",
        ] {
            caps.add_arg(arg).unwrap();
        }
        caps.add_arg(&format!("--user-data-dir={}", profile.path().display()))
            .unwrap();
        let driver = WebDriver::new(&url, caps)
            .await
            .expect("a chromium session");
        let shots = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("workspace root")
            .join("target/test-artifacts/dashboard");
        std::fs::create_dir_all(&shots).expect("the screenshot folder");
        Self {
            driver,
            chromedriver,
            _profile: profile,
            shots,
        }
    }

    /// Saves a screenshot of the page as `NAME.png`.
    pub async fn shot(&self, name: &str) {
        let path = self.shots.join(format!("{name}.png"));
        self.driver
            .screenshot(&path)
            .await
            .unwrap_or_else(|e| panic!("screenshot {name}: {e}"));
    }

    /// The element with this CSS selector (waiting for it a little).
    pub async fn el(&self, css: &str) -> WebElement {
        self.driver
            .query(By::Css(css))
            .wait(Duration::from_secs(10), Duration::from_millis(100))
            .first()
            .await
            .unwrap_or_else(|e| panic!("no element {css:?}: {e}"))
    }

    /// Types into the field with this id (cleared first).
    pub async fn fill(&self, id: &str, text: &str) {
        let e = self.el(&format!("#{id}")).await;
        e.clear().await.unwrap();
        e.send_keys(text).await.unwrap();
    }

    /// Runs a script and returns its value.
    pub async fn js(&self, script: &str) -> serde_json::Value {
        self.driver
            .execute(script, Vec::new())
            .await
            .unwrap_or_else(|e| panic!("script {script:?}: {e}"))
            .json()
            .clone()
    }

    /// The page's path.
    pub async fn path(&self) -> String {
        self.driver.current_url().await.unwrap().path().to_string()
    }

    /// Waits until the script returns true.
    pub async fn wait_for(&self, what: &str, limit: Duration, script: &str) {
        let t0 = Instant::now();
        loop {
            if self.js(script).await == serde_json::Value::Bool(true) {
                return;
            }
            if t0.elapsed() > limit {
                self.shot(&format!("timeout-{}", what.replace(' ', "-")))
                    .await;
                panic!("{what}: not within {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The page's text.
    pub async fn text(&self) -> String {
        self.el("body").await.text().await.unwrap()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The whole process group: chromedriver and the browser it started.
        let _ = Command::new("kill")
            .args(["-9", "--", &format!("-{}", self.chromedriver.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.chromedriver.wait();
    }
}
