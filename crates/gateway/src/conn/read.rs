//! The read loop of a connection: frames, the rate limit, pings and idle
//! detection, token expiry and the go-away window on shutdown.

use futures::StreamExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchboard_bus::proto::{self, ErrorCode};
use tokio_tungstenite::tungstenite::error::CapacityError;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_util::sync::CancellationToken;

use super::{
    Client, Why, CLOSE_AUTH_TIMEOUT, CLOSE_EXPIRED, CLOSE_IDLE, CLOSE_POLICY, CLOSE_TOO_BIG,
};
use crate::wire;

/// Token bucket for the per-connection request rate.
struct Bucket {
    tokens: f64,
    last: Instant,
    rate: f64,
    burst: f64,
    /// Requests refused in a row; past `burst` of them the client is flooding.
    refused: u32,
}

impl Bucket {
    fn take(&mut self) -> bool {
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.refused = 0;
            true
        } else {
            self.refused += 1;
            false
        }
    }
}

impl Client {
    pub(super) async fn read_loop<S>(
        self: Arc<Self>,
        mut stream: S,
        shutdown: &CancellationToken,
    ) -> Why
    where
        S: futures::Stream<Item = Result<Message, WsError>> + Unpin,
    {
        let settings = &self.gw.settings;
        let mut bucket = Bucket {
            tokens: f64::from(settings.rate_burst),
            last: Instant::now(),
            rate: f64::from(settings.rate_per_sec),
            burst: f64::from(settings.rate_burst.max(1)),
            refused: 0,
        };
        let idle = Duration::from_millis(settings.idle_timeout_ms);
        let mut ping =
            tokio::time::interval(Duration::from_millis(settings.ping_interval_ms.max(10)));
        ping.tick().await;
        let mut last_seen = Instant::now();
        // The token's end (or the auth deadline): one timer, reset only when the
        // end moves (a re-authentication).
        let far = Duration::from_secs(365 * 24 * 3600);
        let mut ends_at = 0;
        let expiry = tokio::time::sleep(far);
        tokio::pin!(expiry);
        // On shutdown the client is told to go away first and served for a short
        // window, so that what it sent before it saw the notice is answered.
        let goaway = tokio::time::sleep(far);
        tokio::pin!(goaway);
        let mut going = false;
        loop {
            let end = self.expires_ms.load(Ordering::Relaxed);
            if end != ends_at {
                ends_at = end;
                let left = match end {
                    0 => far,
                    end => Duration::from_millis(end.saturating_sub(proto::now_ms())),
                };
                expiry.as_mut().reset(tokio::time::Instant::now() + left);
            }
            tokio::select! {
                () = shutdown.cancelled(), if !going => {
                    going = true;
                    let binary = self.out.binary.load(Ordering::Relaxed);
                    self.out.outbox.reply(wire::goaway("server shutting down: reconnect", binary));
                    let window = Duration::from_millis(settings.goaway_ms);
                    goaway.as_mut().reset(tokio::time::Instant::now() + window);
                }
                () = &mut goaway, if going => return Why::Shutdown,
                () = self.out.outbox.closing.cancelled() => return Why::Closing,
                () = &mut expiry => {
                    if self.user().is_some() {
                        self.out.outbox.close(CLOSE_EXPIRED, "token expired");
                    } else {
                        self.out.outbox.close(CLOSE_AUTH_TIMEOUT, "not authenticated in time");
                    }
                    return Why::Closing;
                }
                _ = ping.tick() => {
                    if last_seen.elapsed() >= idle {
                        self.out.outbox.close(CLOSE_IDLE, "idle timeout: no frame or pong");
                        return Why::Closing;
                    }
                    self.out.outbox.reply(Message::Ping(bytes::Bytes::from_static(b"sb")));
                }
                frame = stream.next() => {
                    let msg = match frame {
                        None => return Why::ClientGone,
                        Some(Err(WsError::Capacity(CapacityError::MessageTooLong { size, max_size }))) => {
                            tracing::debug!(session = %self.session, size, max_size, "frame too large");
                            self.out.outbox.close(CLOSE_TOO_BIG, &format!("frame of {size} bytes exceeds {max_size}"));
                            return Why::Closing;
                        }
                        Some(Err(e)) => {
                            tracing::debug!(session = %self.session, error = %e, "read error");
                            return Why::ClientGone;
                        }
                        Some(Ok(msg)) => msg,
                    };
                    last_seen = Instant::now();
                    match msg {
                        Message::Text(_) | Message::Binary(_) => {
                            let binary = matches!(msg, Message::Binary(_));
                            if binary {
                                self.out.binary.store(true, Ordering::Relaxed);
                            }
                            if !bucket.take() {
                                if bucket.refused > settings.rate_burst {
                                    self.out.outbox.close(CLOSE_POLICY, "flooding past the rate limit");
                                    return Why::Closing;
                                }
                                let id = wire::parse(&msg).map(|m| m.id).unwrap_or_default();
                                let text = format!("rate limit: {} requests/s", settings.rate_per_sec);
                                self.out.outbox.reply(wire::error(&id, ErrorCode::Overloaded, &text, binary));
                                continue;
                            }
                            self.on_frame(&msg, binary).await;
                        }
                        Message::Close(_) => return Why::ClientGone,
                        Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
                    }
                }
            }
        }
    }
}
