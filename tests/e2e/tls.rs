//! TLS on the gateway's port: `wss://` and `https://` with a certificate made at
//! test time (rcgen), checked by a client that trusts only that certificate.

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use switchboard_testkit::bin_path;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::Message;

use crate::harness::System;

struct Cert {
    _dir: tempfile::TempDir,
    cert: String,
    key: String,
    der: rustls::pki_types::CertificateDer<'static>,
}

fn make_cert() -> Cert {
    let dir = tempfile::tempdir().unwrap();
    let made = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.key_pair.serialize_pem()).unwrap();
    Cert {
        cert: cert.display().to_string(),
        key: key.display().to_string(),
        der: made.cert.der().clone(),
        _dir: dir,
    }
}

fn connector(trusted: &rustls::pki_types::CertificateDer<'static>) -> TlsConnector {
    let mut roots = RootCertStore::empty();
    roots.add(trusted.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

async fn tls_to(
    port: u16,
    connector: &TlsConnector,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    let name = ServerName::try_from("localhost").unwrap();
    connector.connect(name, tcp).await
}

async fn https_get(port: u16, connector: &TlsConnector, path: &str) -> String {
    let mut tls = tls_to(port, connector).await.unwrap();
    tls.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut response)).await;
    String::from_utf8_lossy(&response).into_owned()
}

#[tokio::test]
async fn wss_and_https_are_served_on_one_port() {
    let cert = make_cert();
    let system =
        System::start_with(false, &["--tls-cert", &cert.cert, "--tls-key", &cert.key]).await;
    let port: u16 = system
        .ws
        .strip_prefix("wss://127.0.0.1:")
        .unwrap_or_else(|| panic!("the gateway announces wss://: {}", system.ws))
        .parse()
        .unwrap();
    let trusting = connector(&cert.der);

    // A wss:// round trip through chat and back.
    let tls = tls_to(port, &trusting).await.expect("TLS handshake");
    let (mut ws, _) = tokio_tungstenite::client_async(format!("wss://localhost:{port}/ws"), tls)
        .await
        .expect("WebSocket over TLS");
    ws.send(Message::Text(
        json!({"id": 1, "to": "chat", "op": "$echo", "data": {"over": "tls"}})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("a reply")
        .unwrap()
        .unwrap();
    let reply: Value = serde_json::from_str(reply.to_text().unwrap()).unwrap();
    assert_eq!(reply["ok"], true, "{reply}");
    assert_eq!(reply["data"], json!({"over": "tls"}));

    // https:// on the same port: health and the demo page.
    let health = https_get(port, &trusting, "/health").await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    let page = https_get(port, &trusting, "/").await;
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(page.contains("text/html"), "{page}");

    // Plain ws:// to the TLS port gets no WebSocket; nor does a client that
    // does not trust the certificate. The server stays up for the next one.
    assert!(
        tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/ws"))
            .await
            .is_err()
    );
    let stranger = connector(&make_cert().der);
    assert!(tls_to(port, &stranger).await.is_err(), "untrusted cert");
    let again = https_get(port, &trusting, "/health").await;
    assert!(again.starts_with("HTTP/1.1 200"), "{again}");
    ws.close(None).await.ok();
}

/// A key that is not the certificate's, or one flag without the other: the
/// gateway does not start, and says why (exit 64, bad usage).
#[tokio::test]
async fn a_bad_certificate_is_refused_at_start() {
    let one = make_cert();
    let other = make_cert();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(bin_path("receive"))
            .args(["--listen", "127.0.0.1:0", "--broker", "tcp://127.0.0.1:1"])
            .args(args)
            .env_remove("SB_TLS_CERT")
            .env_remove("SB_TLS_KEY")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(&["--tls-cert", &one.cert, "--tls-key", &other.key]);
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("does not fit the certificate"), "{err}");
    let (code, err) = run(&["--tls-cert", &one.key, "--tls-key", &one.key]);
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("no certificate"), "{err}");
    let (code, err) = run(&["--tls-cert", &one.cert]);
    assert_eq!(code, Some(2), "clap: a missing --tls-key: {err}");
}

/// `sbctl ws-send` speaks `wss://`: with `--ca-file` trusting the gateway's
/// certificate the request goes through; without it the system's roots do not
/// know a self-signed certificate, and the error says so (it used to be "TLS
/// support not compiled in", exit 69, whatever the certificate).
#[tokio::test]
async fn sbctl_ws_send_speaks_wss() {
    let cert = make_cert();
    let system =
        System::start_with(false, &["--tls-cert", &cert.cert, "--tls-key", &cert.key]).await;
    let port = system
        .ws
        .rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches("/ws");
    let url = format!("wss://localhost:{port}/ws");
    let sbctl = |extra: &[&str]| {
        std::process::Command::new(switchboard_testkit::bin_path("sbctl"))
            .args([
                "ws-send",
                "chat",
                "$echo",
                r#"{"over":"tls"}"#,
                "--url",
                &url,
            ])
            .args(extra)
            .output()
            .unwrap()
    };
    let out = sbctl(&["--ca-file", &cert.cert]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout.contains(r#""over":"tls""#), "{stdout}");
    let out = sbctl(&[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{out:?}");
    assert!(!stderr.contains("not compiled in"), "{stderr}");
    assert!(stderr.to_lowercase().contains("certificate"), "{stderr}");
}
