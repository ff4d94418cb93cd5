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
