//! `api-load`: many agents polling and reporting at once against a running `drover serve`,
//! for bench/api.sh. Adds `--agents` machines to a group, deploys image `--image` to them over
//! unicast, then each simulated agent says hello every 2 s (the idle agent's poll, with its
//! task token) and reports progress every second, for `--seconds`. Prints one JSON object:
//! per request kind, the count and the p50/p99/max latency in milliseconds, and errors.
//! The deployment is cancelled at the end.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

struct Args {
    server: String,
    token: String,
    agents: usize,
    seconds: u64,
    image: String,
}

fn args() -> Args {
    let mut a = Args {
        server: "http://127.0.0.1:8080".into(),
        token: String::new(),
        agents: 200,
        seconds: 30,
        image: "lab".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().unwrap_or_else(|| panic!("{k} needs a value"));
        match k.as_str() {
            "--server" => a.server = v,
            "--token" => a.token = v,
            "--agents" => a.agents = v.parse().expect("--agents N"),
            "--seconds" => a.seconds = v.parse().expect("--seconds N"),
            "--image" => a.image = v,
            _ => panic!("unknown argument {k}"),
        }
    }
    a
}

type Samples = Arc<Mutex<Vec<(&'static str, f64)>>>;

async fn call(
    c: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    body: &Value,
) -> Result<Value, String> {
    let mut r = c.post(url).json(body);
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    let resp = r.send().await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let v: Value = resp.json().await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!("{status}: {v}"));
    }
    Ok(v)
}

/// One simulated agent.
async fn agent(
    base: String,
    mac: String,
    until: Instant,
    total: i64,
    samples: Samples,
    errors: Arc<Mutex<Vec<String>>>,
) {
    let c = reqwest::Client::builder().no_proxy().build().unwrap();
    // Spread the agents' starts over the first two seconds, as machines booting would.
    let offset: u64 = mac.bytes().map(u64::from).sum::<u64>() * 37 % 2000;
    tokio::time::sleep(Duration::from_millis(offset)).await;
    let hello_url = format!("{base}/api/v1/agent/hello");
    let progress_url = format!("{base}/api/v1/agent/progress");
    let hello = json!({"mac": mac, "disks": [{"size": 1_i64 << 36}]});
    let mut token: Option<String> = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut n = 0i64;
    while Instant::now() < until {
        tick.tick().await;
        let kinds: &[&'static str] = if n % 2 == 0 || token.is_none() {
            &["hello", "progress"]
        } else {
            &["progress"]
        };
        for &kind in kinds {
            if kind == "progress" && token.is_none() {
                continue;
            }
            let t0 = Instant::now();
            let r = match kind {
                "hello" => call(&c, &hello_url, token.as_deref(), &hello).await,
                _ => {
                    let body = json!({
                        "state": "receiving",
                        "bytes_done": (n * (total / 64).max(1)).min(total),
                        "rate_bps": 100_000_000,
                        "unicast_chunks": n,
                    });
                    call(&c, &progress_url, token.as_deref(), &body).await
                }
            };
            let ms = t0.elapsed().as_secs_f64() * 1000.0;
            match r {
                Ok(v) => {
                    samples.lock().unwrap().push((kind, ms));
                    if let Some(t) = v["token"].as_str() {
                        token = Some(t.to_string());
                    }
                }
                Err(e) => errors.lock().unwrap().push(format!("{kind} {mac}: {e}")),
            }
        }
        n += 1;
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

#[tokio::main]
async fn main() {
    let a = args();
    let c = reqwest::Client::builder().no_proxy().build().unwrap();
    let admin = |path: &str, body: Value| {
        let c = c.clone();
        let url = format!("{}/api/v1{path}", a.server);
        let t = a.token.clone();
        async move { call(&c, &url, Some(&t), &body).await }
    };
    let macs: Vec<String> = (0..a.agents)
        .map(|i| format!("02:00:10:00:{:02x}:{:02x}", i / 256, i % 256))
        .collect();
    for m in &macs {
        // Already there from an earlier run: fine.
        let _ = admin("/machines", json!({"mac": m, "group": "load"})).await;
    }
    let d = admin(
        "/deployments",
        json!({"image": a.image, "to": ["load"], "transport": "unicast"}),
    )
    .await
    .expect("creating the deployment");
    let id = d["id"].as_str().unwrap().to_string();
    let total = d["tasks"][0]["bytes_total"].as_i64().unwrap_or(1 << 30);
    let samples: Samples = Arc::new(Mutex::new(Vec::new()));
    let errors = Arc::new(Mutex::new(Vec::new()));
    let until = Instant::now() + Duration::from_secs(a.seconds);
    let tasks: Vec<_> = macs
        .iter()
        .map(|m| {
            tokio::spawn(agent(
                a.server.clone(),
                m.clone(),
                until,
                total,
                samples.clone(),
                errors.clone(),
            ))
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let _ = admin(&format!("/deployments/{id}/cancel"), json!({})).await;
    let samples = samples.lock().unwrap();
    let mut out = serde_json::Map::new();
    for kind in ["hello", "progress"] {
        let mut v: Vec<f64> = samples
            .iter()
            .filter(|s| s.0 == kind)
            .map(|s| s.1)
            .collect();
        v.sort_by(f64::total_cmp);
        out.insert(
            kind.into(),
            json!({
                "n": v.len(),
                "p50_ms": percentile(&v, 0.5),
                "p99_ms": percentile(&v, 0.99),
                "max_ms": v.last().copied().unwrap_or(f64::NAN),
            }),
        );
    }
    let errors = errors.lock().unwrap();
    out.insert("errors".into(), json!(errors.len()));
    out.insert(
        "first_errors".into(),
        json!(errors.iter().take(3).collect::<Vec<_>>()),
    );
    out.insert(
        "requests_per_s".into(),
        json!(samples.len() as f64 / a.seconds as f64),
    );
    println!("{}", Value::Object(out));
}
