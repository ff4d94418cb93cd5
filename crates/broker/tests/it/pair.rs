//! A broker pair (primary and backup, `switchboard_broker::ha`) with real
//! broker processes, a real service process and real signals. Their state
//! messages go through UDP relays in this test, which can cut the link between
//! the two brokers alone and read what each announces.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchboard_broker::ha::{self, State};
use switchboard_bus::proto::{self, ErrorCode};
use switchboard_bus::{CallOptions, Handle};
use switchboard_testkit::{client, eventually, wait_ready, Child, Sig};

use crate::READY;

const HB: &str = "200";

/// One direction of the pair's state channel through the relays: forwards
/// what one broker sends to the other unless cut, and remembers the last state
/// it carried (or dropped).
struct Relay {
    /// Where the sending broker sends (its `--ha-peer`).
    addr: String,
    cut: Arc<AtomicBool>,
    last: Arc<AtomicU8>,
    active_seen: Arc<AtomicU64>,
}

/// The two relays between a primary (UDP `pa`) and a backup (UDP `pb`):
/// (primary→backup, backup→primary). Each broker is told the other's relay
/// socket as its partner, and hears the partner from that same socket, as a
/// broker checks (a datagram from any other address is refused).
async fn relays(pa: String, pb: String) -> (Relay, Relay) {
    let stand_in_a = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let stand_in_b = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
    // The primary sends to B's stand-in, which the backup hears from A's.
    let to_backup = Relay::start(stand_in_b.clone(), stand_in_a.clone(), pb);
    let to_primary = Relay::start(stand_in_a, stand_in_b, pa);
    (to_backup, to_primary)
}

impl Relay {
    fn start(
        inbound: Arc<tokio::net::UdpSocket>,
        outbound: Arc<tokio::net::UdpSocket>,
        target: String,
    ) -> Self {
        let addr = inbound.local_addr().unwrap().to_string();
        let (cut, last, active_seen) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU8::new(0)),
            Arc::new(AtomicU64::new(0)),
        );
        let (c, l, a) = (cut.clone(), last.clone(), active_seen.clone());
        tokio::spawn(async move {
            let mut buf = [0u8; 128];
            while let Ok((n, _)) = inbound.recv_from(&mut buf).await {
                if let Some(d) = ha::decode(&buf[..n], proto::now_ms(), Some("pair")) {
                    l.store(d.state as u8 + 1, Ordering::SeqCst);
                    if d.state == State::Active {
                        a.fetch_add(1, Ordering::SeqCst);
                    }
                }
                if !c.load(Ordering::SeqCst) {
                    let _ = outbound.send_to(&buf[..n], &target).await;
                }
            }
        });
        Self {
            addr,
            cut,
            last,
            active_seen,
        }
    }
}

fn udp_port() -> String {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string()
}

fn tcp_endpoint() -> String {
    format!("tcp://127.0.0.1:{}", switchboard_testkit::free_port())
}

fn broker(role: &str, bind: &str, ha_bind: &str, ha_peer: &str) -> Child {
    Child::broker(
        bind,
        &[
            "--secret",
            "pair",
            "--heartbeat-ms",
            HB,
            "--ha-role",
            role,
            "--ha-bind",
            ha_bind,
            "--ha-peer",
            ha_peer,
        ],
    )
    .unwrap()
}

async fn ha_of(bus: &Handle) -> String {
    match bus
        .broker::<proto::BrokerStats>("stats", Vec::new(), CallOptions::default())
        .await
    {
        Ok(s) => s.ha,
        Err(e) => format!("error: {e}"),
    }
}

/// Two brokers with their state channel through relays: (primary, backup,
/// relay primary→backup, relay backup→primary, endpoints "EA,EB", the
/// primary's bind and UDP addresses to restart it the same).
struct PairUnderTest {
    primary: Child,
    _backup: Child,
    to_backup: Relay,
    to_primary: Relay,
    endpoints: String,
    primary_bind: (String, String, String),
}

async fn pair() -> PairUnderTest {
    let (pa_udp, pb_udp) = (udp_port(), udp_port());
    let (to_backup, to_primary) = relays(pa_udp.clone(), pb_udp.clone()).await;
    let (ea, eb) = (tcp_endpoint(), tcp_endpoint());
    let primary = broker("primary", &ea, &pa_udp, &to_backup.addr);
    let backup = broker("backup", &eb, &pb_udp, &to_primary.addr);
    // Both hear each other: primary active, backup passive.
    let settled = eventually(Duration::from_secs(5), || async {
        to_backup.last.load(Ordering::SeqCst) == State::Active as u8 + 1
            && to_primary.last.load(Ordering::SeqCst) == State::Passive as u8 + 1
    })
    .await;
    assert!(settled, "the pair settles: primary active, backup passive");
    PairUnderTest {
        endpoints: format!(
            "{},{}",
            primary.first_line.clone().unwrap(),
            backup.first_line.clone().unwrap()
        ),
        primary_bind: (ea, pa_udp, to_backup.addr.clone()),
        primary,
        _backup: backup,
        to_backup,
        to_primary,
    }
}

