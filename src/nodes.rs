//! The NVIDIA device nodes a container needs, named as the dev-root scan names them (below
//! `dev-root`, e.g. `nvidia-caps/nvidia-cap21`): the control nodes per capability, a GPU's
//! node, a MIG device's capability nodes. The plan and CDI specs both build from these.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::inventory::Mig;
use crate::nvidia_env::{Capabilities, Capability};
use crate::plan::{DevNum, HostDevices};

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("device node {name} not found under {}", .dev_root.display())]
    MissingDevice { name: String, dev_root: PathBuf },
    #[error("MIG device {uuid}: no {cap} in the driver's mig-minors list")]
    MissingMigCap { uuid: String, cap: String },
}

/// The control nodes for `caps`, each with whether it must exist: `nvidiactl` always; for
/// compute the uvm nodes, which appear only once a CUDA client loaded the module (NVIDIA
/// skips them when absent); for display `nvidia-modeset`.
pub fn control(caps: &Capabilities) -> Vec<(&'static str, bool)> {
    let mut out = vec![("nvidiactl", true)];
    if caps.contains(Capability::Compute) {
        out.extend([("nvidia-uvm", false), ("nvidia-uvm-tools", false)]);
    }
    if caps.contains(Capability::Display) {
        out.push(("nvidia-modeset", false));
    }
    out
}

/// A whole GPU's node.
pub fn gpu(minor: u32) -> String {
    format!("nvidia{minor}")
}

/// The capability nodes a MIG device on the GPU of `parent_minor` needs: its GPU instance's
/// and compute instance's access, numbered by the driver's `mig-minors`.
///
/// # Errors
/// A capability `mig_minors` does not list.
pub fn mig_caps(
    parent_minor: u32,
    mig: &Mig,
    mig_minors: &BTreeMap<String, u32>,
) -> Result<Vec<String>, NodeError> {
    mig.capabilities(parent_minor)
        .into_iter()
        .map(|cap| match mig_minors.get(&cap) {
            Some(minor) => Ok(format!("nvidia-caps/nvidia-cap{minor}")),
            None => Err(NodeError::MissingMigCap {
                uuid: mig.uuid.clone(),
                cap,
            }),
        })
        .collect()
}

/// The node `name` of `devices`; `None` when absent and not `required`.
///
/// # Errors
/// A required node the dev root lacks.
pub fn find(
    devices: &HostDevices,
    dev_root: &Path,
    name: &str,
    required: bool,
) -> Result<Option<DevNum>, NodeError> {
    match devices.get(name) {
        Some(n) => Ok(Some(*n)),
        None if required => Err(NodeError::MissingDevice {
            name: name.to_owned(),
            dev_root: dev_root.to_owned(),
        }),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_nodes_per_capability() {
        let caps = |c: &[Capability]| -> Vec<&str> {
            control(&c.iter().copied().collect())
                .into_iter()
                .map(|(n, _)| n)
                .collect()
        };
        assert_eq!(caps(&[Capability::Utility]), ["nvidiactl"]);
        assert_eq!(
            caps(&[Capability::Compute, Capability::Display]),
            [
                "nvidiactl",
                "nvidia-uvm",
                "nvidia-uvm-tools",
                "nvidia-modeset"
            ]
        );
    }

    #[test]
    fn mig_caps_and_missing_nodes() {
        let mig = Mig {
            index: 0,
            uuid: "MIG-x".into(),
            gi: 2,
            ci: 0,
        };
        let minors: BTreeMap<String, u32> = [("gpu0/gi2/access", 21), ("gpu0/gi2/ci0/access", 22)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        assert_eq!(
            mig_caps(0, &mig, &minors).unwrap(),
            ["nvidia-caps/nvidia-cap21", "nvidia-caps/nvidia-cap22"]
        );
        let e = mig_caps(1, &mig, &minors).unwrap_err().to_string();
        assert_eq!(
            e,
            "MIG device MIG-x: no gpu1/gi2/access in the driver's mig-minors list"
        );
        let devices = HostDevices::new();
        assert!(find(&devices, Path::new("/d"), "nvidia-uvm", false)
            .unwrap()
            .is_none());
        let e = find(&devices, Path::new("/d"), "nvidia0", true).unwrap_err();
        assert_eq!(e.to_string(), "device node nvidia0 not found under /d");
    }
}
