//! What the two fedsyn executables share. `fedsyn` (src/main.rs) answers the commands that
//! need no model and forwards the rest, arguments untouched, to `fedsyn-ml` (the
//! `crates/fedsyn-ml` package), the only one that links libtorch. Both map their outcome to the
//! same exit codes, and `fedsyn-ml`'s tests check that it implements exactly the commands
//! listed here.

pub mod exit_status;
pub mod output_format;
pub mod torch_commands;