/// An echo service `svc` (instance `instance`) on the pair, and a client.
async fn serve(p: &PairUnderTest, instance: &str, client_name: &str) -> (Child, Handle) {
    let svc = Child::spawn(
        "echo",
        &[
            "--broker",
            &p.endpoints,
            "--service",
            "svc",
            "--instance",
            instance,
        ],
        &[("SB_SECRET", "pair")],
    )
    .unwrap();
    let bus = client(&p.endpoints, client_name, Some("pair")).await;
    assert!(wait_ready(&bus, instance, READY).await);
    (svc, bus)
}

#[tokio::test]
async fn the_backup_takes_over_when_the_primary_dies_and_the_primary_comes_back_passive() {
    let mut p = pair().await;
    let (_svc, bus) = serve(&p, "svc1", "t-pair").await;
    assert_eq!(ha_of(&bus).await, "primary active, partner passive");
    let mut events = bus.subscribe("pair.>").await.unwrap();

    // Steady load, one request at a time, each with a 5 s deadline.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (bus, stop) = (bus.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut ok, mut failed, mut codes) = (0u64, 0u64, Vec::new());
            let mut last_ok = Instant::now();
            let mut longest_gap = Duration::ZERO;
            while !stop.load(Ordering::SeqCst) {
                let options = CallOptions {
                    timeout: Some(Duration::from_secs(5)),
                    ..CallOptions::default()
                };
                match bus.call("svc", "echo", b"\x80".to_vec(), options).await {
                    Ok(_) => {
                        ok += 1;
                        longest_gap = longest_gap.max(last_ok.elapsed());
                        last_ok = Instant::now();
                    }
                    Err(e) => {
                        failed += 1;
                        codes.push(e.code);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
            (ok, failed, codes, longest_gap)
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    // A long request in flight on the primary when it dies.
    let sleeping = {
        let bus = bus.clone();
        let body = proto::to_body(&std::collections::BTreeMap::from([("ms", 4_000u64)])).unwrap();
        tokio::spawn(async move {
            let started = Instant::now();
            let r = bus
                .call(
                    "svc",
                    "sleep",
                    body,
                    CallOptions {
                        timeout: Some(Duration::from_secs(10)),
                        ..CallOptions::default()
                    },
                )
                .await;
            (r.map(|_| ()), started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let killed_at = Instant::now();
    p.primary.signal(Sig::SIGKILL).unwrap();
    let (slept, after) = sleeping.await.unwrap();
    let err = slept.expect_err("the broker it went through is gone");
    assert_eq!(err.code, ErrorCode::Unavailable, "{err:?}");
    assert!(
        after < Duration::from_secs(3),
        "answered at once, not at its deadline: {after:?}"
    );
    // Serving again through the backup.
    let back = eventually(Duration::from_secs(10), || async {
        bus.call("svc", "echo", b"\x80".to_vec(), CallOptions::default())
            .await
            .is_ok()
    })
    .await;
    let failover = killed_at.elapsed();
    assert!(back, "serving again");
    assert!(
        failover < Duration::from_secs(3),
        "failover took {failover:?}"
    );
    assert!(
        ha_of(&bus).await.starts_with("backup active"),
        "{}",
        ha_of(&bus).await
    );
    // The subscription was made on the primary; it is there on the backup.
    let publisher = client(&p.endpoints, "t-pair-pub", Some("pair")).await;
    let mut heard = false;
    for _ in 0..50 {
        publisher.publish("pair.after", b"\x80".to_vec()).await.ok();
        if let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(100), events.next()).await {
            heard = true;
            break;
        }
    }
    assert!(heard, "the subscription follows the failover");

    // The primary comes back on the same addresses: it hears the backup active
    // and stays passive; the peers stay where they are.
    let (ea, pa_udp, to_backup) = p.primary_bind.clone();
    p.primary = broker("primary", &ea, &pa_udp, &to_backup);
    let passive = eventually(Duration::from_secs(5), || async {
        ha_of(&bus).await == "backup active, partner passive"
    })
    .await;
    assert!(passive, "{}", ha_of(&bus).await);
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert_eq!(
        ha_of(&bus).await,
        "backup active, partner passive",
        "no flapping"
    );
    assert!(p.to_backup.active_seen.load(Ordering::SeqCst) > 0);

    stop.store(true, Ordering::SeqCst);
    let (ok, failed, codes, gap) = load.await.unwrap();
    eprintln!(
        "pair: failover {} ms (kill to the next answer); load: {ok} answered, {failed} failed ({codes:?}), longest gap {} ms; in-flight sleep answered after {} ms",
        failover.as_millis(),
        gap.as_millis(),
        after.as_millis()
    );
    assert!(ok > 50, "{ok}");
    assert!(
        codes.iter().all(|c| *c == ErrorCode::Unavailable),
        "only the requests in flight at the kill fail, with unavailable: {codes:?}"
    );
    assert!(failed <= 2, "{failed} failed");
}

#[tokio::test]
async fn a_cut_between_the_brokers_alone_leaves_one_active() {
    let p = pair().await;
    let (_svc, bus) = serve(&p, "svc2", "t-pair-cut").await;
    let backup_active_before = p.to_primary.active_seen.load(Ordering::SeqCst);
    // Cut both directions for ten of the partner's expiry windows.
    p.to_backup.cut.store(true, Ordering::SeqCst);
    p.to_primary.cut.store(true, Ordering::SeqCst);
    for _ in 0..20 {
        // Peers keep working on the primary; a new one arrives there too.
        bus.call("svc", "echo", b"\x80".to_vec(), CallOptions::default())
            .await
            .expect("served");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let newcomer = client(&p.endpoints, "t-pair-new", Some("pair")).await;
    newcomer
        .call("svc", "echo", b"\x80".to_vec(), CallOptions::default())
        .await
        .expect("served");
    assert_eq!(
        p.to_primary.active_seen.load(Ordering::SeqCst),
        backup_active_before,
        "the backup never said active: no peer voted for it"
    );
    assert_eq!(
        p.to_primary.last.load(Ordering::SeqCst),
        State::Passive as u8 + 1
    );
    p.to_backup.cut.store(false, Ordering::SeqCst);
    p.to_primary.cut.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(ha_of(&bus).await, "primary active, partner passive");
}

/// Anyone who reaches the pair's UDP port can send it anything: a flood of
/// junk and of state messages signed with the wrong secret is counted and
/// dropped, the primary stays active, and requests keep being served.
#[tokio::test]
async fn junk_on_the_pair_port_changes_nothing() {
    let p = pair().await;
    let (_svc, bus) = serve(&p, "svc3", "t-pair-junk").await;
    let target = p.primary_bind.1.clone();
    let flood = tokio::spawn(async move {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let forged = ha::encode(
            &ha::Datagram {
                role: ha::Role::Backup,
                state: State::Passive,
                seq: u64::MAX,
                at: proto::now_ms(),
            },
            Some("guess"),
        );
        for i in 0..50_000u32 {
            let junk: &[u8] = if i % 2 == 0 {
                &forged
            } else {
                b"SBHA\x03garbage"
            };
            let _ = socket.send_to(junk, &target).await;
        }
    });
    let started = Instant::now();
    let mut served = 0;
    while !flood.is_finished() || served < 50 {
        bus.call("svc", "echo", b"\x80".to_vec(), CallOptions::default())
            .await
            .expect("served during the flood");
        served += 1;
    }
    flood.await.unwrap();
    let stats: proto::BrokerStats = bus
        .broker("stats", Vec::new(), CallOptions::default())
        .await
        .unwrap();
    assert!(stats.unauthenticated > 0, "junk counted: {stats:?}");
    assert_eq!(stats.ha, "primary active, partner passive");
    eprintln!(
        "pair junk: {served} requests served during the flood ({} ms), {} datagrams refused",
        started.elapsed().as_millis(),
        stats.unauthenticated
    );
}

/// A primary whose partner's name does not resolve (its Service not created
/// yet, say) is alone: once its wait is over, the first peer makes it active,
/// and the lookups, made off the broker's loop, never hold up routing.
#[tokio::test]
async fn a_primary_alone_with_an_unresolvable_partner_serves() {
    let bind = tcp_endpoint();
    let primary = broker(
        "primary",
        &bind,
        &udp_port(),
        "no-such-partner.invalid:5600",
    );
    let endpoint = primary.first_line.clone().unwrap();
    let _svc = Child::spawn(
        "echo",
        &[
            "--broker",
            &endpoint,
            "--service",
            "svc",
            "--instance",
            "alone",
        ],
        &[("SB_SECRET", "pair")],
    )
    .unwrap();
    let bus = client(&endpoint, "t-alone", Some("pair")).await;
    assert!(wait_ready(&bus, "alone", READY).await);
    for _ in 0..20 {
        bus.call("svc", "echo", b"\x80".to_vec(), CallOptions::default())
            .await
            .expect("served");
    }
    assert_eq!(ha_of(&bus).await, "primary active, partner not heard");
}
