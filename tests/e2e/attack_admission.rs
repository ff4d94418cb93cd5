//! Attacks on the gateway's admission: stalled handshakes from many source
//! addresses (the loopback range 127.0.0.0/8 gives a test as many as it needs),
//! and probes that must answer through them and without the bus.

use serde_json::{json, Value};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use switchboard_testkit::eventually;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::MaybeTlsStream;

use crate::harness::{System, Ws};

/// A small table, so that a test attacks past it with a few hundred sockets;
/// a handshake deadline far beyond the test, so that only admission frees places.
const SMALL_TABLE: &[&str] = &[
    "--max-handshakes",
    "64",
    "--max-handshakes-per-ip",
    "8",
    "--handshake-timeout-ms",
    "120000",
];

fn gateway_addr(system: &System) -> SocketAddr {
    system.ws.trim_start_matches("ws://").parse().unwrap()
}

async fn connect_from(source: Ipv4Addr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind((source, 0).into())?;
    socket.connect(to).await
}

/// A WebSocket client connected from `source`.
async fn ws_from(source: Ipv4Addr, system: &System) -> Result<Ws, String> {
    let stream = connect_from(source, gateway_addr(system))
        .await
        .map_err(|e| e.to_string())?;
    let url = format!("{}/ws", system.ws);
    let (ws, _) = tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(stream))
        .await
        .map_err(|e| e.to_string())?;
    Ok(Ws::from_stream(ws))
}

/// `GET path` from `source`: the status (0 when the connection failed) and body.
async fn get_from(source: Ipv4Addr, to: SocketAddr, path: &str) -> (u16, String) {
    let ask = async {
        let mut s = connect_from(source, to).await?;
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await?;
        let mut text = String::new();
        s.read_to_string(&mut text).await?;
        Ok::<_, std::io::Error>(text)
    };
    match tokio::time::timeout(Duration::from_secs(10), ask).await {
        Ok(Ok(text)) => crate::observe::status_and_body(&text),
        Ok(Err(_)) => (0, String::new()),
        Err(_) => panic!("GET {path}: no answer within 10 s"),
    }
}

async fn health(system: &System) -> Value {
    let (status, body) =
        get_from(Ipv4Addr::new(127, 0, 0, 1), gateway_addr(system), "/health").await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// A stalled handshake: half a head (`talk`) or nothing at all.
async fn stall(source: Ipv4Addr, to: SocketAddr, talk: bool) -> Option<TcpStream> {
    let mut s = connect_from(source, to).await.ok()?;
    if talk {
        s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n").await.ok()?;
    }
    Some(s)
}

/// 16 source addresses hold 8 stalled handshakes each (their share), twice
/// what the table holds; half send half a head, half nothing. A new client
/// from another address gets in, `/health` and `/live` answer, and they keep
/// doing so while the attacker reopens every socket the gateway closes.
#[tokio::test]
async fn stalled_handshakes_from_many_addresses_cannot_keep_new_clients_out() {
    let system = System::start_with(false, SMALL_TABLE).await;
    let to = gateway_addr(&system);
    let source = |n: usize| Ipv4Addr::new(127, 0, 0, 10 + (n % 16) as u8);
    let mut held = Vec::new();
    for n in 0..128 {
        if let Some(s) = stall(source(n), to, n % 2 == 0).await {
            held.push(s);
        }
    }
    assert_eq!(held.len(), 128, "every attacker socket connected");

    // Accepted in the order connected: the table is full of the attacker's
    // handshakes when the newcomers arrive.
    let mut ws = ws_from(Ipv4Addr::new(127, 0, 0, 200), &system)
        .await
        .expect("a new client is admitted during the attack");
    assert_eq!(ws.ok_gateway("ping", json!({})).await, json!({}));
    for path in ["/health", "/live"] {
        let (status, body) = get_from(Ipv4Addr::new(127, 0, 0, 201), to, path).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    let h = health(&system).await;
    assert!(h["handshakes_evicted"].as_u64().unwrap() >= 64, "{h}");
    assert!(h["handshaking"].as_u64().unwrap() <= 64, "{h}");

    // The attack goes on: every socket the gateway closes is reopened at once.
    let stop = Arc::new(AtomicBool::new(false));
    let reopened = Arc::new(AtomicU64::new(0));
    let attackers: Vec<_> = held
        .into_iter()
        .enumerate()
        .map(|(n, mut s)| {
            let (stop, reopened) = (stop.clone(), reopened.clone());
            tokio::spawn(async move {
                let mut buf = [0u8; 256];
                while !stop.load(Ordering::Relaxed) {
                    // Held until the gateway closes it.
                    let closed = tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf))
                        .await
                        .is_ok_and(|r| matches!(r, Ok(0) | Err(_)));
                    if closed {
                        match stall(source(n), to, n % 2 == 0).await {
                            Some(new) => {
                                s = new;
                                reopened.fetch_add(1, Ordering::Relaxed);
                            }
                            None => break,
                        }
                    }
                }
            })
        })
        .collect();
    for i in 0..20u8 {
        let mut client = ws_from(Ipv4Addr::new(127, 0, 1, 1 + i), &system)
            .await
            .unwrap_or_else(|e| panic!("client {i} during the churn: {e}"));
        assert_eq!(client.ok_gateway("ping", json!({})).await, json!({}));
        let (status, body) = get_from(Ipv4Addr::new(127, 0, 2, 1 + i), to, "/health").await;
        assert_eq!(status, 200, "{body}");
    }
    stop.store(true, Ordering::Relaxed);
    for a in attackers {
        a.await.unwrap();
    }
    assert!(
        reopened.load(Ordering::Relaxed) > 0,
        "the attacker kept at it"
    );
    // The first client was never the one closed.
    assert_eq!(ws.ok_gateway("ping", json!({})).await, json!({}));
}

