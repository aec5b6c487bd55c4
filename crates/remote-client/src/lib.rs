//! The remote side of a fedsyn client, without libtorch: the client's credentials and data
//! ([`credentials`], [`data`]), its embedding profile as stored in its state folder
//! ([`profile`]), and the HTTP client that enrols, polls, scores and submits ([`client`]). What
//! it exchanges with the server (messages, candidate format, the score) is the `protocol`
//! crate, shared with `fedsyn serve`.
//!
//! Only two request bodies ever leave a client: the enrolment token and the clipped score
//! vector. Computing a profile needs the sentence embedder and lives in the `clients` crate
//! (`clients::profile`); everything here runs in an executable that never loads libtorch.

pub mod client;
pub mod credentials;
pub mod data;
pub mod error;
mod http;
pub mod profile;

pub use client::{ClientEvent, RemoteClient, RemoteConfig, RunSummary};
pub use data::read_client_texts;
pub use error::{RemoteError, Result};
pub use http::{normalise_server_url, Retry};
pub use profile::{cached_profile, Profile};
