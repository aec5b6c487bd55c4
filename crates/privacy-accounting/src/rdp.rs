//! PLACEHOLDER — being written (RDP accountant). Replace this whole file.
use crate::{Accountant, AccountantKind, EpsilonEstimate, PoissonGaussian, Result};

/// RDP accountant.
#[derive(Debug, Clone, Default)]
pub struct RdpAccountant {}

impl Accountant for RdpAccountant {
    fn kind(&self) -> AccountantKind {
        AccountantKind::Rdp
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
