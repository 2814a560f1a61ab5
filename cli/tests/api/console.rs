//! The web console in a real browser (Debian's chromium driven through chromedriver), against
//! `cco stack` with the Infinity simulator: the administrator sets up a tenant, the collector
//! calls from the workbench and watches the call end without reloading, the supervisor sees it,
//! the administrator frees an extension; a collector cannot open another's call, forms without
//! their token are refused, and both languages render.
//!
//! On failure the test saves a screenshot and the page source next to the test binary's
//! temporary directory (the path is in the panic message). With `CONSOLE_SCREENSHOTS=<dir>` it
//! also saves the screenshots of the main pages shown in the README (`docs/console/`).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

use crate::stack::{Stack, start};

/// Where chromium and chromedriver are (`.ci/run` installs Debian's packages).
const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

async fn browser() -> (Driver, Client) {
    assert!(
        std::path::Path::new(CHROMIUM).exists() && std::path::Path::new(CHROMEDRIVER).exists(),
        "the browser tests need Debian's chromium and chromium-driver (apt-get install chromium chromium-driver; .ci/run does)"
    );
    let port = free_port();
    let child = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    let driver = Driver(child);
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": CHROMIUM,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,1000", "--lang=en-US"],
            "prefs": {"intl.accept_languages": "en-US,en"},
        }),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        match ClientBuilder::new(connector)
            .capabilities(caps.clone())
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
        {
            Ok(c) => return (driver, c),
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "chromedriver did not answer: {e}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// The browser and the stack under test.
struct Ui {
    c: Client,
    base: String,
    shots: Option<PathBuf>,
}

type R<T = ()> = Result<T, String>;

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

impl Ui {
    async fn go(&self, path: &str) -> R {
        self.c
            .goto(&format!("{}{path}", self.base))
            .await
            .map_err(err)
    }

    /// The text of an element. A live page may replace the element between finding it and
    /// reading it (a stale reference): then it is found again.
    async fn text(&self, css: &str) -> R<String> {
        let mut tries = 0;
        loop {
            let found = self
                .c
                .find(Locator::Css(css))
                .await
                .map_err(|e| format!("{css}: {e}"))?;
            match found.text().await {
                Ok(t) => return Ok(t),
                Err(e) if tries < 5 && e.to_string().contains("stale element") => tries += 1,
                Err(e) => return Err(format!("{css}: {e}")),
            }
        }
    }

    async fn wait_for(&self, css: &str, secs: u64) -> R<fantoccini::elements::Element> {
        self.c
            .wait()
            .at_most(Duration::from_secs(secs))
            .for_element(Locator::Css(css))
            .await
            .map_err(|e| format!("waiting for {css}: {e}"))
    }

    /// Waits for an element and returns its text.
    async fn wait_text(&self, css: &str, secs: u64) -> R<String> {
        self.wait_for(css, secs).await?.text().await.map_err(err)
    }

    async fn fill(&self, css: &str, value: &str) -> R {
        let e = self
            .c
            .find(Locator::Css(css))
            .await
            .map_err(|e| format!("{css}: {e}"))?;
        e.clear().await.map_err(err)?;
        e.send_keys(value).await.map_err(err)
    }

    /// Clicks something that loads a new page, and waits until it has.
    async fn click(&self, css: &str) -> R {
        self.c
            .execute("window.__oldPage = true;", vec![])
            .await
            .map_err(err)?;
        self.c
            .find(Locator::Css(css))
            .await
            .map_err(|e| format!("{css}: {e}"))?
            .click()
            .await
            .map_err(err)?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let loaded = self
                .c
                .execute(
                    "return window.__oldPage !== true && document.readyState === 'complete';",
                    vec![],
                )
                .await
                .unwrap_or(json!(false));
            if loaded == json!(true) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("clicking {css} loaded no new page"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn path(&self) -> R<String> {
        let u = self.c.current_url().await.map_err(err)?;
        Ok(match u.query() {
            Some(q) => format!("{}?{q}", u.path()),
            None => u.path().to_owned(),
        })
    }

    async fn body(&self) -> R<String> {
        self.text("body").await
    }

    /// Signs in with the development sign-in as the person whose label starts with `who`.
    async fn dev_sign_in(&self, who: &str) -> R {
        self.go("/sign-in").await?;
        self.click(&format!("button[data-person^='{who}']")).await?;
        self.wait_for("#sign-out", 10).await.map(|_| ())
    }

    async fn sign_out(&self) -> R {
        self.click("#sign-out").await?;
        self.wait_for("#sign-in-token", 10).await.map(|_| ())
    }

    async fn shot(&self, name: &str) -> R {
        if let Some(dir) = &self.shots {
            let png = self.c.screenshot().await.map_err(err)?;
            std::fs::write(dir.join(format!("{name}.png")), png).map_err(err)?;
        }
        Ok(())
    }
}

fn ensure(cond: bool, what: impl Into<String>) -> R {
    if cond { Ok(()) } else { Err(what.into()) }
}

/// Asks the simulator to answer calls to `number` (every call: None) only after `delay_ms` (so
/// the browser sees the call live before it ends).
async fn script(stack: &Stack, number: Option<&str>, delay_ms: u64) {
    let control = stack
        .sim_api
        .split("/openapi")
        .next()
        .expect("sim base")
        .to_owned();
    let r = reqwest::Client::new()
        .post(format!("{control}/control/scripts"))
        .json(&json!({"destination": number, "script": {"callback_delay_ms": delay_ms}}))
        .send()
        .await
        .expect("sim control");
    assert!(r.status().is_success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_in_a_real_browser() {
    cco_platform::tls::install_provider();
    let dir = tempfile::tempdir().unwrap();
    let stack = start(dir.path());
    let (_driver, c) = browser().await;
    let shots = std::env::var_os("CONSOLE_SCREENSHOTS").map(PathBuf::from);
    if let Some(d) = &shots {
        std::fs::create_dir_all(d).unwrap();
    }
    let ui = Ui {
        c,
        base: stack.console.clone(),
        shots,
    };
    let outcome = scenario(&ui, &stack).await;
    if let Err(e) = outcome {
        let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        let png = out.join("console-failure.png");
        let html = out.join("console-failure.html");
        if let Ok(b) = ui.c.screenshot().await {
            let _ = std::fs::write(&png, b);
        }
        if let Ok(s) = ui.c.source().await {
            let _ = std::fs::write(&html, s);
        }
        let at = ui.path().await.unwrap_or_default();
        let _ = ui.c.clone().close().await;
        stack.stop();
        panic!(
            "console scenario failed at {at}: {e}\nscreenshot: {}\npage source: {}",
            png.display(),
            html.display()
        );
    }
    let _ = ui.c.clone().close().await;
    stack.stop();
}

async fn scenario(ui: &Ui, stack: &Stack) -> R {
    // The sign-in page lists the demo people (cco stack only).
    ui.go("/").await?;
    ui.wait_for("#sign-in-token", 10).await?;
    let page = ui.body().await?;
    for who in ["admin", "sam", "alice", "bob"] {
        ensure(
            page.contains(&format!("Sign in as {who}")),
            format!("dev sign-in lists {who}"),
        )?;
    }
    ui.shot("sign-in").await?;
    // Wrong tokens are refused at their field: not a JWT; a forged one (the services say why).
    ui.fill("#token", "not.a.token").await?;
    ui.click("#sign-in-token").await?;
    let e = ui.wait_text("#token-error", 10).await?;
    ensure(
        e.starts_with("This is not a CCO token"),
        format!("not a JWT: {e}"),
    )?;
    use base64::Engine;
    let b64 = |v: serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let forged = format!(
        "{}.{}.{}",
        b64(json!({"alg": "HS256", "typ": "JWT"})),
        b64(
            json!({"sub": "alice", "role": "admin", "tenants": ["demo"], "exp": 4_000_000_000_u64})
        ),
        b64(json!("not the signature"))
    );
    ui.fill("#token", &forged).await?;
    ui.click("#sign-in-token").await?;
    let e = ui.wait_text("#token-error", 10).await?;
    ensure(
        e.starts_with("The services did not accept this sign-in") && e.contains("signature"),
        format!("a forged token: {e}"),
    )?;

    admin_sets_up_a_tenant(ui, stack).await?;
    let (bob_call, busy_extension) = bob_holds_a_line(ui, stack).await?;
    let alice_call = alice_calls(ui, stack, &bob_call).await?;
    supervisor_sees_it(ui, stack, &alice_call).await?;
    admin_frees_an_extension(ui, &busy_extension).await?;
    forms_need_their_token(ui, stack).await?;
    both_languages(ui).await?;
    handoff(ui, stack).await?;
    Ok(())
}

/// The platform's hand-over: the token in the fragment, confirmed by the person, then gone
/// from the address bar.
async fn handoff(ui: &Ui, stack: &Stack) -> R {
    ui.go(&format!("/sign-in/handoff#token={}", stack.alice))
        .await?;
    let go = ui.wait_text("#handoff-go", 10).await?;
    ensure(
        go == "Continue as alice (collector)",
        format!("the person is named: {go}"),
    )?;
    let url = ui.c.current_url().await.map_err(err)?;
    ensure(
        url.fragment().is_none(),
        format!("the token left the address bar: {url}"),
    )?;
    ui.click("#handoff-go").await?;
    ensure(ui.path().await? == "/workbench", "signed in as alice")?;
    ui.sign_out().await?;
    // A broken fragment signs nobody in.
    ui.go("/sign-in/handoff#token=%E0%A4%A").await?;
    ui.wait_for("#handoff-missing:not([hidden])", 10).await?;
    Ok(())
}

async fn admin_sets_up_a_tenant(ui: &Ui, stack: &Stack) -> R {
    ui.dev_sign_in("admin").await?;
    ensure(
        ui.path().await? == "/overview",
        "an admin lands on the overview",
    )?;
    // Switch to the tenant without a config.
    ui.c.find(Locator::Css("#tenant-switch"))
        .await
        .map_err(err)?
        .select_by_value("trial")
        .await
        .map_err(err)?;
    ui.click("#tenant-switch + button").await?;
    ui.wait_for("#sign-out", 10).await?;
    ensure(
        ui.text("#tenant-switch option:checked").await? == "trial",
        "tenant switched",
    )?;

    // The config: a bad URL is refused at its field, then the config is created.
    ui.go("/config").await?;
    ui.fill("#api_url", "ftp://infinity.example.com").await?;
    ui.fill("#app_id", "sim-app").await?;
    ui.fill("#access_key", "sim-access-key").await?;
    ui.fill("#caller_number_pool", "02566823420").await?;
    ui.click("#save-config").await?;
    let e = ui.wait_text("#api_url-error", 10).await?;
    ensure(
        e.contains("http"),
        format!("api_url error at the field: {e}"),
    )?;
    ui.fill("#api_url", &stack.sim_api).await?;
    ui.fill("#access_key", "sim-access-key").await?;
    ui.click("#save-config").await?;
    ui.wait_for("#callback-url", 10).await?;
    let url = ui.text("#callback-url").await?;
    ensure(
        url.contains("/api/v1/infinity/callback/trial/") && !url.ends_with("{secret}"),
        format!("the generated secret is shown once in the callback URL: {url}"),
    )?;
    let page = ui.body().await?;
    ensure(
        !page.contains("sim-access-key"),
        "the access key is never shown",
    )?;
    // Test connection: the simulator's company.
    ui.click("#test-connection").await?;
    let company = ui.wait_text("#test-company", 15).await?;
    ensure(
        company == "Simulated Call Centre",
        format!("test report company: {company}"),
    )?;
    ui.shot("config").await?;

    // Import extensions: two good, one duplicate, one bad line reported.
    ui.go("/pool").await?;
    ui.fill("#numbers", "9001\n9002\n9001\nnot a number!")
        .await?;
    ui.click("#import").await?;
    let report = ui.wait_text("#import-report", 10).await?;
    ensure(
        report.contains("2 imported, 1 already there, 1 not valid"),
        format!("import summary: {report}"),
    )?;
    ensure(
        ui.text("#import-report tr.bad")
            .await?
            .contains("not a number!"),
        "the bad line is reported",
    )?;
    ensure(ui.text("#stat-total").await? == "2", "stats count the pool")?;
    ui.c.execute(
        "document.getElementById('import-h').scrollIntoView();",
        vec![],
    )
    .await
    .map_err(err)?;
    ui.shot("pool").await?;

    // A collector: a bad callback number is refused at its field, then added.
    ui.go("/collectors").await?;
    ui.fill("#collector_id", "carol").await?;
    ui.fill("#display_name", "Carol <b>x</b>").await?;
    ui.fill("#callback_number", "12").await?;
    ui.click("#save-collector").await?;
    ui.wait_for("#callback_number-error", 10).await?;
    ui.fill("#callback_number", "13800138003").await?;
    ui.click("#save-collector").await?;
    ui.wait_for("tr[data-collector='carol']", 10).await?;
    ensure(
        ui.body().await?.contains("Collector carol saved."),
        "saved notice",
    )?;
    ensure(
        ui.text("tr[data-collector='carol']")
            .await?
            .contains("Carol <b>x</b>"),
        "names are shown as text, never as markup",
    )?;
    ui.shot("collectors").await?;
    ui.sign_out().await
}

/// Bob places a call the simulator answers only much later: it holds an extension.
async fn bob_holds_a_line(ui: &Ui, stack: &Stack) -> R<(String, String)> {
    script(stack, Some("13900139001"), 600_000).await;
    ui.dev_sign_in("bob").await?;
    ensure(
        ui.path().await? == "/workbench",
        "a collector lands on the workbench",
    )?;
    ui.fill("#case_id", "case-bob").await?;
    ui.fill("#destination_number", "13900139001").await?;
    ui.click("#call").await?;
    ui.wait_for("#call-panel", 15).await?;
    let p = ui.path().await?;
    let call = p
        .split("call=")
        .nth(1)
        .ok_or_else(|| format!("call id in {p}"))?
        .to_owned();
    let ext = ui.text("#call-panel dl.facts dd:nth-of-type(3)").await?;
    ensure(ext.starts_with("800"), format!("bob's extension: {ext}"))?;
    ui.sign_out().await?;
    Ok((call, ext))
}

async fn alice_calls(ui: &Ui, stack: &Stack, bob_call: &str) -> R<String> {
    script(stack, Some("13900139007"), 5_000).await;
    ui.dev_sign_in("alice").await?;
    // A number that is not one: refused in a collector's words.
    ui.fill("#case_id", "case-7").await?;
    ui.fill("#destination_number", "12").await?;
    ui.click("#call").await?;
    let refusal = ui.wait_text("#refusal", 10).await?;
    ensure(
        refusal.starts_with("This number is not valid"),
        format!("refusal: {refusal}"),
    )?;
    // An emergency number: the compliance gate's refusal (ErrorInfo), in words.
    ui.fill("#case_id", "case-7").await?;
    ui.fill("#destination_number", "110").await?;
    ui.click("#call").await?;
    let refusal = ui.wait_text("#refusal", 10).await?;
    ensure(
        refusal.starts_with("This kind of number is not dialled"),
        format!("compliance refusal: {refusal}"),
    )?;
    // The real call.
    ui.fill("#case_id", "case-7").await?;
    ui.fill("#destination_number", "13900139007").await?;
    ui.click("#call").await?;
    ui.wait_for("#call-state", 15).await?;
    ui.c.execute("window.__stillThisPage = true;", vec![])
        .await
        .map_err(err)?;
    let first = ui.text("#call-state").await?;
    ensure(
        first.starts_with("Ringing") || first.starts_with("Dialing"),
        format!("the call is live first: {first}"),
    )?;
    // It ends on its own while the page stays.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = vec![first];
    loop {
        let s = ui.text("#call-state").await?;
        if seen.last() != Some(&s) {
            seen.push(s.clone());
        }
        if s == "Ended" && ui.c.find(Locator::Css("#recording")).await.is_ok() {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("the call did not end live; states seen: {seen:?}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let same =
        ui.c.execute("return window.__stillThisPage === true;", vec![])
            .await
            .map_err(err)?;
    ensure(same == json!(true), "the page did not reload")?;
    ensure(ui.text("#call-talk").await? == "30s", "talk time shown")?;
    ensure(
        ui.text("#call-result").await? == "connected",
        "result shown",
    )?;
    let src =
        ui.c.find(Locator::Css("#recording"))
            .await
            .map_err(err)?
            .attr("src")
            .await
            .map_err(err)?
            .unwrap_or_default();
    ensure(src.ends_with("/recording"), format!("player source: {src}"))?;
    let p = ui.path().await?;
    let call = p
        .split("call=")
        .nth(1)
        .ok_or_else(|| format!("call id in {p}"))?
        .to_owned();
    ensure(
        ui.c.find(Locator::Css(&format!("#recent tr[data-call-id='{call}']")))
            .await
            .is_ok(),
        "the call is in alice's recent calls",
    )?;
    ui.shot("workbench").await?;
    // A phone-sized screen.
    ui.c.set_window_size(390, 844).await.map_err(err)?;
    ui.go(&format!("/workbench?call={call}")).await?;
    ui.wait_for("#call-state", 10).await?;
    ui.shot("workbench-phone").await?;
    ui.c.set_window_size(1280, 1000).await.map_err(err)?;
    // Another collector's call cannot be opened.
    ui.go(&format!("/calls/{bob_call}")).await?;
    let page = ui.body().await?;
    ensure(
        page.contains("You are not allowed to do this.") && !page.contains("13900139001"),
        format!("bob's call is refused to alice: {page}"),
    )?;
    // Her calls page shows only hers.
    ui.go("/calls").await?;
    ui.wait_for(&format!("tr[data-call-id='{call}']"), 10)
        .await?;
    ensure(
        ui.c.find(Locator::Css(&format!("tr[data-call-id='{bob_call}']")))
            .await
            .is_err(),
        "alice's list holds no call of bob's",
    )?;
    ui.sign_out().await?;
    Ok(call)
}

async fn supervisor_sees_it(ui: &Ui, stack: &Stack, call: &str) -> R {
    ui.dev_sign_in("sam").await?;
    ui.go("/calls").await?;
    ui.wait_for(&format!("tr[data-call-id='{call}']"), 10)
        .await?;
    // A call placed elsewhere appears on the open page, without a reload.
    ui.c.execute("window.__stillThisPage = true;", vec![])
        .await
        .map_err(err)?;
    let placed = stack.json(&[
        "call",
        "make",
        "--tenant",
        "demo",
        "--collector",
        "alice",
        "--case",
        "case-live",
        "--to",
        "13900139003",
    ]);
    let live = placed["call_id"].as_str().unwrap_or_default().to_owned();
    ui.wait_for(&format!("tr[data-call-id='{live}']"), 15)
        .await?;
    let same =
        ui.c.execute("return window.__stillThisPage === true;", vec![])
            .await
            .map_err(err)?;
    ensure(same == json!(true), "the new row arrived live")?;
    // ... and the row follows the call to its end (the simulator answers within moments).
    let result_cell = format!("tr[data-call-id='{live}'] td.re");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let shown = ui.text(&result_cell).await.unwrap_or_default();
        if shown == "connected" {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("the live row never showed the result: {shown:?}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ui.shot("calls").await?;
    // Filtered by result (the gateway's own test proves it pages on the server): alice's two
    // connected calls, not bob's ringing one.
    ui.go("/calls?result=CALL_RESULT_CONNECTED").await?;
    let rows =
        ui.c.find_all(Locator::Css("#calls tbody tr td.re"))
            .await
            .map_err(err)?;
    let mut results = Vec::new();
    for r in rows {
        results.push(r.text().await.map_err(err)?);
    }
    ensure(
        results == ["connected", "connected"],
        format!("connected calls only: {results:?}"),
    )?;
    ui.go(&format!("/calls/{call}")).await?;
    ui.wait_for("#timeline li", 10).await?;
    let timeline = ui.text("#timeline").await?;
    ensure(
        timeline.contains("Call recorded") && timeline.contains("Call ended"),
        format!("timeline: {timeline}"),
    )?;
    ensure(
        ui.text("#record").await?.contains("case-7"),
        "the record's fields",
    )?;
    ui.shot("call").await?;
    ui.go("/overview").await?;
    let today: u32 = ui
        .text("#calls-today")
        .await?
        .parse()
        .map_err(|e| format!("calls today: {e}"))?;
    ensure(
        today == 3,
        format!("calls today counts alice's two and bob's: {today}"),
    )?;
    let rate = ui.text("#connected-rate").await?;
    ensure(
        rate == "67%",
        format!("alice's two of three connected: {rate}"),
    )?;
    ensure(ui.text("#live-now").await? == "1", "bob's call is live")?;
    ensure(
        ui.c.find_all(Locator::Css("figure.chart svg"))
            .await
            .map_err(err)?
            .len()
            == 3,
        "three charts",
    )?;
    ui.shot("overview").await?;
    // A supervisor has no configuration page.
    ui.go("/config").await?;
    ensure(
        ui.body().await?.contains("not available to your role"),
        "config is for administrators",
    )?;
    ui.sign_out().await
}

async fn admin_frees_an_extension(ui: &Ui, extension: &str) -> R {
    ui.dev_sign_in("admin").await?;
    ui.go("/pool?status=in_use").await?;
    let row = format!("tr[data-extension='{extension}']");
    ui.wait_for(&row, 10).await?;
    ensure(
        ui.text("#stat-in-use").await? == "1",
        "one extension in use",
    )?;
    ui.click(&format!("{row} button[value^='release:']"))
        .await?;
    let notice = ui.wait_text("p.flash.ok", 10).await?;
    ensure(notice == "Extension released.", format!("notice: {notice}"))?;
    ensure(
        ui.text("#stat-in-use").await? == "0",
        "nothing in use after the release",
    )?;
    Ok(())
}

async fn forms_need_their_token(ui: &Ui, stack: &Stack) -> R {
    // Every response carries the policy that runs only the console's own script, and the
    // cookies are HttpOnly and SameSite=Strict.
    let r = reqwest::get(format!("{}/sign-in", stack.console))
        .await
        .map_err(err)?;
    let csp = r
        .headers()
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    ensure(
        csp.contains("script-src 'self'")
            && csp.contains("default-src 'none'")
            && !csp.contains("unsafe"),
        format!("CSP: {csp}"),
    )?;
    let cookie = r
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    ensure(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        format!("cookie: {cookie}"),
    )?;
    // In the browser: a form whose token was removed is refused.
    ui.go("/collectors").await?;
    ui.c.execute(
        "document.querySelector('#collector-form input[name=csrf]').remove();",
        vec![],
    )
    .await
    .map_err(err)?;
    ui.fill("#collector_id", "mallory").await?;
    ui.click("#save-collector").await?;
    ensure(
        ui.body().await?.contains("This form has expired"),
        "a post without its token is refused",
    )?;
    // Outside the browser, with the session cookie: no token, a wrong token, a foreign origin.
    let session =
        ui.c.get_named_cookie("cco_session")
            .await
            .map_err(err)?
            .value()
            .to_owned();
    ui.go("/collectors").await?;
    let token =
        ui.c.find(Locator::Css("#collector-form input[name=csrf]"))
            .await
            .map_err(err)?
            .attr("value")
            .await
            .map_err(err)?
            .unwrap_or_default();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(err)?;
    let post = |form: Vec<(&'static str, String)>, origin: &str| {
        http.post(format!("{}/collectors", stack.console))
            .header("cookie", format!("cco_session={session}"))
            .header("origin", origin)
            .form(&form)
            .send()
    };
    let own = stack.console.clone();
    for (form, origin, why) in [
        (
            vec![("collector_id", "m1".to_owned())],
            own.as_str(),
            "no token",
        ),
        (
            vec![("collector_id", "m2".to_owned()), ("csrf", "0".repeat(32))],
            own.as_str(),
            "a wrong token",
        ),
        (
            vec![("collector_id", "m3".to_owned()), ("csrf", token.clone())],
            "https://evil.example",
            "another origin",
        ),
    ] {
        let r = post(form, origin).await.map_err(err)?;
        ensure(r.status() == 403, format!("{why}: {}", r.status()))?;
    }
    let r = post(
        vec![("collector_id", "m4".to_owned()), ("csrf", token)],
        own.as_str(),
    )
    .await
    .map_err(err)?;
    ensure(
        r.status() == 303,
        format!("with its token the form works: {}", r.status()),
    )?;
    Ok(())
}

async fn both_languages(ui: &Ui) -> R {
    ui.go("/workbench").await?;
    ui.click("a.lang").await?;
    ui.wait_for("html[lang='zh-CN']", 10).await?;
    let page = ui.body().await?;
    ensure(
        page.contains("工作台") && page.contains("退出登录") && page.contains("案件 ID"),
        "the workbench in Chinese",
    )?;
    ui.shot("workbench-zh").await?;
    ui.click("a.lang").await?;
    ui.wait_for("html[lang='en']", 10).await?;
    ensure(ui.body().await?.contains("Sign out"), "and back in English")?;
    ui.sign_out().await?;
    // The sign-in page follows the browser's language when nothing was chosen.
    ui.c.delete_cookie("cco_lang").await.map_err(err)?;
    ui.go("/sign-in").await?;
    ensure(
        ui.body().await?.contains("Sign in with a CCO token"),
        "English by the browser",
    )?;
    Ok(())
}

/// A browser-less client of the console: a cookie jar and the form token of the last page.
struct Plain {
    http: reqwest::Client,
    base: String,
    cookies: std::collections::BTreeMap<String, String>,
    csrf: String,
    /// Where the last post redirected to.
    location: String,
}

impl Plain {
    fn new(base: &str) -> Self {
        Self {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            base: base.to_owned(),
            cookies: Default::default(),
            csrf: String::new(),
            location: String::new(),
        }
    }

    fn keep(&mut self, r: &reqwest::Response) {
        for v in r.headers().get_all("set-cookie") {
            let v = v.to_str().unwrap();
            let (kv, attrs) = v.split_once(';').unwrap_or((v, ""));
            let (k, val) = kv.split_once('=').unwrap();
            if attrs.contains("Max-Age=0") {
                self.cookies.remove(k);
            } else {
                self.cookies.insert(k.to_owned(), val.to_owned());
            }
        }
    }

    fn cookie(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    async fn get(&mut self, path: &str) -> (u16, String) {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .header("cookie", self.cookie())
            .send()
            .await
            .unwrap();
        self.keep(&r);
        let status = r.status().as_u16();
        let body = r.text().await.unwrap();
        if let Some(t) = body.split("name=\"csrf\" value=\"").nth(1) {
            self.csrf = t.chars().take(32).collect();
        }
        (status, body)
    }

    async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> (u16, String) {
        let mut all = vec![("csrf", self.csrf.as_str())];
        all.extend_from_slice(form);
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .header("cookie", self.cookie())
            .header("origin", &self.base)
            .form(&all)
            .send()
            .await
            .unwrap();
        self.keep(&r);
        self.location = r
            .headers()
            .get("location")
            .and_then(|l| l.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        (r.status().as_u16(), r.text().await.unwrap())
    }
}

/// Each reason the services give for not placing a call reaches the workbench as a sentence a
/// collector understands (the services' real refusals, not copies of their messages).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_reach_the_workbench_in_a_collectors_words() {
    cco_platform::tls::install_provider();
    let dir = tempfile::tempdir().unwrap();
    let stack = start(dir.path());
    let mut p = Plain::new(&stack.console);
    p.get("/sign-in").await;
    let (status, _) = p.post("/sign-in/dev", &[("person", "0")]).await;
    assert_eq!(status, 303, "the admin signs in");
    let call = async |p: &mut Plain, collector: &str, to: &str| {
        p.get("/workbench").await;
        let idem = idem();
        let (_, body) = p
            .post(
                "/workbench",
                &[
                    ("idem", &idem),
                    ("collector", collector),
                    ("case_id", "case-r"),
                    ("destination_number", to),
                ],
            )
            .await;
        body
    };
    let says = |body: &str, sentence: &str| {
        let shown = body
            .split("role=\"alert\">")
            .nth(1)
            .and_then(|r| r.split('<').next())
            .unwrap_or("no refusal shown");
        assert!(
            body.contains(sentence),
            "expected {sentence:?}, the page says {shown:?}"
        );
    };
    // No callback number.
    p.get("/collectors").await;
    let (status, _) = p
        .post(
            "/collectors",
            &[
                ("collector_id", "dora"),
                ("display_name", "Dora"),
                ("active", "on"),
            ],
        )
        .await;
    assert_eq!(status, 303);
    says(
        &call(&mut p, "dora", "13900139000").await,
        "You have no callback number, so Infinity cannot ring your phone.",
    );
    // Not a number.
    says(
        &call(&mut p, "alice", "12").await,
        "This number is not valid:",
    );
    // Calling switched off, then on again.
    let toggle = || {
        let out = stack.cco(&["config", "toggle", "--tenant", "demo"]);
        assert!(out.status.success(), "config toggle");
    };
    toggle();
    says(
        &call(&mut p, "alice", "13900139000").await,
        "Calling is switched off for your team right now.",
    );
    toggle();
    // Every call holds its line: the team's limit (5), then no free line once it is raised.
    script(&stack, None, 600_000).await;
    for i in 0..5 {
        // A placed call answers with a redirect to its panel: no page, no refusal.
        let body = call(&mut p, "alice", &format!("1390013902{i}")).await;
        assert!(body.is_empty(), "call {i} placed: {body}");
    }
    says(
        &call(&mut p, "alice", "13900139030").await,
        "Your team has reached its limit of calls at the same time.",
    );
    assert!(
        stack
            .cco(&[
                "config",
                "update",
                "--tenant",
                "demo",
                "--max-concurrent-calls",
                "10"
            ])
            .status
            .success()
    );
    // The allocator reads the new cap within its policy cache's life (cache_ttl_ms, 2 s by
    // default): until then the team's limit still answers.
    let no_line = "No free line right now: every extension is busy or offline.";
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut body = call(&mut p, "alice", "13900139031").await;
    while !body.contains(no_line) && Instant::now() < deadline {
        says(
            &body,
            "Your team has reached its limit of calls at the same time.",
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
        body = call(&mut p, "alice", "13900139031").await;
    }
    says(&body, no_line);
    stack.stop();
}

/// A fresh idempotency key for a form posted outside the browser (32 hex characters).
fn idem() -> String {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{:016x}{n:016x}", nanos as u64)
}

/// The id in `<prefix><id>"` of the row `data-<attr>="<key>"` of a page.
fn id_in_row(body: &str, row: &str, prefix: &str) -> Option<String> {
    let rest = body.split(row).nth(1)?;
    let rest = &rest[..rest.find("</tr>")?];
    let id = rest.split(prefix).nth(1)?;
    Some(id[..id.find('"')?].to_owned())
}

/// The pool's and the collectors' buttons through the console, and what a supervisor may not do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_collectors_and_hang_up_through_the_console() {
    cco_platform::tls::install_provider();
    let dir = tempfile::tempdir().unwrap();
    let stack = start(dir.path());
    // An administrator's API key signs in for its tenant; a caller's key does not.
    let mut admin = Plain::new(&stack.console);
    admin.get("/sign-in").await;
    let (status, body) = admin
        .post(
            "/sign-in/key",
            &[("key", "dev-caller-key"), ("tenant", "demo")],
        )
        .await;
    assert!(
        status == 422 && body.contains("This key may not manage tenant demo."),
        "a caller's key is refused: {status}"
    );
    admin.get("/sign-in").await;
    let (status, _) = admin
        .post(
            "/sign-in/key",
            &[("key", "dev-admin-key"), ("tenant", "demo")],
        )
        .await;
    assert_eq!(status, 303, "the admin key signs in");

    // Offline, online, then delete after the confirmation.
    let (_, body) = admin.get("/pool").await;
    let row = "data-extension=\"8001\"";
    let ext = id_in_row(&body, row, "value=\"offline:").expect("8001 has an offline button");
    let act = |what: &str| format!("{what}:{ext}");
    assert_eq!(
        admin
            .post("/pool/action", &[("act", &act("offline"))])
            .await
            .0,
        303
    );
    let (_, body) = admin.get("/pool?status=offline").await;
    assert!(
        body.contains(row) && body.contains(&act("online")),
        "8001 is offline"
    );
    assert_eq!(
        admin
            .post("/pool/action", &[("act", &act("online"))])
            .await
            .0,
        303
    );
    let (_, body) = admin.get("/pool?status=offline").await;
    assert!(!body.contains(row), "8001 is back online");
    let (status, body) = admin.post("/pool/delete", &[("ext", &ext)]).await;
    assert!(
        status == 200 && body.contains("Delete these extensions?"),
        "asks first"
    );
    let (status, _) = admin.post("/pool/delete/confirm", &[("ext", &ext)]).await;
    assert_eq!(status, 303);
    let (_, body) = admin.get("/pool?done=deleted&n=1").await;
    assert!(
        body.contains("1 deleted.") && !body.contains(row),
        "8001 is gone"
    );
    assert!(body.contains("id=\"stat-total\">4<"), "4 extensions left");
    let (_, body) = admin.get("/pool/usage?window=1h").await;
    assert!(body.contains("No leases in this window."), "no leases yet");

    // A supervisor reads the pool but may not take an extension offline or delete a collector.
    let mut sam = Plain::new(&stack.console);
    sam.get("/sign-in").await;
    assert_eq!(sam.post("/sign-in/dev", &[("person", "1")]).await.0, 303);
    let (_, body) = sam.get("/pool").await;
    let other = id_in_row(&body, "data-extension=\"8002\"", "id=\"sel-");
    assert!(other.is_none(), "no selection boxes for a supervisor");
    let (status, body) = sam.post("/pool/action", &[("act", &act("offline"))]).await;
    assert!(status == 403 && body.contains("not available to your role"));
    let (status, _) = sam
        .post("/collectors/delete", &[("collector_id", "bob")])
        .await;
    assert_eq!(status, 403);

    // A long call as alice: the supervisor hangs it up from its page.
    script(&stack, None, 600_000).await;
    admin.get("/workbench").await;
    let key = idem();
    let (status, _) = admin
        .post(
            "/workbench",
            &[
                ("idem", &key),
                ("collector", "alice"),
                ("case_id", "case-h"),
                ("destination_number", "13900139040"),
            ],
        )
        .await;
    assert_eq!(status, 303, "the call is placed");
    let (_, body) = sam.get("/calls").await;
    assert!(body.contains("case-h"), "the supervisor sees the call");
    let id = body
        .split("data-call-id=\"")
        .nth(1)
        .map(|r| r[..32].to_owned())
        .expect("a call row");
    let (_, page) = sam.get(&format!("/calls/{id}")).await;
    assert!(
        page.contains("id=\"hang-up\""),
        "a live call can be hung up"
    );
    // The simulator answers HangupCall as Infinity does for an extension it has no call on
    // (1015: it does not model calls in progress); the supervisor reads that as a sentence.
    let (status, page) = sam.post(&format!("/calls/{id}/hangup"), &[]).await;
    assert!(
        status == 409
            && page.contains("This cannot be done right now.")
            && page.contains("is not in a call"),
        "Infinity's answer reaches the supervisor: {status}"
    );
    let (_, page) = sam.get(&format!("/calls/{id}?hung=1")).await;
    assert!(
        page.contains("Hang-up requested"),
        "the notice after an accepted hang-up"
    );

    // The supervisor frees alice's extension (her call keeps ringing at Infinity), and the
    // usage page then charts that lease.
    sam.get("/pool").await;
    sam.post("/pool/force-release", &[("collector_id", "alice")])
        .await;
    let to = sam.location.clone();
    assert_eq!(to, "/pool?done=forced&n=1", "one extension freed");
    let (_, body) = sam.get(&to).await;
    assert!(body.contains("1 extensions freed.") && body.contains("id=\"stat-in-use\">0<"));
    let (_, body) = sam.get("/pool/usage?window=1h").await;
    assert!(
        body.contains("<figure class=\"chart\">")
            && body.contains("Busy time")
            && body.contains(">1<"),
        "the usage chart holds the freed lease"
    );

    // The admin deletes a collector.
    admin.get("/collectors").await;
    assert_eq!(
        admin
            .post("/collectors/delete", &[("collector_id", "bob")])
            .await
            .0,
        303
    );
    let (_, body) = admin.get("/collectors").await;
    assert!(!body.contains("data-collector=\"bob\""), "bob is gone");
    stack.stop();
}
