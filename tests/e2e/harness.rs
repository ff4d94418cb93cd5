//! Starting a whole system, and a WebSocket client that speaks the client protocol.

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::time::Duration;
use switchboard_bus::Handle;
use switchboard_testkit::{client, wait_ready, Child, TestDatabase};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The client-token secret the systems under test use.
pub const AUTH_SECRET: &str = "e2e-client-secret";

/// Extra command-line arguments for the processes of a [`System`].
#[derive(Default)]
pub struct Args<'a> {
    pub broker: &'a [&'a str],
    pub gateway: &'a [&'a str],
    pub chat: &'a [&'a str],
    pub loc: &'a [&'a str],
}

/// A running system. Dropping it kills every process.
pub struct System {
    /// `ws://127.0.0.1:PORT`.
    pub ws: String,
    /// Broker endpoint.
    pub broker: String,
    /// A bus client for inspecting (`$broker`).
    pub bus: Handle,
    /// The test database.
    pub db: TestDatabase,
    // Declared last: processes die after the handle is gone.
    pub procs: Vec<(String, Child)>,
}

impl System {
    /// Starts broker, db, chat, loc01, loc02 and receive, and waits until every
    /// service instance is ready.
    pub async fn start(auth: bool) -> Self {
        Self::start_with(auth, &[]).await
    }

    /// As [`System::start`], with extra arguments for the gateway.
    pub async fn start_with(auth: bool, gateway_args: &[&str]) -> Self {
        Self::start_full(auth, gateway_args, &[]).await
    }

    /// As [`System::start`], with extra arguments for the gateway and for both
    /// loc instances.
    pub async fn start_full(auth: bool, gateway_args: &[&str], loc_args: &[&str]) -> Self {
        Self::start_args(
            auth,
            &Args {
                gateway: gateway_args,
                loc: loc_args,
                ..Args::default()
            },
        )
        .await
    }

    /// As [`System::start_full`], with extra arguments for the broker too.
    pub async fn start_all(
        auth: bool,
        gateway_args: &[&str],
        loc_args: &[&str],
        broker_args: &[&str],
    ) -> Self {
        let extra = Args {
            broker: broker_args,
            gateway: gateway_args,
            loc: loc_args,
            ..Args::default()
        };
        Self::start_args(auth, &extra).await
    }

    /// As [`System::start`], with extra arguments for any process.
    pub async fn start_args(auth: bool, extra: &Args<'_>) -> Self {
        let (gateway_args, chat_args, loc_args) = (extra.gateway, extra.chat, extra.loc);
        switchboard_testkit::trace_init();
        let db = TestDatabase::new();
        let broker_args = [&["--services", "db,chat,loc"][..], extra.broker].concat();
        let broker = Child::broker("tcp://127.0.0.1:0", &broker_args).unwrap();
        let endpoint = broker.first_line.clone().unwrap();
        let mut procs = vec![("broker".to_owned(), broker)];
        let env_db = [("DATABASE_URL", db.url.as_str())];
        procs.push((
            "db".into(),
            Child::spawn("db", &["--broker", &endpoint], &env_db).unwrap(),
        ));
        procs.push((
            "chat".into(),
            Child::spawn(
                "chat",
                &[&["--broker", &endpoint][..], chat_args].concat(),
                &[],
            )
            .unwrap(),
        ));
        for loc in ["loc01", "loc02"] {
            let mut args = vec![
                "--broker",
                &endpoint,
                "--instance",
                loc,
                "--save-interval-ms",
                "100",
            ];
            args.extend_from_slice(loc_args);
            procs.push((loc.into(), Child::spawn("loc", &args, &[]).unwrap()));
        }
        let mut receive_args = vec!["--listen", "127.0.0.1:0", "--broker", &endpoint];
        // 4 KiB frames unless the test sets its own cap (the flag takes one value).
        if !gateway_args.contains(&"--max-frame-bytes") {
            receive_args.extend(["--max-frame-bytes", "4096"]);
        }
        // The secret in the environment: an argument would show it in `ps`
        // (the gateway refuses one).
        let receive_env: &[(&str, &str)] = if auth {
            &[("SB_AUTH_SECRET", AUTH_SECRET)]
        } else {
            &[]
        };
        receive_args.extend_from_slice(gateway_args);
        let receive = Child::announcing("receive", &receive_args, receive_env).unwrap();
        let ws = receive.first_line.clone().unwrap();
        procs.push(("receive".into(), receive));
        let bus = client(&endpoint, "e2e-inspector", None).await;
        for instance in ["db", "chat", "loc01", "loc02", "receive"] {
            assert!(
                wait_ready(&bus, instance, Duration::from_secs(20)).await,
                "{instance} ready"
            );
        }
        // db takes requests at once (each waits for the schema) but makes its
        // database in the background: a test's own SQL needs it made.
        assert!(
            switchboard_testkit::eventually(Duration::from_secs(20), || async {
                switchboard_testkit::health(&bus, "db").await.status == "ok"
            })
            .await,
            "db migrated"
        );
        Self {
            ws,
            broker: endpoint,
            bus,
            db,
            procs,
        }
    }

    /// A process by name.
    pub fn proc(&mut self, name: &str) -> &mut Child {
        &mut self
            .procs
            .iter_mut()
            .find(|(n, _)| n == name)
            .expect("known process")
            .1
    }

