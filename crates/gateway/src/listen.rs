//! Binding the gateway's port, shared (SO_REUSEPORT) with a successor of the
//! same binary and never with anything else.

use switchboard_bus::svc::procinfo;

/// Binds with SO_REUSEPORT, so that a successor started by a zero-downtime reload
/// (or another instance of this gateway) can listen on the same port while the
/// old process finishes its clients. The port is shared only with processes
/// running this same binary: a port held by anything else (an old Node gateway
/// with SO_REUSEPORT of its own, say) is an error naming the port and the holder,
/// never a silent split of the clients between the two.
///
/// # Errors
///
/// When the address does not resolve, the port is held by another program, or
/// the socket cannot be bound.
pub async fn listen(addr: &str) -> std::io::Result<tokio::net::TcpListener> {
    let addr = tokio::net::lookup_host(addr)
        .await?
        .next()
        .ok_or_else(|| std::io::Error::other("address resolves to nothing"))?;
    if addr.port() != 0 {
        if let Some(holder) = foreign_holder(addr.port()) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!(
                    "port {} is in use by {holder}: stop it or choose another --listen",
                    addr.port()
                ),
            ));
        }
    }
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// A process other than a gateway of this binary that listens on `port`, named
/// for the error message; `None` when the port is free or held only by our own.
fn foreign_holder(port: u16) -> Option<String> {
    let found = procinfo::tcp_listeners(port);
    let ours = std::env::current_exe().ok();
    // A binary replaced on disk reads as "PATH (deleted)".
    let same_binary = |pid: u32| {
        let exe = procinfo::exe_of(pid)?;
        let exe = exe.to_string_lossy();
        let ours = ours.as_ref()?.to_string_lossy().into_owned();
        Some(exe.trim_end_matches(" (deleted)") == ours)
    };
    for &pid in &found.pids {
        if same_binary(pid) != Some(true) {
            let exe = procinfo::exe_of(pid).map_or_else(|| "?".into(), |e| e.display().to_string());
            return Some(format!("pid {pid} ({exe})"));
        }
    }
    (found.sockets > found.pids.len()).then(|| "a process this user cannot see".to_owned())
}
