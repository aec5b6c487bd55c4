//! PLACEHOLDER — being written (PLD accountant). Replace this whole file.
use crate::{Accountant, AccountantKind, EpsilonEstimate, PoissonGaussian, Result};

/// PLD accountant.
#[derive(Debug, Clone, Default)]
pub struct PldAccountant {}

impl Accountant for PldAccountant {
    fn kind(&self) -> AccountantKind {
        AccountantKind::Pld
    }
    fn compose(&mut self, _mechanism: PoissonGaussian, _count: u64) -> Result<()> {
        unimplemented!()
    }
    fn epsilon(&self, _delta: f64) -> Result<EpsilonEstimate> {
        unimplemented!()
    }
    fn delta(&self, _epsilon: f64) -> Result<f64> {
        unimplemented!()
    }
}
