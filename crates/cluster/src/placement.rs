//! Placement: which nodes hold the replicas of new partitions.

use crate::NodeId;
use std::collections::BTreeMap;

/// Replica lists for `partitions` new partitions of `replication_factor`
/// copies each, over `live` nodes, balanced by count: each replica goes to
/// the live node holding the fewest replicas so far (`counts`, which this
/// updates), ties broken by a rotation that starts at `start` (e.g. a hash
/// of the topic name), so topics created one after another do not all put
/// their first partition on the same node. Preferred leaders (first
/// replicas) are balanced among nodes of equal count. `None` when there are fewer live
/// nodes than the replication factor.
pub fn place(
    live: &[NodeId],
    counts: &mut BTreeMap<NodeId, usize>,
    partitions: usize,
    replication_factor: usize,
    start: usize,
) -> Option<Vec<Vec<NodeId>>> {
    if replication_factor == 0 || live.len() < replication_factor {
        return None;
    }
    let mut leaders: BTreeMap<NodeId, usize> = BTreeMap::new();
    let mut out = Vec::with_capacity(partitions);
    for p in 0..partitions {
        let rotation = |i: usize| live[(start + p + i) % live.len()];
        let mut replicas: Vec<NodeId> = Vec::with_capacity(replication_factor);
        for slot in 0..replication_factor {
            let best = (0..live.len())
                .map(rotation)
                .filter(|n| !replicas.contains(n))
                .min_by_key(|n| {
                    let load = counts.get(n).copied().unwrap_or(0);
                    // Counts first; among equals the leader slot balances leaders.
                    let led = if slot == 0 {
                        leaders.get(n).copied().unwrap_or(0)
                    } else {
                        0
                    };
                    (load, led)
                })
                .expect("enough live nodes");
            replicas.push(best);
            *counts.entry(best).or_default() += 1;
        }
        *leaders.entry(replicas[0]).or_default() += 1;
        out.push(replicas);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn twelve_partitions_over_three_nodes_are_even() {
        let mut counts = BTreeMap::new();
        let placed = place(&[1, 2, 3], &mut counts, 12, 1, 0).unwrap();
        assert_eq!(placed.len(), 12);
        assert_eq!(counts, [(1, 4), (2, 4), (3, 4)].into());
        // Consecutive partitions rotate over the nodes.
        assert_eq!(&placed[..3], &[vec![1], vec![2], vec![3]]);
    }

    #[test]
    fn new_partitions_fill_the_emptiest_nodes_first() {
        let mut counts: BTreeMap<NodeId, usize> = [(1, 5), (2, 5), (3, 0)].into();
        let placed = place(&[1, 2, 3], &mut counts, 6, 1, 1).unwrap();
        // Node 3 catches up with the others, then they take turns.
        assert_eq!(placed.iter().filter(|r| r[0] == 3).count(), 5);
        assert_eq!(counts, [(1, 6), (2, 5), (3, 5)].into());
    }

    #[test]
    fn replicas_are_distinct_and_leaders_spread() {
        let mut counts = BTreeMap::new();
        let placed = place(&[1, 2, 3], &mut counts, 6, 3, 0).unwrap();
        for replicas in &placed {
            let mut sorted = replicas.clone();
            sorted.sort();
            assert_eq!(sorted, vec![1, 2, 3]);
        }
        let mut leaders: BTreeMap<NodeId, usize> = BTreeMap::new();
        for replicas in &placed {
            *leaders.entry(replicas[0]).or_default() += 1;
        }
        assert_eq!(leaders, [(1, 2), (2, 2), (3, 2)].into());
        assert!(place(&[1, 2], &mut counts, 1, 3, 0).is_none());
        assert!(place(&[1, 2], &mut counts, 1, 0, 0).is_none());
    }
}
