//! The one round loop of every method (POPri, PE, PE+SFT, DP-FedAvg) and both transports
//! (simulated clients; remote clients of `fedsyn serve`, with its SQLite ledger and round log in
//! `serve/run.rs`): it owns each DP step, and a method only says what its round computes.
//!
//! Round t, in this order:
//! 1. the method plans its release ([`RoundMethod::plan`]: mechanisms and the ledger event);
//! 2. **budget rule**: unless round t is already charged (a run killed after its commit), the
//!    run stops when the event would take ε past the target;
//! 3. **cohort**: drawn once, from the OS ([`dp_mechanics::sampling`]), kept as private state until
//!    the round is checkpointed, so that a resumed run takes the same cohort up;
//! 4. the method collects the clients' contributions and releases them
//!    ([`RoundMethod::run_round`]); the only way it can obtain noise is the charge that the
//!    driver's commit hands back after the ledger write (**commit → noise → release**, see
//!    [`dp_mechanics::release`]);
//! 5. the row gets ε from the ledger; the method writes its checkpoint (atomically), the cohort
//!    is forgotten, the metrics row is appended.
//!
//! A kill between 4's commit and 5's checkpoint re-runs round t under the charge already in the
//! ledger (nothing the lost attempt computed left the process: one charge, one release); a kill
//! between the checkpoint and the metrics row is repaired from the checkpoint's copy of the row.

use std::ops::Range;
use std::time::Instant;

use privacy_accounting::{Ledger, LedgerEvent};

use dp_mechanics::{ClientSampler, NoiseSource, NoiseState, PlannedRelease};
use runs::config::PrivacySection;
use runs::records::StopReason;
use runs::run_dir::{RoundMetrics, RunDir};
use runs::RunError;

use crate::budget::BudgetGuard;
use crate::progress::Progress;

/// Where the ledger lives: a store that makes one round's event durable. `E` is the error
/// type of the caller's methods (the driver's own errors are [`RunError`]s, converted).
pub trait LedgerStore<E> {
    /// The ledger as committed so far.
    fn ledger(&self) -> &Ledger;
    /// Appends `event` and makes it durable before returning.
    fn commit(&mut self, event: &LedgerEvent) -> Result<(), E>;
}

/// The ledger of a run directory: `ledger.json`, replaced atomically on every commit.
pub struct JsonLedger<'a> {
    dir: &'a RunDir,
    ledger: Ledger,
}

impl<'a> JsonLedger<'a> {
    /// The ledger of `dir` (empty for a new run), at the run's δ.
    pub fn open(dir: &'a RunDir, delta: f64) -> Result<Self, RunError> {
        let mut ledger = dir.load_ledger()?;
        ledger.delta.get_or_insert(delta);
        Ok(Self { dir, ledger })
    }
}

impl<E: From<RunError>> LedgerStore<E> for JsonLedger<'_> {
    fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    fn commit(&mut self, event: &LedgerEvent) -> Result<(), E> {
        self.ledger.push(event.clone()).map_err(RunError::from)?;
        Ok(self.dir.save_ledger(&self.ledger)?)
    }
}

/// Where the driver keeps a round's cohort and its metrics rows.
pub trait RoundLog<E> {
    /// The saved cohort of `round` if it was in progress, else a fresh draw (then saved).
    fn cohort(
        &mut self,
        round: u64,
        sampler: &ClientSampler,
        population: usize,
    ) -> Result<Vec<usize>, E>;
    /// Forgets the cohort once the round is checkpointed.
    fn close_round(&mut self) -> Result<(), E>;
    /// Appends a finished round's row.
    fn append(&mut self, metrics: &RoundMetrics) -> Result<(), E>;
}

/// A simulation's log: the cohort of the round in progress is saved as private state in the run
/// directory before any client is asked, so a resumed run takes it up rather than drawing again.
impl<E: From<RunError>> RoundLog<E> for &RunDir {
    fn cohort(
        &mut self,
        round: u64,
        sampler: &ClientSampler,
        population: usize,
    ) -> Result<Vec<usize>, E> {
        if let Some(saved) = self.open_cohort(round)? {
            return Ok(saved);
        }
        let cohort = sampler.sample(round, population).map_err(RunError::from)?;
        self.save_open_cohort(round, &cohort)?;
        Ok(cohort)
    }

    fn close_round(&mut self) -> Result<(), E> {
        Ok(self.clear_open_cohort()?)
    }

    fn append(&mut self, metrics: &RoundMetrics) -> Result<(), E> {
        Ok(self.append_metrics(metrics)?)
    }
}

