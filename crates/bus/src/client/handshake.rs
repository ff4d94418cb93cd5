//! Connecting: one attempt with a short timeout, the hello and its challenge.

use super::*;
use rand::RngCore;

pub(super) type Session = (DealerSocket, futures::channel::mpsc::Receiver<SocketEvent>);

/// One connect attempt, handshake and registration included.
pub(super) async fn connect_once(
    config: Config,
    shared: Arc<Shared>,
) -> Option<(Session, Welcome)> {
    let mut options = SocketOptions::default();
    options.max_message_size(config.max_message_bytes);
    options.connect_timeout(Duration::from_millis(config.connect_timeout_ms));
    let mut socket = DealerSocket::with_options(options);
    let monitor = socket.monitor();
    let attempt = tokio::time::timeout(
        Duration::from_millis(config.connect_timeout_ms),
        socket.connect(&config.broker),
    )
    .await;
    match attempt {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::debug!(error = %e, broker = %config.broker, "connect failed");
            return None;
        }
        Err(_) => {
            tracing::debug!(broker = %config.broker, "connect timed out");
            return None;
        }
    }
    match tokio::time::timeout(
        Duration::from_millis(config.connect_timeout_ms.max(500) * 2),
        register(&config, &mut socket),
    )
    .await
    {
        Ok(Ok(welcome)) => Some(((socket, monitor), welcome)),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "registration refused");
            shared.stats.refusals.fetch_add(1, Ordering::Relaxed);
            None
        }
        Err(_) => {
            tracing::debug!("registration timed out");
            None
        }
    }
}

/// Says hello and answers the broker's challenge. With a secret, the hello
/// carries a fresh challenge of our own, and the broker must answer it with its
/// proof before we prove ours: a broker (or anything listening on its port) that
/// does not know the secret never gets this peer registered, so it is never sent
/// a request, a reply or an event.
pub(super) async fn register(config: &Config, socket: &mut DealerSocket) -> Result<Welcome, Error> {
    let secret = config.secret.as_deref().filter(|s| !s.is_empty());
    let challenge = secret.map(|_| {
        let mut c = [0u8; auth::NONCE_LEN];
        rand::thread_rng().fill_bytes(&mut c);
        c
    });
    let mut hello = Hello {
        service: config.service.clone(),
        instance: config.instance.clone(),
        pid: std::process::id(),
        credit: config.credit,
        proof: None,
        successor: config.successor,
        challenge: challenge.map(|c| proto::ByteBuf::from(c.to_vec())),
    };
    send_hello(socket, &hello).await?;
    let mut broker_proven = false;
    loop {
        let msg = socket
            .recv()
            .await
            .map_err(|e| Error::new(ErrorCode::Unavailable, e.to_string()))?;
        let Some(env) = msg.iter().last().and_then(|f| proto::decode(f).ok()) else {
            continue;
        };
        if env.kind != Kind::Hello {
            continue;
        }
        if let Some(error) = env.error {
            return Err(error.into());
        }
        let welcome: Welcome = proto::from_body(&env.body)?;
        if welcome.accepted {
            if secret.is_some() && !broker_proven {
                return Err(Error::new(
                    ErrorCode::Unauthorized,
                    "the broker accepted us without proving the bus secret: not our broker",
                ));
            }
            return Ok(welcome);
        }
        let (Some(nonce), Some(secret), Some(challenge)) = (&welcome.nonce, secret, &challenge)
        else {
            return Err(Error::new(
                ErrorCode::Unauthorized,
                "the broker requires a secret and none is configured",
            ));
        };
        let proven = welcome.proof.as_deref().is_some_and(|p| {
            auth::verify_broker(
                secret.as_bytes(),
                challenge,
                nonce,
                &hello.service,
                &hello.instance,
                p,
            )
        });
        if !proven {
            return Err(Error::new(
                ErrorCode::Unauthorized,
                "the broker did not prove the bus secret: not our broker (or another secret)",
            ));
        }
        broker_proven = true;
        let proof = auth::proof(secret.as_bytes(), nonce, &hello.service, &hello.instance);
        hello.proof = Some(proto::ByteBuf::from(proof.to_vec()));
        send_hello(socket, &hello).await?;
    }
}

/// Sends without waiting: `false` if the peer queue is full or there is no peer.
pub(super) fn try_send(socket: &mut DealerSocket, msg: ZmqMessage) -> bool {
    matches!(socket.send(msg).now_or_never(), Some(Ok(())))
}

pub(super) async fn send_hello(socket: &mut DealerSocket, hello: &Hello) -> Result<(), Error> {
    let mut env = Envelope::new(Kind::Hello);
    env.from.clone_from(&hello.instance);
    env.body = proto::ByteBuf::from(proto::to_body(hello)?);
    let frame = proto::encode(&env)?;
    socket
        .send(ZmqMessage::from(frame))
        .await
        .map_err(|e| Error::new(ErrorCode::Unavailable, e.to_string()))
}

pub(super) fn encode_simple(kind: Kind) -> Bytes {
    Bytes::from(proto::encode(&Envelope::new(kind)).unwrap_or_default())
}

pub(super) fn encode_topic(kind: Kind, pattern: &str) -> Bytes {
    encode_topic_id(kind, pattern, 0)
}

/// As [`encode_topic`], with an id: a `subscribe` with one is answered.
pub(super) fn encode_topic_id(kind: Kind, pattern: &str, id: u64) -> Bytes {
    let mut env = Envelope::new(kind);
    env.to = pattern.to_owned();
    env.id = id;
    Bytes::from(proto::encode(&env).unwrap_or_default())
}
