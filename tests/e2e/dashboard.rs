//! The dashboard in a real browser: headless Chromium (Debian's package, driven
//! through chromedriver with fantoccini) opens main's page while the system runs,
//! sees every instance listed with live numbers that change, and saves a
//! screenshot to target/dashboard.png. Skipped, saying so, where chromium or
//! chromedriver is not installed (scripts/install-chromium.sh installs them).

use fantoccini::{ClientBuilder, Locator};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use switchboard_bus::CallOptions;
use switchboard_testkit::eventually;

use crate::observe::get;
use crate::supervisor::{app, Supervised};

pub(crate) fn found(bin: &str) -> Option<PathBuf> {
    ["/usr/bin", "/usr/local/bin", "/usr/lib/chromium"]
        .iter()
        .map(|d| Path::new(d).join(bin))
        .find(|p| p.exists())
}

/// chromedriver on a free port; killed when dropped.
pub(crate) struct Driver(std::process::Child, pub(crate) String);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) async fn driver(bin: &Path) -> Driver {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(bin)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let up = eventually(Duration::from_secs(10), || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
    })
    .await;
    assert!(up, "chromedriver did not listen");
    Driver(child, url)
}

/// A headless Chromium session through chromedriver at `driver`, with a
/// profile folder of its own and a window of `size` (`W,H`).
pub(crate) async fn session(
    driver: &str,
    chromium: &Path,
    profile: &Path,
    size: &str,
) -> fantoccini::Client {
    let caps = serde_json::json!({
        "goog:chromeOptions": {
            "binary": chromium.display().to_string(),
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", format!("--window-size={size}"),
                format!("--user-data-dir={}", profile.display()),
            ]
        }
    });
    let caps = caps.as_object().unwrap().clone().into_iter().collect();
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(driver)
        .await
        .expect("a WebDriver session")
}

/// The text of every row of the instances table.
async fn rows(c: &fantoccini::Client) -> Vec<String> {
    let mut out = Vec::new();
    for row in c
        .find_all(Locator::Css("#instances tr"))
        .await
        .unwrap_or_default()
    {
        out.push(row.text().await.unwrap_or_default());
    }
    out
}

#[tokio::test]
async fn the_dashboard_shows_every_instance_live_in_a_browser() {
    let (Some(chromium), Some(chromedriver)) = (found("chromium"), found("chromedriver")) else {
        eprintln!(
            "skipped: chromium and chromedriver are not installed (scripts/install-chromium.sh)"
        );
        return;
    };
    // A supervisor of two demo apps (one with two instances) and its broker.
    let s = Supervised::start(&format!(
        "{}{}",
        app(
            "alpha",
            &[],
            "instances = 2\ninstance_var = \"SB_INSTANCE\""
        ),
        app("beta", &["alpha"], "")
    ))
    .await;
    assert!(s.all_online(3).await);
    let http = s.http();
    let driver = driver(&chromedriver).await;
    let profile = tempfile::tempdir().unwrap();
    let client = session(&driver.1, &chromium, profile.path(), "1400,1000").await;
    client.goto(&format!("{http}/")).await.unwrap();

    // Every instance is listed, with the broker.
    let listed = eventually(Duration::from_secs(15), || async {
        let r = rows(&client).await;
        ["alpha01", "alpha02", "beta", "broker"].iter().all(|i| {
            r.iter()
                .any(|row| row.contains(i) && row.contains("online"))
        })
    })
    .await;
    assert!(listed, "{:?}", rows(&client).await);
    let live = client
        .find(Locator::Id("live"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(live, "live", "the page follows the event stream");

    // Live numbers: traffic makes the handled counts move without a reload.
    let before = rows(&client).await;
    for _ in 0..20 {
        s.bus
            .call("alpha", "echo", b"\x80".to_vec(), CallOptions::default())
            .await
            .unwrap();
    }
    let moved = eventually(Duration::from_secs(10), || async {
        rows(&client).await != before
    })
    .await;
    assert!(moved, "the instance rows never changed: {before:?}");
    // The services' table comes from the merged metrics, read on their own
    // cadence (each instance's `$metrics`): on a loaded machine it follows the
    // rows a little later.
    let services = || async {
        client
            .find(Locator::Id("services"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let listed = eventually(Duration::from_secs(15), || async {
        services().await.contains("alpha")
    })
    .await;
    assert!(listed, "{}", services().await);

    // Let the sparklines draw a few points, then the picture.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let png = client.screenshot().await.unwrap();
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/dashboard.png");
    std::fs::write(&out, &png).unwrap();
    assert!(png.len() > 10_000, "a real picture");
    client.close().await.unwrap();
    assert_eq!(get(&http, "/health").await.0, 200);
}
