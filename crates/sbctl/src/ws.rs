//! `ws-send`: one request through the gateway, as a WebSocket client would.

use crate::Failure;
use anyhow::Context;
use std::path::Path;
use std::time::Duration;
use switchboard_bus::proto::ErrorCode;

/// Where `ws-send` connects, and how.
pub(crate) struct Gateway<'a> {
    pub(crate) url: &'a str,
    pub(crate) token: Option<&'a str>,
    /// PEM certificates to trust for `wss://` instead of the system's roots.
    pub(crate) ca_file: Option<&'a Path>,
}

/// The TLS connector for `wss://` with `--ca-file`: rustls (ring) trusting only
/// the certificates in that file. Without it, tokio-tungstenite's own rustls
/// connector with the system's roots.
fn connector(ca_file: &Path) -> Result<tokio_tungstenite::Connector, Failure> {
    use tokio_rustls::rustls::{self, pki_types::pem::PemObject};
    let usage = |e: String| Failure::Usage(anyhow::anyhow!("--ca-file {}: {e}", ca_file.display()));
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca_file)
        .map_err(|e| usage(e.to_string()))?
    {
        roots
            .add(cert.map_err(|e| usage(e.to_string()))?)
            .map_err(|e| usage(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(usage("no certificate in it".into()));
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| usage(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_tungstenite::Connector::Rustls(std::sync::Arc::new(
        config,
    )))
}

pub(crate) async fn ws_send(
    service: &str,
    op: &str,
    data: &str,
    gateway: &Gateway<'_>,
    listen_ms: u64,
    timeout_ms: u64,
) -> Result<(), Failure> {
    let (url, token) = (gateway.url, gateway.token);
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let data: serde_json::Value = serde_json::from_str(data)
        .with_context(|| format!("data is not JSON: {data}"))
        .map_err(Failure::Usage)?;
    let url = crate::bench::with_token(url, token);
    let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout_ms);
    let connector = gateway.ca_file.map(connector).transpose()?;
    let connect = tokio_tungstenite::connect_async_tls_with_config(&url, None, false, connector);
    let (mut ws, _) = tokio::time::timeout_at(deadline, connect)
        .await
        .map_err(|_| Failure::Unreachable(format!("no answer from {url}")))?
        .map_err(|e| Failure::Unreachable(format!("{url}: {e}")))?;
    let mut frame = serde_json::json!({ "id": 1, "op": op, "data": data });
    if service != "-" {
        frame["to"] = serde_json::json!(service);
    }
    ws.send(Message::Text(frame.to_string().into()))
        .await
        .map_err(|e| Failure::Unreachable(e.to_string()))?;
    let mut reply: Option<serde_json::Value> = None;
    let listen_until = tokio::time::Instant::now() + Duration::from_millis(listen_ms);
    loop {
        let until = if reply.is_some() {
            listen_until
        } else {
            deadline
        };
        let next = match tokio::time::timeout_at(until, ws.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => text,
            Ok(Some(Ok(Message::Close(frame)))) => {
                if reply.is_none() {
                    return Err(Failure::Unreachable(format!(
                        "closed by the gateway: {frame:?}"
                    )));
                }
                break;
            }
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(e))) => return Err(Failure::Unreachable(e.to_string())),
            Ok(None) | Err(_) => break,
        };
        println!("{next}");
        let value: serde_json::Value = serde_json::from_str(next.as_str()).unwrap_or_default();
        if value.get("id") == Some(&serde_json::json!(1)) {
            reply = Some(value);
            if listen_ms == 0 {
                break;
            }
        }
    }
    let _ = ws.close(None).await;
    match reply {
        None => Err(Failure::Reply(switchboard_bus::Error::new(
            ErrorCode::Timeout,
            "no reply from the gateway",
        ))),
        Some(r) if r["ok"] == serde_json::json!(true) => Ok(()),
        Some(r) => {
            let code: ErrorCode =
                serde_json::from_value(r["error"]["code"].clone()).unwrap_or(ErrorCode::Unknown);
            let message = r["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            Err(Failure::Reply(switchboard_bus::Error::new(code, message)))
        }
    }
}
