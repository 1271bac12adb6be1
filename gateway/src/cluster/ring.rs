//! Where a function lives in a cluster: rendezvous (highest random weight)
//! hashing over the live nodes.
//!
//! Every node ranks the nodes for a function key by a score that depends on
//! the pair alone (`score(node, key)`), and the function's *home* is the
//! highest-scoring node; the next ones are where requests spill when the
//! home is full or unreachable. Because a node's score for a key never
//! depends on the other nodes, a node joining takes over only the keys it
//! now wins (about 1/N of them) and a node leaving moves only its own keys,
//! each to its runner-up — unlike OpenWhisk's `hash % N`, where a change in
//! N reshuffles nearly everything and every warm sandbox goes cold.
//!
//! The hash is fixed (FNV-1a, then a SplitMix64 finaliser): every node of
//! every version must rank alike, so it must never change and never be
//! seeded per process (as `std`'s `RandomState` is). It is not a defence
//! against anyone: a client choosing names that all land on one node gains
//! nothing it could not get by calling one function harder.

/// FNV-1a over `bytes`, 64-bit.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325_u64;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// SplitMix64's finaliser: spreads every input bit over the output.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The weight of `node` for `key`: the higher, the more `node` is the
/// key's home.
pub fn score(node: &str, key: &str) -> u64 {
    mix(fnv1a(node.as_bytes()) ^ mix(fnv1a(key.as_bytes())))
}

/// `nodes` in the order requests for `key` try them: its home first.
/// Ties (not expected from a 64-bit hash) go to the smaller name, so every
/// node ranks alike.
pub fn rank<'a, I>(key: &str, nodes: I) -> Vec<&'a str>
where
    I: IntoIterator<Item = &'a str>,
{
    let key_hash = mix(fnv1a(key.as_bytes()));
    let mut scored: Vec<(u64, &'a str)> = nodes
        .into_iter()
        .map(|node| (mix(fnv1a(node.as_bytes()) ^ key_hash), node))
        .collect();
    scored.sort_unstable_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    scored.into_iter().map(|(_, node)| node).collect()
}

/// The home of `key` among `nodes`, if there is any node.
pub fn home<'a, I>(key: &str, nodes: I) -> Option<&'a str>
where
    I: IntoIterator<Item = &'a str>,
{
    let key_hash = mix(fnv1a(key.as_bytes()));
    nodes
        .into_iter()
        .map(|node| (mix(fnv1a(node.as_bytes()) ^ key_hash), node))
        .max_by(|a, b| a.0.cmp(&b.0).then_with(|| b.1.cmp(a.1)))
        .map(|(_, node)| node)
}

/// Where a request for `key` goes: the first node in its rank order that
/// `has_room`, else its home (where it queues or is shed). What a node
/// forwarding a request does, with `has_room` standing for "did not answer
/// 429/503 marked shed" (`cluster::forward`); the simulation in
/// `benches/sim` runs this very function.
pub fn place<'a, I>(key: &str, nodes: I, has_room: impl Fn(&str) -> bool) -> Option<&'a str>
where
    I: IntoIterator<Item = &'a str>,
{
    let order = rank(key, nodes);
    order
        .iter()
        .copied()
        .find(|node| has_room(node))
        .or_else(|| order.first().copied())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("node-{i}")).collect()
    }

    #[test]
    fn the_hash_is_fixed() {
        // Every node of every version must agree: these values are the
        // contract. Changing them moves every function in a running
        // cluster at the next upgrade.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(score("node-0", "hello"), score("node-0", "hello"));
        let ranked = rank("hello", ["a", "b", "c"]);
        assert_eq!(ranked.len(), 3);
        assert_eq!(home("hello", ["c", "b", "a"]), Some(ranked[0]));
    }

    #[test]
    fn rank_and_home_agree_whatever_the_order_of_the_nodes() {
        let all = nodes(7);
        for k in 0..200 {
            let key = format!("fn-{k}");
            let forward = rank(&key, all.iter().map(String::as_str));
            let backward = rank(&key, all.iter().rev().map(String::as_str));
            assert_eq!(forward, backward);
            assert_eq!(home(&key, all.iter().map(String::as_str)), Some(forward[0]));
        }
        assert_eq!(home("x", std::iter::empty()), None);
    }

    #[test]
    fn place_spills_in_rank_order_and_falls_back_to_the_home() {
        let all = ["a", "b", "c", "d"];
        let order = rank("k", all);
        assert_eq!(place("k", all, |_| true), Some(order[0]));
        assert_eq!(place("k", all, |n| n != order[0]), Some(order[1]));
        assert_eq!(
            place("k", all, |n| n != order[0] && n != order[1]),
            Some(order[2])
        );
        assert_eq!(place("k", all, |_| false), Some(order[0]));
        assert_eq!(place("k", std::iter::empty(), |_| true), None);
    }

    #[test]
    fn keys_spread_evenly() {
        let all = nodes(8);
        let mut counts = std::collections::HashMap::new();
        let keys = 80_000;
        for k in 0..keys {
            let key = format!("function-{k}.team-{}", k % 13);
            *counts
                .entry(home(&key, all.iter().map(String::as_str)).unwrap_or_default())
                .or_insert(0usize) += 1;
        }
        let even = keys / all.len();
        for (node, count) in counts {
            assert!(
                count.abs_diff(even) < even / 10,
                "{node} is home to {count} of {keys} keys, far from {even}"
            );
        }
    }

    #[test]
    fn a_node_leaving_moves_only_its_own_keys_to_their_runner_up() {
        let all = nodes(5);
        let without: Vec<&str> = all
            .iter()
            .map(String::as_str)
            .filter(|n| *n != "node-2")
            .collect();
        for k in 0..5_000 {
            let key = format!("f{k}");
            let before = rank(&key, all.iter().map(String::as_str));
            let after = home(&key, without.iter().copied());
            if before[0] == "node-2" {
                assert_eq!(after, Some(before[1]));
            } else {
                assert_eq!(after, Some(before[0]));
            }
        }
    }

    #[test]
    fn a_node_joining_takes_about_its_share() {
        let mut all = nodes(4);
        let keys: Vec<String> = (0..20_000).map(|k| format!("f{k}")).collect();
        let homes_before: Vec<String> = keys
            .iter()
            .map(|k| {
                home(k, all.iter().map(String::as_str))
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect();
        all.push("node-new".into());
        let mut moved = 0;
        for (k, key) in keys.iter().enumerate() {
            let now = home(key, all.iter().map(String::as_str)).unwrap_or_default();
            if now != homes_before[k] {
                assert_eq!(now, "node-new", "a key moved between old nodes");
                moved += 1;
            }
        }
        // 1/5 of the keys, give or take.
        assert!((3_400..4_600).contains(&moved), "{moved} keys moved");
    }
}
