//! Exit codes shared by `fedsyn` and `fedsyn-ml`:
//! 0 success, 1 runtime failure, 2 bad input (arguments, files, unreachable targets).

use std::process::ExitCode;

/// Something failed that the user's input did not cause.
pub const EXIT_FAILURE: u8 = 1;
/// The user can fix it in what they typed or gave us.
pub const EXIT_BAD_INPUT: u8 = 2;

/// Prints the error chain, if any, and maps the outcome to an exit code.
pub fn exit_code(result: anyhow::Result<()>, is_bad_input: fn(&anyhow::Error) -> bool) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(if is_bad_input(&error) {
                EXIT_BAD_INPUT
            } else {
                EXIT_FAILURE
            })
        }
    }
}

/// Whether `cause` is an `E` that the user can fix, as `is_bad_input` tells.
pub fn bad_input_of<E: std::error::Error + 'static>(
    cause: &(dyn std::error::Error + 'static),
    is_bad_input: impl Fn(&E) -> bool,
) -> bool {
    cause.downcast_ref::<E>().is_some_and(is_bad_input)
}

/// Whether `cause` is one of the errors both binaries can meet (privacy accounting, the run
/// configuration and directory, the remote client) and the user can fix it.
pub fn shared_bad_input(cause: &(dyn std::error::Error + 'static)) -> bool {
    cause.is::<privacy_accounting::AccountingError>()
        || bad_input_of(cause, runs::RunError::is_bad_input)
        || bad_input_of(cause, remote_client::RemoteError::is_bad_input)
}
