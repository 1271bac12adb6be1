//! Secrets in a cluster: `/wisp/<cluster>/registry/secrets/<namespace>/<name>`
//! holds each value sealed (ChaCha20-Poly1305, a random nonce each time)
//! with a key derived (HKDF-SHA256) from the cluster's token and name, and
//! bound to its key by the AEAD's associated data — so etcd, its backups
//! and anyone who can read it learn names, never values, and a sealed
//! value cannot be moved to another secret's key. The nodes share the
//! token (`--token-file`); a cluster whose token changes must write its
//! secrets again (a node that cannot open one says so and keeps its copy).
//!
//! A node writes etcd first (create only if absent, update only if
//! present, delete only if present) and then its redb copy; every node
//! applies the others' writes from the same ordered watch as the
//! functions', so a deploy that names a new secret always reaches a node
//! after the secret does.

use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom as _, SystemRandom};

use super::Cluster;
use crate::rescue::GatewayError;

/// The format of a sealed value: this byte, the nonce, the ciphertext
/// and its tag.
const SEALED_V1: u8 = 1;

/// A secret as etcd holds it.
#[derive(Debug, Clone)]
pub struct SealedSecret {
    pub namespace: String,
    pub name: String,
    pub sealed: Vec<u8>,
}

/// Why a sealed value could not be opened. (Never the value.)
#[derive(Debug, thiserror::Error)]
#[error(
    "secret {namespace}/{name} cannot be opened: it was sealed with another cluster token, or changed outside wisp"
)]
pub struct Unsealable {
    pub namespace: String,
    pub name: String,
}

/// Seals and opens the cluster's secrets.
pub struct Sealer {
    key: LessSafeKey,
    cluster: String,
    random: SystemRandom,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer")
            .field("cluster", &self.cluster)
            .finish_non_exhaustive()
    }
}

impl Sealer {
    /// The sealer of `cluster`, whose nodes answer to `token`.
    pub fn new(token: &str, cluster: &str) -> Result<Sealer, GatewayError> {
        let salt = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, b"wisp cluster secrets v1");
        let info = [cluster.as_bytes()];
        let prk = salt.extract(token.as_bytes());
        let okm = prk
            .expand(&info, &CHACHA20_POLY1305)
            .map_err(|_| GatewayError::NotReady("deriving the secrets' key".into()))?;
        Ok(Sealer {
            key: LessSafeKey::new(UnboundKey::from(okm)),
            cluster: cluster.to_owned(),
            random: SystemRandom::new(),
        })
    }

    fn aad(&self, namespace: &str, name: &str) -> String {
        format!("{}/{namespace}/{name}", self.cluster)
    }

    pub fn seal(&self, namespace: &str, name: &str, value: &[u8]) -> Result<Vec<u8>, GatewayError> {
        let failed = || GatewayError::NotReady("sealing a secret".into());
        let mut nonce = [0u8; NONCE_LEN];
        self.random.fill(&mut nonce).map_err(|_| failed())?;
        let mut sealed = value.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(self.aad(namespace, name).as_bytes()),
                &mut sealed,
            )
            .map_err(|_| failed())?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + sealed.len());
        out.push(SEALED_V1);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    pub fn open(&self, secret: &SealedSecret) -> Result<Vec<u8>, Unsealable> {
        let unsealable = || Unsealable {
            namespace: secret.namespace.clone(),
            name: secret.name.clone(),
        };
        let (&version, rest) = secret.sealed.split_first().ok_or_else(unsealable)?;
        if version != SEALED_V1 || rest.len() < NONCE_LEN {
            return Err(unsealable());
        }
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| unsealable())?;
        let mut buffer = sealed.to_vec();
        let value = self
            .key
            .open_in_place(
                nonce,
                Aad::from(self.aad(&secret.namespace, &secret.name).as_bytes()),
                &mut buffer,
            )
            .map_err(|_| unsealable())?;
        Ok(value.to_vec())
    }
}

impl Cluster {
    pub(crate) fn registry_prefix(&self) -> String {
        format!("{}registry/", self.prefix())
    }

