//! Hosts for tests, made of Linux network namespaces: each host is a namespace
//! with a veth pair into a bridge in the test's own namespace, an address of its
//! own (10.211.N.H/24), and its own loopback and ports. The test process (in the
//! root namespace) reaches every host through the bridge (10.211.N.254). A
//! host's link can be cut (`ip link set … down`: packets vanish, as on a pulled
//! cable) and restored; a host can be killed (every process in it, `kill -9`).
//! Needs root and `ip`; [`Lab::new`] says why it cannot be made otherwise.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::{bin_path, Child};

/// One host: a namespace and its address.
pub struct Host {
    /// The namespace's name (`ip netns exec NAME …`).
    pub ns: String,
    /// Its address on the bridge.
    pub ip: String,
    /// The root end of its veth pair (taken down to cut the host off).
    link: String,
}

/// Hosts joined by a bridge; removed (processes killed) when dropped.
pub struct Lab {
    /// The hosts, in order.
    pub hosts: Vec<Host>,
    /// The bridge's address: the test process, as the hosts see it.
    pub bridge_ip: String,
    bridge: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Lab {
    /// `n` hosts (at most 8).
    ///
    /// # Errors
    ///
    /// Why namespaces cannot be made here (not root, no `ip`, no veth).
    pub fn new(n: usize) -> Result<Self, String> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        // A subnet and names of its own per lab: tests run in parallel, and
        // interface names are at most 15 bytes.
        let k = (std::process::id() + NEXT.fetch_add(1, Ordering::Relaxed) * 7) % 200 + 20;
        let tag = format!("{:x}{k}", std::process::id() % 4096);
        let bridge = format!("sbbr{tag}");
        let bridge_ip = format!("10.211.{k}.254");
        let mut lab = Self {
            hosts: Vec::new(),
            bridge_ip: bridge_ip.clone(),
            bridge: bridge.clone(),
        };
        ip(&["link", "add", &bridge, "type", "bridge"])?;
        ip(&["addr", "add", &format!("{bridge_ip}/24"), "dev", &bridge])?;
        ip(&["link", "set", &bridge, "up"])?;
        for h in 1..=n.min(8) {
            let ns = format!("sb{tag}h{h}");
            let (root_end, host_end) = (format!("sv{tag}{h}"), format!("sh{tag}{h}"));
            let addr = format!("10.211.{k}.{h}");
            ip(&["netns", "add", &ns])?;
            lab.hosts.push(Host {
                ns: ns.clone(),
                ip: addr.clone(),
                link: root_end.clone(),
            });
            ip(&[
                "link", "add", &root_end, "type", "veth", "peer", "name", &host_end,
            ])?;
            ip(&["link", "set", &host_end, "netns", &ns])?;
            ip(&["link", "set", &root_end, "master", &bridge])?;
            ip(&["link", "set", &root_end, "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                &host_end,
            ])?;
            ip(&["-n", &ns, "link", "set", &host_end, "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(lab)
    }

    /// A command that runs `bin` (one of our binaries) inside host `h`.
    pub fn command(&self, h: usize, bin: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.hosts[h].ns]);
        cmd.arg(bin_path(bin));
        cmd
    }

    /// Spawns our binary `bin` in host `h`.
    ///
    /// # Errors
    ///
    /// As [`Child::spawn`].
    pub fn spawn(
        &self,
        h: usize,
        bin: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Child> {
        Child::spawn_command(self.command(h, bin), bin, args, env)
    }

    /// Spawns `bin` in host `h` and waits for its `listening …` line.
    ///
    /// # Errors
    ///
    /// As [`Child::announcing`].
    pub fn announcing(
        &self,
        h: usize,
        bin: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Child> {
        Child::announce(self.spawn(h, bin, args, env)?, bin)
    }

    /// Cuts host `h` off: its link goes down, packets to and from it vanish
    /// (no reset, no close: peers must notice by silence).
    pub fn cut(&self, h: usize) {
        let _ = ip(&["link", "set", &self.hosts[h].link, "down"]);
    }

    /// Joins host `h` again.
    pub fn restore(&self, h: usize) {
        let _ = ip(&["link", "set", &self.hosts[h].link, "up"]);
    }

    /// Every process in host `h`.
    pub fn pids(&self, h: usize) -> Vec<u32> {
        Command::new("ip")
            .args(["netns", "pids", &self.hosts[h].ns])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Kills every process in host `h` with SIGKILL (the host dies; its kernel,
    /// being ours, still closes their sockets).
    pub fn kill_host(&self, h: usize) {
        for pid in self.pids(h) {
            crate::signal_pid(pid, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for h in 0..self.hosts.len() {
            self.kill_host(h);
        }
        for host in &self.hosts {
            let _ = ip(&["netns", "del", &host.ns]);
            let _ = ip(&["link", "del", &host.link]);
        }
        let _ = ip(&["link", "del", &self.bridge]);
    }
}

/// Whether this process may make namespaces (root, with `ip`): the reason
/// when it may not, for a test to print as it skips.
pub fn unavailable() -> Option<String> {
    if !Path::new("/proc/self/ns/net").exists() {
        return Some("no network namespaces here".into());
    }
    Lab::new(1).err()
}
