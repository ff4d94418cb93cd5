//! A request in flight, and where its outcome goes.

use super::*;

/// A request sent (or waiting to be) and not answered yet.
pub(super) struct Pending {
    pub(super) frame: Bytes,
    pub(super) deadline: u64,
    pub(super) idem: bool,
    /// Whether it went out on the socket (a request made offline waits for the
    /// connection).
    pub(super) sent: bool,
    pub(super) tx: Answer,
}

/// Where a request's outcome goes: exactly once, whichever way it ends
/// (reply, error reply, deadline, lost connection, full send queue, or the
/// socket task gone: dropped unanswered, it answers `unavailable`).
pub(super) struct Answer(Option<Way>);

enum Way {
    /// To a task awaiting it ([`Handle::call`]).
    Wait(oneshot::Sender<Result<Envelope, Error>>),
    /// To a callback run on the socket task ([`Handle::call_then`]): no task
    /// and no channel per request. `Sync` though only ever moved: a future
    /// that holds an [`Answer`] (`Handle::request`'s) must be `Sync` for the
    /// callers that need it (the supervisor's HTTP bodies).
    Then(Box<dyn FnOnce(Result<Envelope, Error>) + Send + Sync>),
}

impl Answer {
    pub(super) fn wait(tx: oneshot::Sender<Result<Envelope, Error>>) -> Self {
        Self(Some(Way::Wait(tx)))
    }

    pub(super) fn then(f: Box<dyn FnOnce(Result<Envelope, Error>) + Send + Sync>) -> Self {
        Self(Some(Way::Then(f)))
    }

    pub(super) fn send(mut self, result: Result<Envelope, Error>) {
        match self.0.take() {
            Some(Way::Wait(tx)) => {
                let _ = tx.send(result);
            }
            Some(Way::Then(then)) => run(then, result),
            None => {}
        }
    }
}

/// Runs a callback on the socket task. A callback that panics ends there, as
/// a panic in a task of its own would end that task: never the socket task,
/// which every request of the process depends on.
fn run(
    then: Box<dyn FnOnce(Result<Envelope, Error>) + Send + Sync>,
    result: Result<Envelope, Error>,
) {
    let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || then(result)));
    if ran.is_err() {
        tracing::error!("a request's reply callback panicked; the bus carries on");
    }
}

impl Drop for Answer {
    fn drop(&mut self) {
        // A waiting task sees its sender dropped as `closed`; a callback is
        // told the same, so that it runs exactly once.
        if let Some(Way::Then(then)) = self.0.take() {
            run(then, Err(closed()));
        }
    }
}

impl Pending {
    /// A request not yet sent.
    pub(super) fn new(frame: Bytes, deadline: u64, idem: bool, tx: Answer) -> Self {
        Self {
            frame,
            deadline,
            idem,
            sent: false,
            tx,
        }
    }
}
