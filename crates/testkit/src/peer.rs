//! Raw DEALER peers that speak the envelope protocol by hand, to misbehave on purpose.

use super::*;

/// A bare DEALER socket speaking the envelope protocol by hand: for tests that
/// need a peer to misbehave (reply late, send garbage, skip authentication).
pub struct RawPeer {
    /// The socket.
    pub socket: zeromq::DealerSocket,
}

impl RawPeer {
    /// Connects a DEALER (with a chosen ZeroMQ identity, if given).
    pub async fn connect(endpoint: &str, identity: Option<&str>) -> anyhow::Result<Self> {
        use zeromq::Socket;
        let mut options = zeromq::SocketOptions::default();
        if let Some(id) = identity {
            options.peer_identity(id.parse().context("identity")?);
        }
        options.connect_timeout(Duration::from_secs(5));
        let mut socket = zeromq::DealerSocket::with_options(options);
        socket.connect(endpoint).await.context("connect")?;
        Ok(Self { socket })
    }

    /// Sends frames as given.
    pub async fn send_frames(&mut self, frames: Vec<bytes::Bytes>) -> anyhow::Result<()> {
        use zeromq::SocketSend;
        let msg =
            zeromq::ZmqMessage::try_from(frames).map_err(|_| anyhow::anyhow!("empty message"))?;
        self.socket.send(msg).await.context("send")
    }

    /// Sends one envelope.
    pub async fn send_env(&mut self, env: &proto::Envelope) -> anyhow::Result<()> {
        self.send_frames(vec![proto::encode(env)?.into()]).await
    }

    /// The next message (frames), skipping broker heartbeats; `None` after `timeout`.
    pub async fn recv(&mut self, timeout: Duration) -> Option<Vec<bytes::Bytes>> {
        use zeromq::SocketRecv;
        let until = tokio::time::Instant::now() + timeout;
        loop {
            let msg = tokio::time::timeout_at(until, self.socket.recv())
                .await
                .ok()?
                .ok()?;
            let frames = msg.into_vec();
            let is_heartbeat = frames
                .last()
                .and_then(|f| proto::decode(f).ok())
                .is_some_and(|e| e.kind == proto::Kind::Heartbeat);
            if !is_heartbeat {
                return Some(frames);
            }
        }
    }

    /// Says hello (answering a challenge with `secret`) and returns the final
    /// answer: `Ok` when accepted.
    pub async fn register(
        &mut self,
        service: &str,
        instance: &str,
        secret: Option<&str>,
    ) -> anyhow::Result<proto::Welcome> {
        let mut hello = proto::Hello {
            service: service.into(),
            instance: instance.into(),
            pid: std::process::id(),
            credit: 16,
            proof: None,
            successor: false,
            challenge: None,
        };
        for _ in 0..2 {
            let mut env = proto::Envelope::new(proto::Kind::Hello);
            env.body = proto::ByteBuf::from(proto::to_body(&hello)?);
            self.send_env(&env).await?;
            let frames = self
                .recv(Duration::from_secs(5))
                .await
                .context("no answer to hello")?;
            let env = proto::decode(frames.last().context("empty")?)?;
            if let Some(error) = env.error {
                bail!("hello refused: {error}");
            }
            let welcome: proto::Welcome = proto::from_body(&env.body)?;
            if welcome.accepted {
                return Ok(welcome);
            }
            let nonce = welcome.nonce.context("neither accepted nor challenged")?;
            let secret = secret.context("challenged without a secret")?;
            hello.proof = Some(proto::ByteBuf::from(
                proto::auth::proof(secret.as_bytes(), &nonce, service, instance).to_vec(),
            ));
        }
        bail!("not accepted after answering the challenge")
    }
}