    pub(crate) fn secrets_prefix(&self) -> String {
        format!("{}secrets/", self.registry_prefix())
    }

    fn secret_path(&self, namespace: &str, name: &str) -> String {
        format!("{}{namespace}/{name}", self.secrets_prefix())
    }

    /// The secret a key under [`Cluster::secrets_prefix`] names.
    pub(crate) fn secret_of(&self, key: &str, sealed: &[u8]) -> Option<SealedSecret> {
        let (namespace, name) = key.strip_prefix(&self.secrets_prefix())?.split_once('/')?;
        Some(SealedSecret {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            sealed: sealed.to_vec(),
        })
    }

    /// Writes a sealed secret: created only if it does not exist (`update`
    /// false), replaced only if it does. Whether it held.
    pub(crate) async fn write_secret(
        &self,
        secret: &SealedSecret,
        update: bool,
    ) -> Result<bool, GatewayError> {
        let path = self.secret_path(&secret.namespace, &secret.name);
        let when = if update {
            Compare::version(path.as_str(), CompareOp::Greater, 0)
        } else {
            Compare::create_revision(path.as_str(), CompareOp::Equal, 0)
        };
        let txn = Txn::new().when([when]).and_then([TxnOp::put(
            path.as_str(),
            secret.sealed.clone(),
            None,
        )]);
        self.registry_txn(txn).await
    }

    /// Deletes a secret if it exists; whether it did.
    pub(crate) async fn delete_secret(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<bool, GatewayError> {
        let path = self.secret_path(namespace, name);
        let txn = Txn::new()
            .when([Compare::version(path.as_str(), CompareOp::Greater, 0)])
            .and_then([TxnOp::delete(path.as_str(), None)]);
        self.registry_txn(txn).await
    }

    /// Commits a registry write; whether its compares held.
    pub(super) async fn registry_txn(&self, txn: Txn) -> Result<bool, GatewayError> {
        let answer = self.persist_txn(txn).await;
        answer.map(|answer| answer.succeeded()).map_err(|e| {
            self.unreachable(&e.to_string());
            self.out_of_reach(&e.to_string())
        })
    }

    fn out_of_reach(&self, why: &str) -> GatewayError {
        GatewayError::NotReady(format!(
            "the cluster's store (etcd) is out of reach, so nothing can be changed now ({why}); this node serves what it last saw"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(sealed: Vec<u8>, name: &str) -> SealedSecret {
        SealedSecret {
            namespace: "openfaas-fn".into(),
            name: name.into(),
            sealed,
        }
    }

    #[test]
    fn sealed_values_open_only_with_the_token_and_under_their_own_name() {
        let sealer = Sealer::new("token-a", "prod").unwrap();
        let sealed = sealer.seal("openfaas-fn", "db", b"hunter2").unwrap();
        assert!(!sealed.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(
            sealer.open(&secret(sealed.clone(), "db")).unwrap(),
            b"hunter2"
        );
        // A fresh nonce each time.
        assert_ne!(
            sealer.seal("openfaas-fn", "db", b"hunter2").unwrap(),
            sealed
        );
        // Moved to another name, opened with another token or cluster,
        // changed by one bit: refused, and the error holds no value.
        let moved = sealer.open(&secret(sealed.clone(), "api")).unwrap_err();
        assert!(!moved.to_string().contains("hunter2"));
        let other = Sealer::new("token-b", "prod").unwrap();
        assert!(other.open(&secret(sealed.clone(), "db")).is_err());
        let elsewhere = Sealer::new("token-a", "staging").unwrap();
        assert!(elsewhere.open(&secret(sealed.clone(), "db")).is_err());
        let mut flipped = sealed.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(sealer.open(&secret(flipped, "db")).is_err());
        assert!(sealer.open(&secret(Vec::new(), "db")).is_err());
        assert!(sealer.open(&secret(vec![1, 2, 3], "db")).is_err());
        assert!(!format!("{sealer:?}").contains("token"));
    }
}
