//! IMEX channels (multi-node NVLink): what `NVIDIA_IMEX_CHANNELS` asks for, which channel nodes
//! a node has (`/dev/nvidia-caps-imex-channels/channelN`, on the major `/proc/devices` names
//! `nvidia-caps-imex-channels`, minor N), and which of them a container gets. Pure but for
//! [`read_major`], which takes its proc root.

use std::path::{Path, PathBuf};

/// The directory under the dev root that holds the channel nodes.
pub const CHANNEL_DIR: &str = "nvidia-caps-imex-channels";

/// The highest channel id the driver accepts (20 bits of minor).
pub const MAX_CHANNEL: u32 = (1 << 20) - 1;

/// What a container asks for.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ImexRequest {
    /// Every channel it may have.
    All,
    /// These channel ids, sorted, each once.
    List(Vec<u32>),
}

#[derive(Debug, thiserror::Error)]
pub enum ImexError {
    #[error("NVIDIA_IMEX_CHANNELS={value:?}: {reason}")]
    BadValue { value: String, reason: String },
    #[error("{path}: cannot read")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "IMEX channel {id} is not on this node (no {CHANNEL_DIR}/channel{id} on the IMEX major)"
    )]
    Missing { id: u32 },
    #[error("IMEX channel {id} is not the Slurm job's (the job has: {allowed})")]
    NotAllocated { id: u32, allowed: String },
}

/// Parses `NVIDIA_IMEX_CHANNELS`: `all`, or a comma-separated list of channel ids (`3` or
/// `channel3`). Unset, empty, `none` and `void` ask for nothing.
///
/// # Errors
/// Anything else, naming the value.
pub fn parse(value: Option<&str>) -> Result<Option<ImexRequest>, ImexError> {
    let Some(v) = value.map(str::trim) else {
        return Ok(None);
    };
    match v {
        "" | "none" | "void" => return Ok(None),
        "all" => return Ok(Some(ImexRequest::All)),
        _ => {}
    }
    let bad = |reason: &str| ImexError::BadValue {
        value: v.to_owned(),
        reason: reason.to_owned(),
    };
    let mut ids = Vec::new();
    for item in v.split(',').map(str::trim) {
        let digits = item.strip_prefix("channel").unwrap_or(item);
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad("expected all, or channel ids such as 0,3"));
        }
        match digits.parse::<u32>() {
            Ok(id) if id <= MAX_CHANNEL => ids.push(id),
            _ => return Err(bad(&format!("a channel id is at most {MAX_CHANNEL}"))),
        }
    }
    ids.sort_unstable();
    ids.dedup();
    Ok(Some(ImexRequest::List(ids)))
}

/// The major of `nvidia-caps-imex-channels` in `<proc_root>/devices`; `None` where the driver
/// has no IMEX channels (or no such file).
///
/// # Errors
/// The file exists but cannot be read.
pub fn read_major(proc_root: &Path) -> Result<Option<u32>, ImexError> {
    let path = proc_root.join("devices");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(ImexError::Read { path, source }),
    };
    Ok(major_in(&text))
}

/// [`read_major`] on the text of `/proc/devices`: character devices only.
pub fn major_in(proc_devices: &str) -> Option<u32> {
    proc_devices
        .lines()
        .skip_while(|l| !l.starts_with("Character devices:"))
        .take_while(|l| !l.starts_with("Block devices:"))
        .find_map(|l| {
            let mut f = l.split_whitespace();
            let (num, name) = (f.next()?, f.next()?);
            (name == CHANNEL_DIR).then(|| num.parse().ok()).flatten()
        })
}

/// The channels the node's dev root has: `nvidia-caps-imex-channels/channelN` nodes on the
/// IMEX major whose minor is N (anything else there is not a channel).
pub fn channels_on_node(devices: &crate::plan::HostDevices, major: u32) -> Vec<u32> {
    let prefix = format!("{CHANNEL_DIR}/channel");
    let mut out: Vec<u32> = devices
        .iter()
        .filter_map(|(name, d)| {
            let id: u32 = name.strip_prefix(&prefix)?.parse().ok()?;
            (d.major == major && d.minor == id).then_some(id)
        })
        .collect();
    out.sort_unstable();
    out
}

