//! The `main` bus service: what `sbctl` talks to (`ls`, `start`, `stop`,
//! `restart`, `reload`, `describe`, `scale`, `reload-config`, `shutdown`,
//! `logs`), and the task that starts the keepers, the HTTP server and the apps.

use std::sync::Arc;
use std::time::Duration;
use switchboard_bus::{Error, Request, Service};
use tokio_util::sync::CancellationToken;

use crate::apps::{self, Cmd, InstanceStatus, Supervisor};
use crate::{http, LogsReply, NameArg};

fn decode_name(req: &Request) -> Result<NameArg, Error> {
    req.decode::<NameArg>()
}

fn targets(sup: &Supervisor, name: &str) -> Result<Vec<Arc<apps::Managed>>, Error> {
    let found = sup.find(name);
    if found.is_empty() {
        let known: Vec<String> = sup.apps().into_iter().map(|a| a.spec.name).collect();
        return Err(Error::bad_request(format!(
            "no app or instance {name:?} (apps: {})",
            known.join(", ")
        )));
    }
    Ok(found)
}

async fn order(sup: Arc<Supervisor>, req: Request, cmd: Cmd) -> switchboard_bus::HandlerResult {
    let arg = decode_name(&req)?;
    let found = targets(&sup, &arg.name)?;
    let results = futures::future::join_all(found.iter().map(|m| m.order(cmd))).await;
    let failures: Vec<String> = found
        .iter()
        .zip(&results)
        .filter_map(|(m, r)| r.as_ref().err().map(|e| format!("{}: {e}", m.instance)))
        .collect();
    if !failures.is_empty() {
        return Err(Error::new(
            switchboard_bus::proto::ErrorCode::Unavailable,
            failures.join("; "),
        ));
    }
    let statuses: Vec<InstanceStatus> = found.iter().map(|m| m.status()).collect();
    Request::encode(&statuses)
}

/// The `main` bus service over `sup`.
pub(crate) fn service(
    sup: Arc<Supervisor>,
    shutdown: CancellationToken,
    http: Option<tokio::net::TcpListener>,
    http_auth: http::Access,
) -> Service {
    let shutdown = Arc::new(shutdown);
    let s_task = sup.clone();
    Service::new("main")
        .version(env!("CARGO_PKG_VERSION"))
        .concurrency(64)
        .handle_with("ls", &sup, |req: Request, sup| async move {
            Request::encode(&sup.ls(&req.bus).await)
        })
        .handle_with("start", &sup, |req: Request, sup| {
            order(sup, req, Cmd::Start)
        })
        .handle_with("stop", &sup, |req: Request, sup| order(sup, req, Cmd::Stop))
        .handle_with("restart", &sup, |req: Request, sup| {
            order(sup, req, Cmd::Restart)
        })
        .handle_with("reload", &sup, |req: Request, sup| {
            order(sup, req, Cmd::Reload)
        })
        .handle_with("describe", &sup, describe)
        .handle_with("scale", &sup, |req: Request, sup| async move {
            let arg: switchboard_bus::proto::admin::ScaleArg = req.decode()?;
            sup.scale(&arg.app, arg.instances).await?;
            let statuses: Vec<InstanceStatus> =
                sup.find(&arg.app).iter().map(|m| m.status()).collect();
            Request::encode(&statuses)
        })
        .handle_with("reload-config", &sup, |_req: Request, sup| async move {
            Request::encode(&sup.reload_config().await?)
        })
        .handle_with(
            "shutdown",
            &shutdown,
            |_req: Request, shutdown| async move {
                tracing::warn!("shutdown asked over the bus: stopping every app, then main");
                // After the reply has gone out.
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    shutdown.cancel();
                });
                Request::encode(&std::collections::BTreeMap::<String, u8>::new())
            },
        )
        .handle_with("logs", &sup, logs)
        .task(move |bus, shutdown| run_apps(s_task, bus, shutdown, http, http_auth))
}

/// `describe APP`: the app's configuration (secrets redacted) and its instances.
async fn describe(req: Request, sup: Arc<Supervisor>) -> switchboard_bus::HandlerResult {
    let arg = decode_name(&req)?;
    let apps = sup.apps();
    let app = apps
        .iter()
        .find(|a| a.spec.name == arg.name)
        .ok_or_else(|| {
            let known: Vec<&str> = apps.iter().map(|a| a.spec.name.as_str()).collect();
            Error::bad_request(format!(
                "no app {:?} (apps: {})",
                arg.name,
                known.join(", ")
            ))
        })?;
    let found = sup.find(&app.spec.name);
    Request::encode(
        &app.describe(
            found.iter().map(|m| m.status()).collect(),
            found
                .iter()
                .map(|m| m.log_path().display().to_string())
                .collect(),
        ),
    )
}

/// `logs NAME`: the last lines of an instance's log, or what was written
/// after `offset` (`logs -f`).
async fn logs(req: Request, sup: Arc<Supervisor>) -> switchboard_bus::HandlerResult {
    let arg = decode_name(&req)?;
    let (instance, path) = if arg.name == "broker" {
        ("broker".to_owned(), sup.log_dir().join("broker.log"))
    } else {
        let found = targets(&sup, &arg.name)?;
        if found.len() > 1 {
            let names: Vec<&str> = found.iter().map(|m| m.instance.as_str()).collect();
            return Err(Error::bad_request(format!(
                "{} has several instances: {}",
                arg.name,
                names.join(", ")
            )));
        }
        (found[0].instance.clone(), found[0].log_path())
    };
    let read = match arg.offset {
        Some(offset) => crate::logs::since(&path, offset),
        None => {
            crate::logs::tail(&path, arg.lines.unwrap_or(50).min(10_000)).map(|(lines, size)| {
                let mut text = lines.join("\n");
                if !text.is_empty() {
                    text.push('\n');
                }
                (text, size)
            })
        }
    };
    let (text, offset) = read.map_err(|e| {
        Error::new(
            switchboard_bus::proto::ErrorCode::Unavailable,
            format!("{}: {e}", path.display()),
        )
    })?;
    Request::encode(&LogsReply {
        instance,
        path: path.display().to_string(),
        text,
        offset,
    })
}

/// The service's task: main's HTTP server, the keepers, the broker watch; the
/// apps started in dependency order (`ready` on stdout once all are), and on
/// shutdown stopped in reverse order.
async fn run_apps(
    sup: Arc<Supervisor>,
    bus: switchboard_bus::Handle,
    shutdown: CancellationToken,
    http: Option<tokio::net::TcpListener>,
    http_auth: http::Access,
) {
    if let Some(listener) = http {
        tokio::spawn(http::serve(
            listener,
            sup.clone(),
            bus.clone(),
            http_auth,
            shutdown.clone(),
        ));
    }
    sup.spawn_keepers(&bus, &shutdown);
    tokio::spawn({
        let sup = sup.clone();
        let bus = bus.clone();
        let shutdown = shutdown.clone();
        async move { sup.watch_broker(bus, shutdown).await }
    });
    if !sup.no_spawn {
        tokio::select! {
            failed = sup.start_all() => {
                if failed.is_empty() {
                    tracing::info!("every app started");
                    println!("ready");
                } else {
                    tracing::error!(failed = failed.len(), "some apps did not start");
                    println!("not-ready {}", failed.len());
                }
            }
            () = shutdown.cancelled() => {}
        }
    }
    shutdown.cancelled().await;
    tracing::info!("stopping the apps in reverse dependency order");
    sup.stop_all().await;
}