/// At the connection cap, a stalled handshake is closed to admit a new client;
/// only when every connection is a WebSocket is a newcomer refused, with a 503.
#[tokio::test]
async fn at_the_connection_cap_a_stalled_handshake_makes_room() {
    let system = System::start_with(
        false,
        &[
            "--max-connections",
            "16",
            "--handshake-timeout-ms",
            "120000",
        ],
    )
    .await;
    let to = gateway_addr(&system);
    let mut held = Vec::new();
    for n in 0..16u8 {
        held.push(
            stall(Ipv4Addr::new(127, 0, 3, 1 + n % 4), to, false)
                .await
                .unwrap(),
        );
    }
    let mut clients = Vec::new();
    for n in 0..16u8 {
        let mut ws = ws_from(Ipv4Addr::new(127, 0, 4, 1 + n), &system)
            .await
            .unwrap_or_else(|e| panic!("client {n} at the cap: {e}"));
        assert_eq!(ws.ok_gateway("ping", json!({})).await, json!({}));
        clients.push(ws);
    }
    // Every place is a WebSocket now: the next one is refused at accept, and
    // told why before any byte of its request is read (read without writing:
    // a request the gateway never reads would reset the connection).
    let mut refused = connect_from(Ipv4Addr::new(127, 0, 4, 100), to)
        .await
        .unwrap();
    let mut answer = String::new();
    let _ =
        tokio::time::timeout(Duration::from_secs(10), refused.read_to_string(&mut answer)).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("too many connections"), "{answer}");
    drop(held);
}

/// `/live` answers 200 while the process serves, bus or not; `/ready` and
/// `/health` answer 503 while the broker is away (a load balancer takes the
/// gateway out of rotation; Kubernetes does not restart it).
#[tokio::test]
async fn liveness_does_not_depend_on_the_bus() {
    let mut system = System::start(false).await;
    let to = gateway_addr(&system);
    let local = Ipv4Addr::new(127, 0, 0, 1);
    for path in ["/live", "/ready", "/health"] {
        assert_eq!(get_from(local, to, path).await.0, 200, "{path}");
    }
    let broker = system.proc("broker");
    broker.signal(nix::sys::signal::Signal::SIGKILL).unwrap();
    assert!(broker.wait_exit(Duration::from_secs(5)).is_some());
    assert!(
        eventually(Duration::from_secs(10), || async {
            get_from(local, to, "/ready").await.0 == 503
        })
        .await,
        "/ready is 503 without the bus"
    );
    assert_eq!(get_from(local, to, "/health").await.0, 503);
    let (status, body) = get_from(local, to, "/live").await;
    assert_eq!(status, 200, "{body}");
}

