//! A peer written from docs/protocol.md that gets a control reply's shape
//! wrong: `sbctl` says whose reply it could not read and exits 76 (sysexits'
//! EX_PROTOCOL), not 64 (bad usage: the operator's command was fine).

use std::process::Command;
use switchboard_testkit::{bin_path, Child};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sbctl_exits_76_naming_the_peer_on_a_malformed_info_reply() {
    switchboard_testkit::trace_init();
    let broker = Child::broker("tcp://127.0.0.1:0", &[]).unwrap();
    let endpoint = broker.first_line.clone().unwrap();
    // `$info` answered with a string, not the documented map.
    let peer = crate::prometheus::lying_peer(&endpoint, "liar01", "not an info".into()).await;
    let out = tokio::task::spawn_blocking(move || {
        Command::new(bin_path("sbctl"))
            .args(["--broker", &endpoint, "info", "liar"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    peer.abort();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(76), "{stderr}");
    assert!(
        stderr.contains("malformed reply from liar01 to $info"),
        "{stderr}"
    );
}

/// The field names docs/protocol.md gives for `op`'s reply (the first `{…}`
/// of its row in the control replies table, or of the array's element).
fn documented_fields(op: &str) -> std::collections::BTreeSet<String> {
    let doc = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/protocol.md"),
    )
    .unwrap();
    let row = doc
        .lines()
        .find(|l| l.starts_with(&format!("| `{op}` |")))
        .unwrap_or_else(|| panic!("docs/protocol.md has no row for {op}"));
    let reply = row.split(" | ").nth(2).unwrap();
    let inner = reply.split_once('{').unwrap().1.split_once('}').unwrap().0;
    inner
        .split(", ")
        .map(|f| f.split(':').next().unwrap().trim().to_owned())
        .collect()
}

/// docs/protocol.md's control reply shapes are the ones real services send:
/// a peer written from the document alone answers what main and sbctl read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_control_replies_are_what_a_service_sends() {
    use switchboard_bus::{proto, CallOptions};
    use switchboard_testkit::{client, spawn_echo_process, wait_ready};
    switchboard_testkit::trace_init();
    let broker = Child::broker("tcp://127.0.0.1:0", &[]).unwrap();
    let endpoint = broker.first_line.clone().unwrap();
    let _echo = spawn_echo_process(&endpoint, "alpha", "alpha01", &[]).unwrap();
    let bus = client(&endpoint, "t-doc", None).await;
    assert!(wait_ready(&bus, "alpha01", std::time::Duration::from_secs(10)).await);
    let call = |op: &'static str, body: Vec<u8>| {
        let bus = bus.clone();
        async move {
            let reply = bus
                .call("alpha", op, body, CallOptions::default())
                .await
                .unwrap();
            proto::from_body::<serde_json::Value>(&reply.body).unwrap()
        }
    };
    let keys = |v: &serde_json::Value| -> std::collections::BTreeSet<String> {
        v.as_object().unwrap().keys().cloned().collect()
    };
    let health = call("$health", Vec::new()).await;
    assert_eq!(keys(&health), documented_fields("$health"), "{health}");
    let info = call("$info", Vec::new()).await;
    assert_eq!(keys(&info), documented_fields("$info"), "{info}");
    // A span of a request it handled.
    let trace = "00000000000000aa";
    let options = CallOptions {
        trace: trace.into(),
        ..CallOptions::default()
    };
    bus.call("alpha", "echo", proto::to_body(&"x").unwrap(), options)
        .await
        .unwrap();
    let spans = call(
        "$trace",
        proto::to_body(&serde_json::json!({"trace": trace})).unwrap(),
    )
    .await;
    let span = spans.as_array().unwrap().first().cloned().expect("a span");
    assert_eq!(keys(&span), documented_fields("$trace"), "{spans}");
    let metrics = call("$metrics", Vec::new()).await;
    assert!(metrics.is_string(), "{metrics}");
}
