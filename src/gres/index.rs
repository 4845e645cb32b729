//! Slurm's GPU index lists (`0-2,5`) and their mapping to this node's gres.conf devices.

use super::*;

/// Parses Slurm's GPU index lists: `0,1,3`, `0-2,5`. An empty string gives an empty list.
/// Order is kept and repeats are dropped; signs, garbage (including Slurm's `NoDevFiles`),
/// reversed ranges and values above [`MAX_GPU_INDEX`] are errors.
pub fn parse_index_list(s: &str) -> Result<Vec<usize>, GresError> {
    let list = s.trim();
    let bad = |reason: String| GresError::BadIndexList {
        list: s.to_string(),
        reason,
    };
    if list.is_empty() {
        return Ok(Vec::new());
    }
    let number = |item: &str| -> Result<usize, GresError> {
        let item = item.trim();
        if item.is_empty() || !item.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad(format!("{item:?} is not a number")));
        }
        match item.parse::<usize>() {
            Ok(n) if n <= MAX_GPU_INDEX => Ok(n),
            _ => Err(bad(format!("{item} is above {MAX_GPU_INDEX}"))),
        }
    };
    let mut seen = vec![false; MAX_GPU_INDEX + 1];
    let mut out = Vec::new();
    for item in list.split(',') {
        let (lo, hi) = match item.split_once('-') {
            Some((a, b)) => (number(a)?, number(b)?),
            None => {
                let n = number(item)?;
                (n, n)
            }
        };
        if lo > hi {
            return Err(bad(format!("range {lo}-{hi} is reversed")));
        }
        for (n, seen) in seen.iter_mut().enumerate().take(hi + 1).skip(lo) {
            if !std::mem::replace(seen, true) {
                out.push(n);
            }
        }
    }
    Ok(out)
}

/// Maps Slurm GPU indices to the node's devices, in the order given.
pub fn resolve_indices<'a>(
    devices: &'a [GresDevice],
    indices: &[usize],
    node: &str,
) -> Result<Vec<&'a GresDevice>, GresError> {
    indices
        .iter()
        .map(|&index| {
            // Look up by the recorded index rather than the slice position, so a filtered
            // slice cannot silently shift the mapping.
            devices
                .get(index)
                .filter(|d| d.index == index)
                .or_else(|| devices.iter().find(|d| d.index == index))
                .ok_or_else(|| GresError::IndexOutOfRange {
                    index,
                    node: node.to_string(),
                    count: devices.len(),
                })
        })
        .collect()
}
