//! The asynchronous queue of a cluster, in etcd.
//!
//! A call accepted by any node is written to
//! `/wisp/<cluster>/calls/<function>/<accepted>-<node>-<seq>` before the
//! `202`: etcd has it on a quorum of its members, so the node that
//! accepted it may die at once and the call is not lost. (The other way,
//! each node's redb queue replicated to its peers, would need a
//! replication protocol of its own for what etcd already does.) The price
//! is etcd's request limit: a call's body is at most
//! [`CLUSTER_CALL_BYTES`] in a cluster.
//!
//! The function's home node runs its calls. Before running one it claims
//! it: `/wisp/<cluster>/claims/<same key>`, created in a transaction only
//! if no node holds it, on the node's lease. A node that dies loses its
//! claims with its lease, and the next home takes the calls up: a call
//! running on a node that died runs again (its outcome was unknown), as
//! after a crash of a single node. The claim stays until the call and its
//! callback are done, and both keys go in one transaction.
//!
//! How a home learns of calls: those it accepts itself at once; those
//! accepted elsewhere from a watch on the calls; and a sweep every
//! [`SWEEP_EVERY`] lists the calls no node claims (a node that died, a
//! home that moved, a broken watch).

use std::time::Duration;

use etcd_client::{
    Compare, CompareOp, EventType, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};

use super::Cluster;
use crate::rescue::GatewayError;

/// Largest request body of an asynchronous call kept in etcd (base64 in
/// JSON: 1.4 MB, under etcd's default request limit of 1.5 MiB).
pub const CLUSTER_CALL_BYTES: u64 = 1024 * 1024;
/// How often a node looks for calls no node holds.
pub const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// What a claim found.
#[derive(Debug)]
pub enum Claimed {
    /// This node holds the call.
    Held,
    /// Another node holds it, or it is done.
    Elsewhere,
}

/// A call seen in etcd: its key under `calls/` and its function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallKey {
    pub key: String,
    pub function: String,
}

impl Cluster {
    fn calls_prefix(&self) -> String {
        format!("{}calls/", self.prefix())
    }

    fn claims_prefix(&self) -> String {
        format!("{}claims/", self.prefix())
    }

