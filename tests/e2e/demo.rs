//! The demo app in a real browser: two headless Chromium sessions open it on
//! two gateways (A open, B with tokens), chat, see each other's dots move, and
//! A's gateway is stopped and started: A's page reconnects and shows the
//! messages it missed, once each, in order. Screenshots: target/demo-ada.png,
//! target/demo-bob.png. Skipped, saying so, without chromium and chromedriver.

use fantoccini::{Client, Locator};
use serde_json::Value;
use std::path::Path;
use std::time::Duration;
use switchboard_testkit::{bin_path, eventually};

use crate::client_js::{DemoSystem, DEMO_SECRET};
use crate::dashboard::{driver, found};

async fn session(driver: &str, chromium: &Path, profile: &Path) -> Client {
    crate::dashboard::session(driver, chromium, profile, "1280,860").await
}

/// Runs `script` in the page and returns its value.
async fn js(c: &Client, script: &str) -> Value {
    c.execute(script, vec![]).await.unwrap_or(Value::Null)
}

async fn text(c: &Client, id: &str) -> String {
    js(
        c,
        &format!("return document.getElementById('{id}').textContent"),
    )
    .await
    .as_str()
    .unwrap_or_default()
    .to_owned()
}

/// The chat as the page shows it: (seq, author, text, caught up?) in page order.
async fn messages(c: &Client) -> Vec<(u64, String, String, bool)> {
    let v = js(
        c,
        "return [...document.querySelectorAll('#messages li[data-seq]')].map(li => \
         [Number(li.dataset.seq), li.querySelector('.author').textContent, \
          li.querySelector('.text').textContent, li.classList.contains('caught-up')])",
    )
    .await;
    serde_json::from_value(v).unwrap_or_default()
}

/// Where the page draws a person, by display name: (x, y).
async fn position(c: &Client, name: &str) -> Option<(i64, i64)> {
    let v = js(
        c,
        &format!(
            "const li = [...document.querySelectorAll('#people li')].find(l => l.dataset.name === '{name}'); \
             return li ? [Number(li.dataset.x), Number(li.dataset.y)] : null"
        ),
    )
    .await;
    serde_json::from_value(v).ok().flatten()
}

async fn type_into(c: &Client, id: &str, text: &str) {
    let el = c.find(Locator::Id(id)).await.unwrap();
    el.clear().await.unwrap();
    el.send_keys(text).await.unwrap();
}

async fn say(c: &Client, text: &str) {
    type_into(c, "say", &format!("{text}\u{E007}")).await;
}

async fn wait(what: &str, check: impl AsyncFn() -> bool) {
    assert!(
        eventually(Duration::from_secs(20), || check()).await,
        "timed out waiting for {what}"
    );
}

