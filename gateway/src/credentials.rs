//! Credentials for the registries the server pulls from. A pull uses, in
//! order: the credentials its request carries (`registryAuth`, the CLI's
//! `--creds`), those saved by `wisp login` ([`RegistryLogins`], in
//! `<data dir>/registries.json`, mode 0600, replaced atomically), and those
//! of the server user's docker `config.json` (`$DOCKER_CONFIG`, else
//! `~/.docker`) with its `credsStore` and `credHelpers`; else it is
//! anonymous. Passwords are never logged, listed or returned: `GET
//! /system/registries` lists registry names only.
//!
//! Limits: a docker config's identity tokens (OAuth refresh tokens) are
//! not used; a registry reached through a mirror is logged in to by its own
//! name, not the mirror's.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use wisp_runner::image::pull::Credentials;

const FILE: &str = "registries.json";

/// Docker Hub's other names, which all mean `docker.io`.
const DOCKER_HUB: [&str; 4] = [
    "docker.io",
    "index.docker.io",
    "registry-1.docker.io",
    "https://index.docker.io/v1/",
];

/// Registry logins saved by `wisp login`.
pub struct RegistryLogins {
    path: PathBuf,
    saved: Mutex<BTreeMap<String, Saved>>,
}

#[derive(Clone, Serialize, Deserialize)]
struct Saved {
    username: String,
    password: String,
}

/// The name a registry is saved under: no scheme, no trailing slash, and
/// Docker Hub's aliases as `docker.io`.
pub fn registry_key(registry: &str) -> String {
    if DOCKER_HUB.contains(&registry) {
        return "docker.io".into();
    }
    let bare = registry
        .strip_prefix("https://")
        .or_else(|| registry.strip_prefix("http://"))
        .unwrap_or(registry);
    let bare = bare.trim_end_matches('/');
    if DOCKER_HUB.contains(&bare) {
        "docker.io".into()
    } else {
        bare.to_owned()
    }
}

impl RegistryLogins {
    /// Reads the saved logins of a data dir (none if the file is absent).
    pub fn open(data_dir: &std::path::Path) -> std::io::Result<Self> {
        let path = data_dir.join(FILE);
        let saved = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                std::io::Error::other(format!("{} is not valid: {e}", path.display()))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(e),
        };
        Ok(RegistryLogins {
            path,
            saved: Mutex::new(saved),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Saved>> {
        self.saved
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Saves (or replaces) the login for `registry`.
    pub fn save(&self, registry: &str, username: &str, password: &str) -> std::io::Result<()> {
        let mut saved = self.lock();
        let mut next = saved.clone();
        next.insert(
            registry_key(registry),
            Saved {
                username: username.to_owned(),
                password: password.to_owned(),
            },
        );
        self.write(&next)?;
        *saved = next;
        Ok(())
    }

    /// Forgets the login for `registry`; whether there was one.
    pub fn remove(&self, registry: &str) -> std::io::Result<bool> {
        let mut saved = self.lock();
        let mut next = saved.clone();
        if next.remove(&registry_key(registry)).is_none() {
            return Ok(false);
        }
        self.write(&next)?;
        *saved = next;
        Ok(true)
    }

    /// The registries logged in to, by name.
    pub fn registries(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    /// Writes the file whole, 0600, through a temporary file and a rename.
    fn write(&self, logins: &BTreeMap<String, Saved>) -> std::io::Result<()> {
        let json = serde_json::to_vec_pretty(logins).map_err(std::io::Error::other)?;
        let tmp = self.path.with_extension("json.tmp");
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(&json)?;
        file.sync_all()?;
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    /// The credentials a pull from `registry` uses when its request gave
    /// none: the saved login, else the docker config's.
    pub async fn resolve(&self, registry: &str) -> Credentials {
        let key = registry_key(registry);
        if let Some(saved) = self.lock().get(&key) {
            return Credentials::Basic {
                username: saved.username.clone(),
                password: saved.password.clone(),
            };
        }
        // A credential helper is a program: off the async threads.
        tokio::task::spawn_blocking(move || docker_config(&key))
            .await
            .unwrap_or_default()
    }
}

/// The docker config's credentials for `key`, if any.
fn docker_config(key: &str) -> Credentials {
    use docker_credential::{CredentialRetrievalError as E, DockerCredential};
    let names: Vec<&str> = if key == "docker.io" {
        vec!["https://index.docker.io/v1/", "docker.io"]
    } else {
        vec![key]
    };
    for name in names {
        match docker_credential::get_credential(name) {
            Ok(DockerCredential::UsernamePassword(username, password)) => {
                return Credentials::Basic { username, password };
            }
            Ok(DockerCredential::IdentityToken(_)) => {
                tracing::warn!(registry = %key, "the docker config holds an identity token for this registry, which wisp does not use; pulling anonymously");
                return Credentials::Anonymous;
            }
            Err(E::NoCredentialConfigured | E::ConfigNotFound | E::ConfigReadError) => {}
            Err(e @ E::HelperFailure { .. }) => {
                // Its output may hold secrets: say only which helper failed.
                let helper = match &e {
                    E::HelperFailure { helper, .. } => helper.clone(),
                    _ => String::new(),
                };
                tracing::warn!(registry = %key, %helper, "the docker credential helper failed; pulling anonymously");
            }
            Err(e) => {
                tracing::warn!(registry = %key, error = %e, "reading the docker config's credentials failed; pulling anonymously");
            }
        }
    }
    Credentials::Anonymous
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn keys_name_docker_hub_one_way() {
        for alias in DOCKER_HUB {
            assert_eq!(registry_key(alias), "docker.io");
        }
        assert_eq!(
            registry_key("https://registry.example.com:5000/"),
            "registry.example.com:5000"
        );
    }

    #[tokio::test]
    async fn logins_are_saved_private_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let logins = RegistryLogins::open(dir.path()).unwrap();
        logins.save("https://r.example:5000/", "u", "p").unwrap();
        let mode = std::fs::metadata(dir.path().join(FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = RegistryLogins::open(dir.path()).unwrap();
        assert_eq!(again.registries(), ["r.example:5000"]);
        assert!(matches!(
            again.resolve("r.example:5000").await,
            Credentials::Basic { username, password } if username == "u" && password == "p"
        ));
        assert!(again.remove("r.example:5000").unwrap());
        assert!(!again.remove("r.example:5000").unwrap());
        assert!(
            RegistryLogins::open(dir.path())
                .unwrap()
                .registries()
                .is_empty()
        );
    }
}
