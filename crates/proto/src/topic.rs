//! Topics and subscription patterns.
//!
//! A topic is one or more non-empty tokens separated by `.` (`chat.room.lobby`),
//! at most [`crate::MAX_TOPIC_LEN`] bytes, with no whitespace. A pattern is a topic
//! in which a token may be `*` (exactly one token) and the last token may be `>`
//! (one or more tokens) — the NATS syntax:
//!
//! ```
//! use switchboard_proto::topic::matches;
//! assert!(matches("chat.room.*", "chat.room.lobby"));
//! assert!(!matches("chat.room.*", "chat.room.lobby.x"));
//! assert!(matches("loc.>", "loc.zone1"));
//! assert!(matches("loc.>", "loc.a.b"));
//! assert!(!matches("loc.>", "loc"));
//! ```

use crate::{ProtoError, MAX_TOPIC_LEN};

/// Checks a topic (no wildcards) or, with `pattern`, a subscription pattern.
///
/// # Errors
///
/// [`ProtoError::Invalid`] naming the rule broken.
pub fn validate(topic: &str, pattern: bool) -> Result<(), ProtoError> {
    if topic.is_empty() {
        return Err(ProtoError::Invalid("empty topic"));
    }
    if topic.len() > MAX_TOPIC_LEN {
        return Err(ProtoError::Invalid("topic longer than 256 bytes"));
    }
    let mut tokens = topic.split('.').peekable();
    while let Some(token) = tokens.next() {
        if token.is_empty() {
            return Err(ProtoError::Invalid("topic has an empty token"));
        }
        if token
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        {
            return Err(ProtoError::Invalid("topic holds whitespace"));
        }
        let wild = token == "*" || token == ">";
        if !wild && token.contains(['*', '>']) {
            return Err(ProtoError::Invalid("wildcards must be whole tokens"));
        }
        if wild && !pattern {
            return Err(ProtoError::Invalid(
                "a published topic cannot hold wildcards",
            ));
        }
        if token == ">" && tokens.peek().is_some() {
            return Err(ProtoError::Invalid("`>` must be the last token"));
        }
    }
    Ok(())
}

/// Whether a valid `pattern` matches a valid `topic`.
pub fn matches(pattern: &str, topic: &str) -> bool {
    let mut p = pattern.split('.');
    let mut t = topic.split('.');
    loop {
        match (p.next(), t.next()) {
            (None, None) => return true,
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            _ => return false,
        }
    }
}

/// Whether every topic that `inner` matches is also matched by `outer` (both valid
/// patterns; a topic is a pattern without wildcards).
///
/// ```
/// use switchboard_proto::topic::covers;
/// assert!(covers("chat.>", "chat.room.*"));
/// assert!(covers("chat.room.*", "chat.room.lobby"));
/// assert!(!covers("chat.room.*", "chat.room.>"));
/// assert!(!covers("chat.room.lobby", "chat.room.*"));
/// assert!(!covers("chat.>", ">"));
/// ```
pub fn covers(outer: &str, inner: &str) -> bool {
    let mut o = outer.split('.');
    let mut i = inner.split('.');
    loop {
        match (o.next(), i.next()) {
            (None, None) => return true,
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(t)) if t != ">" => {}
            (Some(a), Some(b)) if a == b => {}
            _ => return false,
        }
    }
}

/// Whether a pattern holds a wildcard (and so cannot be looked up exactly).
pub fn is_wildcard(pattern: &str) -> bool {
    pattern.split('.').any(|t| t == "*" || t == ">")
}

/// Subscriptions by pattern, looked up by topic without scanning them all: a tree
/// of topic tokens (like NATS's sublist), in which `*` and `>` are children of
/// their own. A lookup walks one path per wildcard branch, so its cost grows with
/// the topic's length and the wildcards on its path, not with the number of
/// subscriptions. Written here, not taken from a crate: the few subject-trie
/// crates on crates.io are unmaintained or tied to one broker's types, and this is
/// ~80 lines over `HashMap`.
///
/// ```
/// use switchboard_proto::topic::Index;
/// let mut index = Index::default();
/// index.insert("chat.room.*", 1);
/// index.insert("chat.>", 2);
/// index.insert("chat.room.lobby", 3);
/// let mut hits = Vec::new();
/// index.for_each_match("chat.room.lobby", |v| hits.push(*v));
/// hits.sort();
/// assert_eq!(hits, [1, 2, 3]);
/// assert!(index.remove("chat.>", &2));
/// assert_eq!(index.len(), 2);
/// ```
#[derive(Debug)]
pub struct Index<T> {
    root: Node<T>,
    len: usize,
}

#[derive(Debug)]
struct Node<T> {
    children: std::collections::HashMap<Box<str>, Node<T>>,
    values: Vec<T>,
}

impl<T> Default for Node<T> {
    fn default() -> Self {
        Self {
            children: std::collections::HashMap::new(),
            values: Vec::new(),
        }
    }
}

impl<T> Default for Index<T> {
    fn default() -> Self {
        Self {
            root: Node::default(),
            len: 0,
        }
    }
}

impl<T: PartialEq> Index<T> {
    /// Adds `value` under `pattern` (a valid pattern; see [`validate`]). A value
    /// already there under the same pattern is not added twice.
    pub fn insert(&mut self, pattern: &str, value: T) {
        let mut node = &mut self.root;
        for token in pattern.split('.') {
            node = node.children.entry(token.into()).or_default();
        }
        if !node.values.contains(&value) {
            node.values.push(value);
            self.len += 1;
        }
    }

    /// Removes `value` from `pattern`; returns whether it was there. Empty branches
    /// are pruned, so the tree never holds more than what is subscribed.
    pub fn remove(&mut self, pattern: &str, value: &T) -> bool {
        let tokens: Vec<&str> = pattern.split('.').collect();
        let removed = Self::remove_in(&mut self.root, &tokens, value);
        if removed {
            self.len -= 1;
        }
        removed
    }

    fn remove_in(node: &mut Node<T>, tokens: &[&str], value: &T) -> bool {
        let Some((first, rest)) = tokens.split_first() else {
            let before = node.values.len();
            node.values.retain(|v| v != value);
            return node.values.len() != before;
        };
        let Some(child) = node.children.get_mut(*first) else {
            return false;
        };
        let removed = Self::remove_in(child, rest, value);
        if child.values.is_empty() && child.children.is_empty() {
            node.children.remove(*first);
        }
        removed
    }

    /// Calls `f` with every value whose pattern matches `topic` (a value under
    /// several matching patterns is seen once per pattern).
    pub fn for_each_match(&self, topic: &str, mut f: impl FnMut(&T)) {
        let tokens: Vec<&str> = topic.split('.').collect();
        Self::walk(&self.root, &tokens, &mut f);
    }

    fn walk(node: &Node<T>, tokens: &[&str], f: &mut impl FnMut(&T)) {
        let Some((first, rest)) = tokens.split_first() else {
            node.values.iter().for_each(&mut *f);
            return;
        };
        if let Some(child) = node.children.get(*first) {
            Self::walk(child, rest, f);
        }
        if let Some(child) = node.children.get("*") {
            Self::walk(child, rest, f);
        }
        if let Some(child) = node.children.get(">") {
            child.values.iter().for_each(&mut *f);
        }
    }

    /// Subscriptions held (pattern-value pairs).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}
