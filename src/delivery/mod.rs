//! A poll's and a stream's whole life: opening a postbox (registered clients, gaps), waiting,
//! handing over and acknowledging, the outbox relay that publishes stored events, delivered marks and
//! presence.

pub mod clients;
pub mod gaps;
pub mod outbox;
pub mod presence;
pub mod waiting;
