//! The plan: every edit the hook makes to one container, as plain, deterministic data, and the
//! ordered operations that carry it out. No I/O here: inputs are gathered by the caller.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::config::{Config, Ldconfig};
use crate::driver::DriverFiles;
use crate::inventory::{Gpu, Inventory, Source};
use crate::request::{Request, RequestError};
use crate::selection::{check_requirements, Capabilities, Capability, Facts, SelectionError};

/// A host character device: its number, read by the caller from `dev-root`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
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
    /// A host binary.
    pub ldconfig: PathBuf,
    /// Container directories holding injected libraries.
    pub dirs: Vec<PathBuf>,
}

/// Every edit for one container.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Plan {
    pub container_id: String,
    pub rootfs: PathBuf,
    pub driver_version: String,
    pub inventory: Source,
    pub capabilities: Capabilities,
    pub gpus: Vec<Gpu>,
    pub device_nodes: Vec<DeviceNode>,
    pub mounts: Vec<Mount>,
    pub symlinks: Vec<Symlink>,
    pub cgroup_rules: Vec<CgroupRule>,
    pub ldcache: Option<LdcacheUpdate>,
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error(transparent)]
    Requirement(#[from] SelectionError),
    #[error("device node {name} not found under {dev_root}")]
    MissingDevice { name: String, dev_root: PathBuf },
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
    pub config: &'a Config,
}

/// Builds the plan: selects GPUs, checks requirements, and lays out nodes, mounts, links,
/// cgroup rules and the linker-cache update. Sorted and de-duplicated.
///
/// # Errors
/// An unknown or MIG GPU id, an unsatisfied requirement, a device node missing on the host.
pub fn plan(i: &Inputs) -> Result<Plan, PlanError> {
    let inv = i.inventory;
    let gpus = i.request.select(inv)?;
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
    let mut node_names: Vec<(String, bool)> = vec![("nvidiactl".into(), true)];
    if caps.contains(Capability::Compute) {
        // uvm appears only once a CUDA client loaded the module; NVIDIA skips it when absent.
        node_names.push(("nvidia-uvm".into(), false));
        node_names.push(("nvidia-uvm-tools".into(), false));
    }
    if caps.contains(Capability::Display) {
        node_names.push(("nvidia-modeset".into(), false));
    }
    for g in &gpus {
        node_names.push((format!("nvidia{}", g.minor), true));
    }
    let mut device_nodes = Vec::new();
    for (name, required) in node_names {
        match i.devices.get(&name) {
            Some(n) => device_nodes.push(DeviceNode {
                host_path: dev_root.join(&name),
                path: Path::new("/dev").join(&name),
                major: n.major,
                minor: n.minor,
            }),
            None if required => {
                return Err(PlanError::MissingDevice {
                    name,
                    dev_root: dev_root.clone(),
                })
            }
            None => {}
        }
    }
    device_nodes.sort();

    let mut mounts = Vec::new();
    let mut symlinks = Vec::new();
    let mut lib_dirs = Vec::new();
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
        if !lib_dirs.contains(&dir) {
            lib_dirs.push(dir);
        }
    }
    for f in i.driver.binaries.iter().chain(&i.driver.firmware) {
        mounts.push(Mount {
            source: f.host_path.clone(),
            target: f.container_path.clone(),
            kind: MountKind::ReadOnly,
        });
    }
    for f in &i.driver.ipc {
        mounts.push(Mount {
            source: f.host_path.clone(),
            target: f.container_path.clone(),
            kind: MountKind::Ipc,
        });
    }
    mounts.sort();
    mounts.dedup_by(|a, b| a.target == b.target);
    symlinks.sort();
    symlinks.dedup_by(|a, b| a.path == b.path);
    lib_dirs.sort();

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
    let ldcache = match (&i.config.ldconfig, lib_dirs.is_empty()) {
        (Ldconfig::Host(p), false) => Some(LdcacheUpdate {
            ldconfig: p.clone(),
            dirs: lib_dirs,
        }),
        _ => None,
    };
    Ok(Plan {
        container_id: i.container_id.to_owned(),
        rootfs: i.rootfs.to_owned(),
        driver_version: inv.driver_version.clone(),
        inventory: inv.source,
        capabilities: caps.clone(),
        gpus: gpus.into_iter().cloned().collect(),
        device_nodes,
        mounts,
        symlinks,
        cgroup_rules,
        ldcache,
    })
}

/// One step of carrying out a plan inside the container's mount namespace. Paths in `target`
/// and `path` are container paths, resolved under the rootfs by the executor.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "op")]
pub enum Op {
    /// Bind a host node over a new empty file, then `ro,nosuid,noexec` (opens still work:
    /// ro does not stop writes to a character device).
    BindDevice { source: PathBuf, target: PathBuf },
    BindFile { source: PathBuf, target: PathBuf, kind: MountKind },
    BindDir { source: PathBuf, target: PathBuf, kind: MountKind },
    /// Create a link unless the image already has something at `path`.
    Symlink { path: PathBuf, target: PathBuf },
    Ldconfig { ldconfig: PathBuf, dirs: Vec<PathBuf> },
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
    for m in &plan.mounts {
        let (source, target, kind) = (m.source.clone(), m.target.clone(), m.kind);
        v.push(if source_is_dir(&m.source) {
            Op::BindDir { source, target, kind }
        } else {
            Op::BindFile { source, target, kind }
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
        });
    }
    v
}