/// Waits at most `limit` for `child` to exit: its code and stderr, or `None`
/// (killed) when it was still running.
fn exit_within(mut child: std::process::Child, limit: Duration) -> Option<(Option<i32>, String)> {
    let until = std::time::Instant::now() + limit;
    while std::time::Instant::now() < until {
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                use std::io::Read;
                let _ = e.read_to_string(&mut err);
            }
            return Some((status.code(), err));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// The client-token secret as an argument is readable by every local user in
/// `ps` and was printed by `sbctl describe receive`. The gateway refuses it,
/// and so does main's ecosystem check; given the documented way (a file),
/// it is in neither the gateway's command line nor `describe`, and `sbctl
/// token` still finds it through the ecosystem file.
#[tokio::test]
async fn the_auth_secret_is_never_in_argv_or_describe() {
    use crate::supervisor::Supervised;
    use std::process::{Command, Stdio};
    use switchboard_testkit::{bin_path, free_port};
    const SECRET: &str = "argv-secret-3f9c1a";

    // 1. The gateway refuses it, saying where a secret goes.
    let receive = Command::new(bin_path("receive"))
        .args(["--listen", "127.0.0.1:0", "--broker", "tcp://127.0.0.1:1"])
        .args(["--auth-secret", SECRET])
        .env_remove("SB_AUTH_SECRET")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (code, err) = exit_within(receive, Duration::from_secs(10))
        .expect("receive with --auth-secret must exit, not serve");
    assert_eq!(code, Some(64), "{err}");
    assert!(
        err.contains("SB_AUTH_SECRET") && err.contains("--auth-secret-file"),
        "{err}"
    );

    // 2. main refuses an ecosystem file that puts it in an app's args.
    let dir = tempfile::tempdir().unwrap();
    let eco = dir.path().join("ecosystem.toml");
    let gateway_app = |args: &[&str]| {
        format!(
            "[broker]\nbin = \"{}\"\nbind = \"tcp://127.0.0.1:0\"\n\n[main]\nhttp = \"\"\n\n\
             [[apps]]\nname = \"receive\"\nbin = \"{}\"\nargs = {}\n",
            bin_path("broker").display(),
            bin_path("receive").display(),
            serde_json::to_string(args).unwrap()
        )
    };
    std::fs::write(&eco, gateway_app(&["--auth-secret", SECRET])).unwrap();
    let main = Command::new(bin_path("main"))
        .args(["--config", eco.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (code, err) = exit_within(main, Duration::from_secs(10))
        .expect("main must refuse the file, not start it");
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("--auth-secret"), "{err}");

    // 3. The documented way: a file of mode 600.
    let secret_file = dir.path().join("auth-secret");
    std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
    std::fs::set_permissions(
        &secret_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let apps = format!(
        "[[apps]]\nname = \"receive\"\nbin = \"{}\"\nargs = {}\n",
        bin_path("receive").display(),
        serde_json::to_string(&[
            "--listen",
            listen.as_str(),
            "--auth-secret-file",
            secret_file.to_str().unwrap(),
        ])
        .unwrap()
    );
    let s = Supervised::start(&apps).await;
    assert!(s.all_online(1).await, "{:?}", s.ls().await);
    let pid = s.instance("receive").await["pid"].as_u64().unwrap() as u32;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(
        !String::from_utf8_lossy(&cmdline).contains(SECRET),
        "{}",
        String::from_utf8_lossy(&cmdline)
    );
    for args in [
        &["describe", "receive"][..],
        &["--json", "describe", "receive"],
    ] {
        let out = s.sbctl(args);
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(!text.contains(SECRET), "{text}");
    }
    // sbctl token reads the secret through the receive app's file.
    let file = dir.path().join("with-file.toml");
    std::fs::write(&file, apps).unwrap();
    let out = Command::new(bin_path("sbctl"))
        .args([
            "token",
            "--sub",
            "ada",
            "--ecosystem",
            file.to_str().unwrap(),
        ])
        .env_remove("SB_AUTH_SECRET")
        .env_remove("SB_AUTH_SECRET_FILE")
        .env_remove("SB_TOKEN_AUDIENCE")
        .env_remove("SB_TOKEN_ISSUER")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let mut ws = Ws::connect(&format!("ws://{listen}/ws?token={token}"))
        .await
        .expect("the gateway accepts the token");
    assert_eq!(ws.ok_gateway("whoami", json!({})).await["user"], "ada");
    // And sbctl refuses the secret as its own argument too.
    let out = Command::new(bin_path("sbctl"))
        .args(["token", "--sub", "ada", "--auth-secret", SECRET])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64), "{out:?}");
}

/// A token without `exp` lived 24 h from each use, and one with `exp` a
/// century ahead was accepted: a stolen token that never ends. Both are
/// refused now, on the URL (401) and through `auth` (`unauthorized`), and so
/// is one past the gateway's maximum lifetime (24 h by default), from now or
/// from its `iat`; `sbctl token` refuses to mint one.
#[tokio::test]
async fn tokens_without_exp_or_living_past_the_maximum_are_refused() {
    use crate::harness::AUTH_SECRET;
    let system = System::start(true).await;
    let now = switchboard_bus::proto::now_ms() / 1000;
    let sign = |claims: Value| switchboard_gateway::jwt::sign(AUTH_SECRET.as_bytes(), &claims);
    for claims in [
        json!({"sub": "eve"}),
        json!({"sub": "eve", "iat": now}),
        json!({"sub": "eve", "exp": now + 100 * 365 * 86_400}),
        json!({"sub": "eve", "exp": now + 25 * 3600}),
        json!({"sub": "eve", "iat": now - 23 * 3600, "exp": now + 2 * 3600}),
        json!({"sub": "eve", "exp": u64::MAX}),
    ] {
        let token = sign(claims.clone());
        let refused = Ws::connect(&format!("{}/ws?token={token}", system.ws))
            .await
            .err()
            .map(|e| e.to_string());
        assert!(
            refused.as_deref().is_some_and(|e| e.contains("401")),
            "{claims}: {refused:?}"
        );
        let mut ws = Ws::connect(&format!("{}/ws", system.ws)).await.unwrap();
        let reply = ws.request(None, "auth", json!({"token": token})).await;
        assert_eq!(reply["error"]["code"], "unauthorized", "{claims}: {reply}");
    }
    // Within the maximum: accepted.
    let day = sign(json!({"sub": "ada", "iat": now, "exp": now + 24 * 3600}));
    let mut ws = Ws::connect(&format!("{}/ws?token={day}", system.ws))
        .await
        .unwrap();
    assert_eq!(ws.ok_gateway("whoami", json!({})).await["user"], "ada");
    // sbctl token will not mint past it.
    let out = std::process::Command::new(switchboard_testkit::bin_path("sbctl"))
        .args(["token", "--sub", "ada", "--exp", "2d"])
        .env("SB_AUTH_SECRET", AUTH_SECRET)
        .env_remove("SB_TOKEN_MAX_LIFETIME_S")
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64), "{out:?}");
}

