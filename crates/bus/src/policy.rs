//! The client policy: what WebSocket clients may call, subscribe to and be granted,
//! per service. Configuration, not code: the default is `client-policy.toml` in this
//! crate (compiled in), and `--policy FILE` replaces it (the gateway, and chat for
//! `relay`: give both the same file).
//!
//! Two rules hold whatever the file says: a client never reaches `user.…` or
//! `session.…` topics other than its own `user.<id>`, and never a pattern that
//! starts with a wildcard (`>`, `*.…`), which would reach them.

use serde::Deserialize;
use std::collections::HashMap;
use switchboard_proto::{self as proto, topic};

/// The built-in policy file.
pub const DEFAULT_POLICY: &str = include_str!("../client-policy.toml");

/// The key of the entry that applies to services not named.
pub const ANY_SERVICE: &str = "*";

/// The whole policy.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// `"builtin"`: this file adds to the built-in policy (a service it names
    /// replaces the built-in entry of that name; the others stay) instead of
    /// replacing it whole.
    #[serde(default)]
    pub extends: Option<String>,
    /// Per service; `"*"` is the fallback.
    #[serde(default)]
    pub services: HashMap<String, ServicePolicy>,
}

/// The value of `extends` that builds on the compiled-in policy.
pub const EXTENDS_BUILTIN: &str = "builtin";

/// What clients may do with one service.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServicePolicy {
    /// Clients may call it at all.
    #[serde(default = "default_true")]
    pub open: bool,
    /// Ops clients may call: `"*"` is every op not starting with `$`; `$` ops by name.
    #[serde(default = "default_ops")]
    pub ops: Vec<String>,
    /// The data field whose value is the request's routing key.
    #[serde(default)]
    pub key: Option<String>,
    /// Patterns clients may subscribe to directly.
    #[serde(default)]
    pub subscribe: Vec<String>,
    /// Patterns the service may grant in a reply.
    #[serde(default)]
    pub grant: Vec<String>,
    /// For events on this service's topics: the data field naming the entity an
    /// event is about (`user` for positions). Past a slow client's soft limit, a
    /// newer event for the same topic and entity replaces the queued one (latest
    /// wins) instead of being dropped.
    #[serde(default)]
    pub coalesce: Option<String>,
}

fn default_true() -> bool {
    true
}

fn default_ops() -> Vec<String> {
    vec!["*".into(), "$echo".into()]
}

/// Why a client may not do something (the message goes to the client).
pub type Refusal = String;

impl Default for Policy {
    fn default() -> Self {
        // The compiled-in file is checked by a test; a broken one cannot ship.
        Self::parse(DEFAULT_POLICY).unwrap_or_else(|_| Self {
            extends: None,
            services: HashMap::new(),
        })
    }
}

