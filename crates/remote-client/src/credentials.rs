//! The client's credentials (`client.json` in its state folder): the id and bearer token the
//! server gave it at enrolment, so that a restarted client goes on as the same client instead
//! of spending another one-time enrolment token. Readable by its owner only (mode 0600).

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{io_error, RemoteError, Result};

/// The file name of the credentials inside the state folder.
pub const CREDENTIALS_FILE: &str = "client.json";

/// What a client needs to talk to the server it enrolled with.
#[derive(Clone, Serialize, Deserialize)]
pub struct Credentials {
    /// The server's base URL, as given with `--server`.
    pub server: String,
    /// The id the server gave this client.
    pub client_id: String,
    /// The bearer token of this client (a secret; never printed).
    pub token: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("server", &self.server)
            .field("client_id", &self.client_id)
            .field("token", &"<secret>")
            .finish()
    }
}

/// The path of the credentials file in `state_dir`.
pub fn credentials_path(state_dir: &Path) -> PathBuf {
    state_dir.join(CREDENTIALS_FILE)
}

/// The credentials stored in `state_dir`, or `None` when there are none yet. Errors when the
/// file exists but cannot be read or parsed (the fix: delete it and enrol again).
pub fn read_credentials(state_dir: &Path) -> Result<Option<Credentials>> {
    let path = credentials_path(state_dir);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(&path)(e)),
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| RemoteError::InvalidArgument {
            name: "credentials file",
            message: format!(
                "{} is not valid ({e}); delete it and enrol again with a new --enroll token",
                path.display()
            ),
        })
}

/// Writes `credentials` to `state_dir` atomically, readable by the owner only.
pub fn write_credentials(state_dir: &Path, credentials: &Credentials) -> Result<()> {
    std::fs::create_dir_all(state_dir).map_err(io_error(state_dir))?;
    let path = credentials_path(state_dir);
    let temporary = state_dir.join(format!(".{CREDENTIALS_FILE}.tmp-{}", std::process::id()));
    let json = serde_json::to_vec_pretty(credentials).expect("credentials serialise");
    let written = write_private(&temporary, &json)
        .and_then(|()| std::fs::rename(&temporary, &path).map_err(io_error(&path)));
    if written.is_err() {
        // Best effort: the error that matters is the one returned.
        let _ = std::fs::remove_file(&temporary);
    }
    written
}

/// Writes `bytes` to `path` (to disk) with mode 0600 on Unix. The mode given to `open` applies
/// only when the file is created: a file left over with wider permissions (a crashed earlier
/// write, a hand-made copy) is narrowed with `set_permissions` before any secret is written.
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(io_error(path))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(io_error(path))?;
    }
    file.write_all(bytes).map_err(io_error(path))?;
    file.sync_all().map_err(io_error(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_round_trip_private_and_never_print_the_token() {
        let dir = std::env::temp_dir().join(format!("fedsyn-creds-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert!(read_credentials(&dir).unwrap().is_none());
        let credentials = Credentials {
            server: "http://127.0.0.1:1".to_string(),
            client_id: "c-1".to_string(),
            token: "s3cret".to_string(),
        };
        write_credentials(&dir, &credentials).unwrap();
        let read = read_credentials(&dir).unwrap().unwrap();
        assert_eq!(
            (read.client_id.as_str(), read.token.as_str()),
            ("c-1", "s3cret")
        );
        assert!(!format!("{read:?}").contains("s3cret"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(credentials_path(&dir))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // A leftover temporary file with wide permissions: the credentials still end up 0600.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let temporary = dir.join(format!(".{CREDENTIALS_FILE}.tmp-{}", std::process::id()));
            std::fs::write(&temporary, "old").unwrap();
            std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(0o644)).unwrap();
            std::fs::set_permissions(
                credentials_path(&dir),
                std::fs::Permissions::from_mode(0o644),
            )
            .unwrap();
            write_credentials(&dir, &credentials).unwrap();
            let mode = std::fs::metadata(credentials_path(&dir))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(credentials_path(&dir), "{").unwrap();
        let error = read_credentials(&dir).unwrap_err();
        assert!(error.to_string().contains("delete it"), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