/// One round as the driver hands it to [`RoundMethod::run_round`]: the clients drawn for it, its
/// planned release, and the only way to noise: `commit` makes the release's ledger event durable
/// (given to [`PlannedRelease::commit`], it yields the charge) and `noise` draws against that
/// charge.
pub struct Round<'a, E> {
    /// The round number (0-based).
    pub number: u64,
    /// The clients drawn for the round (indices into the population).
    pub cohort: &'a [usize],
    /// The mechanisms and ledger event [`RoundMethod::plan`] made for the round.
    pub release: PlannedRelease,
    /// Makes the release's ledger event durable; returns only once the cost is on disk.
    pub commit: &'a mut dyn FnMut(&LedgerEvent) -> Result<(), E>,
    /// The noise of the run, drawn only against the charge that `commit` leads to.
    pub noise: &'a mut NoiseSource,
    /// Where the round reports the progress of its phases.
    pub progress: &'a dyn Progress,
}

/// What a method's round computes; the driver does the rest.
pub trait RoundMethod<E> {
    /// The number of clients the cohorts are drawn from.
    fn population(&self) -> usize;

    /// The release round `round` will make: its mechanisms and the ledger event covering them;
    /// `None` to end the run here (a served run that was stopped, or has no clients).
    fn plan(&mut self, round: u64) -> Result<Option<PlannedRelease>, E>;

    /// Runs `round` with the clients of its cohort: collect their contributions, commit the
    /// release with `round.commit` (which returns only once the cost is durable) to get the
    /// charge, draw the noise from `round.noise` against it, and use the released values.
    /// Returns the round's metrics row (the driver fills in ε and the wall time), or `None` when
    /// the run was stopped before the commit (nothing charged, nothing released).
    fn run_round(&mut self, round: Round<'_, E>) -> Result<Option<RoundMetrics>, E>;

    /// Writes round `metrics.round`'s checkpoint, complete or not at all, with `metrics` (and the
    /// state of a test-seeded `noise`) in it.
    fn checkpoint(&mut self, metrics: &RoundMetrics, noise: &NoiseSource) -> Result<(), E>;
}

/// Everything the loop needs besides the method.
pub struct Driver<'a> {
    pub sampler: &'a ClientSampler,
    pub guard: &'a BudgetGuard,
    pub noise: &'a mut NoiseSource,
    /// Where the round reports the progress of its phases.
    pub progress: &'a dyn Progress,
    pub on_round: &'a dyn Fn(&RoundMetrics),
}

impl Driver<'_> {
    /// Runs `rounds` of `method`; stops early, before anything of the round is computed or
    /// charged, when the next release would exceed the budget.
    pub fn run<E: From<RunError>>(
        &mut self,
        method: &mut dyn RoundMethod<E>,
        ledger: &mut dyn LedgerStore<E>,
        log: &mut dyn RoundLog<E>,
        rounds: Range<u64>,
    ) -> Result<StopReason, E> {
        for round in rounds {
            let clock = Instant::now();
            let Some(release) = method.plan(round)? else {
                return Ok(StopReason::Stopped);
            };
            // Charged but not checkpointed by a run that was killed: re-run under that charge.
            let already_charged = ledger
                .ledger()
                .events
                .last()
                .is_some_and(|e| e.round == Some(round));
            if !already_charged && self.guard.would_exceed(ledger.ledger(), release.event())? {
                return Ok(StopReason::BudgetExhausted);
            }
            let cohort = log.cohort(round, self.sampler, method.population())?;
            let metrics = {
                let ledger = &mut *ledger;
                let mut commit = |event: &LedgerEvent| -> Result<(), E> {
                    if already_charged {
                        Ok(())
                    } else {
                        ledger.commit(event)
                    }
                };
                method.run_round(Round {
                    number: round,
                    cohort: &cohort,
                    release,
                    commit: &mut commit,
                    noise: self.noise,
                    progress: self.progress,
                })?
            };
            let Some(mut metrics) = metrics else {
                return Ok(StopReason::Stopped);
            };
            let (epsilon_rdp, epsilon_pld) = self.guard.spent(ledger.ledger())?;
            metrics.round = round;
            metrics.epsilon_rdp = epsilon_rdp;
            metrics.epsilon_pld = epsilon_pld;
            metrics.wall_seconds = clock.elapsed().as_secs_f64();
            method.checkpoint(&metrics, self.noise)?;
            log.close_round()?;
            log.append(&metrics)?;
            (self.on_round)(&metrics);
        }
        Ok(StopReason::RoundsCompleted)
    }
}

