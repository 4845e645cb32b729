//! The `NVIDIA_REQUIRE_*` constraint language, checked against the driver's and the GPUs'
//! facts, and the legacy-image rule.

use super::*;

// ---------------------------------------------------------------------------------------------
// NVIDIA_REQUIRE_*
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
enum Key {
    Cuda,
    Driver,
    Arch,
    Brand,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
enum Op {
    #[serde(rename = "=")]
    Eq,
    #[serde(rename = "!=")]
    Ne,
    #[serde(rename = "<")]
    Lt,
    #[serde(rename = "<=")]
    Le,
    #[serde(rename = ">")]
    Gt,
    #[serde(rename = ">=")]
    Ge,
}

impl Op {
    fn holds(self, ord: std::cmp::Ordering) -> bool {
        use std::cmp::Ordering::{Equal, Greater, Less};
        match self {
            Op::Eq => ord == Equal,
            Op::Ne => ord != Equal,
            Op::Lt => ord == Less,
            Op::Le => ord != Greater,
            Op::Gt => ord == Greater,
            Op::Ge => ord != Less,
        }
    }
}

/// One `key<op>value`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
struct Condition {
    key: Key,
    op: Op,
    value: String,
    /// The value's components for the version keys, validated once at parse time.
    #[serde(skip)]
    version: Vec<u64>,
}

/// NVIDIA's version syntax (`dsl_compare_version`): digits and dots only, starting with a digit;
/// runs of dots act as one; each component a decimal below `u64::MAX` (strtoumax's overflow
/// value is its error value).
fn parse_version(s: &str) -> Option<Vec<u64>> {
    if !s.starts_with(|c: char| c.is_ascii_digit())
        || !s.bytes().all(|b| b.is_ascii_digit() || b == b'.')
    {
        return None;
    }
    s.split('.')
        .filter(|p| !p.is_empty())
        .map(|p| p.parse::<u64>().ok().filter(|&n| n != u64::MAX))
        .collect()
}

/// Numeric per component, missing components counting as 0: `12` == `12.0` == `12.0.0`.
/// Equivalent to NVIDIA's "skip trailing `.0`" walk.
fn compare_versions(a: &[u64], b: &[u64]) -> std::cmp::Ordering {
    let len = a.len().max(b.len());
    (0..len)
        .map(|i| {
            let x = a.get(i).copied().unwrap_or(0);
            let y = b.get(i).copied().unwrap_or(0);
            x.cmp(&y)
        })
        .find(|o| o.is_ne())
        .unwrap_or(std::cmp::Ordering::Equal)
}

impl Condition {
    fn parse(text: &str) -> Result<Condition, String> {
        const OP_CHARS: &[char] = &['<', '>', '=', '!'];
        let Some(op_start) = text.find(OP_CHARS) else {
            return Err(format!("{text:?} has no operator (= != < <= > >=)"));
        };
        let (key_text, rest) = text.split_at(op_start);
        // The CLI takes the whole run of operator characters as the operator.
        let op_len = rest.find(|c| !OP_CHARS.contains(&c)).unwrap_or(rest.len());
        let (op_text, value) = rest.split_at(op_len);
        let key = match key_text.to_ascii_lowercase().as_str() {
            "cuda" => Key::Cuda,
            "driver" => Key::Driver,
            "arch" => Key::Arch,
            "brand" => Key::Brand,
            "" => return Err(format!("{text:?} has no key")),
            _ => {
                return Err(format!(
                    "unknown key {key_text:?} (expected cuda, driver, arch or brand)"
                ))
            }
        };
        let op = match op_text {
            "=" => Op::Eq,
            "!=" => Op::Ne,
            "<" => Op::Lt,
            "<=" => Op::Le,
            ">" => Op::Gt,
            ">=" => Op::Ge,
            _ => return Err(format!("unknown operator {op_text:?} in {text:?}")),
        };
        if value.is_empty() {
            return Err(format!("{text:?} has no value"));
        }
        let version = if key == Key::Brand {
            if !matches!(op, Op::Eq | Op::Ne) {
                return Err(format!("{text:?}: brand takes only = or !="));
            }
            Vec::new()
        } else {
            parse_version(value).ok_or_else(|| format!("{value:?} is not a version in {text:?}"))?
        };
        Ok(Condition {
            key,
            op,
            value: value.to_owned(),
            version,
        })
    }

