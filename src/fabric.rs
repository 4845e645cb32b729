//! Fabric devices a GPU container gets on request, as NVIDIA's toolkit gates them: GDRCopy,
//! InfiniBand verbs (MOFED), GPUDirect Storage and NVSwitch nodes, each switched on by its
//! `NVIDIA_<NAME>=enabled` variable or by the site's `fabric-devices` default. Pure: the caller
//! scans the dev root; this decides which of its nodes a container gets.

use std::collections::{BTreeMap, BTreeSet};

use crate::plan::{DevNum, HostDevices};

/// One kind of fabric device.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Fabric {
    /// `/dev/gdrdrv` (GDRCopy).
    Gdrcopy,
    /// `/dev/infiniband/uverbs*` and `/dev/infiniband/rdma_cm`.
    Mofed,
    /// `/dev/nvidia-fs*`, with the host's `/run/udev` and `/etc/cufile.json` where those nodes
    /// exist.
    Gds,
    /// `/dev/nvidia-nvswitchctl` and `/dev/nvidia-nvswitch*`.
    Nvswitch,
}

impl Fabric {
    pub const ALL: [Fabric; 4] = [
        Fabric::Gdrcopy,
        Fabric::Mofed,
        Fabric::Gds,
        Fabric::Nvswitch,
    ];

    /// Its name in `fabric-devices` and as a CDI mode: `gdrcopy`, `mofed`, `gds`, `nvswitch`.
    pub fn name(self) -> &'static str {
        match self {
            Fabric::Gdrcopy => "gdrcopy",
            Fabric::Mofed => "mofed",
            Fabric::Gds => "gds",
            Fabric::Nvswitch => "nvswitch",
        }
    }

    /// The container variable that asks for it (`=enabled`, exactly, as NVIDIA reads it).
    pub fn env_var(self) -> &'static str {
        match self {
            Fabric::Gdrcopy => "NVIDIA_GDRCOPY",
            Fabric::Mofed => "NVIDIA_MOFED",
            Fabric::Gds => "NVIDIA_GDS",
            Fabric::Nvswitch => "NVIDIA_NVSWITCH",
        }
    }

    /// Whether a node of the dev root (its path below the root, e.g. `infiniband/uverbs0`)
    /// belongs to this kind.
    pub fn takes(self, name: &str) -> bool {
        let numbered = |prefix: &str| {
            name.strip_prefix(prefix)
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        };
        match self {
            Fabric::Gdrcopy => name == "gdrdrv",
            Fabric::Mofed => numbered("infiniband/uverbs") || name == RDMA_CM,
            Fabric::Gds => numbered("nvidia-fs"),
            Fabric::Nvswitch => name == "nvidia-nvswitchctl" || numbered("nvidia-nvswitch"),
        }
    }
}

/// The kinds a container gets: those its environment enables, plus the site's defaults.
/// Any value other than `enabled` asks for nothing, as with NVIDIA's hook.
pub fn requested(env: &BTreeMap<&str, &str>, site: &[Fabric]) -> BTreeSet<Fabric> {
    Fabric::ALL
        .into_iter()
        .filter(|f| site.contains(f) || env.get(f.env_var()) == Some(&"enabled"))
        .collect()
}

/// The dev-root node names (`names`, as the dev-root scan keys them) that `fabrics` take, sorted.
pub fn node_names<'a>(
    fabrics: &BTreeSet<Fabric>,
    names: impl IntoIterator<Item = &'a String>,
) -> Vec<String> {
    let mut out: Vec<String> = names
        .into_iter()
        .filter(|n| fabrics.iter().any(|f| f.takes(n)))
        .cloned()
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Keeps of the MOFED nodes in `names` only the verbs nodes whose device numbers are in
/// `nics` (a Slurm step's gres/nic adapters), and `rdma_cm` only when one of them is kept:
/// connection management is of no use without an adapter. Other kinds are left alone.
pub fn only_step_nics(names: &mut Vec<String>, devices: &HostDevices, nics: &[DevNum]) {
    let verbs = |n: &str| Fabric::Mofed.takes(n) && n != RDMA_CM;
    names.retain(|n| !verbs(n) || devices.get(n).is_some_and(|d| nics.contains(d)));
    if !names.iter().any(|n| verbs(n)) {
        names.retain(|n| n != RDMA_CM);
    }
}

const RDMA_CM: &str = "infiniband/rdma_cm";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_enabled_or_site_defaults() {
        let env: BTreeMap<&str, &str> = [
            ("NVIDIA_MOFED", "enabled"),
            ("NVIDIA_GDS", "Enabled"),
            ("NVIDIA_GDRCOPY", "true"),
            ("NVIDIA_NVSWITCH", ""),
        ]
        .into_iter()
        .collect();
        assert_eq!(
            requested(&env, &[]).into_iter().collect::<Vec<_>>(),
            [Fabric::Mofed]
        );
        assert_eq!(
            requested(&BTreeMap::new(), &[Fabric::Nvswitch])
                .into_iter()
                .collect::<Vec<_>>(),
            [Fabric::Nvswitch]
        );
    }

    #[test]
    fn nodes_by_kind() {
        let names: Vec<String> = [
            "nvidia0",
            "nvidiactl",
            "gdrdrv",
            "infiniband/uverbs0",
            "infiniband/uverbs12",
            "infiniband/uverbsx",
            "infiniband/rdma_cm",
            "infiniband/umad0",
            "nvidia-fs0",
            "nvidia-fs",
            "nvidia-nvswitch3",
            "nvidia-nvswitchctl",
            "nvidia-caps/nvidia-cap1",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let pick = |f: &[Fabric]| node_names(&f.iter().copied().collect(), &names);
        assert_eq!(pick(&[]), Vec::<String>::new());
        assert_eq!(pick(&[Fabric::Gdrcopy]), ["gdrdrv"]);
        assert_eq!(
            pick(&[Fabric::Mofed]),
            [
                "infiniband/rdma_cm",
                "infiniband/uverbs0",
                "infiniband/uverbs12"
            ]
        );
        assert_eq!(pick(&[Fabric::Gds]), ["nvidia-fs0"]);
        assert_eq!(
            pick(&[Fabric::Nvswitch]),
            ["nvidia-nvswitch3", "nvidia-nvswitchctl"]
        );
    }

    #[test]
    fn step_nics_only() {
        let dn = |major, minor| DevNum { major, minor };
        let devices: HostDevices = [
            ("infiniband/uverbs0", dn(231, 192)),
            ("infiniband/uverbs1", dn(231, 193)),
            ("infiniband/rdma_cm", dn(10, 58)),
            ("gdrdrv", dn(500, 0)),
        ]
        .into_iter()
        .map(|(n, d)| (n.to_string(), d))
        .collect();
        let all = || -> Vec<String> { devices.keys().cloned().collect() };
        let mut names = all();
        only_step_nics(&mut names, &devices, &[dn(231, 193)]);
        assert_eq!(
            names,
            ["gdrdrv", "infiniband/rdma_cm", "infiniband/uverbs1"]
        );
        let mut names = all();
        only_step_nics(&mut names, &devices, &[]);
        assert_eq!(names, ["gdrdrv"]);
        // rdma_cm's own number does not stand for an adapter.
        let mut names = all();
        only_step_nics(&mut names, &devices, &[dn(10, 58)]);
        assert_eq!(names, ["gdrdrv"]);
    }
}