/// A WebSocket handshake with `Origin: origin` (none when `None`): whether it
/// was upgraded, else the error.
async fn with_origin(url: &str, origin: Option<&str>) -> Result<(), String> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = url.into_client_request().unwrap();
    if let Some(origin) = origin {
        req.headers_mut().insert("Origin", origin.parse().unwrap());
    }
    tokio_tungstenite::connect_async(req)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// With no `--allowed-origins`, any web page could open a WebSocket to the
/// gateway from its visitors' browsers. The default is now the gateway's own
/// origin only (the demo page it serves); other origins, and `null` (files,
/// sandboxed frames), get 403 unless listed; non-browser clients send no
/// `Origin` and are let in.
#[tokio::test]
async fn a_foreign_browser_origin_is_refused_by_default() {
    let system = System::start(true).await;
    let url = format!("{}/ws?token={}", system.ws, System::token("ada"));
    let own = system.ws.replace("ws://", "http://");
    for origin in ["https://evil.example", "null", "http://127.0.0.1:1"] {
        let refused = with_origin(&url, Some(origin)).await;
        assert!(
            refused.as_ref().is_err_and(|e| e.contains("403")),
            "{origin}: {refused:?}"
        );
    }
    with_origin(&url, Some(&own)).await.expect("its own origin");
    with_origin(&url, None)
        .await
        .expect("no Origin: not a browser");

    // The allow-list adds origins; `*` opens it to any, explicitly.
    let listed = System::start_with(true, &["--allowed-origins", "https://app.example,null"]).await;
    let url = format!("{}/ws?token={}", listed.ws, System::token("ada"));
    for origin in ["https://app.example", "null"] {
        with_origin(&url, Some(origin)).await.expect(origin);
    }
    assert!(with_origin(&url, Some("https://evil.example"))
        .await
        .is_err());
    let open = System::start_with(true, &["--allowed-origins", "*"]).await;
    let url = format!("{}/ws?token={}", open.ws, System::token("ada"));
    with_origin(&url, Some("https://evil.example"))
        .await
        .expect("* allows any");
}