    /// Unknown facts satisfy the condition, as in the CLI (no device: arch and brand pass;
    /// no CUDA or driver version: pass). A fact that is not a version counts as unknown too:
    /// facts come from the driver, and a mangled one must not turn into a misleading
    /// "update your driver".
    fn holds(&self, facts: &Facts) -> bool {
        let fact = match self.key {
            Key::Cuda => facts.cuda,
            Key::Driver => facts.driver,
            Key::Arch => facts.arch,
            Key::Brand => facts.brand,
        };
        let Some(fact) = fact else { return true };
        if self.key == Key::Brand {
            let same = fact.eq_ignore_ascii_case(&self.value);
            return if self.op == Op::Eq { same } else { !same };
        }
        match parse_version(fact) {
            Some(v) => self.op.holds(compare_versions(&v, &self.version)),
            None => true,
        }
    }
}

/// The require DSL: one NVIDIA_REQUIRE_* value. space = OR between clauses, comma = AND within a clause.
///
/// Only the ASCII space separates clauses (the CLI splits on `" "`), empty pieces are skipped,
/// and a clause made only of commas is an empty AND, hence true. The whole expression is
/// validated at parse time, where the CLI finds errors only in the parts it evaluates.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Requirement {
    source: String,
    clauses: Vec<Vec<Condition>>,
}

impl FromStr for Requirement {
    type Err = EnvError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let clauses = s
            .split(' ')
            .filter(|c| !c.is_empty())
            .map(|clause| {
                clause
                    .split(',')
                    .filter(|c| !c.is_empty())
                    .map(Condition::parse)
                    .collect::<Result<Vec<_>, _>>()
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|reason| EnvError::InvalidRequirement {
                var: None,
                expr: s.to_owned(),
                reason,
            })?;
        Ok(Requirement {
            source: s.to_owned(),
            clauses,
        })
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

/// What a requirement is checked against. `None` = unknown.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Facts<'a> {
    /// The driver's CUDA version, `maj.min` (e.g. "12.4").
    pub cuda: Option<&'a str>,
    /// The kernel module's version (e.g. "550.54.15").
    pub driver: Option<&'a str>,
    /// The GPU's compute capability (e.g. "9.0"); a MIG device's is its parent's.
    pub arch: Option<&'a str>,
    /// The GPU's brand (e.g. "Tesla"), compared case-insensitively.
    pub brand: Option<&'a str>,
}

impl Requirement {
    /// An empty expression holds (the CLI's loop never finds a false clause).
    pub fn is_satisfied(&self, facts: &Facts) -> bool {
        self.clauses.is_empty()
            || self
                .clauses
                .iter()
                .any(|clause| clause.iter().all(|c| c.holds(facts)))
    }

    /// The text it was parsed from.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether it tests cuda, arch or brand: facts procfs cannot give.
    pub fn needs_nvml_facts(&self) -> bool {
        self.clauses.iter().flatten().any(|c| c.key != Key::Driver)
    }

