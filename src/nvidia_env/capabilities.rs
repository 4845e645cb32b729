//! `NVIDIA_DRIVER_CAPABILITIES` and the config's capability lists.

use super::*;

// ---------------------------------------------------------------------------------------------
// NVIDIA_DRIVER_CAPABILITIES
// ---------------------------------------------------------------------------------------------

/// One driver capability. Declared alphabetically: that is the order of the CLI flags.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Capability {
    Compat32,
    Compute,
    Display,
    Graphics,
    Ngx,
    Utility,
    Video,
}

impl Capability {
    pub const ALL: [Capability; 7] = [
        Capability::Compat32,
        Capability::Compute,
        Capability::Display,
        Capability::Graphics,
        Capability::Ngx,
        Capability::Utility,
        Capability::Video,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            Capability::Compat32 => "compat32",
            Capability::Compute => "compute",
            Capability::Display => "display",
            Capability::Graphics => "graphics",
            Capability::Ngx => "ngx",
            Capability::Utility => "utility",
            Capability::Video => "video",
        }
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Capability {
    type Err = EnvError;

    /// Exact lower-case words only: NVIDIA compares them case-sensitively.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Capability::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| EnvError::UnknownCapability(s.to_owned()))
    }
}

/// A set of capabilities, iterated (and displayed) in flag order.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct Capabilities(BTreeSet<Capability>);

impl Capabilities {
    pub fn all() -> Capabilities {
        Capability::ALL.into_iter().collect()
    }

    pub fn contains(&self, c: Capability) -> bool {
        self.0.contains(&c)
    }

    pub fn iter(&self) -> std::collections::btree_set::Iter<'_, Capability> {
        self.0.iter()
    }

    /// Returns whether it was new.
    pub fn insert(&mut self, c: Capability) -> bool {
        self.0.insert(c)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn intersection(&self, other: &Capabilities) -> Capabilities {
        self.0.intersection(&other.0).copied().collect()
    }
}

impl FromIterator<Capability> for Capabilities {
    fn from_iter<I: IntoIterator<Item = Capability>>(iter: I) -> Self {
        Capabilities(iter.into_iter().collect())
    }
}

impl Extend<Capability> for Capabilities {
    fn extend<I: IntoIterator<Item = Capability>>(&mut self, iter: I) {
        self.0.extend(iter);
    }
}

impl<'a> IntoIterator for &'a Capabilities {
    type Item = &'a Capability;
    type IntoIter = std::collections::btree_set::Iter<'a, Capability>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl fmt::Display for Capabilities {
    /// `compute,utility`: the form NVIDIA_DRIVER_CAPABILITIES takes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, c) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(c.as_str())?;
        }
        Ok(())
    }
}

/// The comma-split, trimmed, non-empty words of a list value, as Go's hook splits them.
fn words(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|w| !w.is_empty())
}

/// NVIDIA_DRIVER_CAPABILITIES: None = unset. supported = config's supported-driver-capabilities.
///
/// Unset on a legacy image: everything supported. Unset or empty otherwise: `utility,compute`
/// (∩ supported; NVIDIA's default since Dec 2020). `all` anywhere: everything supported, and
/// then, as in the hook, the other words are not checked. A value of only separators (`,`) is
/// not empty for NVIDIA and yields no capability at all.
///
/// # Errors
/// The first word, in order, that is not a capability or not in `supported` (`none` included).
pub fn parse_capabilities(
    value: Option<&str>,
    legacy: bool,
    supported: &Capabilities,
) -> Result<Capabilities, EnvError> {
    let value = match value {
        None if legacy => return Ok(supported.clone()),
        None => "",
        Some(v) => v,
    };
    if value.is_empty() {
        let default: Capabilities = [Capability::Compute, Capability::Utility]
            .into_iter()
            .collect();
        return Ok(default.intersection(supported));
    }
    if words(value).any(|w| w == "all") {
        return Ok(supported.clone());
    }
    let mut out = Capabilities::default();
    for w in words(value) {
        match w.parse::<Capability>() {
            Ok(c) if supported.contains(c) => {
                out.insert(c);
            }
            _ => {
                return Err(EnvError::UnsupportedCapability {
                    word: w.to_owned(),
                    supported: supported.clone(),
                })
            }
        }
    }
    Ok(out)
}

/// The config key `supported-driver-capabilities`: comma-separated words, `all` allowed.
///
/// # Errors
/// A word that is neither a capability nor `all`.
pub fn parse_capability_list(value: &str) -> Result<Capabilities, EnvError> {
    let mut out = Capabilities::default();
    for w in words(value) {
        if w == "all" {
            out.extend(Capability::ALL);
        } else {
            out.insert(w.parse()?);
        }
    }
    Ok(out)
}