/// The channels a container gets. `available`: the node's; `allowed`: the Slurm job's (`None`
/// outside Slurm, where the node's policy already decided). `all` means every available one
/// that is allowed; a listed id must be both.
///
/// # Errors
/// A listed channel the node lacks, or one the job was not given.
pub fn select(
    request: &ImexRequest,
    available: &[u32],
    allowed: Option<&[u32]>,
) -> Result<Vec<u32>, ImexError> {
    let ok = |id: &u32| allowed.is_none_or(|a| a.contains(id));
    match request {
        ImexRequest::All => Ok(available.iter().copied().filter(ok).collect()),
        ImexRequest::List(ids) => ids
            .iter()
            .map(|&id| {
                if !ok(&id) {
                    Err(ImexError::NotAllocated {
                        id,
                        allowed: allowed
                            .unwrap_or_default()
                            .iter()
                            .map(u32::to_string)
                            .collect::<Vec<_>>()
                            .join(","),
                    })
                } else if !available.contains(&id) {
                    Err(ImexError::Missing { id })
                } else {
                    Ok(id)
                }
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{DevNum, HostDevices};

    #[test]
    fn values() {
        for v in [None, Some(""), Some("none"), Some("void")] {
            assert_eq!(parse(v).unwrap(), None, "{v:?}");
        }
        assert_eq!(parse(Some("all")).unwrap(), Some(ImexRequest::All));
        assert_eq!(
            parse(Some("3, channel0,3")).unwrap(),
            Some(ImexRequest::List(vec![0, 3]))
        );
        for bad in [
            "x", "-1", "1048576", "0,,1", "channel", "3€", "all,0", "0x1",
        ] {
            let e = parse(Some(bad)).unwrap_err().to_string();
            assert!(e.starts_with("NVIDIA_IMEX_CHANNELS="), "{bad}: {e}");
        }
    }

    #[test]
    fn major_from_proc_devices() {
        let text = "Character devices:\n  1 mem\n195 nvidia\n234 nvidia-caps-imex-channels\n\nBlock devices:\n  7 loop\n235 nvidia-caps-imex-channels\n";
        assert_eq!(major_in(text), Some(234));
        assert_eq!(major_in("Character devices:\n195 nvidia\n"), None);
        assert_eq!(
            major_in("Block devices:\n234 nvidia-caps-imex-channels\n"),
            None
        );
    }

    #[test]
    fn channels_and_selection() {
        let mut devs = HostDevices::new();
        for (name, major, minor) in [
            ("nvidia-caps-imex-channels/channel0", 234, 0),
            ("nvidia-caps-imex-channels/channel5", 234, 5),
            ("nvidia-caps-imex-channels/channel6", 234, 7),
            ("nvidia-caps-imex-channels/channel8", 195, 8),
            ("nvidia0", 195, 0),
        ] {
            devs.insert(name.into(), DevNum { major, minor });
        }
        let avail = channels_on_node(&devs, 234);
        assert_eq!(avail, [0, 5]);
        assert_eq!(select(&ImexRequest::All, &avail, None).unwrap(), [0, 5]);
        assert_eq!(select(&ImexRequest::All, &avail, Some(&[5])).unwrap(), [5]);
        assert!(select(&ImexRequest::All, &avail, Some(&[]))
            .unwrap()
            .is_empty());
        let e = select(&ImexRequest::List(vec![0]), &avail, Some(&[5]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("channel 0 is not the Slurm job's (the job has: 5)"),
            "{e}"
        );
        let e = select(&ImexRequest::List(vec![6]), &avail, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("channel 6 is not on this node"), "{e}");
    }
}
