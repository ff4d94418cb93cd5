//! End-to-end: the real binaries (broker, db, chat, two loc, receive) as child
//! processes on ports picked by the OS, a real MariaDB with a database per test,
//! and real WebSocket clients.

// Test code is exempt from the workspace's 120-line function limit: a
// scenario reads best as one story.
#![allow(clippy::too_many_lines)]

mod attack_admission;
mod attack_limits;
mod attack_services;
mod attack_trust;
mod client_js;
mod daily;
mod dashboard;
mod demo;
mod deploy;
mod deploy_run;
mod docs;
mod docs_metrics;
mod docs_ts;
mod faults;
mod gateway;
mod harness;
mod hosts;
mod import_pm2;
mod membership;
mod netns;
mod node_apps;
mod node_bus;
mod observe;
mod prometheus;
mod protocol_replies;
mod security;
mod services;
mod size;
mod spec_peer;
mod start;
mod supervisor;
mod template;
mod tls;
mod zones;