impl Policy {
    /// Parses and checks a policy file's text.
    ///
    /// # Errors
    ///
    /// The TOML error (naming an unknown key), or the first invalid pattern, op
    /// or field.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut policy: Policy = toml::from_str(text).map_err(|e| e.to_string())?;
        match policy.extends.take().as_deref() {
            None => {}
            Some(EXTENDS_BUILTIN) => {
                let mut services = Self::parse(DEFAULT_POLICY)?.services;
                services.extend(policy.services);
                policy.services = services;
            }
            Some(other) => {
                return Err(format!(
                    "extends = {other:?}: the only policy to extend is {EXTENDS_BUILTIN:?}"
                ))
            }
        }
        for (name, svc) in &policy.services {
            if name != ANY_SERVICE {
                proto::validate_name(name).map_err(|e| format!("service {name:?}: {e}"))?;
            }
            for op in &svc.ops {
                if op != "*" {
                    proto::validate_name(op)
                        .map_err(|e| format!("services.{name}.ops {op:?}: {e}"))?;
                }
            }
            for p in svc.subscribe.iter().chain(&svc.grant) {
                topic::validate(p, true)
                    .map_err(|e| format!("services.{name} pattern {p:?}: {e}"))?;
            }
        }
        Ok(policy)
    }

    /// Reads a policy file.
    ///
    /// # Errors
    ///
    /// Unreadable, or as [`Policy::parse`].
    pub fn load(path: &str) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
        Self::parse(&text).map_err(|e| format!("{path}: {e}"))
    }

    /// The entry for `service`: its own, else the fallback; `None` is closed.
    pub fn service(&self, service: &str) -> Option<&ServicePolicy> {
        self.services
            .get(service)
            .or_else(|| self.services.get(ANY_SERVICE))
    }

    /// Whether a client may call `op` on `service`.
    ///
    /// # Errors
    ///
    /// Why not.
    pub fn check_call(&self, service: &str, op: &str) -> Result<(), Refusal> {
        let svc = self
            .service(service)
            .filter(|s| s.open && !service.starts_with('$'))
            .ok_or_else(|| format!("{service} is not open to clients"))?;
        let allowed = svc
            .ops
            .iter()
            .any(|o| o == op || (o == "*" && !op.starts_with('$')));
        if !allowed {
            return Err(format!("{service}.{op} is not open to clients"));
        }
        Ok(())
    }

    /// The name to record `service` under in metrics: its own name when the
    /// policy names it, else `"other"`. A label value never comes from a client:
    /// under a `"*"` fallback, every made-up name would be a new series.
    pub fn metric_label<'a>(&self, service: &'a str) -> &'a str {
        if service != ANY_SERVICE && self.services.contains_key(service) {
            service
        } else {
            "other"
        }
    }

    /// The routing-key field of `service`, if it has one.
    pub fn key_field(&self, service: &str) -> Option<&str> {
        self.service(service)?.key.as_deref()
    }

    /// The coalescing field for events under `pattern`: that of the first service
    /// whose `subscribe` or `grant` patterns cover it.
    pub fn coalesce_field(&self, pattern: &str) -> Option<&str> {
        self.services.values().find_map(|s| {
            let covered = s
                .subscribe
                .iter()
                .chain(&s.grant)
                .any(|outer| topic::covers(outer, pattern));
            covered.then_some(s.coalesce.as_deref()).flatten()
        })
    }

    /// Whether a client (`user`) may subscribe to `pattern` directly: its own
    /// `user.<id>`, or a pattern inside some service's `subscribe` list.
    ///
    /// # Errors
    ///
    /// Why not.
    pub fn check_subscribe(&self, pattern: &str, user: &str) -> Result<(), Refusal> {
        if pattern == format!("user.{user}") {
            return Ok(());
        }
        reserved(pattern)?;
        let inside = self
            .services
            .values()
            .flat_map(|s| &s.subscribe)
            .any(|outer| topic::covers(outer, pattern));
        if inside {
            Ok(())
        } else {
            Err(format!("clients may not subscribe to {pattern}"))
        }
    }

    /// Whether `service` may grant `pattern` to a client.
    ///
    /// # Errors
    ///
    /// Why not.
    pub fn check_grant(&self, service: &str, pattern: &str) -> Result<(), Refusal> {
        reserved(pattern)?;
        if self
            .service(service)
            .is_some_and(|s| s.grant.iter().any(|outer| topic::covers(outer, pattern)))
        {
            Ok(())
        } else {
            Err(format!("{service} may not grant {pattern}"))
        }
    }
}

