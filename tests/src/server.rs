//! A `drover serve` for a test: started on a free loopback port with the test's data
//! directory, stopped (SIGTERM, then SIGKILL) when dropped; plus a tiny HTTP/1.1 client for
//! the requests the CLI does not make (missing tokens, malformed bodies).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::drover_bin;

/// A free loopback port below the kernel's ephemeral range (32768 and up), so that a test
/// that stops its server and starts it again on the same address never finds the port taken
/// by a connection or another test's `bind(0)` in between.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let spread = (std::process::id() % 400) as u16 * 20;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed) % 8000;
        let port = 20_000 + (spread + n) % 8000;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A running server.
pub struct Server {
    child: Child,
    /// `http://127.0.0.1:PORT`
    pub url: String,
    /// `127.0.0.1:PORT`
    pub addr: String,
    log: mpsc::Receiver<String>,
}

impl Server {
    /// Starts `drover --data-dir DATA serve --http 127.0.0.1:PORT --iface lo EXTRA...` and
    /// waits until it listens.
    pub fn start(data: &Path, extra: &[&str]) -> Self {
        Self::start_at(data, &format!("127.0.0.1:{}", free_port()), extra)
    }

    /// As [`start`](Self::start), on the address `http` (a restarted server's own).
    pub fn start_at(data: &Path, http: &str, extra: &[&str]) -> Self {
        let mut cmd = Command::new(drover_bin());
        cmd.arg("--data-dir")
            .arg(data)
            .args(["serve", "--http", http, "--iface", "lo"])
            .args(extra);
        Self::start_cmd(cmd)
    }

    /// Runs `drover ARGS --server URL --token T` with the test's data directory.
    pub fn cli(&self, env: &crate::Env, token: &str, args: &[&str]) -> std::process::Output {
        let mut a = args.to_vec();
        a.extend_from_slice(&["--server", &self.url, "--token", token]);
        env.drover(&a)
    }

    /// As [`cli`](Self::cli); the command must succeed. Returns its standard output.
    pub fn ok(&self, env: &crate::Env, token: &str, args: &[&str]) -> String {
        let out = self.cli(env, token, args);
        assert!(
            out.status.success(),
            "drover {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// As [`ok`](Self::ok), with `--json`: the parsed output.
    pub fn json(&self, env: &crate::Env, token: &str, args: &[&str]) -> serde_json::Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        let out = self.ok(env, token, &a);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("drover {args:?}: {e}: {out}"))
    }

    /// As [`cli`](Self::cli); the command must fail. Returns its standard error.
    pub fn fails(&self, env: &crate::Env, token: &str, args: &[&str]) -> String {
        let out = self.cli(env, token, args);
        assert!(!out.status.success(), "drover {args:?} should fail");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// Starts a `drover ... serve` command made by the caller (in a namespace, say) and waits
    /// until it listens.
    pub fn start_cmd(mut cmd: Command) -> Self {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting drover serve");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut seen = Vec::new();
        loop {
            match rx.recv_timeout(Duration::from_secs(30)) {
                Ok(line) => {
                    if let Some(rest) = line.split("listening on http://").nth(1) {
                        let addr = rest.trim().to_string();
                        return Self {
                            child,
                            url: format!("http://{addr}"),
                            addr,
                            log: rx,
                        };
                    }
                    seen.push(line);
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("drover serve did not start:\n{}", seen.join("\n"));
                }
            }
        }
    }

    /// What the server printed since the last call.
    pub fn log(&self) -> String {
        self.log.try_iter().collect::<Vec<_>>().join("\n")
    }

    /// `METHOD PATH` with an optional bearer token and JSON body: (status, body).
    pub fn http(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> (u16, String) {
        http(&self.addr, method, path, token, body)
    }

    /// Kills the server (SIGKILL: a crash, no goodbye) and waits for it.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops the server with SIGTERM and waits for it.
    pub fn stop(mut self) {
        self.terminate();
    }

    fn terminate(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { kill(self.child.id() as i32, 15) };
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.terminate();
    }
}

extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
}

/// One HTTP/1.1 request to `addr` (host:port): (status, body).
pub fn http(
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connecting to the server");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    let body = body.unwrap_or("");
    if !body.is_empty() {
        req.push_str("Content-Type: application/json\r\n");
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    s.write_all(req.as_bytes()).unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap();
    let text = String::from_utf8_lossy(&resp).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {text}"));
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    (
        status,
        if chunked {
            unchunk(rest)
        } else {
            rest.to_string()
        },
    )
}

fn unchunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// `GET path` for a binary body sent with a Content-Length (not chunked): the body's bytes.
pub fn http_bytes(addr: &str, path: &str) -> Vec<u8> {
    let (head, body) = get_raw(addr, path, None);
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("content-length:"), "{head}");
    body
}

/// `GET PATH` with an API token: (status, body bytes).
pub fn http_bytes_auth(addr: &str, path: &str, token: &str) -> (u16, Vec<u8>) {
    let (head, body) = get_raw(addr, path, Some(token));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, body)
}

/// One GET: the response head (lower case) and the body as it came (not de-chunked).
fn get_raw(addr: &str, path: &str, token: Option<&str>) -> (String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).expect("connecting to the server");
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap();
    let end = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP response");
    let head = String::from_utf8_lossy(&resp[..end]).to_ascii_lowercase();
    (head, resp[end + 4..].to_vec())
}
