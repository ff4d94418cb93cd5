//! Broker and bus integration tests: a real broker on real sockets (port 0), real
//! DEALER peers, and real child processes where a process must die.

mod handover;
mod hostile;
mod liveness;
mod pubsub;
mod routing;
mod trust;
