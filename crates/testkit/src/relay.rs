//! A real TCP relay that can cut a connection to a real server (outages without stopping it).

use super::*;

/// A real TCP relay in front of a real server (MariaDB), for outages without
/// touching the server other tests share: [`TcpRelay::cut`] drops every relayed
/// connection and refuses new ones (closed at once, as a stopped server's port
/// would); [`TcpRelay::restore`] relays again.
pub struct TcpRelay {
    /// `HOST:PORT` to connect to instead of the server.
    pub addr: String,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    generation: tokio::sync::watch::Sender<u64>,
    stop: CancellationToken,
}

impl TcpRelay {
    /// Relays a port picked by the OS to `target`, on a thread of its own.
    ///
    /// # Panics
    ///
    /// When no port can be bound.
    pub fn start(target: &str) -> Self {
        Self::start_on("127.0.0.1:0", target)
    }

    /// As [`TcpRelay::start`], listening on `listen` (an address other
    /// network namespaces reach, say).
    ///
    /// # Panics
    ///
    /// When `listen` cannot be bound.
    pub fn start_on(listen: &str, target: &str) -> Self {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind(listen).expect("bind relay");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr").to_string();
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (generation, gen_rx) = tokio::sync::watch::channel(0u64);
        let stop = CancellationToken::new();
        let (target, cut2, stop2) = (target.to_owned(), cut.clone(), stop.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                loop {
                    let accepted = tokio::select! {
                        () = stop2.cancelled() => return,
                        a = listener.accept() => a,
                    };
                    let Ok((mut inbound, _)) = accepted else {
                        continue;
                    };
                    if cut2.load(Ordering::SeqCst) {
                        continue; // dropped: closed at once
                    }
                    let target = target.clone();
                    let mut gen = gen_rx.clone();
                    // Only a cut after this connection ends it (the clone would
                    // otherwise still see the last cut as news).
                    gen.borrow_and_update();
                    let stop = stop2.clone();
                    tokio::spawn(async move {
                        let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await else {
                            return;
                        };
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                            _ = gen.changed() => {}
                            () = stop.cancelled() => {}
                        }
                    });
                }
            });
        });
        Self {
            addr,
            cut,
            generation,
            stop,
        }
    }

    /// The outage: every relayed connection drops, new ones are closed at once.
    pub fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    /// The server is back.
    pub fn restore(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for TcpRelay {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