    /// A client token for `user`, for an hour (the gateway refuses a token
    /// without `exp` or longer than its maximum lifetime, 24 h by default).
    pub fn token(user: &str) -> String {
        let exp = switchboard_bus::proto::now_ms() / 1000 + 3600;
        switchboard_gateway::jwt::sign(AUTH_SECRET.as_bytes(), &json!({ "sub": user, "exp": exp }))
    }

    /// A connected client as `user` (token in the query string).
    pub async fn client_as(&self, user: &str) -> Ws {
        Ws::connect(&format!("{}/ws?token={}", self.ws, Self::token(user)))
            .await
            .unwrap()
    }
}

type Stream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A WebSocket client: requests by id, events buffered by topic.
pub struct Ws {
    pub stream: Stream,
    next_id: u64,
    events: VecDeque<Value>,
    replies: VecDeque<Value>,
}

impl Ws {
    pub async fn connect(url: &str) -> Result<Self, tokio_tungstenite::tungstenite::Error> {
        let (stream, _) = tokio_tungstenite::connect_async(url).await?;
        Ok(Self::from_stream(stream))
    }

    /// Connects from the local address `source` (one of 127.0.0.0/8: a test's
    /// stand-in for another host).
    pub async fn connect_from(url: &str, source: std::net::Ipv4Addr) -> Self {
        let addr = url
            .trim_start_matches("ws://")
            .split('/')
            .next()
            .unwrap()
            .to_owned();
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind((source, 0).into()).unwrap();
        let tcp = socket.connect(addr.parse().unwrap()).await.unwrap();
        let (stream, _) = tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(tcp))
            .await
            .unwrap();
        Self::from_stream(stream)
    }

    /// A client over a WebSocket opened elsewhere (from a chosen source address, say).
    pub fn from_stream(stream: Stream) -> Self {
        Self {
            stream,
            next_id: 1,
            events: VecDeque::new(),
            replies: VecDeque::new(),
        }
    }

    pub async fn send_text(&mut self, text: &str) {
        self.stream.send(Message::Text(text.into())).await.unwrap();
    }

    /// The next JSON frame, skipping pings; `None` on close or timeout.
    pub async fn next_frame(&mut self, timeout: Duration) -> Option<Value> {
        let until = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(until, self.stream.next())
                .await
                .ok()??
            {
                Ok(Message::Text(t)) => return serde_json::from_str(t.as_str()).ok(),
                Ok(Message::Binary(b)) => return Some(json!({ "$binary": b.to_vec() })),
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// The close frame's code, reading until the connection closes (5 s at most).
    pub async fn close_code(&mut self) -> Option<u16> {
        let until = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            match tokio::time::timeout_at(until, self.stream.next())
                .await
                .ok()??
            {
                Ok(Message::Close(frame)) => return frame.map(|f| u16::from(f.code)),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }

    /// Sends a request and waits for the reply with its id (events meanwhile are kept).
    pub async fn request(&mut self, to: Option<&str>, op: &str, data: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let mut frame = json!({ "id": id, "op": op, "data": data });
        if let Some(to) = to {
            frame["to"] = json!(to);
        }
        self.send_text(&frame.to_string()).await;
        self.reply_for(&json!(id)).await
    }

    pub async fn reply_for(&mut self, id: &Value) -> Value {
        if let Some(pos) = self.replies.iter().position(|r| &r["id"] == id) {
            return self.replies.remove(pos).unwrap();
        }
        loop {
            let frame = self
                .next_frame(Duration::from_secs(10))
                .await
                .unwrap_or_else(|| panic!("no reply for id {id}"));
            if frame.get("topic").is_some() {
                self.events.push_back(frame);
            } else if &frame["id"] == id {
                return frame;
            } else {
                self.replies.push_back(frame);
            }
        }
    }

    /// `data` of a successful reply (panics on an error reply, naming it).
    pub async fn ok(&mut self, to: &str, op: &str, data: Value) -> Value {
        let reply = self.request(Some(to), op, data).await;
        assert_eq!(reply["ok"], json!(true), "{to}.{op}: {reply}");
        reply["data"].clone()
    }

    /// `data` of a successful reply from the gateway itself (no `to`).
    pub async fn ok_gateway(&mut self, op: &str, data: Value) -> Value {
        let reply = self.request(None, op, data).await;
        assert_eq!(reply["ok"], json!(true), "{op}: {reply}");
        reply["data"].clone()
    }

    /// The error code of a failed reply.
    pub async fn err(&mut self, to: Option<&str>, op: &str, data: Value) -> String {
        let reply = self.request(to, op, data).await;
        assert_eq!(reply["ok"], json!(false), "{op} should fail: {reply}");
        reply["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// The next event on `topic` (5 s at most).
    pub async fn event(&mut self, topic: &str) -> Option<Value> {
        if let Some(pos) = self.events.iter().position(|e| e["topic"] == json!(topic)) {
            return self.events.remove(pos).map(|e| e["data"].clone());
        }
        let until = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let left = until.saturating_duration_since(tokio::time::Instant::now());
            let frame = self.next_frame(left).await?;
            if frame["topic"] == json!(topic) {
                return Some(frame["data"].clone());
            }
            if frame.get("topic").is_some() {
                self.events.push_back(frame);
            } else {
                self.replies.push_back(frame);
            }
        }
    }
}

/// A raw MariaDB connection to the test database.
pub async fn sql(system: &System) -> mysql_async::Conn {
    mysql_async::Conn::from_url(&system.db.url).await.unwrap()
}
