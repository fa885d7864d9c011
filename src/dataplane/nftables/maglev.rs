//! Maglev consistent hashing (Eisenbud et al., NSDI 2016) for the opt-in
//! consistent-hash scheduler: a lookup table of `M` slots (M prime), each
//! naming an endpoint, filled from per-endpoint permutations so that every
//! endpoint owns about `M/N` slots and removing one endpoint reassigns
//! mostly the slots it owned.
//!
//! In the layout a service using it gets a map `slot -> addr . port` with
//! all M slots and one rule `dnat to jhash <flow> mod M seed S map @mg-ID`;
//! an endpoint change rewrites only the slots whose owner changed (about
//! M/N elements), never the rule (M stays fixed until N crosses a size
//! step of [`table_size`]).
//!
//! Deterministic: the permutations come from two FNV-1a hashes of the
//! endpoint's text (address and port), so every node computes the same
//! table and a restart changes nothing.

/// Table sizes: primes, each at least 100 slots per endpoint for the
/// endpoint counts it is used for (Maglev's balance needs M >> N).
pub const SIZES: [u32; 5] = [251, 1021, 4093, 16381, 65521];

/// The table size for `n` endpoints: the smallest prime in [`SIZES`] with
/// at least 100 slots per endpoint (the largest one beyond that).
pub fn table_size(n: usize) -> u32 {
    SIZES
        .iter()
        .copied()
        .find(|m| *m as usize >= 100 * n.max(1))
        .unwrap_or(SIZES[SIZES.len() - 1])
}

fn fnv1a(seed: u64, bytes: &[u8]) -> u64 {
    let mut h = seed;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // A final avalanche (splitmix64), so close inputs spread.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Build the lookup table: entry `s` is the index (into `endpoints`) of the
/// endpoint owning slot `s`. `m` must be prime and at least `endpoints.len()`;
/// with no endpoints the table is empty.
pub fn build<T: AsRef<[u8]>>(endpoints: &[T], m: u32) -> Vec<u32> {
    let n = endpoints.len();
    if n == 0 {
        return Vec::new();
    }
    assert!(m as usize >= n, "Maglev table of {m} slots for {n} endpoints");
    let m64 = u64::from(m);
    let (offset, skip): (Vec<u64>, Vec<u64>) = endpoints
        .iter()
        .map(|e| {
            let e = e.as_ref();
            (
                fnv1a(0xcbf2_9ce4_8422_2325, e) % m64,
                fnv1a(0x8422_2325_cbf2_9ce4, e) % (m64 - 1) + 1,
            )
        })
        .unzip();
    let mut next = vec![0u64; n];
    let mut entry = vec![u32::MAX; m as usize];
    let mut filled = 0usize;
    loop {
        for i in 0..n {
            // The next preferred slot of endpoint i that is still free.
            let mut c = ((offset[i] + next[i] * skip[i]) % m64) as usize;
            while entry[c] != u32::MAX {
                next[i] += 1;
                c = ((offset[i] + next[i] * skip[i]) % m64) as usize;
            }
            entry[c] = i as u32;
            next[i] += 1;
            filled += 1;
            if filled == m as usize {
                return entry;
            }
        }
    }
}

/// Slots whose owner differs between two tables of endpoint *names*
/// (tables may index different endpoint lists).
pub fn changed_slots<T: AsRef<[u8]> + PartialEq>(old: &[u32], old_eps: &[T], new: &[u32], new_eps: &[T]) -> Vec<usize> {
    (0..old.len().max(new.len()))
        .filter(|&s| {
            let a = old.get(s).map(|&i| &old_eps[i as usize]);
            let b = new.get(s).map(|&i| &new_eps[i as usize]);
            a != b
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eps(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("10.244.{}.{}:8080", i / 200, i % 200 + 1))
            .collect()
    }

    #[test]
    fn every_slot_is_owned_and_the_share_is_even() {
        for n in [1, 2, 3, 10, 20, 50] {
            let e = eps(n);
            let m = table_size(n);
            let t = build(&e, m);
            assert_eq!(t.len(), m as usize);
            let mut count = vec![0usize; n];
            for &i in &t {
                count[i as usize] += 1;
            }
            let (lo, hi) = (*count.iter().min().unwrap(), *count.iter().max().unwrap());
            // Maglev's bound: the fill loop hands out one slot per endpoint
            // per round, so shares differ by at most one slot.
            assert!(hi - lo <= 1, "n={n} m={m}: shares {lo}..{hi}");
        }
    }

    #[test]
    fn the_table_is_deterministic() {
        let e = eps(10);
        assert_eq!(build(&e, 251), build(&e, 251));
        assert_ne!(build(&e, 251), build(&eps(11)[1..], 251));
    }

    /// Share of flows (slots) that move when one of N endpoints goes away:
    /// about 1/N with Maglev, about (N-1)/N with `hash mod N` selection.
    #[test]
    fn removing_one_of_n_endpoints_moves_about_one_nth_of_the_flows() {
        for n in [5usize, 10, 20] {
            let before = eps(n);
            let mut after = before.clone();
            after.remove(n / 2);
            let m = table_size(n);
            assert_eq!(m, table_size(n - 1), "same table size for this test");
            let (t0, t1) = (build(&before, m), build(&after, m));
            let moved = changed_slots(&t0, &before, &t1, &after).len() as f64 / f64::from(m);
            let ideal = 1.0 / n as f64;
            assert!(moved >= ideal * 0.99, "n={n}: moved {moved:.3} < 1/N");
            assert!(moved <= ideal * 1.6, "n={n}: moved {moved:.3}, ideal {ideal:.3}");

            // Contrast: the same flows (hash values 0..M) under hash mod N
            // and hash mod N-1, mapped to endpoint names.
            let modn: Vec<u32> = (0..m).map(|h| h % n as u32).collect();
            let modn1: Vec<u32> = (0..m).map(|h| h % (n as u32 - 1)).collect();
            let moved_mod = changed_slots(&modn, &before, &modn1, &after).len() as f64 / f64::from(m);
            assert!(moved_mod > 0.5, "n={n}: mod-N moved only {moved_mod:.3}");
            println!("n={n} m={m}: Maglev moved {moved:.3} (1/N = {ideal:.3}); hash mod N moved {moved_mod:.3}");
        }
    }

    #[test]
    fn adding_an_endpoint_only_takes_slots() {
        let before = eps(10);
        let mut after = before.clone();
        after.push("10.245.0.1:8080".into());
        let m = table_size(11);
        let (t0, t1) = (build(&before, m), build(&after, m));
        let changed = changed_slots(&t0, &before, &t1, &after);
        let to_new = changed.iter().filter(|&&s| after[t1[s] as usize] == after[10]).count();
        // Almost every changed slot went to the new endpoint.
        assert!(
            to_new as f64 >= changed.len() as f64 * 0.75,
            "{to_new} of {}",
            changed.len()
        );
    }
}
