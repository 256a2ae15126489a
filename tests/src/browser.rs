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

    /// Checks the page for the basics of keyboard and screen-reader use, then saves its
    /// screenshot as `NAME.png`: panics with every problem found.
    pub async fn page(&self, name: &str) {
        let problems = self.accessibility_problems().await;
        self.shot(name).await;
        assert!(
            problems.is_empty(),
            "{name}: the page fails basic accessibility:\n  {}",
            problems.join("\n  ")
        );
    }

    /// What the page fails of the accessibility basics ([`A11Y_CHECK`]).
    pub async fn accessibility_problems(&self) -> Vec<String> {
        serde_json::from_value(self.js(A11Y_CHECK).await).expect("a list of problems")
    }

    /// Presses keys in the element that has the focus.
    pub async fn keys(&self, keys: impl Into<TypingData>) {
        self.driver
            .action_chain()
            .send_keys(keys)
            .perform()
            .await
            .expect("pressing keys");
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

/// The accessibility basics every page is checked for (WCAG 2.1 AA where it can be told
/// from the page alone): a language and a title, one `h1`, every form control labelled,
/// every button and link named, images with alternative text, ids unique, no sideways
/// scrolling on a laptop's screen (the window is 1366 px wide), and text at a contrast of at
/// least 4.5:1 against what is behind it (3:1 for large text).
const A11Y_CHECK: &str = r#"
const problems = [];
const shown = (e) => {
  const r = e.getBoundingClientRect(), s = getComputedStyle(e);
  return r.width > 0 && r.height > 0 && s.visibility !== 'hidden' && s.display !== 'none';
};
const named = (e) => (e.getAttribute('aria-label') || '').trim() !== ''
  || (e.getAttribute('aria-labelledby') || '').split(/\s+/).some((id) => id && document.getElementById(id));
const what = (e) => `<${e.tagName.toLowerCase()}${e.id ? ' id=' + e.id : ''}${e.name ? ' name=' + e.name : ''}>`;
if (!document.documentElement.lang) problems.push('<html> has no lang');
if (!document.title.trim()) problems.push('no <title>');
const h1 = document.querySelectorAll('h1').length;
if (h1 !== 1) problems.push(`${h1} <h1> elements`);
for (const e of document.querySelectorAll('input:not([type=hidden]), select, textarea')) {
  if (!(e.labels && e.labels.length) && !named(e)) problems.push(`${what(e)} has no label`);
}
for (const e of document.querySelectorAll('button, a[href]')) {
  if (!e.textContent.trim() && !named(e)) problems.push(`${what(e)} has no name`);
}
for (const e of document.querySelectorAll('img')) {
  if (!e.hasAttribute('alt')) problems.push(`${what(e)} has no alt text`);
}
const root = document.documentElement;
if (root.scrollWidth > root.clientWidth + 1) problems.push(`the page scrolls sideways at ${innerWidth} px (${root.scrollWidth} px wide)`);
const ids = new Set();
for (const e of document.querySelectorAll('[id]')) {
  if (ids.has(e.id)) problems.push(`id ${e.id} is used twice`);
  ids.add(e.id);
}
const rgb = (s) => {
  const m = /rgba?\(([^)]+)\)/.exec(s);
  if (!m) return null;
  const p = m[1].split(/[\s,\/]+/).filter(Boolean).map(Number);
  return { r: p[0], g: p[1], b: p[2], a: p.length > 3 ? p[3] : 1 };
};
const lum = (c) => {
  const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); };
  return 0.2126 * f(c.r) + 0.7152 * f(c.g) + 0.0722 * f(c.b);
};
const behind = (e) => {
  for (let x = e; x; x = x.parentElement) {
    const c = rgb(getComputedStyle(x).backgroundColor);
    if (c && c.a >= 0.5) return c;
  }
  return { r: 255, g: 255, b: 255, a: 1 };
};
for (const e of document.querySelectorAll('body *')) {
  if (!shown(e) || e.tagName === 'OPTION') continue;
  const text = [...e.childNodes].filter((n) => n.nodeType === 3).map((n) => n.textContent).join('').trim();
  if (!text) continue;
  const s = getComputedStyle(e), fg = rgb(s.color);
  if (!fg) { problems.push(`${what(e)}: color ${s.color} not understood`); continue; }
  const a = lum(fg), b = lum(behind(e));
  const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
  const size = parseFloat(s.fontSize), bold = parseInt(s.fontWeight, 10) >= 700;
  const need = size >= 24 || (bold && size >= 18.66) ? 3 : 4.5;
  if (ratio < need) problems.push(`contrast ${ratio.toFixed(2)} (< ${need}) of ${what(e)} "${text.slice(0, 40)}"`);
}
return problems;
"#;
