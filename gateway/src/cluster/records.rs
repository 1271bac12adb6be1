//! Namespaces and namespace tokens in a cluster:
//! `/wisp/<cluster>/registry/namespaces/<name>` holds a namespace's record
//! and `/wisp/<cluster>/registry/tokens/<sha-256>` a token's (its hash,
//! never the token). Written to etcd first under compares (create only if
//! absent, update and delete only if present; a namespace goes with its
//! tokens in one transaction), then to the node's redb copy; every node
//! applies the others' writes from the registry's ordered watch, so a
//! token made on one node opens every node.

use etcd_client::{Compare, CompareOp, Txn, TxnOp};

use super::Cluster;
use crate::rescue::GatewayError;

/// What a record under the registry prefix is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Namespace,
    Token,
}

impl Kind {
    fn folder(self) -> &'static str {
        match self {
            Kind::Namespace => "namespaces/",
            Kind::Token => "tokens/",
        }
    }
}

/// A namespace or token as etcd holds it.
#[derive(Debug, Clone)]
pub struct Record {
    pub kind: Kind,
    /// The namespace's name, or the token's hash.
    pub id: String,
    pub json: Vec<u8>,
}

impl Record {
    /// `value` as the record `kind`/`id`.
    pub fn of(kind: Kind, id: &str, value: &impl serde::Serialize) -> Result<Record, GatewayError> {
        let json = serde_json::to_vec(value)
            .map_err(|e| GatewayError::NotReady(format!("encoding a record: {e}")))?;
        Ok(Record {
            kind,
            id: id.to_owned(),
            json,
        })
    }
}

/// What a write expects to find.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    Absent,
    Present,
}

impl Cluster {
    fn record_path(&self, kind: Kind, id: &str) -> String {
        format!("{}{}{id}", self.registry_prefix(), kind.folder())
    }

    /// The record a key under the registry prefix names, if it is one.
    pub(crate) fn record_of(&self, key: &str, json: &[u8]) -> Option<Record> {
        let rest = key.strip_prefix(&self.registry_prefix())?;
        [Kind::Namespace, Kind::Token].into_iter().find_map(|kind| {
            let id = rest.strip_prefix(kind.folder())?;
            Some(Record {
                kind,
                id: id.to_owned(),
                json: json.to_vec(),
            })
        })
    }

    /// Writes `record` if it is as `expect` says; whether it was.
    pub(crate) async fn put_record(
        &self,
        record: &Record,
        expect: Expect,
    ) -> Result<bool, GatewayError> {
        let path = self.record_path(record.kind, &record.id);
        let when = match expect {
            Expect::Absent => Compare::create_revision(path.as_str(), CompareOp::Equal, 0),
            Expect::Present => Compare::version(path.as_str(), CompareOp::Greater, 0),
        };
        let txn = Txn::new().when([when]).and_then([TxnOp::put(
            path.as_str(),
            record.json.clone(),
            None,
        )]);
        self.registry_txn(txn).await
    }

    /// Deletes the record `kind`/`id` if it exists, and `with` in the same
    /// transaction; whether it existed.
    pub(crate) async fn delete_record(
        &self,
        kind: Kind,
        id: &str,
        with: &[(Kind, String)],
    ) -> Result<bool, GatewayError> {
        let path = self.record_path(kind, id);
        let mut deletes = vec![TxnOp::delete(path.as_str(), None)];
        deletes.extend(
            with.iter()
                .map(|(kind, id)| TxnOp::delete(self.record_path(*kind, id), None)),
        );
        let txn = Txn::new()
            .when([Compare::version(path.as_str(), CompareOp::Greater, 0)])
            .and_then(deletes);
        self.registry_txn(txn).await
    }
}