/// The attacker of [`one_ipv6_64_is_one_source`], run inside the namespace:
/// 128 stalled handshakes from 128 addresses of one /64, then a WebSocket
/// upgrade from another /64, then `/health`; prints what it saw as JSON.
const IPV6_ATTACK: &str = r#"
import json, select, socket, sys, time
gw = ("fd5b::1", int(sys.argv[1]))
def sock(src):
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.bind((src, 0))
    s.settimeout(10)
    s.connect(gw)
    return s
def ask(src, request):
    data = b""
    try:
        s = sock(src)
        s.sendall(request)
        while b"\r\n\r\n" not in data or request.startswith(b"GET /health"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    except OSError as e:
        data += b"failed: " + str(e).encode()
    return data.decode(errors="replace")
held = []
for n in range(1, 129):
    s = sock("fd5b:0:0:1::%x" % n)
    try:
        s.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\n")
    except OSError:
        pass
    held.append(s)
upgrade = ask("fd5b:0:0:2::1", b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n")
open_ = list(held)
closed = 0
until = time.time() + 5
while open_ and time.time() < until:
    ready, _, _ = select.select(open_, [], [], max(0.0, until - time.time()))
    for s in ready:
        try:
            gone = s.recv(4096) == b""
        except OSError:
            gone = True
        if gone:
            closed += 1
            open_.remove(s)
    if closed >= 120:
        break
health = ask("fd5b:0:0:3::1", b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
print(json.dumps({"upgrade": upgrade.split("\r\n")[0], "closed": closed,
                  "health": health.split("\r\n\r\n", 1)[-1]}))
"#;

/// One IPv6 /64 is one source: 128 stalled handshakes from 128 addresses of
/// one /64 hold that source's share (8), not the table (they used to fill
/// it, each address under the per-IP cap, and keep a new client out). Run in
/// a network namespace of its own (root: `unshare`), where any address of
/// fd5b::/32 is local.
#[tokio::test]
async fn one_ipv6_64_is_one_source() {
    use switchboard_testkit::bin_path;
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("attack.py");
    std::fs::write(&script, IPV6_ATTACK).unwrap();
    let out = dir.path().join("receive.out");
    let shell = format!(
        "set -e
ip link set lo up
ip -6 addr add fd5b::1/128 dev lo nodad
ip -6 route add local fd5b::/32 dev lo
sysctl -qw net.ipv6.ip_nonlocal_bind=1
'{receive}' --listen '[fd5b::1]:0' --broker tcp://127.0.0.1:1 --max-handshakes 64 \
  --max-handshakes-per-ip 8 --handshake-timeout-ms 120000 > '{out}' 2>/dev/null &
gw=$!
until grep -q listening '{out}'; do sleep 0.05; done
port=$(sed -n 's/.*\\]:\\([0-9]*\\).*/\\1/p' '{out}' | head -1)
python3 '{script}' \"$port\"
kill $gw",
        receive = bin_path("receive").display(),
        out = out.display(),
        script = script.display(),
    );
    let run = tokio::process::Command::new("unshare")
        .args(["--net", "sh", "-c", &shell])
        .env("RUST_LOG", "warn")
        .output();
    let run = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the namespace run ends")
        .unwrap();
    if !run.status.success() && String::from_utf8_lossy(&run.stderr).contains("unshare failed") {
        eprintln!("skipped: no network namespace (needs root)");
        return;
    }
    assert!(run.status.success(), "{run:?}");
    let seen: Value = serde_json::from_slice(&run.stdout).unwrap();
    assert!(
        seen["upgrade"]
            .as_str()
            .unwrap()
            .starts_with("HTTP/1.1 101"),
        "{seen}"
    );
    assert!(seen["closed"].as_u64().unwrap() >= 120, "{seen}");
    let health: Value = serde_json::from_str(seen["health"].as_str().unwrap()).unwrap();
    assert!(health["handshaking"].as_u64().unwrap() <= 9, "{health}");
}
