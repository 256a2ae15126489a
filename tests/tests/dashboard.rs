//! The dashboard served by `drover serve`: without a browser (every page needs a login, every
//! form its token, the first run's admin), and in a real one (Debian's chromium through
//! chromedriver): log in, a wrong password, a group, a deployment to three agents in network
//! namespaces watched to 100 % from live updates, a cancelled deployment, schedules. Each
//! page's screenshot goes to target/test-artifacts/dashboard/.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use drover_tests::browser::Browser;
use drover_tests::deploy::lab_disk;
use drover_tests::lab::Lab;
use drover_tests::server::Server;
use drover_tests::{agent_bin, drover_bin, require, Env};
use reqwest::header;
use thirtyfour::prelude::*;

const PASSWORD: &str = "lab-admin-password";

/// `drover user add NAME --password-stdin` on the test's data directory.
fn add_user(env: &Env, name: &str, password: &str) {
    let mut c = Command::new(drover_bin())
        .arg("--data-dir")
        .arg(env.data())
        .args(["user", "add", name, "--password-stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(c.stdin.take().unwrap(), "{password}").unwrap();
    let out = c.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "user add: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

fn set_cookie(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|c| {
            let v = c.strip_prefix(&format!("{name}="))?.split(';').next()?;
            (!v.is_empty()).then(|| v.to_string())
        })
}

fn form_token(html: &str) -> String {
    let at = html.find(r#"name="csrf" value=""#).expect("a form token") + 19;
    html[at..at + 64].to_string()
}

/// Logs in over HTTP: (the response to the login, the session cookie if one was set).
async fn http_login(url: &str, user: &str, password: &str) -> (reqwest::Response, Option<String>) {
    let c = client();
    let page = c.get(format!("{url}/login")).send().await.unwrap();
    let login_cookie = set_cookie(&page, "drover_login").expect("the login form's cookie");
    let token = form_token(&page.text().await.unwrap());
    let r = c
        .post(format!("{url}/login"))
        .header(header::COOKIE, format!("drover_login={login_cookie}"))
        .form(&[
            ("csrf", token.as_str()),
            ("user", user),
            ("password", password),
        ])
        .send()
        .await
        .unwrap();
    let session = set_cookie(&r, "drover_session");
    (r, session)
}

#[tokio::test]
async fn pages_need_a_login_and_forms_their_token() {
    let env = Env::new();
    add_user(&env, "tester", PASSWORD);
    let srv = Server::start(&env.data(), &[]);
    let c = client();
    for path in web_ui::PAGE_PATHS {
        let r = c.get(format!("{}{path}", srv.url)).send().await.unwrap();
        assert_eq!(r.status(), 303, "{path}");
        let to = r.headers()[header::LOCATION].to_str().unwrap();
        assert!(to.starts_with("/login"), "{path} -> {to}");
    }

    let (r, session) = http_login(&srv.url, "tester", "not the password").await;
    assert_eq!(r.status(), 401);
    assert!(session.is_none());
    assert!(r
        .text()
        .await
        .unwrap()
        .contains("wrong user name or password"));

    let (r, session) = http_login(&srv.url, "tester", PASSWORD).await;
    assert_eq!(r.status(), 303);
    let cookie = format!("drover_session={}", session.expect("a session"));
    let page = c
        .get(format!("{}/groups", srv.url))
        .header(header::COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let token = form_token(&page.text().await.unwrap());

    // Logged in, but without (or with a wrong) token every form is refused.
    for path in web_ui::FORM_PATHS {
        for form in [vec![("name", "x")], vec![("csrf", "00"), ("name", "x")]] {
            let r = c
                .post(format!("{}{path}", srv.url))
                .header(header::COOKIE, &cookie)
                .form(&form)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 403, "{path} {form:?}");
        }
    }
    // With it, the form reaches the API as the user.
    let r = c
        .post(format!("{}/groups", srv.url))
        .header(header::COOKIE, &cookie)
        .form(&[("csrf", token.as_str()), ("name", "lab-9")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let token_api = env.ok(&["token", "create", "reader"]).trim().to_string();
    let (status, audit) = srv.http("GET", "/api/v1/audit", Some(&token_api), None);
    assert_eq!(status, 200);
    let audit: serde_json::Value = serde_json::from_str(&audit).unwrap();
    let has = |actor: &str, action: &str| {
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["actor"] == actor && e["action"] == action)
    };
    assert!(has("web:tester", "login.refused"), "{audit}");
    assert!(has("user:tester", "login"), "{audit}");
    assert!(has("user:tester", "group.add"), "{audit}");
    srv.stop();
}

#[tokio::test]
async fn the_first_run_prints_an_admin_password_that_must_be_changed() {
    let env = Env::new();
    let srv = Server::start(&env.data(), &[]);
    let t0 = Instant::now();
    let mut log = String::new();
    let password = loop {
        log.push_str(&srv.log());
        if let Some(rest) = log.split("one-time password ").nth(1) {
            break rest.split_whitespace().next().unwrap().to_string();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "no first-run password in:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (r, session) = http_login(&srv.url, "admin", &password).await;
    assert_eq!(r.headers()[header::LOCATION], "/password");
    let cookie = format!("drover_session={}", session.unwrap());
    let r = client()
        .get(format!("{}/machines", srv.url))
        .header(header::COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()[header::LOCATION],
        "/password",
        "nothing else first"
    );
    srv.stop();
    // A second start makes no second admin.
    let srv = Server::start(&env.data(), &[]);
    std::thread::sleep(Duration::from_millis(500));
    assert!(!srv.log().contains("one-time password"));
    let users = env.ok(&["user", "list"]);
    assert!(users.contains("admin  (password to change"), "{users}");
    srv.stop();
}

/// The server in host 0 of the lab, on every address of it.
fn serve(lab: &Lab, env: &Env) -> Command {
    let mut c = lab.cmd(0, drover_bin().to_str().unwrap());
    c.arg("--data-dir")
        .arg(env.data())
        .args(["serve", "--http", "0.0.0.0:8080", "--iface", "eth0"])
        .args(["--public-url", "http://10.77.0.10:8080"])
        // Slow enough that the page is open well before the machines are done.
        .args(["--multicast-rate", "2M"]);
    c
}

fn mac(i: usize) -> String {
    format!("02:00:00:00:07:{i:02x}")
}

#[test]
fn a_browser_deploys_to_three_agents_and_manages_the_lab() {
    if !require(
        "dashboard_browser",
        &[
            "root",
            "ip",
            "chromium",
            "chromedriver",
            "sgdisk",
            "mkfs.ext4",
            "mkntfs",
        ],
    ) {
        return;
    }
    let env = Env::new();
    let src = lab_disk(&env, 24 << 20, 11);
    env.capture(&src, "lab");
    std::fs::remove_file(&src).unwrap();
    add_user(&env, "tester", PASSWORD);

    let mut lab = Lab::new("ui", 4);
    let server_ip = lab.link_to_test(0);
    for i in 1..=3 {
        lab.set_mac(i, &mac(i));
    }
    let mut srv = Some(Server::start_cmd(serve(&lab, &env)));
    for i in 1..=3 {
        let mut c = lab.cmd(i, agent_bin().to_str().unwrap());
        c.args(["--server", "http://10.77.0.10:8080", "--disk"])
            .arg(env.path(&format!("disk{i}.img")))
            .args(["--iface", "eth0", "--max-idle", "300s"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(env.path(&format!("agent{i}.log"))).unwrap());
        lab.spawn(c);
    }
    let url = format!("http://{server_ip}:8080");

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let b = Browser::start().await;
        let d = &b.driver;

        // Every page leads to the login; a wrong password is refused.
        d.goto(format!("{url}/deployments")).await.unwrap();
        assert_eq!(b.path().await, "/login");
        b.page("01-login").await;
        // By keyboard alone: the name field has the focus, Tab leads to the password, Enter
        // submits.
        assert_eq!(b.js("return document.activeElement.id").await, "user");
        b.keys(TypingData::from("tester") + Key::Tab + "wrong password" + Key::Enter).await;
        let err = b.el("#login-error").await.text().await.unwrap();
        assert!(err.contains("wrong user name or password"), "{err}");
        b.page("02-login-refused").await;
        b.fill("user", "tester").await;
        b.fill("password", PASSWORD).await;
        b.el("button[type=submit]").await.click().await.unwrap();
        b.wait_for("the page after the login", Duration::from_secs(10),
            "return location.pathname === '/deployments'").await;

        // A group, and the three machines in it (they said hello: unknown until registered).
        d.goto(format!("{url}/groups")).await.unwrap();
        b.fill("group-name", "lab-ui").await;
        b.el("#group-name ~ button, form[action='/groups'] button").await.click().await.unwrap();
        let flash = b.el(".flash.ok").await.text().await.unwrap();
        assert!(flash.contains("group lab-ui added"), "{flash}");
        b.page("03-groups").await;
        d.goto(format!("{url}/machines")).await.unwrap();
        assert_eq!(d.find_all(By::Css("tr.unknown")).await.unwrap().len(), 3);
        b.page("04-machines-unknown").await;
        for i in 1..=3 {
            d.goto(format!("{url}/machines")).await.unwrap();
            b.el(&format!("a.button[href='/machines/{}']", mac(i))).await.click().await.unwrap();
            if i == 1 {
                b.page("04b-machine-register").await;
            }
            b.fill("name", &format!("pc{i}")).await;
            b.el("#group option[value='lab-ui']").await.click().await.unwrap();
            b.el("main form.card button").await.click().await.unwrap();
            let flash = b.el(".flash").await.text().await.unwrap();
            assert!(flash.contains(&format!("machine pc{i} saved")), "{flash}");
        }
        assert!(d.find_all(By::Css("tr.unknown")).await.unwrap().is_empty());
        b.page("05-machines").await;
        // From the top of a page the first Tab reaches the skip link, shown with a focus ring.
        d.goto(format!("{url}/machines")).await.unwrap();
        b.keys(Key::Tab).await;
        let skip = b.js(r#"const e = document.activeElement, s = getComputedStyle(e);
            return [e.className, s.outlineStyle, e.getBoundingClientRect().left >= 0]"#).await;
        assert_eq!(skip, serde_json::json!(["skip", "solid", true]));
        // Wake-on-LAN from the page (out of the server's lab interface, inside the lab).
        b.el(&format!("form[action='/machines/{}/wake'] button", mac(1)))
            .await
            .click()
            .await
            .unwrap();
        let ok = b.el(".flash.ok").await.text().await.unwrap();
        assert!(ok.contains(&format!("wake-on-LAN sent to {}", mac(1))), "{ok}");
        d.goto(format!("{url}/images")).await.unwrap();
        assert!(b.text().await.contains("lab@1"));
        b.el("form[action='/images/lab@1/verify'] button").await.click().await.unwrap();
        let ok = b.el(".flash.ok").await.text().await.unwrap();
        assert!(ok.contains("lab@1: all") && ok.contains("chunks verified"), "{ok}");
        b.page("06-images").await;

        // A deployment of the image to the group, watched to 100 % without a reload.
        d.goto(format!("{url}/deployments")).await.unwrap();
        b.el("#image option[value='lab@1']").await.click().await.unwrap();
        b.el("input[name=to][value='lab-ui']").await.click().await.unwrap();
        b.el("#transport option[value='multicast']").await.click().await.unwrap();
        b.el("#new-deployment button[type=submit]").await.click().await.unwrap();
        b.wait_for("the deployment's page", Duration::from_secs(10),
            "return location.pathname.startsWith('/deployments/')").await;
        b.js("window.__noReload = 42; return true").await;
        let rows = d.find_all(By::Css("#tasks tr")).await.unwrap();
        assert_eq!(rows.len(), 3, "three machines");
        b.page("07-deployment-started").await;

        // The server goes away mid-deployment: the page says so, and carries on when the
        // server is back.
        b.wait_for("some progress", Duration::from_secs(60),
            "return [...document.querySelectorAll('#tasks progress')].some(p => p.value > 0)").await;
        srv.take().unwrap().kill();
        b.wait_for("the interruption shown", Duration::from_secs(20),
            "return !document.getElementById('live-status').hidden").await;
        let said = b.el("#live-status").await.text().await.unwrap();
        assert!(said.contains("reconnecting"), "{said}");
        b.page("08-deployment-interrupted").await;
        srv = Some(Server::start_cmd(serve(&lab, &env)));
        b.wait_for("the live updates back", Duration::from_secs(30),
            "return document.getElementById('live-status').hidden").await;
        b.wait_for("three progress bars at 100 %", Duration::from_secs(240), r#"
            const bars = [...document.querySelectorAll('#tasks progress')];
            return bars.length === 3 && bars.every(p => p.value >= 100)
                && document.getElementById('d-state').textContent === 'done';
        "#).await;
        assert_eq!(b.js("return window.__noReload").await, 42, "the page was reloaded");
        let states = b.js("return [...document.querySelectorAll('#tasks [data-field=state]')].map(e => e.textContent)").await;
        assert_eq!(states, serde_json::json!(["done", "done", "done"]));
        assert_eq!(b.js("return document.getElementById('d-buttons').hidden").await, true);
        b.page("09-deployment-done").await;

        // A deployment that waits for more machines than there are, cancelled.
        d.goto(format!("{url}/deployments")).await.unwrap();
        b.el("input[name=to][value='lab-ui']").await.click().await.unwrap();
        b.el("input[name=start][value=min]").await.click().await.unwrap();
        b.fill("min_machines", "3").await;
        b.fill("max_wait", "30m").await;
        b.el("#new-deployment button[type=submit]").await.click().await.unwrap();
        b.wait_for("the second deployment's page", Duration::from_secs(10),
            "return document.getElementById('d-state') !== null").await;
        b.el("#d-buttons button.danger").await.click().await.unwrap();
        d.accept_alert().await.unwrap();
        b.wait_for("the cancelled state", Duration::from_secs(20),
            "return document.getElementById('d-state')?.textContent === 'cancelled'").await;
        b.page("10-deployment-cancelled").await;
        d.goto(format!("{url}/deployments")).await.unwrap();
        b.page("10b-deployments").await;

        // Schedules: a bad cron expression is refused with a message; a good one shows its
        // next runs.
        d.goto(format!("{url}/schedules")).await.unwrap();
        b.fill("s-name", "broken").await;
        b.fill("s-cron", "61 25 * * *").await;
        b.el("#s-action option[value=wake]").await.click().await.unwrap();
        b.el("#new-schedule input[name=to][value='lab-ui']").await.click().await.unwrap();
        b.el("#new-schedule button[type=submit]").await.click().await.unwrap();
        let err = b.el(".flash.error").await.text().await.unwrap();
        assert!(err.contains("61 25 * * *"), "{err}");
        b.page("11-schedule-refused").await;
        b.fill("s-name", "nightly").await;
        b.fill("s-cron", "0 22 * * 1-5").await;
        b.el("#s-action option[value=deploy]").await.click().await.unwrap();
        b.el("#s-fallback option[value=bittorrent]").await.click().await.unwrap();
        b.el("#new-schedule input[name=to][value='lab-ui']").await.click().await.unwrap();
        b.el("#new-schedule button[type=submit]").await.click().await.unwrap();
        let ok = b.el(".flash.ok").await.text().await.unwrap();
        assert!(ok.contains("schedule nightly created"), "{ok}");
        assert!(b.text().await.contains("over multicast (stragglers: the swarm)"));
        let runs = d.find_all(By::Css(".runs li")).await.unwrap();
        assert_eq!(runs.len(), 5, "five next runs");
        assert!(runs[0].text().await.unwrap().contains("22:00:00"));
        b.page("12-schedules").await;
        // Edited: a bad expression keeps the old one; a good one moves the runs.
        b.el("a.button[href='/schedules/nightly']").await.click().await.unwrap();
        b.page("12b-schedule-edit").await;
        b.fill("e-cron", "0 7 * * *").await;
        b.el("#edit-schedule button[type=submit]").await.click().await.unwrap();
        let ok = b.el(".flash.ok").await.text().await.unwrap();
        assert!(ok.contains("schedule nightly saved"), "{ok}");
        let first = b.el(".runs li").await.text().await.unwrap();
        assert!(first.contains("07:00:00"), "{first}");
        b.el("a.button[href='/schedules/nightly']").await.click().await.unwrap();
        b.fill("e-cron", "0 99 * * *").await;
        b.el("#edit-schedule button[type=submit]").await.click().await.unwrap();
        let err = b.el(".flash.error").await.text().await.unwrap();
        assert!(err.contains("0 99 * * *"), "{err}");
        assert!(b.el("#next-runs li").await.text().await.unwrap().contains("07:00:00"));
        // Deleted, after a confirmation.
        d.goto(format!("{url}/schedules")).await.unwrap();
        b.el("form[action='/schedules/nightly/delete'] button").await.click().await.unwrap();
        d.accept_alert().await.unwrap();
        let ok = b.el(".flash.ok").await.text().await.unwrap();
        assert!(ok.contains("schedule nightly removed"), "{ok}");
        assert!(d.find_all(By::Css(".runs li")).await.unwrap().is_empty());

        // The audit log names who did it; the overview; logging out.
        d.goto(format!("{url}/log")).await.unwrap();
        let log = b.text().await;
        for what in [
            "login.refused",
            "group.add",
            "image.verify",
            "deployment.create",
            "schedule.add",
            "schedule.edit",
            "schedule.remove",
            "wake",
        ] {
            assert!(log.contains(what), "{what} in the log:\n{log}");
        }
        assert!(log.contains("user:tester"));
        b.page("13-log").await;
        d.goto(format!("{url}/")).await.unwrap();
        b.page("14-overview").await;
        d.goto(format!("{url}/password")).await.unwrap();
        b.page("15-password").await;
        b.el("form[action='/logout'] button").await.click().await.unwrap();
        b.wait_for("the login page", Duration::from_secs(10),
            "return location.pathname === '/login'").await;
        d.goto(format!("{url}/machines")).await.unwrap();
        assert_eq!(b.path().await, "/login");
    });
    srv.take().unwrap().stop();
}

/// The check every page of the browser test passes finds what it looks for.
#[test]
fn the_accessibility_check_finds_each_problem() {
    if !require("dashboard_a11y_check", &["chromium", "chromedriver"]) {
        return;
    }
    const BAD: &str = r#"<html><head></head><body>
        <p style="color:#999;background:#fff">grey on white</p>
        <input id="x" name="unlabelled"><button id="x"></button><a href="/"></a><img src="">
        <div style="width:3000px">wide</div></body></html>"#;
    const GOOD: &str = r#"<html lang="en"><head><title>t</title></head><body><h1>Fine</h1>
        <label for="n">Name</label><input id="n" name="n"><button>Go</button></body></html>"#;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let b = Browser::start().await;
        let data = |html: &str| format!("data:text/html;charset=utf-8,{}", urlencode(html));
        b.driver.goto(data(GOOD)).await.unwrap();
        assert_eq!(b.accessibility_problems().await, Vec::<String>::new());
        b.driver.goto(data(BAD)).await.unwrap();
        let found = b.accessibility_problems().await.join("\n");
        for what in [
            "<html> has no lang",
            "no <title>",
            "0 <h1> elements",
            "<input id=x name=unlabelled> has no label",
            "<button id=x> has no name",
            "<a> has no name",
            "<img> has no alt text",
            "id x is used twice",
            "scrolls sideways",
            "of <p> \"grey on white\"",
        ] {
            assert!(found.contains(what), "{what:?} not found in:\n{found}");
        }
    });
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `curl -sk -i ARGS` (the test's self-signed certificate): the response's head and body.
fn curl_k(args: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-sk", "-i", "--max-time", "10"])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "curl {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn https_serves_the_dashboard_with_secure_cookies() {
    if !require("dashboard_https", &["openssl", "curl"]) {
        return;
    }
    let env = Env::new();
    add_user(&env, "tester", PASSWORD);
    let (cert, key) = (env.path("cert.pem"), env.path("key.pem"));
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args([
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=drover-test",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(out.status.success(), "openssl: {out:?}");

    // A key that is not one: a clear error naming the file, no server.
    std::fs::write(env.path("bad.pem"), "not a key\n").unwrap();
    let bad = env.fails(&[
        "serve",
        "--http",
        "127.0.0.1:0",
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        env.path("bad.pem").to_str().unwrap(),
    ]);
    assert!(bad.contains("bad.pem"), "{bad}");

    let port = drover_tests::server::free_port();
    let https = format!("127.0.0.1:{port}");
    let srv = Server::start(
        &env.data(),
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            "--https",
            &https,
        ],
    );
    let url = format!("https://{https}");
    let t0 = Instant::now();
    let page = loop {
        let out = Command::new("curl")
            .args(["-sk", "-i", "--max-time", "5", &format!("{url}/login")])
            .output()
            .unwrap();
        if out.status.success() {
            break String::from_utf8_lossy(&out.stdout).into_owned();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "no HTTPS: {}",
            srv.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    let login_cookie = page
        .lines()
        .find(|l| {
            l.to_ascii_lowercase()
                .starts_with("set-cookie: drover_login=")
        })
        .expect("the login form's cookie")
        .to_string();
    assert!(login_cookie.contains("; Secure"), "{login_cookie}");
    let value = login_cookie
        .split('=')
        .nth(1)
        .unwrap()
        .split(';')
        .next()
        .unwrap();
    let token = form_token(&page);
    let r = curl_k(&[
        "-H",
        &format!("Cookie: drover_login={value}"),
        "--data",
        &format!("csrf={token}&user=tester&password={PASSWORD}"),
        &format!("{url}/login"),
    ]);
    let session = r
        .lines()
        .find(|l| {
            l.to_ascii_lowercase()
                .starts_with("set-cookie: drover_session=")
        })
        .unwrap_or_else(|| panic!("no session in {r}"));
    assert!(
        session.contains("HttpOnly")
            && session.contains("SameSite=Strict")
            && session.contains("; Secure"),
        "{session}"
    );
    // Plain HTTP serves the dashboard too (a lab network), without the Secure flag.
    let plain = curl_k(&[&format!("{}/login", srv.url)]);
    assert!(plain.starts_with("HTTP/1.1 200"), "{plain}");
    assert!(!plain.contains("; Secure"), "{plain}");
    // The API answers over HTTPS too.
    let health = curl_k(&[&format!("{url}/healthz")]);
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    srv.stop();
}
