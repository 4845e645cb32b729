//! The plan: every edit the hook makes to one container, as plain, deterministic data, and the
//! ordered operations that carry it out. No I/O here: inputs are gathered by the caller.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::config::{Config, Ldconfig};
use crate::driver::DriverFiles;
use crate::inventory::{Gpu, Inventory, Source};
use crate::nodes;
use crate::nvidia_env::DeviceRequest;
use crate::nvidia_env::{check_requirements, Capabilities, EnvError, Facts};
use crate::request::{Devices, Request, RequestError, Selection};

/// A host character device: its number, read by the caller from `dev-root`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct DevNum {
    pub major: u32,
    pub minor: u32,
}

/// The NVIDIA device nodes present on the host, by base name (`nvidiactl`, `nvidia3`, …).
pub type HostDevices = BTreeMap<String, DevNum>;

/// How the image lays out its libraries; decided from the image (Debian-like images have
/// `/etc/debian_version`), as NVIDIA's CLI does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    Debian,
    Other,
}

impl Layout {
    pub fn lib_dir(self) -> &'static str {
        match self {
            Layout::Debian => "/usr/lib/x86_64-linux-gnu",
            Layout::Other => "/usr/lib64",
        }
    }
    pub fn lib32_dir(self) -> &'static str {
        match self {
            Layout::Debian => "/usr/lib/i386-linux-gnu",
            Layout::Other => "/usr/lib",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct DeviceNode {
    pub host_path: PathBuf,
    pub path: PathBuf,
    pub major: u32,
    pub minor: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MountKind {
    /// Libraries, binaries, firmware: `ro,nosuid,nodev`.
    ReadOnly,
    /// IPC sockets and the MPS directory: `rw,nosuid,nodev,noexec`.
    Ipc,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct Mount {
    pub source: PathBuf,
    pub target: PathBuf,
    pub kind: MountKind,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct Symlink {
    pub path: PathBuf,
    pub target: PathBuf,
}

/// A selected MIG device.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PlannedMig {
    pub parent_minor: u32,
    pub uuid: String,
    pub gi: u32,
    pub ci: u32,
}

/// One device cgroup v1 line: `c MAJ:MIN rw`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct CgroupRule {
    pub major: u32,
    pub minor: u32,
}

impl std::fmt::Display for CgroupRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "c {}:{} rw", self.major, self.minor)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LdcacheUpdate {
    /// A host binary, the fallback when the image's cache cannot be updated in-process.
    pub ldconfig: PathBuf,
    /// Container directories holding injected libraries.
    pub dirs: Vec<PathBuf>,
    /// The cache entries to add: each injected library by SONAME, at its container path.
    pub entries: Vec<CacheEntry>,
}

/// One linker-cache entry for an injected library.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct CacheEntry {
    pub soname: String,
    /// `<libdir>/<soname>`: the path ldconfig would store.
    pub path: PathBuf,
    pub compat32: bool,
}