    /// The CLI's failure: it reports the expression's first clause, not the failing one, and
    /// adds the driver-update advice when that clause starts (case-sensitively) with `cuda>=`.
    /// We take the first non-empty clause where the CLI would print an empty one after a
    /// leading space.
    fn unsatisfied(&self) -> EnvError {
        let condition = self
            .source
            .split(' ')
            .find(|c| !c.is_empty())
            .unwrap_or_default()
            .to_owned();
        EnvError::Unsatisfied {
            update_driver_hint: condition.starts_with("cuda>="),
            condition,
        }
    }
}

/// All requirements must hold for every GPU's facts (or once with the GPU-less facts if `gpus` is empty). Returns the first unsatisfied condition as EnvError::Unsatisfied with NVIDIA's message shape.
///
/// A GPU's unknown cuda/driver facts fall back to `system`'s. Without GPUs, arch and brand are
/// unknown whatever `system` says: the CLI has no device to ask.
///
/// # Errors
/// The first failure in the CLI's order: GPU by GPU, requirement by requirement.
pub fn check_requirements(
    reqs: &[Requirement],
    system: &Facts,
    gpus: &[Facts],
) -> Result<(), EnvError> {
    let check = |facts: &Facts| {
        reqs.iter()
            .find(|r| !r.is_satisfied(facts))
            .map_or(Ok(()), |r| Err(r.unsatisfied()))
    };
    if gpus.is_empty() {
        return check(&Facts {
            arch: None,
            brand: None,
            ..*system
        });
    }
    for gpu in gpus {
        check(&Facts {
            cuda: gpu.cuda.or(system.cuda),
            driver: gpu.driver.or(system.driver),
            arch: gpu.arch.or(system.arch),
            brand: gpu.brand.or(system.brand),
        })?;
    }
    Ok(())
}

/// Which env vars of a container are requirements: NVIDIA_REQUIRE_* except NVIDIA_REQUIRE_JETPACK*; plus the legacy cuda>=maj.min from CUDA_VERSION.
/// env: (name, value) pairs after OCI env resolution (later duplicates already resolved by caller).
///
/// The legacy requirement comes first (as in the toolkit), then the variables in `env` order
/// (NVIDIA's is random). Empty values are kept: they always hold. `NVIDIA_DISABLE_REQUIRE` and
/// the config's `disable-require` are the caller's to check before calling, since NVIDIA then
/// does not even look at `CUDA_VERSION`.
///
/// # Errors
/// A malformed expression (naming its variable), or a legacy image whose `CUDA_VERSION` is not
/// a version.
pub fn requirements_from_env<'a>(
    env: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<Vec<Requirement>, EnvError> {
    let env: Vec<(&str, &str)> = env.into_iter().collect();
    let last = |name: &str| env.iter().rev().find(|(k, _)| *k == name).map(|(_, v)| *v);
    let mut out = Vec::new();
    if let Some(cuda_version) = last("CUDA_VERSION") {
        if is_legacy_image(Some(cuda_version), last("NVIDIA_REQUIRE_CUDA")) {
            let mm = cuda_major_minor(cuda_version)
                .ok_or_else(|| EnvError::InvalidCudaVersion(cuda_version.to_owned()))?;
            out.push(format!("cuda>={mm}").parse()?);
        }
    }
    for (name, value) in env {
        if name.starts_with("NVIDIA_REQUIRE_") && !name.starts_with("NVIDIA_REQUIRE_JETPACK") {
            let req = value.parse::<Requirement>().map_err(|e| match e {
                EnvError::InvalidRequirement { expr, reason, .. } => EnvError::InvalidRequirement {
                    var: Some(name.to_owned()),
                    expr,
                    reason,
                },
                other => other,
            })?;
            out.push(req);
        }
    }
    Ok(out)
}

/// `maj.min` of a CUDA_VERSION the way the toolkit gets it: optional leading `v`, then Go's
/// `semver.IsValid` (`1`, `1.2`, `1.2.3[-pre][+build]`, no leading zeros), then `MajorMinor`
/// (`12` → `12.0`), each part fitting 32 bits.
fn cuda_major_minor(v: &str) -> Option<String> {
    let v = v.strip_prefix('v').unwrap_or(v);
    // A number without leading zeros; returns it and the rest.
    fn int(s: &str) -> Option<(&str, &str)> {
        let n = s.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 || (n > 1 && s.starts_with('0')) {
            return None;
        }
        Some(s.split_at(n))
    }
    let (major, rest) = int(v)?;
    let (minor, rest) = match rest.strip_prefix('.') {
        None if rest.is_empty() => ("0", ""),
        None => return None,
        Some(r) => int(r)?,
    };
    if !rest.is_empty() {
        let (_patch, tail) = int(rest.strip_prefix('.')?)?;
        let (pre, build) = match tail.find('+') {
            Some(i) => (&tail[..i], Some(&tail[i + 1..])),
            None => (tail, None),
        };
        if !pre.is_empty() {
            let pre = pre.strip_prefix('-')?;
            let ok = pre.split('.').all(|id| {
                let numeric = id.bytes().all(|b| b.is_ascii_digit());
                !id.is_empty()
                    && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    && !(numeric && id.len() > 1 && id.starts_with('0'))
            });
            if !ok {
                return None;
            }
        }
        if let Some(build) = build {
            let ok = build.split('.').all(|id| {
                !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
            if !ok {
                return None;
            }
        }
    }
    let (major, minor) = (major.parse::<u32>().ok()?, minor.parse::<u32>().ok()?);
    Some(format!("{major}.{minor}"))
}

/// NVIDIA's legacy-image rule: CUDA_VERSION non-empty and NVIDIA_REQUIRE_CUDA unset/empty.
pub fn is_legacy_image(cuda_version: Option<&str>, require_cuda: Option<&str>) -> bool {
    cuda_version.is_some_and(|v| !v.is_empty()) && require_cuda.is_none_or(str::is_empty)
}
