//! TURN for the ICE-server tests: a coturn process ([`Coturn`]) and a minimal TURN client
//! that tries one allocation with a username and credential ([`allocate`]).

mod allocate;
mod coturn;

pub use allocate::{allocate, Allocation, TurnError};
pub use coturn::{Coturn, REALM};