/// Every edit for one container.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Plan {
    pub container_id: String,
    pub rootfs: PathBuf,
    pub driver_version: String,
    pub inventory: Source,
    pub capabilities: Capabilities,
    /// The GPUs whose nodes the container gets: whole GPUs and MIG parents.
    pub gpus: Vec<Gpu>,
    /// The MIG devices selected, by parent minor.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub migs: Vec<PlannedMig>,
    pub device_nodes: Vec<DeviceNode>,
    pub mounts: Vec<Mount>,
    pub symlinks: Vec<Symlink>,
    pub cgroup_rules: Vec<CgroupRule>,
    pub ldcache: Option<LdcacheUpdate>,
    /// The image's CUDA forward-compat libcuda version, when its libraries come first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cuda_compat: Option<String>,
    /// The container's `/proc/driver/nvidia` (`mask-proc-driver`); `None` when off or when
    /// the host has no such directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proc_mask: Option<crate::proc_mask::ProcMask>,
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error(transparent)]
    Imex(#[from] crate::imex::ImexError),
    #[error(transparent)]
    Requirement(#[from] EnvError),
    #[error(transparent)]
    Node(#[from] crate::nodes::NodeError),
    #[error("GPU {gpu} is not allocated to this Slurm step (allocated: {allocated})")]
    NotAllocated { gpu: String, allocated: String },
    #[error("container is in no Slurm job, and {why} gives it no GPU (set outside-slurm = \"allow\" in [gres-oci] of the hook's config.toml to allow such containers)")]
    OutsideSlurm { why: String },
    #[error(transparent)]
    ProcMask(#[from] crate::proc_mask::MaskError),
}

/// What the container may have, learned from something it cannot forge.
#[derive(Debug, Clone, Copy)]
pub enum Allocation<'a> {
    /// Not in a Slurm step, and the node allows that: anything on the node.
    Unrestricted,
    /// Not in a Slurm step, and the node denies GPUs to such containers, for the reason given.
    Denied(&'a str),
    /// The step's (or task's) GPUs as the plugin recorded them.
    Step(&'a [crate::request::PhysicalId]),
}

/// The inputs of [`plan`], gathered by the caller.
pub struct Inputs<'a> {
    pub container_id: &'a str,
    pub rootfs: &'a Path,
    pub layout: Layout,
    pub request: &'a Request,
    pub inventory: &'a Inventory,
    pub driver: &'a DriverFiles,
    pub devices: &'a HostDevices,
    /// `mig-minors`: capability name → minor of `nvidia-caps/nvidia-capN`; empty without MIG.
    pub mig_minors: &'a BTreeMap<String, u32>,
    pub allocation: Allocation<'a>,
    /// The major of `nvidia-caps-imex-channels` in `/proc/devices`; `None` without IMEX.
    pub imex_major: Option<u32>,
    /// The IMEX channels the Slurm job was given; `None` outside Slurm.
    pub imex_allowed: Option<&'a [u32]>,
    /// With `mofed-step-nics`, the gres/nic adapters of the container's Slurm step (device
    /// numbers): MOFED gives only those; `None` outside Slurm or without the key.
    pub nics_allowed: Option<&'a [DevNum]>,
    /// The image's CUDA forward-compat libraries, when NVIDIA's rule says to use them.
    pub cuda_compat: Option<&'a crate::cudacompat::CompatLibs>,
    pub config: &'a Config,
    /// The host's `<proc-root>/driver/nvidia`, read when `mask-proc-driver` is on.
    pub proc_driver: Option<&'a crate::proc_mask::HostProcDriver>,
}

/// Builds the plan: selects GPUs, checks requirements, and lays out nodes, mounts, links,
/// cgroup rules and the linker-cache update. Sorted and de-duplicated.
///
/// # Errors
/// An unknown or MIG GPU id, an unsatisfied requirement, a device node missing on the host.
pub fn plan(i: &Inputs) -> Result<Plan, PlanError> {
    let inv = i.inventory;
    let mut selection = i.request.select(inv, i.mig_minors)?;
    restrict(&mut selection, i.request, i.allocation, i.mig_minors)?;
    let gpus = selection.nodes();
    // A MIG device is judged by its parent's arch and brand, as NVIDIA does.
    let facts: Vec<Facts> = gpus
        .iter()
        .map(|g| Facts {
            cuda: inv.cuda_version.as_deref(),
            driver: Some(&inv.driver_version),
            arch: g.arch.as_deref(),
            brand: g.brand.as_deref(),
        })
        .collect();
    let system = Facts {
        cuda: inv.cuda_version.as_deref(),
        driver: Some(&inv.driver_version),
        arch: None,
        brand: None,
    };
    check_requirements(&i.request.requirements, &system, &facts)?;

    let caps = &i.request.capabilities;
    let dev_root = &i.config.dev_root;
    let mut node_names: Vec<(String, bool)> = nodes::control(caps)
        .into_iter()
        .map(|(n, required)| (n.to_owned(), required))
        .collect();
    for g in &gpus {
        node_names.push((nodes::gpu(g.minor), true));
    }
    // Fabric devices the container enabled (or the site gives every GPU container): whatever
    // of theirs the node has.
    let mut fabric_nodes = crate::fabric::node_names(&i.request.fabric, i.devices.keys());
    if let Some(nics) = i.nics_allowed {
        crate::fabric::only_step_nics(&mut fabric_nodes, i.devices, nics);
    }
    let gds_nodes = fabric_nodes
        .iter()
        .any(|n| crate::fabric::Fabric::Gds.takes(n));
    node_names.extend(fabric_nodes.into_iter().map(|n| (n, false)));
    if let Some(req) = &i.request.imex {
        let available = i
            .imex_major
            .map(|m| crate::imex::channels_on_node(i.devices, m))
            .unwrap_or_default();
        // A container the node denies GPUs gets no channel either.
        let allowed = match i.allocation {
            Allocation::Denied(_) => Some(&[][..]),
            _ => i.imex_allowed,
        };
        for id in crate::imex::select(req, &available, allowed)? {
            node_names.push((format!("{}/channel{id}", crate::imex::CHANNEL_DIR), true));
        }
    }
    let mut migs = Vec::new();
    for (g, m) in &selection.migs {
        for cap in nodes::mig_caps(g.minor, m, i.mig_minors)? {
            node_names.push((cap, true));
        }
        migs.push(PlannedMig {
            parent_minor: g.minor,
            uuid: m.uuid.clone(),
            gi: m.gi,
            ci: m.ci,
        });
    }
    let mut device_nodes = Vec::new();
    for (name, required) in node_names {
        if let Some(n) = nodes::find(i.devices, dev_root, &name, required)? {
            device_nodes.push(DeviceNode {
                host_path: dev_root.join(&name),
                path: Path::new("/dev").join(&name),
                major: n.major,
                minor: n.minor,
            });
        }
    }
    device_nodes.sort();
    device_nodes.dedup();

    let mut mounts = Vec::new();
    let mut symlinks = Vec::new();
    let mut lib_dirs = Vec::new();
    let mut entries = Vec::new();
    for lib in &i.driver.libraries {
        let dir = PathBuf::from(if lib.compat32 {
            i.layout.lib32_dir()
        } else {
            i.layout.lib_dir()
        });
        mounts.push(Mount {
            source: lib.host_path.clone(),
            target: dir.join(&lib.file_name),
            kind: MountKind::ReadOnly,
        });
        for link in &lib.links {
            symlinks.push(Symlink {
                path: dir.join(link),
                target: PathBuf::from(&lib.file_name),
            });
        }
        if let Some(soname) = &lib.soname {
            entries.push(CacheEntry {
                soname: soname.clone(),
                path: dir.join(soname),
                compat32: lib.compat32,
            });
        }
        if !lib_dirs.contains(&dir) {
            lib_dirs.push(dir);
        }
    }
    for (f, kind) in i.driver.path_mounts(gds_nodes) {
        mounts.push(Mount {
            source: f.host_path.clone(),
            target: f.container_path.clone(),
            kind,
        });
    }
    // By target, so the plan reads in container order and a target is mounted once.
    mounts.sort_by(|a, b| a.target.cmp(&b.target));
    mounts.dedup_by(|a, b| a.target == b.target);
    symlinks.sort();
    symlinks.dedup_by(|a, b| a.path == b.path);
    lib_dirs.sort();
    entries.sort();
    entries.dedup();

    let cgroup_rules = if i.config.no_cgroups {
        Vec::new()
    } else {
        let mut r: Vec<_> = device_nodes
            .iter()
            .map(|d| CgroupRule {
                major: d.major,
                minor: d.minor,
            })
            .collect();
        r.sort();
        r.dedup();
        r
    };
    // Forward compat: the image's compat libraries take their sonames in the cache, and their
    // dir comes first for ldconfig, so libcuda.so.1 resolves to the newer compat library.
    let cuda_compat = match (i.cuda_compat, lib_dirs.is_empty()) {
        (Some(c), false) => {
            entries.retain(|e| e.compat32 || !c.libraries.iter().any(|(s, _)| *s == e.soname));
            entries.extend(c.libraries.iter().map(|(soname, path)| CacheEntry {
                soname: soname.clone(),
                path: path.clone(),
                compat32: false,
            }));
            entries.sort();
            lib_dirs.insert(0, PathBuf::from(crate::cudacompat::COMPAT_DIR));
            Some(c.version.clone())
        }
        _ => None,
    };
    let ldcache = match (&i.config.ldconfig, lib_dirs.is_empty()) {
        (Ldconfig::Host(p), false) => Some(LdcacheUpdate {
            ldconfig: p.clone(),
            dirs: lib_dirs,
            entries,
        }),
        _ => None,
    };
    let proc_mask = match i.proc_driver {
        Some(host) if i.config.mask_proc_driver => Some(crate::proc_mask::mask(
            host,
            &gpus.iter().map(|g| (*g).clone()).collect::<Vec<_>>(),
            &migs,
        )?),
        _ => None,
    };
    Ok(Plan {
        container_id: i.container_id.to_owned(),
        rootfs: i.rootfs.to_owned(),
        driver_version: inv.driver_version.clone(),
        inventory: inv.source,
        capabilities: caps.clone(),
        gpus: gpus.into_iter().cloned().collect(),
        migs,
        device_nodes,
        mounts,
        symlinks,
        cgroup_rules,
        cuda_compat: ldcache.as_ref().and(cuda_compat),
        ldcache,
        proc_mask,
    })
}

/// Applies the allocation: `all` (NVIDIA's CUDA images carry `NVIDIA_VISIBLE_DEVICES=all`)
/// means all the step's GPUs; a GPU named explicitly outside the allocation is refused, so a
/// forged list or another job's GPU fails loudly instead of silently shrinking. A MIG device
/// needs a MIG id of its own: a whole GPU's id does not cover the slices on it, and a slice's
/// id does not cover its parent or the other slices.
fn restrict(
    sel: &mut Selection,
    request: &Request,
    alloc: Allocation,
    mig_minors: &BTreeMap<String, u32>,
) -> Result<(), PlanError> {
    let allowed = match alloc {
        Allocation::Unrestricted => return Ok(()),
        Allocation::Denied(_) if sel.gpus.is_empty() && sel.migs.is_empty() => return Ok(()),
        Allocation::Denied(why) => {
            return Err(PlanError::OutsideSlurm {
                why: why.to_owned(),
            })
        }
        Allocation::Step(ids) => ids,
    };
    let whole_ok = |g: &Gpu| allowed.iter().any(|id| id.matches(g));
    let mig_ok = |g: &Gpu, m: &crate::inventory::Mig| {
        allowed.iter().any(|id| id.matches_mig(g, m, mig_minors))
    };
    if matches!(request.devices, Devices::Nvidia(DeviceRequest::All)) {
        sel.gpus.retain(|g| whole_ok(g));
        sel.migs.retain(|(g, m)| mig_ok(g, m));
        return Ok(());
    }
    let outside = sel
        .gpus
        .iter()
        .find(|g| !whole_ok(g))
        .map(|g| {
            g.uuid
                .clone()
                .unwrap_or_else(|| format!("minor:{}", g.minor))
        })
        .or_else(|| {
            sel.migs
                .iter()
                .find(|(g, m)| !mig_ok(g, m))
                .map(|(_, m)| m.uuid.clone())
        });
    if let Some(gpu) = outside {
        return Err(PlanError::NotAllocated {
            gpu,
            allocated: allowed
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(","),
        });
    }
    Ok(())
}

/// One step of carrying out a plan inside the container's mount namespace. Paths in `target`
/// and `path` are container paths, resolved under the rootfs by the executor.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "op")]
pub enum Op {
    /// Bind a host node over a new empty file, then `ro,nosuid,noexec` (opens still work:
    /// ro does not stop writes to a character device).
    BindDevice { source: PathBuf, target: PathBuf },
    BindFile {
        source: PathBuf,
        target: PathBuf,
        kind: MountKind,
    },
    BindDir {
        source: PathBuf,
        target: PathBuf,
        kind: MountKind,
    },
    /// Create a link unless the image already has something at `path`.
    Symlink { path: PathBuf, target: PathBuf },
    /// Mount a tmpfs over the container's `/proc/driver/nvidia` holding the plan's copies and
    /// read-only binds, then make it read-only.
    MaskProcDriver(crate::proc_mask::ProcMask),
    /// Update the linker cache: in-process from `entries` where the image's cache allows,
    /// else by running the host's `ldconfig` over `dirs`.
    Ldconfig {
        ldconfig: PathBuf,
        dirs: Vec<PathBuf>,
        entries: Vec<CacheEntry>,
    },
}

/// The operations for a plan, in the order they must run: nodes, files, links, then the
/// linker cache (which must see the links).
pub fn ops(plan: &Plan, source_is_dir: impl Fn(&Path) -> bool) -> Vec<Op> {
    let mut v = Vec::new();
    for d in &plan.device_nodes {
        v.push(Op::BindDevice {
            source: d.host_path.clone(),
            target: d.path.clone(),
        });
    }
    if let Some(m) = &plan.proc_mask {
        v.push(Op::MaskProcDriver(m.clone()));
    }
    for m in &plan.mounts {
        let (source, target, kind) = (m.source.clone(), m.target.clone(), m.kind);
        v.push(if source_is_dir(&m.source) {
            Op::BindDir {
                source,
                target,
                kind,
            }
        } else {
            Op::BindFile {
                source,
                target,
                kind,
            }
        });
    }
    for s in &plan.symlinks {
        v.push(Op::Symlink {
            path: s.path.clone(),
            target: s.target.clone(),
        });
    }
    if let Some(l) = &plan.ldcache {
        v.push(Op::Ldconfig {
            ldconfig: l.ldconfig.clone(),
            dirs: l.dirs.clone(),
            entries: l.entries.clone(),
        });
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::{HostFile, Library};
    use crate::request::env_map;
    use std::collections::BTreeSet;

    fn gpu(index: u32, minor: u32, bus: &str) -> Gpu {
        Gpu {
            index,
            minor,
            uuid: Some(format!("GPU-00000000-0000-0000-0000-00000000000{minor}")),
            pci_bus_id: bus.into(),
            model: None,
            arch: Some("9.0".into()),
            brand: Some("Tesla".into()),
            migs: vec![],
        }
    }

    fn inventory() -> Inventory {
        Inventory {
            source: Source::Procfs,
            driver_version: "550.54.15".into(),
            cuda_version: Some("12.4".into()),
            gpus: vec![
                gpu(0, 2, "00000000:1b:00.0"),
                gpu(1, 0, "00000000:3d:00.0"),
                gpu(2, 1, "00000000:86:00.0"),
            ],
        }
    }

    fn devices() -> HostDevices {
        let mut d = HostDevices::new();
        d.insert(
            "nvidiactl".into(),
            DevNum {
                major: 195,
                minor: 255,
            },
        );
        d.insert(
            "nvidia-uvm".into(),
            DevNum {
                major: 511,
                minor: 0,
            },
        );
        d.insert(
            "nvidia-modeset".into(),
            DevNum {
                major: 195,
                minor: 254,
            },
        );
        for m in 0..3 {
            d.insert(
                format!("nvidia{m}"),
                DevNum {
                    major: 195,
                    minor: m,
                },
            );
        }
        d
    }

    fn driver() -> DriverFiles {
        DriverFiles {
            libraries: vec![Library {
                host_path: "/drv/usr/lib64/libcuda.so.550.54.15".into(),
                file_name: "libcuda.so.550.54.15".into(),
                links: BTreeSet::from(["libcuda.so".into(), "libcuda.so.1".into()]),
                soname: Some("libcuda.so.1".into()),
                compat32: false,
            }],
            binaries: vec![HostFile {
                host_path: "/drv/usr/bin/nvidia-smi".into(),
                container_path: "/usr/bin/nvidia-smi".into(),
            }],
            firmware: vec![],
            ipc: vec![HostFile {
                host_path: "/drv/run/nvidia-persistenced/socket".into(),
                container_path: "/var/run/nvidia-persistenced/socket".into(),
            }],
            gds: vec![HostFile {
                host_path: "/drv/etc/cufile.json".into(),
                container_path: "/etc/cufile.json".into(),
            }],
            missing: vec![],
        }
    }

    /// [`inventory`] with GPU 2 (minor 1) in MIG mode with two MIG devices.
    fn mig_inventory() -> Inventory {
        let mut inv = inventory();
        inv.gpus[2].migs = vec![
            crate::inventory::Mig {
                index: 0,
                uuid: "MIG-00000000-0000-0000-0000-0000000000a0".into(),
                gi: 2,
                ci: 0,
            },
            crate::inventory::Mig {
                index: 1,
                uuid: "MIG-00000000-0000-0000-0000-0000000000a1".into(),
                gi: 3,
                ci: 1,
            },
        ];
        inv
    }

    fn plan_for(env: &[&str], config: &Config, layout: Layout) -> Result<Plan, PlanError> {
        plan_with(
            env,
            config,
            layout,
            &mig_inventory(),
            Allocation::Unrestricted,
        )
    }

    fn plan_with(
        env: &[&str],
        config: &Config,
        layout: Layout,
        inv: &Inventory,
        allocation: Allocation,
    ) -> Result<Plan, PlanError> {
        plan_compat(env, config, layout, inv, allocation, None)
    }

    fn plan_compat(
        env: &[&str],
        config: &Config,
        layout: Layout,
        inv: &Inventory,
        allocation: Allocation,
        cuda_compat: Option<&crate::cudacompat::CompatLibs>,
    ) -> Result<Plan, PlanError> {
        let env: Vec<String> = env.iter().map(|s| s.to_string()).collect();
        let map = env_map(&env).unwrap();
        let request = Request::from_env(&map, config)
            .unwrap()
            .expect("a GPU container");
        let (drv, mut dev) = (driver(), devices());
        for (n, name) in [
            "gdrdrv",
            "infiniband/uverbs0",
            "infiniband/rdma_cm",
            "nvidia-fs0",
            "nvidia-nvswitch0",
        ]
        .into_iter()
        .enumerate()
        {
            dev.insert(
                name.into(),
                DevNum {
                    major: 240,
                    minor: n as u32,
                },
            );
        }
        for c in [0, 5] {
            dev.insert(
                format!("nvidia-caps-imex-channels/channel{c}"),
                DevNum {
                    major: 234,
                    minor: c,
                },
            );
        }
        for m in [21, 22, 30, 31] {
            dev.insert(
                format!("nvidia-caps/nvidia-cap{m}"),
                DevNum {
                    major: 508,
                    minor: m,
                },
            );
        }
        plan(&Inputs {
            container_id: "c1",
            rootfs: Path::new("/b/rootfs"),
            layout,
            request: &request,
            inventory: inv,
            driver: &drv,
            devices: &dev,
            mig_minors: &mig_minors(),
            allocation,
            imex_major: Some(234),
            imex_allowed: None,
            nics_allowed: None,
            cuda_compat,
            config,
            proc_driver: None,
        })
    }

    fn mig_minors() -> BTreeMap<String, u32> {
        [
            ("gpu1/gi2/access", 21),
            ("gpu1/gi2/ci0/access", 22),
            ("gpu1/gi3/access", 30),
            ("gpu1/gi3/ci1/access", 31),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    fn minors(p: &Plan) -> Vec<u32> {
        p.gpus.iter().map(|g| g.minor).collect()
    }

    #[test]
    fn selection_maps_to_gpus_by_nvml_index_not_minor() {
        let c = Config::default();
        for (nvd, want) in [
            ("0", vec![2]),
            ("2,0", vec![2, 1]),
            ("all", vec![2, 0, 1]),
            ("none", vec![]),
            ("GPU-00000000-0000-0000-0000-000000000000", vec![0]),
            ("0000:86:00.0", vec![1]),
            ("1,1,1", vec![0]),
        ] {
            let p = plan_for(
                &[&format!("NVIDIA_VISIBLE_DEVICES={nvd}")],
                &c,
                Layout::Debian,
            )
            .unwrap();
            assert_eq!(minors(&p), want, "{nvd}");
        }
        let p = plan_for(
            &["NVIDIA_VISIBLE_DEVICES=all", "GRES_OCI_GPUS=minor:1"],
            &c,
            Layout::Debian,
        )
        .unwrap();
        assert_eq!(minors(&p), vec![1]);
    }

    #[test]
    fn whole_plan_for_one_gpu() {
        let c = Config::default();
        let p = plan_for(&["NVIDIA_VISIBLE_DEVICES=1"], &c, Layout::Other).unwrap();
        let nodes: Vec<_> = p
            .device_nodes
            .iter()
            .map(|d| (d.path.display().to_string(), d.major, d.minor))
            .collect();
        assert_eq!(
            nodes,
            vec![
                ("/dev/nvidia-uvm".to_string(), 511, 0),
                ("/dev/nvidia0".to_string(), 195, 0),
                ("/dev/nvidiactl".to_string(), 195, 255),
            ]
        );
        assert_eq!(p.device_nodes[1].host_path, PathBuf::from("/dev/nvidia0"));
        let mounts: Vec<_> = p
            .mounts
            .iter()
            .map(|m| (m.target.display().to_string(), m.kind))
            .collect();
        assert_eq!(
            mounts,
            vec![
                ("/usr/bin/nvidia-smi".to_string(), MountKind::ReadOnly),
                (
                    "/usr/lib64/libcuda.so.550.54.15".to_string(),
                    MountKind::ReadOnly
                ),
                (
                    "/var/run/nvidia-persistenced/socket".to_string(),
                    MountKind::Ipc
                ),
            ]
        );
        let links: Vec<_> = p
            .symlinks
            .iter()
            .map(|s| format!("{} -> {}", s.path.display(), s.target.display()))
            .collect();
        assert_eq!(
            links,
            vec![
                "/usr/lib64/libcuda.so -> libcuda.so.550.54.15",
                "/usr/lib64/libcuda.so.1 -> libcuda.so.550.54.15"
            ]
        );
        let rules: Vec<_> = p.cgroup_rules.iter().map(|r| r.to_string()).collect();
        assert_eq!(rules, vec!["c 195:0 rw", "c 195:255 rw", "c 511:0 rw"]);
        assert_eq!(
            p.ldcache,
            Some(LdcacheUpdate {
                ldconfig: "/sbin/ldconfig".into(),
                dirs: vec!["/usr/lib64".into()],
                entries: vec![CacheEntry {
                    soname: "libcuda.so.1".into(),
                    path: "/usr/lib64/libcuda.so.1".into(),
                    compat32: false
                }]
            })
        );
        // Deterministic and serialisable: the same inputs give the same JSON.
        let again = plan_for(&["NVIDIA_VISIBLE_DEVICES=1"], &c, Layout::Other).unwrap();
        assert_eq!(
            serde_json::to_string(&p).unwrap(),
            serde_json::to_string(&again).unwrap()
        );

        let ops = ops(&p, |_| false);
        assert!(matches!(ops.first(), Some(Op::BindDevice { .. })));
        assert!(matches!(ops.last(), Some(Op::Ldconfig { .. })));
    }

    #[test]
    fn mig_devices_get_parent_and_capability_nodes() {
        let c = Config::default();
        let caps = |p: &Plan| -> Vec<String> {
            p.device_nodes
                .iter()
                .map(|d| d.path.display().to_string())
                .filter(|p| {
                    p.contains("caps")
                        || p.starts_with("/dev/nvidia") && p[11..].parse::<u32>().is_ok()
                })
                .collect()
        };
        for nvd in ["2:1", "MIG-00000000-0000-0000-0000-0000000000A1"] {
            let p = plan_for(
                &[&format!("NVIDIA_VISIBLE_DEVICES={nvd}")],
                &c,
                Layout::Debian,
            )
            .unwrap();
            assert_eq!(
                caps(&p),
                vec![
                    "/dev/nvidia-caps/nvidia-cap30",
                    "/dev/nvidia-caps/nvidia-cap31",
                    "/dev/nvidia1"
                ],
                "{nvd}"
            );
            assert_eq!(p.migs.len(), 1);
            assert!(p.cgroup_rules.contains(&CgroupRule {
                major: 508,
                minor: 31
            }));
        }
        let p = plan_for(&["NVIDIA_VISIBLE_DEVICES=all"], &c, Layout::Debian).unwrap();
        assert_eq!(p.migs.len(), 2);
        assert_eq!(caps(&p).len(), 4 + 3);
        // A MIG device whose capability the driver does not list.
        let mut inv = inventory();
        inv.gpus[0].migs = vec![crate::inventory::Mig {
            index: 0,
            uuid: "MIG-00000000-0000-0000-0000-0000000000b0".into(),
            gi: 9,
            ci: 0,
        }];
        let e = plan_with(
            &["NVIDIA_VISIBLE_DEVICES=0:0"],
            &c,
            Layout::Debian,
            &inv,
            Allocation::Unrestricted,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("gpu2/gi9/access"), "{e}");
    }

    #[test]
    fn fabric_devices_on_request_or_by_site_default() {
        let fabric = |env: &[&str], c: &Config| {
            let mut e = vec!["NVIDIA_VISIBLE_DEVICES=0"];
            e.extend(env);
            let p = plan_for(&e, c, Layout::Debian).unwrap();
            let nodes: Vec<String> = p
                .device_nodes
                .iter()
                .map(|d| d.path.display().to_string())
                .filter(|p| {
                    !p.starts_with("/dev/nvidia") || p.contains("-fs") || p.contains("switch")
                })
                .collect();
            let cufile = p
                .mounts
                .iter()
                .any(|m| m.target == Path::new("/etc/cufile.json"));
            let rules = p.cgroup_rules.iter().filter(|r| r.major == 240).count();
            (nodes, cufile, rules)
        };
        let c = Config::default();
        assert_eq!(fabric(&[], &c), (vec![], false, 0));
        assert_eq!(
            fabric(&["NVIDIA_MOFED=yes", "NVIDIA_GDS=1"], &c),
            (vec![], false, 0)
        );
        assert_eq!(
            fabric(&["NVIDIA_MOFED=enabled", "NVIDIA_GDRCOPY=enabled"], &c),
            (
                vec![
                    "/dev/gdrdrv".to_string(),
                    "/dev/infiniband/rdma_cm".into(),
                    "/dev/infiniband/uverbs0".into()
                ],
                false,
                3
            )
        );
        assert_eq!(
            fabric(&["NVIDIA_GDS=enabled", "NVIDIA_NVSWITCH=enabled"], &c),
            (
                vec![
                    "/dev/nvidia-fs0".to_string(),
                    "/dev/nvidia-nvswitch0".into()
                ],
                true,
                2
            )
        );
        // A site with InfiniBand gives every GPU container its HCAs.
        let site = Config {
            fabric_devices: vec![crate::fabric::Fabric::Mofed],
            ..Config::default()
        };
        assert_eq!(fabric(&[], &site).2, 2);
    }

    #[test]
    fn imex_channels_by_request_within_the_node_and_policy() {
        let c = Config::default();
        let chans = |env: &[&str], alloc: Allocation| {
            plan_with(env, &c, Layout::Debian, &inventory(), alloc).map(|p| {
                let nodes: Vec<String> = p
                    .device_nodes
                    .iter()
                    .map(|d| d.path.display().to_string())
                    .filter(|p| p.contains("imex"))
                    .collect();
                assert_eq!(
                    nodes.len(),
                    p.cgroup_rules.iter().filter(|r| r.major == 234).count()
                );
                nodes
            })
        };
        let u = Allocation::Unrestricted;
        assert!(chans(&["NVIDIA_VISIBLE_DEVICES=0"], u).unwrap().is_empty());
        assert_eq!(
            chans(&["NVIDIA_VISIBLE_DEVICES=0", "NVIDIA_IMEX_CHANNELS=all"], u).unwrap(),
            [
                "/dev/nvidia-caps-imex-channels/channel0",
                "/dev/nvidia-caps-imex-channels/channel5"
            ]
        );
        assert_eq!(
            chans(&["NVIDIA_VISIBLE_DEVICES=0", "NVIDIA_IMEX_CHANNELS=5"], u).unwrap(),
            ["/dev/nvidia-caps-imex-channels/channel5"]
        );
        let e = chans(&["NVIDIA_VISIBLE_DEVICES=0", "NVIDIA_IMEX_CHANNELS=7"], u)
            .unwrap_err()
            .to_string();
        assert!(e.contains("IMEX channel 7 is not on this node"), "{e}");
        // A container the node gives no GPU gets no channel either.
        let d = Allocation::Denied("policy");
        assert!(chans(
            &["NVIDIA_VISIBLE_DEVICES=none", "NVIDIA_IMEX_CHANNELS=all"],
            d
        )
        .unwrap()
        .is_empty());
    }

    #[test]
    fn cuda_compat_libraries_take_their_sonames_first() {
        let c = Config::default();
        let compat = crate::cudacompat::CompatLibs {
            version: "575.57.08".into(),
            libraries: vec![(
                "libcuda.so.1".into(),
                "/usr/local/cuda/compat/libcuda.so.1".into(),
            )],
        };
        let p = plan_compat(
            &["NVIDIA_VISIBLE_DEVICES=0"],
            &c,
            Layout::Debian,
            &inventory(),
            Allocation::Unrestricted,
            Some(&compat),
        )
        .unwrap();
        assert_eq!(p.cuda_compat.as_deref(), Some("575.57.08"));
        let l = p.ldcache.unwrap();
        assert_eq!(l.dirs[0], Path::new("/usr/local/cuda/compat"));
        let cuda: Vec<_> = l
            .entries
            .iter()
            .filter(|e| e.soname == "libcuda.so.1")
            .collect();
        assert_eq!(cuda.len(), 1);
        assert_eq!(
            cuda[0].path,
            Path::new("/usr/local/cuda/compat/libcuda.so.1")
        );
    }

    #[test]
    fn a_step_holding_one_mig_slice_reaches_no_other() {
        use crate::request::PhysicalId;
        let c = Config::default();
        let inv = mig_inventory();
        // Slurm gave the step the first slice (caps 21, 22 on minor 1), as its gres.conf files.
        let ids = [PhysicalId::parse("mig:1/22/21").unwrap()];
        let step = Allocation::Step(&ids);
        let nodes = |env: &[&str]| {
            plan_with(env, &c, Layout::Debian, &inv, step).map(|p| {
                p.device_nodes
                    .iter()
                    .map(|d| d.path.display().to_string())
                    .filter(|p| {
                        p.contains("caps/")
                            || p.trim_start_matches("/dev/nvidia").parse::<u32>().is_ok()
                    })
                    .collect::<Vec<_>>()
            })
        };
        let own = vec![
            "/dev/nvidia-caps/nvidia-cap21",
            "/dev/nvidia-caps/nvidia-cap22",
            "/dev/nvidia1",
        ];
        for env in [
            &["NVIDIA_VISIBLE_DEVICES=all"][..],
            &["NVIDIA_VISIBLE_DEVICES=2:0"],
            &["NVIDIA_VISIBLE_DEVICES=MIG-00000000-0000-0000-0000-0000000000a0"],
            &["GRES_OCI_GPUS=mig:1/21/22"],
        ] {
            assert_eq!(nodes(env).unwrap(), own, "{env:?}");
        }
        // The other tenant's slice, the whole parent, or a forged id: refused, naming it.
        for (env, named) in [
            (
                &["NVIDIA_VISIBLE_DEVICES=2:1"][..],
                "MIG-00000000-0000-0000-0000-0000000000a1",
            ),
            (
                &["NVIDIA_VISIBLE_DEVICES=MIG-00000000-0000-0000-0000-0000000000a1"],
                "a1",
            ),
            (&["GRES_OCI_GPUS=mig:1/30/31"], "a1"),
            (&["NVIDIA_VISIBLE_DEVICES=2"], "GPU-"),
            (&["GRES_OCI_GPUS=minor:1"], "GPU-"),
        ] {
            let e = nodes(env).unwrap_err().to_string();
            assert!(
                e.contains(named) && e.contains("mig:1/21/22"),
                "{env:?}: {e}"
            );
        }
        // A capability set that is no device of this node.
        let e = nodes(&["GRES_OCI_GPUS=mig:1/21/31"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("mig:1/21/31"), "{e}");
        // A whole-GPU grant does not cover the slices on it.
        let whole = [PhysicalId::Minor(1)];
        let p = plan_with(
            &["NVIDIA_VISIBLE_DEVICES=all"],
            &c,
            Layout::Debian,
            &inv,
            Allocation::Step(&whole),
        )
        .unwrap();
        assert!(p.migs.is_empty());
        assert_eq!(minors(&p), vec![1]);
    }

    #[test]
    fn allocation_bounds_what_any_variable_can_reach() {
        use crate::request::PhysicalId;
        let c = Config::default();
        let inv = inventory();
        // The step holds minor 0 (NVML index 1) only.
        let ids = [PhysicalId::Minor(0)];
        let step = Allocation::Step(&ids);
        let got = |env: &[&str]| plan_with(env, &c, Layout::Debian, &inv, step).map(|p| minors(&p));
        assert_eq!(
            got(&["NVIDIA_VISIBLE_DEVICES=all"]).unwrap(),
            vec![0],
            "all = all allocated"
        );
        assert_eq!(got(&["NVIDIA_VISIBLE_DEVICES=1"]).unwrap(), vec![0]);
        assert_eq!(
            got(&["NVIDIA_VISIBLE_DEVICES=none"]).unwrap(),
            Vec::<u32>::new()
        );
        for forged in [
            &["NVIDIA_VISIBLE_DEVICES=0"][..],
            &["NVIDIA_VISIBLE_DEVICES=1,2"],
            &["NVIDIA_VISIBLE_DEVICES=GPU-00000000-0000-0000-0000-000000000001"],
            &["GRES_OCI_GPUS=minor:1"],
            &["GRES_OCI_GPUS=minor:0,minor:2"],
        ] {
            let e = got(forged).unwrap_err().to_string();
            assert!(
                e.contains("not allocated to this Slurm step") && e.contains("allocated: minor:0"),
                "{forged:?}: {e}"
            );
        }
        let deny = |env: &[&str]| {
            plan_with(
                env,
                &c,
                Layout::Debian,
                &inv,
                Allocation::Denied("the node's policy"),
            )
        };
        assert!(deny(&["NVIDIA_VISIBLE_DEVICES=all"])
            .unwrap_err()
            .to_string()
            .contains("outside-slurm"));
        assert!(deny(&["NVIDIA_VISIBLE_DEVICES=none"]).is_ok());
    }

    #[test]
    fn capabilities_pick_control_nodes_and_config_switches() {
        let mut c = Config::default();
        let p = plan_for(
            &[
                "NVIDIA_VISIBLE_DEVICES=0",
                "NVIDIA_DRIVER_CAPABILITIES=utility,display",
            ],
            &c,
            Layout::Debian,
        )
        .unwrap();
        let nodes: Vec<_> = p
            .device_nodes
            .iter()
            .map(|d| d.path.display().to_string())
            .collect();
        assert_eq!(
            nodes,
            vec!["/dev/nvidia-modeset", "/dev/nvidia2", "/dev/nvidiactl"]
        );
        assert_eq!(
            p.mounts[1].target,
            PathBuf::from("/usr/lib/x86_64-linux-gnu/libcuda.so.550.54.15")
        );
        c.no_cgroups = true;
        c.ldconfig = Ldconfig::Disabled;
        let p = plan_for(&["NVIDIA_VISIBLE_DEVICES=0"], &c, Layout::Debian).unwrap();
        assert!(p.cgroup_rules.is_empty());
        assert_eq!(p.ldcache, None);
    }

    #[test]
    fn errors_name_what_is_wrong() {
        let c = Config::default();
        for (env, needle) in [
            (
                &["NVIDIA_VISIBLE_DEVICES=7"][..],
                "GPU 7 is not on this node",
            ),
            (
                &["NVIDIA_VISIBLE_DEVICES=GPU-00000000-0000-0000-0000-000000000009"],
                "is not on this node",
            ),
            (
                &["NVIDIA_VISIBLE_DEVICES=MIG-00000000-0000-0000-0000-000000000009"],
                "MIG",
            ),
            (
                &["NVIDIA_VISIBLE_DEVICES=0", "NVIDIA_REQUIRE_CUDA=cuda>=13.0"],
                "unsatisfied condition: cuda>=13.0",
            ),
            (
                &["NVIDIA_VISIBLE_DEVICES=0", "NVIDIA_REQUIRE_ARCH=arch>=10.0"],
                "unsatisfied condition: arch>=10.0",
            ),
            (&["GRES_OCI_GPUS=minor:9"], "minor:9"),
        ] {
            let e = plan_for(env, &c, Layout::Debian).unwrap_err().to_string();
            assert!(e.contains(needle), "{env:?}: {e}");
        }
        // A requirement that holds, and one switched off by the image.
        plan_for(
            &["NVIDIA_VISIBLE_DEVICES=0", "NVIDIA_REQUIRE_CUDA=cuda>=12.0"],
            &c,
            Layout::Debian,
        )
        .unwrap();
        plan_for(
            &[
                "NVIDIA_VISIBLE_DEVICES=0",
                "NVIDIA_REQUIRE_CUDA=cuda>=13.0",
                "NVIDIA_DISABLE_REQUIRE=true",
            ],
            &c,
            Layout::Debian,
        )
        .unwrap();
        // The host lacks a selected GPU's node.
        let env: Vec<String> = vec!["NVIDIA_VISIBLE_DEVICES=0".into()];
        let map = env_map(&env).unwrap();
        let request = Request::from_env(&map, &c).unwrap().unwrap();
        let (inv, drv) = (inventory(), driver());
        let mut dev = devices();
        dev.remove("nvidia2");
        let e = plan(&Inputs {
            container_id: "c1",
            rootfs: Path::new("/r"),
            layout: Layout::Debian,
            request: &request,
            inventory: &inv,
            driver: &drv,
            devices: &dev,
            mig_minors: &BTreeMap::new(),
            allocation: Allocation::Unrestricted,
            imex_major: None,
            imex_allowed: None,
            nics_allowed: None,
            cuda_compat: None,
            config: &c,
            proc_driver: None,
        })
        .unwrap_err()
        .to_string();
        assert_eq!(e, "device node nvidia2 not found under /dev");
    }
}
