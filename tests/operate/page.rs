//! The live status page in headless Chromium while actions run: the cards,
//! states and queue show the pool's real values, the buttons steer it, and
//! polling pauses while the tab is hidden.
use std::time::Duration;

use super::browser::Browser;
use super::*;

/// The page's cards as `[{id, state, text}]`.
const CARDS: &str = "JSON.stringify([...document.querySelectorAll('.card')].map(c => \
                     ({id: c.dataset.workerId, state: c.dataset.state, text: c.innerText})))";

async fn cards(b: &mut Browser) -> Vec<Value> {
    let text = b.eval(CARDS).await;
    serde_json::from_str::<Value>(text.as_str().unwrap()).unwrap().as_array().unwrap().clone()
}

/// Evaluates `condition` every 100 ms until it is true.
async fn until(b: &mut Browser, limit: Duration, condition: &str) {
    let deadline = std::time::Instant::now() + limit;
    let guarded = format!("(() => {{ try {{ return {condition}; }} catch (e) {{ return false; }} }})()");
    while b.eval(&guarded).await != Value::Bool(true) {
        assert!(std::time::Instant::now() < deadline, "the page never had: {condition}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn text_of(b: &mut Browser, id: &str) -> String {
    b.eval(&format!("document.getElementById('{id}').textContent")).await.as_str().unwrap_or_default().to_string()
}

#[tokio::test]
async fn the_page_shows_the_running_pool_and_its_buttons_steer_it() {
    if !common::require_tool("chromium") {
        return;
    }
    let (server, _token) = server_with(2, "");
    let ch = server.channel().await;

    // Some history for the table: a success and a failure.
    let opts = |m: &str, t: &str| ExecOpts { mnemonic: Some(m.into()), target: Some(t.into()), ..Default::default() };
    let mut ok = ActionSpec::sh("echo compiled");
    ok.salt = "page-ok".into();
    run_spec(&ch, "", &ok, &opts("CppCompile", "//app:main")).await.unwrap();
    let mut bad = ActionSpec::sh("echo 'error: expected ; before }' >&2; exit 1");
    bad.salt = "page-bad".into();
    run_spec(&ch, "", &bad, &opts("CppCompile", "//app:broken")).await.unwrap();
    // Two workers busy, two actions waiting.
    let mut running = Vec::new();
    for i in 0..4 {
        let mut spec = ActionSpec::sh("sleep 12");
        spec.salt = format!("page-slow-{i}");
        running.push(start(&ch, &spec, opts("Genrule", &format!("//gen:slow_{i}"))).await.1);
    }
    let status = wait_for(Duration::from_secs(20), "both workers busy and two queued", || async {
        let s = pool_status(&server).await;
        let busy = s["workers"].as_array().unwrap().iter().filter(|w| w["pid"].is_u64()).count();
        (busy == 2 && s["queue"]["queued"] == 2).then_some(s)
    })
    .await;

    let mut b = Browser::start(1280, 860).await;
    b.navigate(&format!("{}/", server.http_url())).await;
    until(&mut b, Duration::from_secs(20), "document.body.dataset.loaded === 'true'").await;
    b.eval(&format!(
        "(() => {{ const t = document.getElementById('token'); t.value = '{TOKEN}'; \
         t.dispatchEvent(new Event('change')); return true; }})()"
    ))
    .await;

    let shown = cards(&mut b).await;
    assert_eq!(shown.len(), 2, "{shown:?}");
    for card in &shown {
        let w = worker(&status, card["id"].as_str().unwrap());
        assert_eq!(card["state"], "RUNNING", "{card}");
        let text = card["text"].as_str().unwrap();
        assert!(text.contains(&format!("pid {}", w["pid"])), "the card shows the action's pid {}: {text}", w["pid"]);
        assert!(text.contains("Genrule"), "{text}");
        assert!(text.contains("//gen:slow_"), "{text}");
    }
    assert_eq!(text_of(&mut b, "summary-queued").await, "2");
    assert_eq!(text_of(&mut b, "summary-running").await, "2");
    assert!(text_of(&mut b, "summary-active").await.starts_with("2 / "));
    let rows = b.eval("document.querySelectorAll('#recent tr').length").await;
    assert_eq!(rows, 2, "the two finished actions are listed");
    let failed = b.eval("document.querySelector('#recent tr[data-outcome=failed]').innerText").await;
    assert!(failed.as_str().unwrap().contains("//app:broken"), "{failed}");

    let png = b.screenshot_png().await;
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "a screenshot of the page");
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    std::fs::write(&out, &png).unwrap();
    if std::env::var_os("RE_SERVER_UPDATE_SCREENSHOT").is_some() {
        std::fs::write(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/status-page.png"), &png).unwrap();
    }

    // Abort asks first: declined, nothing happens; accepted, the action stops.
    let victim = shown[1]["id"].as_str().unwrap().to_string();
    let click =
        |id: &str, button: &str| format!("document.querySelector('[data-worker-id=\"{id}\"] button.{button}').click()");
    b.eval(&format!("window.confirm = () => false; {}", click(&victim, "abort"))).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(worker(&pool_status(&server).await, &victim)["action"].is_object(), "a declined abort stopped nothing");
    b.eval(&format!("window.confirm = () => true; {}", click(&victim, "abort"))).await;
    let aborted = wait_for(Duration::from_secs(10), "an aborted action in the recent list", || async {
        let r = http::get(&format!("{}/api/actions/recent", server.http_url()), None).await.json();
        r["actions"].as_array().unwrap().iter().find(|a| a["outcome"] == "aborted").cloned()
    })
    .await;
    assert_eq!(aborted["worker"], victim.as_str());

    // Drain from its button: the card turns DRAINING, then DEAD once its action ends.
    let drained = shown[0]["id"].as_str().unwrap().to_string();
    b.eval(&click(&drained, "drain")).await;
    let card_draining =
        format!("document.querySelector('[data-worker-id=\"{drained}\"]').dataset.state === 'DRAINING'");
    until(&mut b, Duration::from_secs(10), &card_draining).await;
    assert!(text_of(&mut b, "message").await.contains(&format!("Draining {drained}")));
    assert_eq!(worker(&pool_status(&server).await, &drained)["state"], "DRAINING");

    // Hidden: no polling; shown again: it refreshes at once.
    b.eval(
        "window.__fetches = 0; const f = window.fetch; window.fetch = (...a) => { window.__fetches++; return f(...a); }; \
         Object.defineProperty(document, 'hidden', {configurable: true, get: () => true}); true",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(5600)).await;
    assert_eq!(b.eval("window.__fetches").await, 0, "a hidden page polled");
    b.eval(
        "Object.defineProperty(document, 'hidden', {configurable: true, get: () => false}); \
         document.dispatchEvent(new Event('visibilitychange')); true",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(b.eval("window.__fetches").await.as_u64().unwrap() >= 2, "a shown page refreshes at once");

    // The rest stop with the server.
    for h in running {
        h.abort();
    }
}
