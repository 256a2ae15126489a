//! Sans-IO protocol cores of drover.
//!
//! This crate holds the multicast session: a [`Sender`] that streams chunks as RaptorQ
//! symbols to a group and a [`Receiver`] that decodes them, each a state machine that takes
//! time and bytes in and gives datagrams and events out, in the shape of quinn-proto
//! (`handle_datagram`, `handle_timeout`, `poll_transmit`, `poll_timeout`, `poll_event`). The
//! datagrams are defined in [`wire`], the split of chunks into RaptorQ blocks in [`layout`].
//! [`api`] is the typed contract between the agent and the server (serde types, no I/O).
//!
//! It does **not** open sockets, read clocks, spawn threads or touch disks: `server` drives
//! these cores with tokio and real sockets, and the simulation in `tests/` drives them with a
//! virtual clock and a lossy, reordering network. Registration, the session description and
//! unicast chunk fetches are HTTP and live in the drivers too; the cores are told of their
//! outcome ([`Sender::add_receiver`], [`Receiver::fetch_finished`]).
#![warn(missing_docs)]
#![deny(rustdoc::broken_intra_doc_links)]

pub mod api;
pub mod fec;
pub mod layout;
pub mod rate;
pub mod receiver;
pub mod sender;
pub mod template;
pub mod wire;

#[doc(hidden)]
pub mod fuzzing;

pub use layout::{Layout, LayoutError};
pub use receiver::{Receiver, ReceiverConfig, ReceiverEvent, ReceiverStats};
pub use sender::{
    DemoteReason, Destination, Fec, ReceiverInfo, ReceiverState, Sender, SenderConfig, SenderEvent,
    SenderStats, SessionError, StartPolicy,
};
pub use wire::{DecodeError, ReceiverStatus, SenderState, SessionKey};