/// Runs the simulation rounds `first_round..privacy.rounds` of `method` in `dir` (its
/// `ledger.json`, its private cohort file, its metrics), with the noise stream `saved_noise` of
/// the last checkpoint (test seeds only) or a fresh one. Returns why the rounds ended and the
/// ledger, for the privacy statement.
#[allow(clippy::too_many_arguments)]
pub fn simulate_rounds<E: From<RunError>>(
    method: &mut dyn RoundMethod<E>,
    dir: &RunDir,
    privacy: &PrivacySection,
    sampler: &ClientSampler,
    saved_noise: Option<&NoiseState>,
    first_round: u64,
    progress: &dyn Progress,
    on_round: &dyn Fn(&RoundMetrics),
) -> Result<(StopReason, Ledger), E> {
    let mut noise = NoiseSource::resume(saved_noise, privacy.noise_seed).map_err(RunError::from)?;
    let guard = BudgetGuard::new(privacy);
    let mut ledger = JsonLedger::open(dir, privacy.delta)?;
    let stop = Driver {
        sampler,
        guard: &guard,
        noise: &mut noise,
        progress,
        on_round,
    }
    .run(method, &mut ledger, &mut &*dir, first_round..privacy.rounds)?;
    Ok((stop, ledger.ledger))
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::rc::Rc;

    use privacy_accounting::Sampling;

    use dp_mechanics::{ClientSampling, GaussianMechanism, GridSum};

    use super::*;
    use crate::progress::Silent;

    /// The fakes fail with the driver's own error type.
    type Result<T> = std::result::Result<T, RunError>;

    /// What happened, in order, across the fakes.
    type Journal = Rc<RefCell<Vec<String>>>;

    struct FakeLedger {
        ledger: Ledger,
        journal: Journal,
        fail: bool,
    }

    impl LedgerStore<RunError> for FakeLedger {
        fn ledger(&self) -> &Ledger {
            &self.ledger
        }

        fn commit(&mut self, event: &LedgerEvent) -> Result<()> {
            if self.fail {
                return Err(RunError::argument("disk", "full", "free space"));
            }
            self.ledger.push(event.clone())?;
            self.journal
                .borrow_mut()
                .push(format!("commit {}", event.round.unwrap()));
            Ok(())
        }
    }

    #[derive(Default)]
    struct FakeLog {
        open: Option<(u64, Vec<usize>)>,
        rows: Vec<RoundMetrics>,
        draws: usize,
    }

    impl RoundLog<RunError> for FakeLog {
        fn cohort(
            &mut self,
            round: u64,
            sampler: &ClientSampler,
            population: usize,
        ) -> Result<Vec<usize>> {
            if let Some((open, cohort)) = &self.open {
                if *open == round {
                    return Ok(cohort.clone());
                }
            }
            self.draws += 1;
            let cohort = sampler.sample(round, population)?;
            self.open = Some((round, cohort.clone()));
            Ok(cohort)
        }

        fn close_round(&mut self) -> Result<()> {
            self.open = None;
            Ok(())
        }

        fn append(&mut self, metrics: &RoundMetrics) -> Result<()> {
            self.rows.push(metrics.clone());
            Ok(())
        }
    }

    /// A method whose clients each contribute a unit vector; it records what it did.
    struct FakeMethod {
        journal: Journal,
        /// Fail the round with this number right after its commit (a simulated kill).
        crash_after_commit: Option<u64>,
        released: Vec<Vec<f64>>,
        cohorts: Vec<Vec<usize>>,
    }

    impl RoundMethod<RunError> for FakeMethod {
        fn population(&self) -> usize {
            10
        }

        fn plan(&mut self, round: u64) -> Result<Option<PlannedRelease>> {
            let mechanism = GaussianMechanism::new(2.0, 1.0, 3)?;
            Ok(Some(PlannedRelease::single(
                mechanism,
                Sampling::Poisson { q: 0.5 },
                round,
                "fake",
            )))
        }

        fn run_round(&mut self, round: Round<'_, RunError>) -> Result<Option<RoundMetrics>> {
            let number = round.number;
            let mechanism = *round.release.mechanism(0).unwrap();
            let mut sum = GridSum::zeros(&mechanism);
            for _ in round.cohort {
                sum.add(&mechanism, &[1.0, 0.0, 0.0])?;
            }
            self.journal.borrow_mut().push(format!("collect {number}"));
            self.cohorts.push(round.cohort.to_vec());
            let mut charge = round.release.commit(round.commit)?;
            if self.crash_after_commit == Some(number) {
                self.crash_after_commit = None;
                return Err(RunError::argument("process", "killed", "resume"));
            }
            self.released
                .push(round.noise.release(&mut charge, 0, &sum)?);
            self.journal.borrow_mut().push(format!("release {number}"));
            Ok(Some(RoundMetrics::default()))
        }

        fn checkpoint(&mut self, metrics: &RoundMetrics, _: &NoiseSource) -> Result<()> {
            self.journal
                .borrow_mut()
                .push(format!("checkpoint {}", metrics.round));
            Ok(())
        }
    }

    /// A method, ledger and log that write what happens, in order, to one journal.
    struct Fakes {
        journal: Journal,
        method: FakeMethod,
        ledger: FakeLedger,
        log: FakeLog,
    }

    impl Fakes {
        fn new() -> Fakes {
            let journal = Journal::default();
            Fakes {
                method: FakeMethod {
                    journal: journal.clone(),
                    crash_after_commit: None,
                    released: Vec::new(),
                    cohorts: Vec::new(),
                },
                ledger: FakeLedger {
                    ledger: Ledger::new(),
                    journal: journal.clone(),
                    fail: false,
                },
                log: FakeLog::default(),
                journal,
            }
        }

        /// Drives `rounds` of the fakes under the budget `epsilon`.
        fn run(&mut self, epsilon: f64, rounds: Range<u64>) -> Result<StopReason> {
            let sampler = ClientSampler::new(ClientSampling::Poisson { q: 0.5 }, None).unwrap();
            let guard = BudgetGuard::new(&privacy(epsilon));
            let mut noise = NoiseSource::from_os().unwrap();
            Driver {
                sampler: &sampler,
                guard: &guard,
                noise: &mut noise,
                progress: &Silent,
                on_round: &|_| {},
            }
            .run(&mut self.method, &mut self.ledger, &mut self.log, rounds)
        }
    }

    fn privacy(epsilon: f64) -> PrivacySection {
        PrivacySection {
            epsilon,
            delta: 1e-5,
            ..PrivacySection::default()
        }
    }

    #[test]
    fn each_round_commits_before_it_releases_then_checkpoints() {
        let mut fakes = Fakes::new();
        let stop = fakes.run(100.0, 0..2).unwrap();
        assert_eq!(stop, StopReason::RoundsCompleted);
        assert_eq!(
            *fakes.journal.borrow(),
            [
                "collect 0",
                "commit 0",
                "release 0",
                "checkpoint 0",
                "collect 1",
                "commit 1",
                "release 1",
                "checkpoint 1"
            ]
        );
        assert_eq!(fakes.ledger.ledger.events.len(), 2);
        let rows: Vec<u64> = fakes.log.rows.iter().map(|m| m.round).collect();
        assert_eq!(rows, [0, 1]);
        assert!(fakes.log.rows[1].epsilon_rdp > fakes.log.rows[0].epsilon_rdp);
        assert!(
            fakes.log.open.is_none(),
            "the cohort is forgotten after the checkpoint"
        );
    }

    #[test]
    fn a_failed_ledger_write_releases_nothing() {
        let mut fakes = Fakes::new();
        fakes.ledger.fail = true;
        assert!(fakes.run(100.0, 0..1).is_err());
        assert_eq!(*fakes.journal.borrow(), ["collect 0"]);
        assert!(fakes.method.released.is_empty() && fakes.log.rows.is_empty());
    }

    #[test]
    fn the_budget_stops_the_run_before_the_round_is_computed() {
        let mut fakes = Fakes::new();
        // One round of σ = 2 at q = 0.5 costs more than ε = 0.05 at δ = 1e-5.
        let stop = fakes.run(0.05, 0..3).unwrap();
        assert_eq!(stop, StopReason::BudgetExhausted);
        assert!(
            fakes.journal.borrow().is_empty(),
            "{:?}",
            fakes.journal.borrow()
        );
        assert_eq!((fakes.log.draws, fakes.ledger.ledger.events.len()), (0, 0));
    }

    #[test]
    fn a_round_killed_after_its_commit_reruns_with_its_cohort_under_one_charge() {
        let mut fakes = Fakes::new();
        fakes.method.crash_after_commit = Some(1);
        assert!(fakes.run(100.0, 0..3).is_err());
        assert_eq!(
            fakes.ledger.ledger.events.len(),
            2,
            "rounds 0 and 1 are charged"
        );
        assert_eq!(fakes.log.rows.len(), 1, "only round 0 finished");
        // Resume at round 1: no second charge, the same cohort (drawn once), then round 2.
        let stop = fakes.run(100.0, 1..3).unwrap();
        assert_eq!(stop, StopReason::RoundsCompleted);
        let rounds: Vec<Option<u64>> = fakes.ledger.ledger.events.iter().map(|e| e.round).collect();
        assert_eq!(rounds, [Some(0), Some(1), Some(2)]);
        assert_eq!(
            fakes.method.cohorts[1], fakes.method.cohorts[2],
            "round 1 kept its cohort"
        );
        assert_eq!(fakes.log.draws, 3, "one draw per round");
        assert_eq!(fakes.method.released.len(), 3, "one release per round");
    }
}
