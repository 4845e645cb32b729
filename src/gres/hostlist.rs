//! Slurm hostlist expressions (`node[01-04],gpu5`, `/dev/nvidia[0-3]`): expansion with
//! bounds, and membership without expanding.

use super::*;

/// Expands a Slurm hostlist (`/dev/nvidia[0-3,5]`, `node[01-04],gpu5`, `a[1-2]b[3-4]`) in
/// order, keeping zero padding (the width of a range's low bound). More than
/// [`MAX_EXPANSION`] names, an empty expression or an empty item is an error.
pub fn expand_hostlist(expr: &str) -> Result<Vec<String>, GresError> {
    Hostlist::parse(expr)?.expand(expr)
}

/// Whether `name` is one of the names `expr` expands to, without expanding it (so large node
/// ranges are fine).
pub fn hostlist_contains(expr: &str, name: &str) -> Result<bool, GresError> {
    Ok(Hostlist::parse(expr)?.contains(name))
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct NumRange {
    lo: u64,
    hi: u64,
    width: usize,
}

impl NumRange {
    fn format(&self, n: u64) -> String {
        format!("{n:0width$}", width = self.width)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Lit(String),
    Group(Vec<NumRange>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Hostlist {
    items: Vec<Vec<Seg>>,
}

impl Hostlist {
    pub(super) fn parse(expr: &str) -> Result<Hostlist, GresError> {
        let hostlist_err = |reason: &str| GresError::BadHostlist {
            expr: expr.to_string(),
            reason: reason.to_string(),
        };
        if expr.is_empty() {
            return Err(hostlist_err("empty"));
        }
        let bytes = expr.as_bytes();
        let mut items = Vec::new();
        let mut segs: Vec<Seg> = Vec::new();
        let mut lit_start = 0;
        let mut i = 0;
        // Only ASCII bytes are special, so slicing at them always lands on char boundaries.
        while i < bytes.len() {
            match bytes[i] {
                b'[' => {
                    push_lit(&mut segs, &expr[lit_start..i]);
                    let Some(j) = expr[i + 1..].find(['[', ']']) else {
                        return Err(GresError::UnclosedBracket {
                            expr: expr.to_string(),
                        });
                    };
                    let close = i + 1 + j;
                    if bytes[close] == b'[' {
                        return Err(hostlist_err("nested '['"));
                    }
                    segs.push(Seg::Group(parse_group(&expr[i + 1..close], expr)?));
                    i = close + 1;
                    lit_start = i;
                    continue;
                }
                b']' => return Err(hostlist_err("']' without '['")),
                b',' => {
                    push_lit(&mut segs, &expr[lit_start..i]);
                    if segs.is_empty() {
                        return Err(hostlist_err("empty item"));
                    }
                    items.push(std::mem::take(&mut segs));
                    lit_start = i + 1;
                }
                _ => {}
            }
            i += 1;
        }
        push_lit(&mut segs, &expr[lit_start..]);
        if segs.is_empty() {
            return Err(hostlist_err("empty item"));
        }
        items.push(segs);
        Ok(Hostlist { items })
    }

    /// Number of names, or `None` if it does not fit a `u64`.
    fn count(&self) -> Option<u64> {
        self.items.iter().try_fold(0u64, |total, item| {
            let n = item.iter().try_fold(1u64, |acc, seg| match seg {
                Seg::Lit(_) => Some(acc),
                Seg::Group(ranges) => {
                    let len = ranges
                        .iter()
                        .try_fold(0u64, |s, r| s.checked_add(r.hi - r.lo + 1))?;
                    acc.checked_mul(len)
                }
            })?;
            total.checked_add(n)
        })
    }

    pub(super) fn expand(&self, expr: &str) -> Result<Vec<String>, GresError> {
        // Count first so a hostile range is refused before anything is allocated.
        match self.count() {
            Some(n) if n <= MAX_EXPANSION as u64 => {}
            _ => {
                return Err(GresError::TooManyNames {
                    expr: expr.to_string(),
                    limit: MAX_EXPANSION,
                })
            }
        }
        let mut out = Vec::new();
        for item in &self.items {
            let mut names = vec![String::new()];
            for seg in item {
                match seg {
                    Seg::Lit(s) => names.iter_mut().for_each(|n| n.push_str(s)),
                    Seg::Group(ranges) => {
                        names = names
                            .iter()
                            .flat_map(|prefix| {
                                ranges.iter().flat_map(move |r| {
                                    (r.lo..=r.hi).map(move |n| format!("{prefix}{}", r.format(n)))
                                })
                            })
                            .collect();
                    }
                }
            }
            out.extend(names);
        }
        Ok(out)
    }

    /// Matches by tracking which positions of `name` each segment can end at, which stays
    /// linear however many ranges there are.
    pub(super) fn contains(&self, name: &str) -> bool {
        self.items.iter().any(|item| {
            let mut reach = vec![false; name.len() + 1];
            reach[0] = true;
            for seg in item {
                let mut next = vec![false; name.len() + 1];
                for pos in (0..=name.len()).filter(|&p| reach[p]) {
                    let rest = &name.as_bytes()[pos..];
                    match seg {
                        Seg::Lit(s) => {
                            if rest.starts_with(s.as_bytes()) {
                                next[pos + s.len()] = true;
                            }
                        }
                        Seg::Group(ranges) => {
                            let run = rest
                                .iter()
                                .take(MAX_DIGITS)
                                .take_while(|b| b.is_ascii_digit())
                                .count();
                            for k in 1..=run {
                                // Digits are ASCII, so this slice is valid UTF-8.
                                let digits = &name[pos..pos + k];
                                let Ok(n) = digits.parse::<u64>() else {
                                    continue;
                                };
                                if ranges
                                    .iter()
                                    .any(|r| r.lo <= n && n <= r.hi && r.format(n) == digits)
                                {
                                    next[pos + k] = true;
                                }
                            }
                        }
                    }
                }
                reach = next;
            }
            reach[name.len()]
        })
    }
}

fn push_lit(segs: &mut Vec<Seg>, s: &str) {
    if !s.is_empty() {
        segs.push(Seg::Lit(s.to_string()));
    }
}

/// Parses the inside of `[...]`: `a`, `a-b`, comma-separated, decimal digits only.
fn parse_group(body: &str, expr: &str) -> Result<Vec<NumRange>, GresError> {
    let bad = |reason: String| GresError::BadRange {
        expr: expr.to_string(),
        reason,
    };
    if body.is_empty() {
        return Err(bad("empty brackets".to_string()));
    }
    let number = |s: &str| -> Result<u64, GresError> {
        if s.is_empty() || s.len() > MAX_DIGITS || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad(format!("{s:?} is not a number")));
        }
        s.parse().map_err(|_| bad(format!("{s:?} is not a number")))
    };
    body.split(',')
        .map(|part| {
            let (lo_s, hi_s) = part.split_once('-').unwrap_or((part, part));
            let (lo, hi) = (number(lo_s)?, number(hi_s)?);
            if lo > hi {
                return Err(bad(format!("{lo} is above {hi}")));
            }
            Ok(NumRange {
                lo,
                hi,
                width: lo_s.len(),
            })
        })
        .collect()
}
