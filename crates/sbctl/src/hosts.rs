//! Several hosts, one system. Each host runs a main of its own (instance `main`
//! on one host, `main.HOST` on several, all of service `main`); sbctl asks every
//! main on the bus and sends an order for an app or instance to the main (or,
//! for an app on several hosts, each main) that runs it.

use switchboard_bus::proto::Envelope;
use switchboard_bus::proto::{self, ErrorCode, InstanceInfo, PeerState};
use switchboard_bus::{CallOptions, Error, Handle};

/// Every main on the bus with its `ls` rows.
pub(crate) struct Mains {
    rows: Vec<(String, Vec<serde_json::Value>)>,
}

/// `options` pinned to one main.
pub(crate) fn to(main: &str, options: &CallOptions) -> CallOptions {
    CallOptions {
        instance: Some(main.to_owned()),
        ..options.clone()
    }
}

impl Mains {
    /// Asks the broker which mains there are, then each for its `ls`.
    ///
    /// # Errors
    ///
    /// `unknown_service` when no main is on the bus; a main's own error.
    pub(crate) async fn load(bus: &Handle, options: &CallOptions) -> Result<Self, Error> {
        let list: Vec<InstanceInfo> = bus.broker("ls", Vec::new(), options.clone()).await?;
        let mut mains: Vec<String> = list
            .into_iter()
            .filter(|i| i.service == "main" && i.state == PeerState::Ready)
            .map(|i| i.instance)
            .collect();
        mains.sort();
        mains.dedup();
        if mains.is_empty() {
            return Err(Error::new(
                ErrorCode::UnknownService,
                "main: no supervisor on the bus",
            ));
        }
        let asks = mains.into_iter().map(|main| async move {
            let reply = bus
                .call("main", "ls", Vec::new(), to(&main, options))
                .await?;
            let rows: Vec<serde_json::Value> = proto::from_body(&reply.body).unwrap_or_default();
            Ok::<_, Error>((main, rows))
        });
        let rows = futures::future::try_join_all(asks).await?;
        Ok(Self { rows })
    }

    /// Every main's rows, in the order of the mains' names. Each main also
    /// lists what it sees on the bus and did not start (`managed: false`): an
    /// instance another host's main runs is shown once, as that main's.
    pub(crate) fn all_rows(&self) -> serde_json::Value {
        let managed: std::collections::HashSet<&str> = self
            .rows
            .iter()
            .flat_map(|(_, r)| r.iter())
            .filter(|r| r["managed"] == true)
            .filter_map(|r| r["instance"].as_str())
            .collect();
        let mut unmanaged_seen = std::collections::HashSet::new();
        let rows = self
            .rows
            .iter()
            .flat_map(|(_, r)| r.iter())
            .filter(|r| {
                r["managed"] == true
                    || r["instance"].as_str().is_some_and(|i| {
                        !managed.contains(i) && unmanaged_seen.insert(i.to_owned())
                    })
            })
            .cloned()
            .collect();
        serde_json::Value::Array(rows)
    }

    /// Each main with its rows.
    pub(crate) fn rows(&self) -> &[(String, Vec<serde_json::Value>)] {
        &self.rows
    }

    /// Every main's instance name.
    pub(crate) fn names(&self) -> impl Iterator<Item = &str> {
        self.rows.iter().map(|(m, _)| m.as_str())
    }

    /// The mains that run an app or instance called `name` (`broker`: the one
    /// that runs the broker). With one main, that main whatever the name: it
    /// answers for itself, unknown names included, as before several hosts.
    pub(crate) fn owners(&self, name: &str) -> Vec<String> {
        if self.rows.len() == 1 {
            return vec![self.rows[0].0.clone()];
        }
        self.rows
            .iter()
            .filter(|(_, rows)| {
                rows.iter()
                    .any(|r| r["managed"] == true && (r["app"] == name || r["instance"] == name))
            })
            .map(|(m, _)| m.clone())
            .collect()
    }

    /// The owners of `name`, or `bad_request` naming the hosts asked.
    pub(crate) fn owners_or_err(&self, name: &str) -> Result<Vec<String>, Error> {
        let owners = self.owners(name);
        if owners.is_empty() {
            let asked: Vec<&str> = self.names().collect();
            return Err(Error::bad_request(format!(
                "no app or instance {name:?} on any host (asked {})",
                asked.join(", ")
            )));
        }
        Ok(owners)
    }

    /// Sends `op` to every owner of `name` in turn (one host after another: a
    /// reload stays rolling); the last reply.
    pub(crate) async fn call_owners(
        &self,
        bus: &Handle,
        name: &str,
        op: &str,
        body: Vec<u8>,
        options: &CallOptions,
    ) -> Result<Envelope, Error> {
        let owners = self.owners_or_err(name)?;
        call_each(bus, owners.iter().map(String::as_str), op, body, options).await
    }

    /// Sends `op` to every main in turn; the last reply.
    pub(crate) async fn call_all(
        &self,
        bus: &Handle,
        op: &str,
        body: Vec<u8>,
        options: &CallOptions,
    ) -> Result<Envelope, Error> {
        call_each(bus, self.names(), op, body, options).await
    }
}

/// `op` to each of `mains` in turn, stopping at the first error; the last reply.
async fn call_each<'a>(
    bus: &Handle,
    mains: impl Iterator<Item = &'a str>,
    op: &str,
    body: Vec<u8>,
    options: &CallOptions,
) -> Result<Envelope, Error> {
    let mut last = None;
    for main in mains {
        last = Some(
            bus.call("main", op, body.clone(), to(main, options))
                .await?,
        );
    }
    last.ok_or_else(|| Error::new(ErrorCode::UnknownService, "main: no supervisor"))
}
