//! Where the control plane keeps its state, and its two secrets.
//!
//! - data directory: `--data-dir` / `TOKENROUTER_DATA_DIR`, default `./.tokenrouter`;
//! - database: `DATABASE_URL`, default `sqlite://<data-dir>/tokenrouter.db?mode=rwc`; a
//!   `postgres://user:password@host:port/database` URL selects PostgreSQL (replicas may share it);
//! - admin token: `TOKENROUTER_ADMIN_TOKEN`, else `<data-dir>/admin_token` (generated, 0600);
//! - master key (encrypts provider credentials): `TOKENROUTER_MASTER_KEY` (64 hex characters),
//!   else `<data-dir>/master.key` (generated, 0600).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use rand::RngCore;

pub const DEFAULT_DATA_DIR: &str = "./.tokenrouter";
pub const ADMIN_TOKEN_FILE: &str = "admin_token";
pub const MASTER_KEY_FILE: &str = "master.key";
pub const MASTER_KEY_ENV: &str = "TOKENROUTER_MASTER_KEY";
pub const DATABASE_URL_ENV: &str = "DATABASE_URL";

/// The bearer token of the Admin API, the FilterSync stream and ADS.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(String);

impl AdminToken {
    /// A token given by the operator; `None` when empty.
    pub fn given(token: &str) -> Option<AdminToken> {
        let t = token.trim();
        (!t.is_empty()).then(|| AdminToken(t.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

/// The key that seals provider credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct MasterKey(pub [u8; 32]);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ConfigError + '_ {
    move |source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Everything `tokenrouter serve` needs besides its listen addresses.
#[derive(Debug)]
pub struct ServeConfig {
    pub data_dir: PathBuf,
    pub database_url: String,
    pub admin_token: AdminToken,
    /// Where the token came from, for the start-up message (`None` = environment/flag).
    pub admin_token_file: Option<PathBuf>,
    pub master_key: MasterKey,
}

impl ServeConfig {
    /// Creates the data directory if needed, then resolves the database URL and both secrets.
    /// `admin_token` is the operator-given token (flag or environment), if any.
    pub fn load(data_dir: &Path, admin_token: Option<&str>) -> Result<ServeConfig, ConfigError> {
        fs::create_dir_all(data_dir).map_err(io_err(data_dir))?;
        let database_url = std::env::var(DATABASE_URL_ENV)
            .ok()
            .filter(|u| !u.trim().is_empty())
            .unwrap_or_else(|| default_database_url(data_dir));
        let (admin_token, admin_token_file) = match admin_token.and_then(AdminToken::given) {
            Some(t) => (t, None),
            None => (
                admin_token_from_file(data_dir, true)?.ok_or_else(|| {
                    ConfigError::Invalid("admin token file could not be created".into())
                })?,
                Some(data_dir.join(ADMIN_TOKEN_FILE)),
            ),
        };
        Ok(ServeConfig {
            database_url,
            admin_token,
            admin_token_file,
            master_key: master_key(data_dir)?,
            data_dir: data_dir.to_path_buf(),
        })
    }
}

pub fn default_database_url(data_dir: &Path) -> String {
    format!("sqlite://{}/tokenrouter.db?mode=rwc", data_dir.display())
}

/// Reads `<data-dir>/admin_token`; with `generate`, creates it (32 random bytes, hex) when absent.
pub fn admin_token_from_file(
    data_dir: &Path,
    generate: bool,
) -> Result<Option<AdminToken>, ConfigError> {
    let path = data_dir.join(ADMIN_TOKEN_FILE);
    match fs::read_to_string(&path) {
        Ok(s) => AdminToken::given(&s)
            .map(Some)
            .ok_or_else(|| ConfigError::Invalid(format!("{} is empty", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && generate => {
            fs::create_dir_all(data_dir).map_err(io_err(data_dir))?;
            let token = hex::encode(random_32());
            match write_secret(&path, token.as_bytes()) {
                Ok(()) => Ok(Some(AdminToken(token))),
                // Another process created it first: use theirs.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    admin_token_from_file(data_dir, false)
                }
                Err(e) => Err(io_err(&path)(e)),
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(&path)(e)),
    }
}

/// `TOKENROUTER_MASTER_KEY`, else `<data-dir>/master.key`, generated when absent.
pub fn master_key(data_dir: &Path) -> Result<MasterKey, ConfigError> {
    if let Some(hex_key) = std::env::var(MASTER_KEY_ENV)
        .ok()
        .filter(|k| !k.trim().is_empty())
    {
        return parse_master_key(&hex_key).ok_or_else(|| {
            ConfigError::Invalid(format!("{MASTER_KEY_ENV} must be 64 hex characters"))
        });
    }
    let path = data_dir.join(MASTER_KEY_FILE);
    match fs::read_to_string(&path) {
        Ok(s) => parse_master_key(&s).ok_or_else(|| {
            ConfigError::Invalid(format!("{} must hold 64 hex characters", path.display()))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = random_32();
            match write_secret(&path, hex::encode(key).as_bytes()) {
                Ok(()) => Ok(MasterKey(key)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => master_key(data_dir),
                Err(e) => Err(io_err(&path)(e)),
            }
        }
        Err(e) => Err(io_err(&path)(e)),
    }
}

fn parse_master_key(s: &str) -> Option<MasterKey> {
    let bytes = hex::decode(s.trim()).ok()?;
    Some(MasterKey(bytes.try_into().ok()?))
}

fn random_32() -> [u8; 32] {
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    b
}

/// Creates `path` (failing if it exists) readable by the owner only.
fn write_secret(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(contents)?;
    file.write_all(b"\n")?;
    file.sync_all()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn admin_token_is_generated_once_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(admin_token_from_file(dir.path(), false).unwrap(), None);
        let a = admin_token_from_file(dir.path(), true).unwrap().unwrap();
        let b = admin_token_from_file(dir.path(), true).unwrap().unwrap();
        assert_eq!(a, b);
        assert_eq!(a.as_str().len(), 64);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.path().join(ADMIN_TOKEN_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn master_key_file_round_trips_and_secrets_are_redacted() {
        let dir = tempfile::tempdir().unwrap();
        // The test environment does not set TOKENROUTER_MASTER_KEY.
        if std::env::var_os(MASTER_KEY_ENV).is_some() {
            return;
        }
        let a = master_key(dir.path()).unwrap();
        assert_eq!(master_key(dir.path()).unwrap(), a);
        assert_eq!(format!("{a:?}"), "MasterKey(<redacted>)");
        assert_eq!(
            format!("{:?}", AdminToken::given("x").unwrap()),
            "AdminToken(<redacted>)"
        );
        assert!(parse_master_key("abcd").is_none());
        assert!(parse_master_key(&"ab".repeat(32)).is_some());
        assert_eq!(AdminToken::given("  "), None);
    }
}
