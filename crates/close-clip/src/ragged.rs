//! Text batches of uneven length without paying for the padding.
//!
//! The text tower is causal and pooled at the end token, so a caption's vector depends only
//! on its own tokens: rows can go through the tower in any grouping. Padding a batch to its
//! longest row wastes the compute of every pad token (on the shapes world's captions about
//! half the text tower's work). [`length_groups`] splits a batch into groups of similar
//! length, each padded to its own longest row, trading padding against the fixed cost of
//! another forward pass; [`crate::ClipModel::text_features_rows`] runs them and restores
//! the input order.

use candle_core::{Device, Tensor};

/// Right-pad rows of token ids with `pad_id` into one `[rows, longest]` u32 tensor (at
/// least one column).
pub fn pad_rows(rows: &[&[u32]], pad_id: u32, device: &Device) -> close_core::Result<Tensor> {
    let len = rows.iter().map(|r| r.len()).max().unwrap_or(0).max(1);
    let mut data = Vec::with_capacity(rows.len() * len);
    for r in rows {
        data.extend_from_slice(r);
        data.extend(std::iter::repeat_n(pad_id, len - r.len()));
    }
    Ok(Tensor::from_vec(data, (rows.len(), len), device)?)
}

/// Groups of row indices (each sorted by length, ties by index) that minimise
/// `Σ (rows in group × its longest row) + overhead_tokens × groups`.
///
/// `overhead_tokens` is the fixed cost of one more forward pass, in tokens. With `0`, rows
/// of one length form one group and no group mixes lengths.
pub fn length_groups(lens: &[usize], overhead_tokens: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lens.len()).collect();
    order.sort_by_key(|&i| (lens[i], i));
    // Groups never split the rows of one length (that could only add overhead), so the
    // search runs over the boundaries between lengths: at most one per distinct length.
    let mut bounds: Vec<usize> = (0..order.len())
        .filter(|&i| i == 0 || lens[order[i - 1]] != lens[order[i]])
        .collect();
    bounds.push(order.len());
    let m = bounds.len() - 1;
    // best[b]: least cost of the rows before bounds[b]; start[b]: its last group's start.
    let mut best = vec![0usize; m + 1];
    let mut start = vec![0usize; m + 1];
    for b in 1..=m {
        let (end, longest) = (bounds[b], lens[order[bounds[b] - 1]]);
        best[b] = usize::MAX;
        for a in 0..b {
            let cost = best[a] + (end - bounds[a]) * longest + overhead_tokens;
            if cost < best[b] {
                best[b] = cost;
                start[b] = a;
            }
        }
    }
    let mut groups = Vec::new();
    let mut b = m;
    while b > 0 {
        groups.push(order[bounds[start[b]]..bounds[b]].to_vec());
        b = start[b];
    }
    groups.reverse();
    groups
}

/// Calls in which every row has the same length: the rows of each length, in input order,
/// cut into calls of at most `per_call` rows (lengths ascending).
///
/// Filled up to `per_call` rows, every call for one length has the same shape, so a row's
/// result does not depend on which other rows it was computed with.
pub fn exact_length_calls(lens: &[usize], per_call: usize) -> Vec<Vec<usize>> {
    let mut by_len: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
    for (i, &l) in lens.iter().enumerate() {
        by_len.entry(l).or_default().push(i);
    }
    by_len
        .into_values()
        .flat_map(|rows| {
            rows.chunks(per_call.max(1))
                .map(<[usize]>::to_vec)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The permutation that puts rows computed in `groups` order back in input order: entry `i`
/// is the position of input row `i` among the concatenated groups.
pub fn restore_order(groups: &[Vec<usize>]) -> Vec<u32> {
    let n: usize = groups.iter().map(Vec::len).sum();
    let mut at = vec![0u32; n];
    for (pos, &i) in groups.iter().flatten().enumerate() {
        at[i] = pos as u32;
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;

    fn padded_tokens(lens: &[usize], groups: &[Vec<usize>]) -> usize {
        groups
            .iter()
            .map(|g| g.len() * g.iter().map(|&i| lens[i]).max().unwrap())
            .sum()
    }

    #[test]
    fn without_overhead_each_length_is_one_group() {
        let lens = [5, 3, 5, 7, 3, 3];
        let g = length_groups(&lens, 0);
        assert_eq!(g, vec![vec![1, 4, 5], vec![0, 2], vec![3]]);
        assert_eq!(padded_tokens(&lens, &g), lens.iter().sum::<usize>());
    }

    #[test]
    fn overhead_merges_groups_and_every_row_appears_once() {
        let lens = [12, 4, 30, 5, 11, 29, 6, 13, 4, 31];
        let one = length_groups(&lens, 10_000);
        assert_eq!(one.len(), 1);
        let some = length_groups(&lens, 20);
        assert!(some.len() > 1 && some.len() < lens.len(), "{some:?}");
        assert!(padded_tokens(&lens, &some) < padded_tokens(&lens, &one));
        let mut all: Vec<usize> = some.iter().flatten().copied().collect();
        all.sort();
        assert_eq!(all, (0..lens.len()).collect::<Vec<_>>());
        // The grouping is optimal: no single split or merge of adjacent groups costs less.
        let cost = |g: &[Vec<usize>]| padded_tokens(&lens, g) + 20 * g.len();
        for k in 0..some.len() - 1 {
            let mut merged = some.clone();
            let next = merged.remove(k + 1);
            merged[k].extend(next);
            assert!(cost(&merged) >= cost(&some));
        }
    }

    #[test]
    fn a_large_batch_groups_by_distinct_lengths_quickly() {
        // 200,000 rows of 30 lengths: the search is over lengths, not rows.
        let lens: Vec<usize> = (0..200_000).map(|i| 3 + (i * 7) % 30).collect();
        let g = length_groups(&lens, 32);
        assert_eq!(g.iter().map(Vec::len).sum::<usize>(), lens.len());
        assert!(g.len() <= 30);
        assert_eq!(length_groups(&lens, 0).len(), 30);
    }

    #[test]
    fn exact_length_calls_never_mix_lengths_or_exceed_the_call_size() {
        let lens = [5, 3, 5, 7, 3, 3, 5, 5];
        let calls = exact_length_calls(&lens, 2);
        assert_eq!(
            calls,
            vec![vec![1, 4], vec![5], vec![0, 2], vec![6, 7], vec![3]]
        );
        assert!(exact_length_calls(&[], 4).is_empty());
    }

    #[test]
    fn restore_order_inverts_the_grouping() {
        let lens = [9, 2, 7, 2, 9];
        let g = length_groups(&lens, 0);
        let flat: Vec<usize> = g.iter().flatten().copied().collect();
        let at = restore_order(&g);
        for (i, &p) in at.iter().enumerate() {
            assert_eq!(flat[p as usize], i);
        }
        assert!(length_groups(&[], 5).is_empty());
    }
}
