//! What the system says about itself: a service's `info`, the broker's
//! `stats`, the `owner` of a key, and the `trace` of one request.

use std::time::Duration;
use switchboard_bus::proto::admin::OwnerQuery;
use switchboard_bus::proto::{self, BrokerStats};
use switchboard_bus::{CallOptions, Handle};

use crate::cli::{Args, Command};
use crate::{body_to_json, decode_reply, Failure};

/// Runs one of the group's commands.
pub(crate) async fn run(bus: &Handle, args: &Args, options: CallOptions) -> Result<(), Failure> {
    match &args.command {
        Command::Info { service, instance } => {
            let options = CallOptions {
                instance: instance.clone(),
                ..options
            };
            info(bus, service, args.json, options).await
        }
        Command::Stats => {
            let stats: BrokerStats = bus.broker("stats", Vec::new(), options).await?;
            println!(
                "{}",
                serde_json::to_string_pretty(&stats).unwrap_or_default()
            );
            Ok(())
        }
        Command::Owner { service, key } => {
            let query = OwnerQuery {
                service: service.clone(),
                key: key.clone(),
            };
            let body = proto::to_body(&query).map_err(|e| Failure::Usage(e.into()))?;
            let reply = bus
                .call(proto::BROKER_SERVICE, "owner", body, options)
                .await?;
            println!("{}", body_to_json(&reply.body));
            Ok(())
        }
        Command::Trace { trace: id } => trace(bus, id, args.json, options).await,
        _ => unreachable!("not an inspect command"),
    }
}

/// `info SERVICE`: its `$info`: version, bus and protocol, ops, events.
async fn info(
    bus: &Handle,
    service: &str,
    json: bool,
    options: CallOptions,
) -> Result<(), Failure> {
    let reply = bus.call(service, "$info", Vec::new(), options).await?;
    let info: proto::Info = decode_reply(&reply, "$info")?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&info).unwrap_or_default()
        );
        return Ok(());
    }
    let version = if info.version.is_empty() {
        "?"
    } else {
        &info.version
    };
    println!(
        "{} ({}) {version} · bus {} · protocol {}",
        info.service, info.instance, info.bus_version, info.protocol
    );
    println!("ops:    {}", info.ops.join(" "));
    if !info.events.is_empty() {
        println!("events: {}", info.events.join(" "));
    }
    Ok(())
}

/// `trace TRACE_ID`: asks every instance on the bus (and the broker) for its
/// spans of the trace and prints them in order.
async fn trace(bus: &Handle, trace: &str, json: bool, options: CallOptions) -> Result<(), Failure> {
    use switchboard_bus::proto::admin::TraceQuery;
    let query = TraceQuery {
        trace: trace.to_owned(),
        slowest: 0,
    };
    let each = options.timeout.unwrap_or(Duration::from_secs(2));
    let spans = bus.collect_spans(&query, each).await?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&spans).unwrap_or_default()
        );
        return Ok(());
    }
    let Some(first) = spans.first().map(|s| s.start_us) else {
        return Err(Failure::NotFound(format!(
            "no process holds spans of trace {trace} (each keeps its last 8,192; \
             a trace id is the \"trace\" of a gateway reply)"
        )));
    };
    let end = spans
        .iter()
        .map(|s| s.start_us + s.duration_us)
        .max()
        .unwrap_or(first);
    println!(
        "trace {trace}: {} spans, {:.3} ms",
        spans.len(),
        (end - first) as f64 / 1000.0
    );
    for s in &spans {
        println!(
            "  +{:>9.3} ms {:>9.3} ms  {:<10} {:<60} {}",
            (s.start_us - first) as f64 / 1000.0,
            s.duration_us as f64 / 1000.0,
            s.instance,
            s.name,
            s.outcome
        );
    }
    Ok(())
}