#[tokio::test]
async fn two_people_chat_and_move_and_one_catches_up_after_its_gateway_restarts() {
    let (Some(chromium), Some(chromedriver)) = (found("chromium"), found("chromedriver")) else {
        eprintln!(
            "skipped: chromium and chromedriver are not installed (scripts/install-chromium.sh)"
        );
        return;
    };
    let system = DemoSystem::start().await;
    let token = std::process::Command::new(bin_path("sbctl"))
        .args(["token", "--sub", "bob"])
        .env("SB_AUTH_SECRET", DEMO_SECRET)
        .output()
        .unwrap();
    assert!(token.status.success());
    let token = String::from_utf8(token.stdout).unwrap().trim().to_owned();

    let driver = driver(&chromedriver).await;
    let (pa, pb) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let ada = session(&driver.1, &chromium, pa.path()).await;
    let bob = session(&driver.1, &chromium, pb.path()).await;
    ada.goto(&format!("http://{}/", system.a)).await.unwrap();
    bob.goto(&format!("http://{}/", system.b)).await.unwrap();

    // Ada's gateway is open; Bob's asks for a token, and shows how to make one.
    type_into(&ada, "name", "Ada").await;
    ada.find(Locator::Id("enter-button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait("bob's token box", async || {
        js(&bob, "return !document.getElementById('token-box').hidden").await == Value::Bool(true)
    })
    .await;
    type_into(&bob, "name", "Bob").await;
    assert!(text(&bob, "token-cmd")
        .await
        .contains("sbctl token --sub Bob"));
    type_into(&bob, "token", &token).await;
    bob.find(Locator::Id("enter-button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    for (who, page) in [("ada", &ada), ("bob", &bob)] {
        wait(&format!("{who} live"), async || {
            text(page, "status").await == "live"
        })
        .await;
    }
    assert!(
        text(&bob, "me").await.contains("bob"),
        "the token's sub is Bob's user"
    );

    // They chat, and each sees the other's message under the other's name.
    say(&ada, "hello from Ada").await;
    wait("bob sees ada's message", async || {
        messages(&bob)
            .await
            .iter()
            .any(|m| m.1 == "Ada" && m.2 == "hello from Ada")
    })
    .await;
    say(&bob, "hi Ada <b>not bold</b>").await;
    wait("ada sees bob's message", async || {
        messages(&ada)
            .await
            .iter()
            .any(|m| m.1 == "Bob" && m.2 == "hi Ada <b>not bold</b>")
    })
    .await;
    assert_eq!(
        js(
            &ada,
            "return document.querySelectorAll('#messages b').length"
        )
        .await,
        serde_json::json!(0),
        "a message is text, never HTML"
    );

    // Each sees the other's dot; Ada moves with the arrow keys and Bob sees it.
    wait("ada on bob's map", async || {
        position(&bob, "Ada").await.is_some()
    })
    .await;
    wait("bob on ada's map", async || {
        position(&ada, "Bob").await.is_some()
    })
    .await;
    let before = position(&bob, "Ada").await.unwrap();
    let canvas = ada.find(Locator::Id("map")).await.unwrap();
    canvas.click().await.ok();
    let right = "\u{E014}".repeat(5);
    canvas.send_keys(&right).await.unwrap();
    let arrow_down = "\u{E015}".repeat(3);
    canvas.send_keys(&arrow_down).await.unwrap();
    wait("ada's dot moves on bob's map", async || {
        position(&bob, "Ada").await.is_some_and(|now| now != before)
    })
    .await;
    let after_keys = position(&ada, "Ada").await.unwrap();
    wait("bob sees where ada is", async || {
        position(&bob, "Ada").await == Some(after_keys)
    })
    .await;

    // Ada's gateway goes away; Bob talks meanwhile; it comes back.
    let stop = system.s.sbctl(&["stop", "edge_a"]);
    assert!(stop.status.success(), "{stop:?}");
    wait("ada's page notices", async || {
        text(&ada, "status").await != "live"
    })
    .await;
    for text in ["while you were away 1", "while you were away 2"] {
        say(&bob, text).await;
    }
    wait("bob's messages saved", async || {
        messages(&bob)
            .await
            .iter()
            .filter(|m| m.2.starts_with("while you were away"))
            .count()
            == 2
    })
    .await;
    let start = system.s.sbctl(&["start", "edge_a"]);
    assert!(start.status.success(), "{start:?}");
    wait("ada live again", async || {
        text(&ada, "status").await == "live"
    })
    .await;
    wait("ada caught up", async || {
        messages(&ada).await.iter().filter(|m| m.3).count() == 2
    })
    .await;
    let seen = messages(&ada).await;
    let missed: Vec<_> = seen.iter().filter(|m| m.3).map(|m| m.2.as_str()).collect();
    assert_eq!(missed, ["while you were away 1", "while you were away 2"]);
    let seqs: Vec<u64> = seen.iter().map(|m| m.0).collect();
    let mut sorted = seqs.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(seqs, sorted, "in order, once each");
    // Back on the map, and the chat goes on live.
    say(&bob, "welcome back").await;
    wait("live after the gap", async || {
        messages(&ada).await.iter().any(|m| m.2 == "welcome back")
    })
    .await;
    wait("ada back on bob's map", async || {
        position(&bob, "Ada").await.is_some()
    })
    .await;

    tokio::time::sleep(Duration::from_millis(600)).await;
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target");
    for (name, page) in [("demo-ada.png", &ada), ("demo-bob.png", &bob)] {
        let png = page.screenshot().await.unwrap();
        assert!(png.len() > 10_000, "a real picture");
        std::fs::write(out.join(name), png).unwrap();
    }
    ada.close().await.ok();
    bob.close().await.ok();
}