    fn current_lease(&self) -> Option<i64> {
        *self
            .lease
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A key for a call to `function` accepted now: in order of acceptance
    /// across the cluster, unique by this node's name and `seq`.
    pub(crate) fn call_key(&self, function: &str, accepted_ns: u128, seq: u64) -> String {
        format!("{function}/{accepted_ns:020}-{}-{seq:010}", self.node())
    }

    /// Stores call `key`: the new one accepted, or its retry or result.
    pub(crate) async fn put_call(&self, key: &str, json: Vec<u8>) -> Result<(), GatewayError> {
        let key = format!("{}{key}", self.calls_prefix());
        self.persist(|mut client| {
            let (key, json) = (key.clone(), json.clone());
            async move { client.put(key, json, None).await }
        })
        .await
        .map_err(|e| {
            self.unreachable(&e.to_string());
            GatewayError::NotReady(format!(
                "the cluster's store (etcd) is unreachable, so the call cannot be kept: {e}"
            ))
        })?;
        Ok(())
    }

    /// Claims call `key` for this node, or finds this node holds it.
    pub(crate) async fn claim_call(&self, key: &str) -> Result<Claimed, String> {
        let lease = self
            .current_lease()
            .ok_or("this node is not registered in the cluster")?;
        let call = format!("{}{key}", self.calls_prefix());
        let claim = format!("{}{key}", self.claims_prefix());
        let txn = Txn::new()
            .when([
                Compare::version(call.as_str(), CompareOp::Greater, 0),
                Compare::create_revision(claim.as_str(), CompareOp::Equal, 0),
            ])
            .and_then([TxnOp::put(
                claim.as_str(),
                self.node(),
                Some(PutOptions::new().with_lease(lease)),
            )])
            .or_else([TxnOp::get(claim.as_str(), None)]);
        let mut client = self.client.clone();
        let answer = client.txn(txn).await.map_err(|e| e.to_string())?;
        if answer.succeeded() {
            return Ok(Claimed::Held);
        }
        // Held already: by this node under its current lease (a retry)?
        let mine = answer.op_responses().first().is_some_and(|response| {
            matches!(response, TxnOpResponse::Get(got)
                if got.kvs().first().is_some_and(|kv| kv.value() == self.node().as_bytes() && kv.lease() == lease))
        });
        Ok(if mine {
            Claimed::Held
        } else {
            Claimed::Elsewhere
        })
    }

    /// Forgets call `key` and this node's claim on it, together.
    pub(crate) async fn forget_call(&self, key: &str) -> Result<(), String> {
        let txn = Txn::new().and_then([
            TxnOp::delete(format!("{}{key}", self.calls_prefix()), None),
            TxnOp::delete(format!("{}{key}", self.claims_prefix()), None),
        ]);
        let mut client = self.client.clone();
        client.txn(txn).await.map_err(|e| e.to_string())?;
        Ok(())
    }

    /// The calls no node holds, oldest first.
    pub(crate) async fn unclaimed_calls(&self) -> Result<Vec<CallKey>, String> {
        let mut client = self.client.clone();
        let keys_only = || Some(GetOptions::new().with_prefix().with_keys_only());
        let calls_prefix = self.calls_prefix();
        let claims_prefix = self.claims_prefix();
        let calls = client
            .get(calls_prefix.as_str(), keys_only())
            .await
            .map_err(|e| e.to_string())?;
        let claims = client
            .get(claims_prefix.as_str(), keys_only())
            .await
            .map_err(|e| e.to_string())?;
        let held: std::collections::HashSet<&[u8]> = claims
            .kvs()
            .iter()
            .filter_map(|kv| kv.key().strip_prefix(claims_prefix.as_bytes()))
            .collect();
        Ok(calls
            .kvs()
            .iter()
            .filter_map(|kv| kv.key().strip_prefix(calls_prefix.as_bytes()))
            .filter(|key| !held.contains(key))
            .filter_map(|key| call_key(&String::from_utf8_lossy(key)))
            .collect())
    }

    /// The stored JSON of call `key`, if it is still there.
    pub(crate) async fn get_call(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        let mut client = self.client.clone();
        let got = client
            .get(format!("{}{key}", self.calls_prefix()), None)
            .await
            .map_err(|e| e.to_string())?;
        Ok(got.kvs().first().map(|kv| kv.value().to_vec()))
    }

    /// Sends every call stored from now on (its key and JSON) to `found`,
    /// until the watch breaks.
    pub(crate) async fn watch_calls(
        &self,
        found: &tokio::sync::mpsc::UnboundedSender<(CallKey, Vec<u8>)>,
    ) -> Result<(), String> {
        let prefix = self.calls_prefix();
        let mut client = self.client.clone();
        let mut stream = client
            .watch(prefix.as_str(), Some(WatchOptions::new().with_prefix()))
            .await
            .map_err(|e| e.to_string())?;
        loop {
            let Some(response) = stream.message().await.map_err(|e| e.to_string())? else {
                return Ok(());
            };
            if response.canceled() {
                return Err(format!(
                    "the calls' watch was cancelled ({})",
                    response.cancel_reason()
                ));
            }
            for event in response.events() {
                let Some(kv) = event.kv() else { continue };
                if event.event_type() != EventType::Put {
                    continue;
                }
                let key = String::from_utf8_lossy(kv.key());
                let Some(key) = key.strip_prefix(prefix.as_str()).and_then(call_key) else {
                    continue;
                };
                if found.send((key, kv.value().to_vec())).is_err() {
                    return Ok(());
                }
            }
        }
    }
}

/// The call key `key` (under `calls/`) names, with its function.
fn call_key(key: &str) -> Option<CallKey> {
    let (function, _) = key.split_once('/')?;
    Some(CallKey {
        key: key.to_owned(),
        function: function.to_owned(),
    })
}