/// The rules no configuration can lift.
fn reserved(pattern: &str) -> Result<(), Refusal> {
    let first = pattern.split('.').next().unwrap_or_default();
    match first {
        "*" | ">" => Err("a client pattern may not start with a wildcard".into()),
        "user" | "session" => Err(format!("{first}.… topics are not open to clients")),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_policy_that_extends_the_built_in_one_keeps_it_and_adds() {
        let p = Policy::parse(
            "extends = \"builtin\"\n[services.shouter]\nsubscribe = [\"shouter.>\"]\n",
        )
        .unwrap();
        assert!(p.check_subscribe("shouter.news", "ada").is_ok());
        // The built-in entries stay: chat's topics open, db closed.
        assert!(p.check_subscribe("chat.room.lobby", "ada").is_ok());
        assert!(p.check_call("db", "chat.save").is_err());
        assert_eq!(p.key_field("chat"), Some("room"));
        // Without `extends` the file replaces the built-in policy whole.
        let alone = Policy::parse("[services.shouter]\nsubscribe = [\"shouter.>\"]\n").unwrap();
        assert!(alone.check_subscribe("chat.room.lobby", "ada").is_err());
        let err = Policy::parse("extends = \"/etc/other.toml\"\n").unwrap_err();
        assert!(err.contains("builtin"), "{err}");
    }

    #[test]
    fn the_built_in_policy_parses_and_reproduces_the_documented_defaults() {
        let p = Policy::parse(DEFAULT_POLICY).unwrap();
        assert!(p.check_call("chat", "say").is_ok());
        assert!(p.check_call("chat", "$echo").is_ok());
        assert!(p.check_call("chat", "$health").is_err());
        assert!(p.check_call("anything-new", "op").is_ok());
        for internal in ["db", "main", "receive", "$broker"] {
            assert!(p.check_call(internal, "x").is_err(), "{internal}");
        }
        assert_eq!(p.metric_label("chat"), "chat");
        assert_eq!(p.metric_label("made-up-name"), "other");
        assert_eq!(p.metric_label("*"), "other");
        assert_eq!(p.key_field("loc"), Some("zone"));
        assert_eq!(p.key_field("chat"), Some("room"));
        assert_eq!(p.key_field("other"), None);
        assert!(p.check_subscribe("chat.room.lobby", "ada").is_ok());
        assert!(p.check_subscribe("loc.*", "ada").is_ok());
        assert!(p.check_subscribe("user.ada", "ada").is_ok());
        for bad in [
            "user.bob",
            "user.*",
            ">",
            "*.>",
            "session.close",
            "*.room.x",
            "db.x",
        ] {
            assert!(p.check_subscribe(bad, "ada").is_err(), "{bad}");
        }
        assert!(p.check_grant("chat", "chat.room.lobby").is_ok());
        assert!(p.check_grant("chat", "chat.room.>").is_err());
        assert!(p.check_grant("chat", "loc.z").is_err());
        assert!(p.check_grant("loc", "loc.z").is_ok());
        assert!(p.check_grant("echo", "chat.room.lobby").is_err());
        assert_eq!(p.coalesce_field("loc.z1"), Some("user"));
        assert_eq!(p.coalesce_field("loc.*"), Some("user"));
        assert_eq!(p.coalesce_field("chat.room.lobby"), None);
    }

    #[test]
    fn no_configuration_opens_user_or_session_topics() {
        let p = Policy::parse(
            r#"
            [services.evil]
            subscribe = ["user.>", "session.>", "x.>"]
            grant = ["user.*", "x.*"]
            "#,
        )
        .unwrap();
        assert!(p.check_subscribe("user.bob", "ada").is_err());
        assert!(p.check_subscribe("session.close", "ada").is_err());
        assert!(p.check_grant("evil", "user.bob").is_err());
        assert!(p.check_grant("evil", "x.y").is_ok());
        // Not named and no fallback: closed.
        assert!(p.check_call("chat", "say").is_err());
    }

    #[test]
    fn a_bad_file_is_an_error_naming_the_problem() {
        let e = Policy::parse("[services.chat]\nopn = true\n").unwrap_err();
        assert!(e.contains("opn"), "{e}");
        let e = Policy::parse("[services.chat]\nsubscribe = [\"a..b\"]\n").unwrap_err();
        assert!(e.contains("a..b"), "{e}");
    }
}
