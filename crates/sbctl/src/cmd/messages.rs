//! The bus by hand: `send` one request (a test packet), `pub` an event, `sub`
//! to a pattern.

use switchboard_bus::proto;
use switchboard_bus::{svc, CallOptions, Handle};

use crate::cli::{Args, Command};
use crate::{body_to_json, json_to_body, Failure};

/// Runs one of the group's commands.
pub(crate) async fn run(bus: &Handle, args: &Args, options: CallOptions) -> Result<(), Failure> {
    match &args.command {
        Command::Send {
            service,
            op,
            data,
            instance,
            key,
            trace,
        } => {
            let body = json_to_body(data)?;
            let options = CallOptions {
                instance: instance.clone(),
                key: key.clone(),
                trace: trace.clone(),
                ..options
            };
            let reply = bus.call(service, op, body, options).await?;
            let data = body_to_json(&reply.body);
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({ "ok": true, "trace": reply.trace, "data": data })
                );
            } else {
                println!("{data}");
            }
        }
        Command::Pub { topic, data } => {
            bus.publish(topic, json_to_body(data)?).await?;
            // A round trip to the broker makes sure the event left before we exit.
            bus.call(proto::BROKER_SERVICE, "$echo", Vec::new(), options)
                .await?;
        }
        Command::Sub { pattern, count } => sub(bus, pattern, *count).await?,
        _ => unreachable!("not a messages command"),
    }
    Ok(())
}

/// `sub PATTERN`: prints each event as one JSON line until Ctrl-C (or `count`).
async fn sub(bus: &Handle, pattern: &str, count: Option<u64>) -> Result<(), Failure> {
    let mut sub = bus.subscribe(pattern).await?;
    let shutdown = svc::shutdown_on_signal();
    let mut seen = 0u64;
    while count.is_none_or(|c| seen < c) {
        tokio::select! {
            () = shutdown.cancelled() => break,
            event = sub.next() => {
                let Some(event) = event else { break };
                seen += 1;
                println!("{}", serde_json::json!({ "topic": event.to, "data": body_to_json(&event.body) }));
            }
        }
    }
    Ok(())
}
