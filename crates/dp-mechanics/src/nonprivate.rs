//! Values computed from un-noised private data, which the DP guarantee does not cover.
//!
//! Only a simulation computes them: it holds every client's raw texts in its process. Their
//! type, [`NonPrivate`], is made only against a [`RawClientData`], which only the clients' raw
//! data implements; a served run never holds one, so nothing it releases can be one. Run files
//! label such values `_nonprivate`.

use serde::{Deserialize, Serialize};

/// The clients' raw, un-noised data, held in this process: only a simulation holds it.
///
/// Implemented by `clients::FederatedData` alone. Implementing it for anything else would let a
/// served run label a non-private value as measured, so a review must refuse a second `impl`.
pub trait RawClientData {}

/// A value computed from un-noised private data. Making one takes a reference to the clients'
/// raw data (a [`RawClientData`]), which only a simulation holds in its process: the HTTP
/// server never has it, so it cannot emit one. Reading one back from a run's files is allowed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NonPrivate<T>(T);

impl<T> NonPrivate<T> {
    /// Wraps `value`, measured on the private data `held` by this (simulation) process.
    pub fn measured(_held: &impl RawClientData, value: T) -> Self {
        NonPrivate(value)
    }

    /// A value derived from this one: still non-private, and made without a second witness.
    pub fn map<U>(&self, derive: impl FnOnce(&T) -> U) -> NonPrivate<U> {
        NonPrivate(derive(&self.0))
    }

    /// The value (for diagnostics and reports that label it non-private).
    pub fn get(&self) -> &T {
        &self.0
    }

    /// The value, mutably (to add diagnostics measured later in the round).
    pub fn get_mut(&mut self) -> &mut T {
        &mut self.0
    }
}
