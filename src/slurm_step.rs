//! From Slurm's GPU index lists to physical GPUs, and from physical GPUs to the variables the
//! job gets. Pure: the caller stats the device files and reads procfs; nothing here touches the
//! system, so every rule is unit-tested.
//!
//! # The node's GPU table
//!
//! Slurm's indices (`SLURM_STEP_GPUS`, `SLURM_JOB_GPUS`) are positions in the node's GPU list
//! (see `crate::gres`). Without `AutoDetect` that list is gres.conf's `File=` order. With
//! `AutoDetect=nvml` slurmd merges what NVML found with gres.conf and sorts the result by device
//! file and then by the NVLink matrix, which mirrors NVML's enumeration, i.e. PCI bus order
//! (`_merge_system_gres_conf` in Slurm 22.05's `gres_gpu.c`). So when AutoDetect is on the table
//! is re-sorted by PCI bus id, and when gres.conf names no files at all, the table is every GPU
//! the driver's procfs lists, in PCI bus order.
//!
//! # Numbering inside a container
//!
//! Outside, CUDA ordinal `k` of a step (or task) is the `k`-th GPU of its Slurm list in
//! ascending index order: Slurm prints `CUDA_VISIBLE_DEVICES` in that order whether it uses
//! global indices or, under `ConstrainDevices`, local ones. Inside a container that holds only
//! those GPUs, CUDA numbers them `0..n-1` in PCI bus order (with `CUDA_DEVICE_ORDER=PCI_BUS_ID`).
//! The container's `CUDA_VISIBLE_DEVICES` therefore lists, for each outer ordinal, that GPU's
//! rank by PCI bus id among the step's GPUs: Sarus's rule, applied to physical identities
//! instead of index strings.

use std::collections::BTreeSet;
use std::path::PathBuf;

use crate::gres::GresDevice;
use crate::inventory::{Gpu, Inventory};

/// Errors of index resolution; each message names the value or file at fault.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("{var}={value:?}: {reason}")]
    BadVariable {
        var: &'static str,
        value: String,
        reason: String,
    },
    #[error("GPU index {index} is out of range: node {node:?} has {count} GPU(s)")]
    OutOfRange {
        index: usize,
        node: String,
        count: usize,
    },
    #[error(
        "the task's GPU list {task:?} fits neither the step's GPUs {step:?} nor its binding {bind:?}"
    )]
    TaskBinding {
        task: Vec<usize>,
        step: Vec<usize>,
        bind: String,
    },
    #[error("{}: {reason}", path.display())]
    Device { path: PathBuf, reason: String },
}

/// What is known about the device behind one Slurm GPU index on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeGpu {
    /// Slurm's index (position in the node's GPU list).
    pub index: usize,
    /// The device file as gres.conf names it.
    pub file: PathBuf,
    /// The N of `/dev/nvidiaN` (from the file's `st_rdev`).
    pub minor: u32,
    /// From procfs, lower-case `GPU-…`.
    pub uuid: Option<String>,
    /// From procfs, `dddddddd:bb:dd.f`.
    pub pci_bus_id: Option<String>,
    /// NVML's index: the rank of the PCI bus id among all the node's GPUs.
    pub nvml_index: Option<u32>,
    /// For a MIG device (gres.conf's `MultipleFiles=` with `nvidia-caps/nvidia-capN` files, as
    /// Slurm's AutoDetect writes them): the capability minors, sorted. Empty for a whole GPU;
    /// `uuid`, `pci_bus_id` and `minor` are then the parent's.
    pub caps: Vec<u32>,
    /// For a MIG device, its `MIG-…` UUID when gres.conf's `UniqueId=` gives one.
    pub mig_uuid: Option<String>,
}

impl NodeGpu {
    /// The name the hook understands best: UUID, else PCI bus id, else `minor:N`; for a MIG
    /// device the parent's minor with its capability minors (`mig:P/C/C`), which is what
    /// Slurm's device files vouch for.
    pub fn physical_id(&self) -> String {
        if let Some(id) = crate::request::PhysicalId::mig(self.minor, self.caps.clone()) {
            return id.to_string();
        }
        match (&self.uuid, &self.pci_bus_id) {
            (Some(u), _) => u.clone(),
            (None, Some(b)) => b.clone(),
            (None, None) => format!("minor:{}", self.minor),
        }
    }

    /// The name NVIDIA's own hook would take: the UUID (a MIG device's own, never its
    /// parent's), else the NVML index of a whole GPU.
    fn nvidia_id(&self) -> Option<String> {
        if self.caps.is_empty() {
            self.uuid
                .clone()
                .or_else(|| self.nvml_index.map(|i| i.to_string()))
        } else {
            self.mig_uuid.clone()
        }
    }
}

/// Whether a `MultipleFiles=` entry is one of the driver's capability nodes.
fn is_cap_file(path: &std::path::Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("nvidia-cap"))
}

fn find_in(inv: Option<&Inventory>, minor: u32) -> Option<&Gpu> {
    inv.and_then(|i| i.gpus.iter().find(|g| g.minor == minor))
}

/// Builds the node's table from gres.conf's devices: `minor_of` gives a device file's minor
/// (the caller stats it), also for a MIG device's capability files; `inv` adds UUID and bus id
/// where procfs knows the minor. With
/// `autodetect` on, the table is re-sorted into PCI bus order (see the module doc); GPUs procfs
/// does not know then keep their relative file order after the known ones.
///
/// # Errors
/// Whatever `minor_of` reports, naming the file.
pub fn node_table(
    devices: &[GresDevice],
    mut minor_of: impl FnMut(&std::path::Path) -> Result<u32, ResolveError>,
    inv: Option<&Inventory>,
    autodetect: bool,
) -> Result<Vec<NodeGpu>, ResolveError> {
    let mut out = Vec::with_capacity(devices.len());
    for d in devices {
        let minor = minor_of(&d.file)?;
        let g = find_in(inv, minor);
        let mut caps = Vec::new();
        for f in d.extra_files.iter().filter(|f| is_cap_file(f)) {
            caps.push(minor_of(f)?);
        }
        caps.sort_unstable();
        caps.dedup();
        let mig_uuid = if caps.is_empty() {
            None
        } else {
            d.unique_id
                .as_deref()
                .and_then(|u| crate::ids::prefixed_uuid(u, "MIG-"))
        };
        out.push(NodeGpu {
            index: d.index,
            file: d.file.clone(),
            minor,
            uuid: g.and_then(|g| g.uuid.clone()),
            pci_bus_id: g.map(|g| g.pci_bus_id.clone()),
            nvml_index: g.map(|g| g.index),
            caps,
            mig_uuid,
        });
    }
    if autodetect {
        // Stable sort: unknown bus ids (None) sort first in Option's order, so key on
        // (is_none, bus) to put them last.
        out.sort_by(|a, b| {
            (a.pci_bus_id.is_none(), &a.pci_bus_id).cmp(&(b.pci_bus_id.is_none(), &b.pci_bus_id))
        });
        for (i, g) in out.iter_mut().enumerate() {
            g.index = i;
        }
    }
    Ok(out)
}

/// The table when gres.conf gives no files and AutoDetect is on: every GPU procfs lists, in
/// PCI bus order (NVML's order), with device files under `dev_root`.
pub fn table_from_inventory(inv: &Inventory, dev_root: &std::path::Path) -> Vec<NodeGpu> {
    // `Inventory::gpus` is sorted by bus id with `index` = position.
    inv.gpus
        .iter()
        .enumerate()
        .map(|(i, g)| NodeGpu {
            index: i,
            file: dev_root.join(format!("nvidia{}", g.minor)),
            minor: g.minor,
            uuid: g.uuid.clone(),
            pci_bus_id: Some(g.pci_bus_id.clone()),
            nvml_index: Some(g.index),
            caps: Vec::new(),
            mig_uuid: None,
        })
        .collect()
}

/// Parses an index list from `var`, e.g. `SLURM_STEP_GPUS=0,2-3`.
///
/// # Errors
/// Garbage in the list, naming the variable and its value.
pub fn parse_list(var: &'static str, value: &str) -> Result<Vec<usize>, ResolveError> {
    crate::gres::parse_index_list(value).map_err(|e| ResolveError::BadVariable {
        var,
        value: value.to_owned(),
        reason: e.to_string(),
    })
}

/// The device files of the NICs Slurm's gres/nic gave a step: `value` is `SLURM_STEP_NICS`
/// (or `SLURM_JOB_NICS`), which gres/nic writes as `mlx4_<number>,…` whatever the adapter,
/// numbers as [`crate::gres::GresConf::nics_for_node`] gives them for `nics`.
///
/// # Errors
/// A malformed list, or a number that none of the node's `Name=nic` files has.
pub fn step_nic_files(
    var: &'static str,
    value: &str,
    nics: &[(usize, PathBuf)],
    node: &str,
) -> Result<Vec<PathBuf>, ResolveError> {
    let bad = |reason: String| ResolveError::BadVariable {
        var,
        value: value.to_owned(),
        reason,
    };
    let mut numbers: Vec<usize> = Vec::new();
    for item in value.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let digits = item.strip_prefix("mlx4_").unwrap_or(item);
        match digits.parse::<usize>() {
            Ok(n) if digits.bytes().all(|b| b.is_ascii_digit()) => numbers.push(n),
            _ => return Err(bad(format!("{item:?} is not gres/nic's mlx4_<number>"))),
        }
    }
    numbers.sort_unstable();
    numbers.dedup();
    numbers
        .into_iter()
        .map(|n| {
            nics.iter()
                .find(|(num, _)| *num == n)
                .map(|(_, f)| f.clone())
                .ok_or_else(|| {
                    bad(format!(
                        "NIC {n} is not among node {node:?}'s gres.conf Name=nic files"
                    ))
                })
        })
        .collect()
}

/// The step's CUDA MPS share from `CUDA_MPS_ACTIVE_THREAD_PERCENTAGE`, which Slurm's gres/mps
/// sets (or unsets) for each job and step: its shares as a percentage of the GPU's, 0-100.
/// `None` when unset or empty: the step holds no MPS shares.
///
/// # Errors
/// Anything but a number from 0 to 100.
pub fn mps_percentage(value: Option<&str>) -> Result<Option<u32>, ResolveError> {
    let Some(v) = value.map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    v.parse::<u32>()
        .ok()
        .filter(|p| *p <= 100)
        .map(Some)
        .ok_or_else(|| ResolveError::BadVariable {
            var: "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE",
            value: v.to_owned(),
            reason: "expected a percentage from 0 to 100".into(),
        })
}

/// The table's GPUs for `indices`, in ascending index order (= outer CUDA ordinal order).
///
/// # Errors
/// An index the node does not have.
pub fn select<'a>(
    table: &'a [NodeGpu],
    indices: &[usize],
    node: &str,
) -> Result<Vec<&'a NodeGpu>, ResolveError> {
    let sorted: BTreeSet<usize> = indices.iter().copied().collect();
    sorted
        .into_iter()
        .map(|i| {
            table
                .iter()
                .find(|g| g.index == i)
                .ok_or_else(|| ResolveError::OutOfRange {
                    index: i,
                    node: node.to_owned(),
                    count: table.len(),
                })
        })
        .collect()
}

/// The variables gres-oci gives one step or task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuEnv {
    /// `GRES_OCI_GPUS`: physical ids in outer ordinal order; empty for a step without GPUs.
    pub gres_oci_gpus: String,
    /// `NVIDIA_VISIBLE_DEVICES`: UUIDs (NVML indices where procfs has no UUID); `void` when the
    /// step has no GPUs or a GPU is unknown to procfs, so NVIDIA's own hook adds nothing.
    pub nvidia_visible_devices: String,
    /// `CUDA_VISIBLE_DEVICES` for a container holding exactly these GPUs; `None` without GPUs.
    pub container_cvd: Option<String>,
}

/// Computes [`GpuEnv`] for `gpus` (outer CUDA ordinal order, as [`select`] returns).
pub fn gpu_env(gpus: &[&NodeGpu]) -> GpuEnv {
    let gres_oci_gpus = gpus
        .iter()
        .map(|g| g.physical_id())
        .collect::<Vec<_>>()
        .join(",");
    let nvd: Option<Vec<String>> = gpus.iter().map(|g| g.nvidia_id()).collect();
    let nvidia_visible_devices = match nvd {
        Some(v) if !v.is_empty() => v.join(","),
        _ => "void".to_owned(),
    };
    let container_cvd = (!gpus.is_empty()).then(|| {
        container_ranks(gpus)
            .iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join(",")
    });
    GpuEnv {
        gres_oci_gpus,
        nvidia_visible_devices,
        container_cvd,
    }
}

/// For each GPU (outer ordinal order), its rank by PCI bus id among `gpus`: the order CUDA
/// enumerates them in a container that holds exactly these. Should procfs not know a bus id,
/// minors stand in for the whole list (the best remaining guess; the node has no driver then).
pub fn container_ranks(gpus: &[&NodeGpu]) -> Vec<usize> {
    let all_known = gpus.iter().all(|g| g.pci_bus_id.is_some());
    let mut order: Vec<usize> = (0..gpus.len()).collect();
    // MIG devices on one parent follow their capability minors (GPU instance order).
    if all_known {
        order.sort_by(|&a, &b| {
            (&gpus[a].pci_bus_id, &gpus[a].caps).cmp(&(&gpus[b].pci_bus_id, &gpus[b].caps))
        });
    } else {
        order.sort_by_key(|&a| (gpus[a].minor, &gpus[a].caps));
    }
    let mut rank = vec![0; gpus.len()];
    for (r, &i) in order.iter().enumerate() {
        rank[i] = r;
    }
    rank
}

/// A `--gpu-bind`/`--gpus-per-task` directive as slurmstepd hands it to the task in
/// `SLURMD_TRES_BIND` (e.g. `gpu:map_gpu:3,1`, `gpu:per_task:1`, `gpu:single:2`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GpuBind {
    None,
    /// `closest` or `single:N` (`tasks_per_gres` = N).
    Closest {
        tasks_per_gres: Option<u32>,
    },
    Map(String),
    Mask(String),
    PerTask(u32),
}

impl GpuBind {
    /// Parses `SLURMD_TRES_BIND` the way Slurm 22.05's `_parse_tres_bind` does.
    pub fn parse(tres_bind: &str) -> GpuBind {
        let Some(pos) = tres_bind.find("gpu:") else {
            return GpuBind::None;
        };
        let mut s = &tres_bind[pos + 4..];
        // `get`, not indexing: the job's user writes this text, and byte 8 may fall inside a
        // multi-byte character.
        if s.get(..8)
            .is_some_and(|p| p.eq_ignore_ascii_case("verbose,"))
        {
            s = &s[8..];
        }
        let lower = s.to_ascii_lowercase();
        // The value runs to the end: Slurm keeps the rest of the string (other TRES follow
        // after ';' or ',' only for the map/mask forms, which strtok stops at non-numbers).
        // Called only after an ASCII prefix of `n` bytes matched, so `n` is a char boundary.
        let rest = |n: usize| s[n..].split(';').next().unwrap_or("").to_owned();
        if lower.starts_with("single:") {
            let n = strtol(&rest(7)).filter(|&n| n > 0 && n <= i64::from(u32::MAX));
            GpuBind::Closest {
                tasks_per_gres: Some(n.map_or(1, |n| n as u32)),
            }
        } else if lower.starts_with("closest") {
            GpuBind::Closest {
                tasks_per_gres: None,
            }
        } else if lower.starts_with("map_gpu:") {
            GpuBind::Map(rest(8))
        } else if lower.starts_with("mask_gpu:") {
            GpuBind::Mask(rest(9))
        } else if lower.starts_with("per_task:") {
            GpuBind::PerTask(strtol(&rest(9)).map_or(0, |n| n.clamp(0, i64::from(u32::MAX)) as u32))
        } else {
            GpuBind::None
        }
    }

    pub fn is_none(&self) -> bool {
        matches!(self, GpuBind::None | GpuBind::PerTask(0))
    }
}

/// C's `strtol(s, NULL, 0)` on the leading number of `s`: `0x` hex, leading `0` octal, else
/// decimal; `None` when no digit leads.
fn strtol(s: &str) -> Option<i64> {
    let s = s.trim_start();
    let (neg, s) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let (radix, digits) = if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        (16, h)
    } else if s.starts_with('0') {
        (8, s)
    } else {
        (10, s)
    };
    let end = digits
        .char_indices()
        .find(|(_, c)| !c.is_digit(radix))
        .map_or(digits.len(), |(i, _)| i);
    if end == 0 {
        return None;
    }
    let v = i64::from_str_radix(&digits[..end], radix).ok()?;
    Some(if neg { -v } else { v })
}

/// The global indices Slurm makes usable for task `local_id` (its rank on this node), given
/// the step's indices on the node and the node's GPU count: Slurm 22.05's `_get_usable_gres`
/// with global numbering. `closest` ignores `Cores=` (the library does not parse core
/// affinity), so it treats every step GPU as close. `None` without a binding.
pub fn task_usable(
    bind: &GpuBind,
    step: &[usize],
    node_gpus: usize,
    local_id: u32,
) -> Option<Vec<usize>> {
    let alloc: BTreeSet<usize> = step.iter().copied().collect();
    let first = alloc.iter().next().copied();
    let mut usable: BTreeSet<usize> = match bind {
        GpuBind::None | GpuBind::PerTask(0) => return None,
        GpuBind::Map(list) | GpuBind::Mask(list) => {
            let is_map = matches!(bind, GpuBind::Map(_));
            map_or_mask(list, local_id, node_gpus, is_map)
                .intersection(&alloc)
                .copied()
                .collect()
        }
        GpuBind::PerTask(n) => alloc
            .iter()
            .skip(local_id as usize * *n as usize)
            .take(*n as usize)
            .copied()
            .collect(),
        GpuBind::Closest { tasks_per_gres } => {
            let all: Vec<usize> = alloc.iter().copied().collect();
            match tasks_per_gres {
                Some(t) if all.len() > 1 => {
                    let n = (local_id / t) as usize % all.len();
                    std::iter::once(all[n]).collect()
                }
                _ => alloc.clone(),
            }
        }
    };
    if usable.is_empty() {
        // "Bind request … does not specify any devices within the allocation … Binding to the
        // first device in the allocation instead."
        usable.extend(first);
    }
    Some(usable.into_iter().collect())
}

fn map_or_mask(list: &str, local_id: u32, node_gpus: usize, is_map: bool) -> BTreeSet<usize> {
    let mut out = BTreeSet::new();
    let tokens: Vec<&str> = list.split(',').filter(|t| !t.is_empty()).collect();
    if tokens.is_empty() {
        return out;
    }
    // Slurm cycles through the list until the task's slot is found.
    let mults: Vec<u64> = tokens
        .iter()
        .map(|t| {
            t.split_once('*')
                .and_then(|(_, m)| strtol(m))
                .map_or(1, |m| if m <= 0 { 1 } else { m as u64 })
        })
        .collect();
    let period: u64 = mults.iter().sum();
    let mut slot = u64::from(local_id) % period.max(1);
    for (t, m) in tokens.iter().zip(&mults) {
        if slot < *m {
            let value = strtol(t.split('*').next().unwrap_or("")).unwrap_or(-1);
            if is_map {
                if value >= 0 && (value as usize) < node_gpus {
                    out.insert(value as usize);
                }
            } else if value >= 1 {
                for i in 0..node_gpus.min(63) {
                    if (value >> i) & 1 == 1 {
                        out.insert(i);
                    }
                }
            }
            break;
        }
        slot -= m;
    }
    out
}

/// The task's real GPUs. `task` is the per-task `SLURM_STEP_GPUS` (global indices, or under
/// `ConstrainDevices` positions within the task's own set), `usable` what [`task_usable`]
/// computed, `constrained` whether the task's devices are constrained (`None`: unknown).
///
/// # Errors
/// A per-task list that fits none of the readings.
pub fn task_gpus(
    task: &[usize],
    step: &[usize],
    usable: Option<&[usize]>,
    constrained: Option<bool>,
    bind_text: &str,
) -> Result<Vec<usize>, ResolveError> {
    let mut task_sorted: Vec<usize> = task.to_vec();
    task_sorted.sort_unstable();
    let in_step = task.iter().all(|i| step.contains(i));
    let fail = || ResolveError::TaskBinding {
        task: task.to_vec(),
        step: step.to_vec(),
        bind: bind_text.to_owned(),
    };
    let local =
        |u: &[usize]| -> Option<Vec<usize>> { task.iter().map(|&i| u.get(i).copied()).collect() };
    match (constrained, usable) {
        // Global numbering: Slurm's own answer is the truth.
        (Some(false), _) if in_step => Ok(task_sorted),
        (Some(false), _) => Err(fail()),
        (Some(true), Some(u)) => local(u).ok_or_else(fail),
        // Constrained but no binding we can model: positions within the step's set.
        (Some(true), None) => local(step).ok_or_else(fail),
        (None, Some(u)) => {
            if task_sorted == u {
                Ok(task_sorted)
            } else if let Some(v) = local(u) {
                Ok(v)
            } else if in_step {
                Ok(task_sorted)
            } else {
                Err(fail())
            }
        }
        (None, None) if in_step => Ok(task_sorted),
        (None, None) => Err(fail()),
    }
}

/// A task's own list within its step, from what slurmstepd gave the task: the binding
/// (`SLURMD_TRES_BIND`), the per-task `SLURM_STEP_GPUS` and the task's node-local id. The
/// step's list when no binding applies.
///
/// # Errors
/// A malformed `SLURM_STEP_GPUS`, or a per-task list that fits neither reading.
pub fn task_list(
    step: &[usize],
    node_gpus: usize,
    bind_text: &str,
    task_value: &str,
    local_id: u32,
    constrained: Option<bool>,
) -> Result<Vec<usize>, ResolveError> {
    let bind = GpuBind::parse(bind_text);
    if bind.is_none() || step.is_empty() {
        return Ok(step.to_vec());
    }
    let task = parse_list("SLURM_STEP_GPUS", task_value)?;
    let usable = task_usable(&bind, step, node_gpus, local_id);
    task_gpus(&task, step, usable.as_deref(), constrained, bind_text)
}

/// What a step or a task gets from its list, decided once: the variables it is given and the
/// ids its allocation record holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chosen {
    pub env: GpuEnv,
    /// [`NodeGpu::physical_id`] of each GPU, in the list's order.
    pub ids: Vec<String>,
}

/// [`select`] then [`gpu_env`], with the record's ids.
///
/// # Errors
/// An index the node does not have.
pub fn choose(table: &[NodeGpu], list: &[usize], node: &str) -> Result<Chosen, ResolveError> {
    let gpus = select(table, list, node)?;
    Ok(Chosen {
        env: gpu_env(&gpus),
        ids: gpus.iter().map(|g| g.physical_id()).collect(),
    })
}

/// What shapes a step's variables besides its GPUs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepKind<'a> {
    /// `srun --container`: the container's own numbering and PCI order.
    pub container: bool,
    /// The user's `--gres-oci-caps`.
    pub caps: Option<&'a str>,
    /// Slurm's gres/mps share, in percent.
    pub mps: Option<u32>,
}

/// The variables of a step or task, as (name, value) pairs in the order they are set.
pub fn step_vars(env: &GpuEnv, kind: &StepKind) -> Vec<(String, String)> {
    let mut out = vec![
        (
            crate::request::GPUS_VAR.to_owned(),
            env.gres_oci_gpus.clone(),
        ),
        (
            "NVIDIA_VISIBLE_DEVICES".to_owned(),
            env.nvidia_visible_devices.clone(),
        ),
    ];
    if kind.container {
        if let Some(cvd) = &env.container_cvd {
            out.push(("CUDA_VISIBLE_DEVICES".to_owned(), cvd.clone()));
        }
        out.push(("CUDA_DEVICE_ORDER".to_owned(), "PCI_BUS_ID".to_owned()));
    }
    if let Some(caps) = kind.caps {
        out.push(("NVIDIA_DRIVER_CAPABILITIES".to_owned(), caps.to_owned()));
    }
    // Slurm 22.05 writes the container's config before the step's gres/mps variable exists.
    if let (true, Some(p)) = (kind.container, kind.mps) {
        out.push((
            "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE".to_owned(),
            p.to_string(),
        ));
    }
    out
}

/// Slurm's special step ids, as `slurm.h` numbers them.
pub const BATCH_STEP: u32 = 0xFFFF_FFFB;
pub const EXTERN_STEP: u32 = 0xFFFF_FFFC;
pub const INTERACTIVE_STEP: u32 = 0xFFFF_FFFA;
/// Ids above this are special steps.
pub const SPECIAL_STEPS: u32 = 0xFFFF_FFF0;

/// How slurmstepd names a step in its process title (`slurmstepd: [145.batch]`), and so in
/// the allocation records.
pub fn step_name(step_id: u32) -> String {
    match step_id {
        BATCH_STEP => "batch".into(),
        EXTERN_STEP => "extern".into(),
        INTERACTIVE_STEP => "interactive".into(),
        n => n.to_string(),
    }
}

/// Whether `/proc/self/cgroup` puts the process in a Slurm job's v1 devices cgroup (Slurm's
/// ConstrainDevices); `None` without a v1 devices hierarchy.
pub fn devices_constrained_in(proc_self_cgroup: &str) -> Option<bool> {
    crate::proc_cgroup::v1_path(proc_self_cgroup, "devices")
        .map(|path| path.split('/').any(|seg| seg.starts_with("job_")))
}

#[cfg(test)]
mod tests {
    #[test]
    fn nic_numbers_to_files() {
        let nics: Vec<(usize, PathBuf)> = vec![
            (2, "/dev/infiniband/uverbs2".into()),
            (3, "/dev/infiniband/uverbs3".into()),
        ];
        assert_eq!(
            step_nic_files("SLURM_STEP_NICS", "mlx4_3", &nics, "n").unwrap(),
            [PathBuf::from("/dev/infiniband/uverbs3")]
        );
        assert_eq!(
            step_nic_files("SLURM_STEP_NICS", "mlx4_3,mlx4_2", &nics, "n").unwrap(),
            [
                PathBuf::from("/dev/infiniband/uverbs2"),
                PathBuf::from("/dev/infiniband/uverbs3")
            ]
        );
        assert!(step_nic_files("SLURM_STEP_NICS", "", &nics, "n")
            .unwrap()
            .is_empty());
        let e = step_nic_files("SLURM_STEP_NICS", "mlx4_2,mlx4_0", &nics, "n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("NIC 0 is not among node \"n\"'s"), "{e}");
        for bad in ["mlx5_0", "mlx4_", "mlx4_-1", "mlx4_+2", "2-3"] {
            assert!(
                step_nic_files("SLURM_STEP_NICS", bad, &nics, "n").is_err(),
                "{bad}"
            );
        }
    }

    use super::*;
    use crate::gres::GresConf;
    use crate::inventory::Source;
    use proptest::prelude::*;
    use std::path::Path;

    /// A GPU as procfs's `information` file describes it.
    fn gpu(minor: u32, bus: &str, uuid_tail: u32) -> Gpu {
        let text = format!(
            "Model:           NVIDIA H100 80GB HBM3\nGPU UUID:        \
             GPU-00000000-0000-0000-0000-0000000000{uuid_tail:02x}\nBus Location:    {bus}\n\
             Device Minor:    {minor}\n"
        );
        crate::inventory::parse_information(&text).unwrap()
    }

    /// fake-node.sh's default node: minors not in PCI order.
    fn inventory() -> Inventory {
        let mut gpus = vec![
            gpu(2, "00000000:1b:00.0", 0x70),
            gpu(0, "00000000:3d:00.0", 0x71),
            gpu(3, "00000000:5e:00.0", 0x72),
            gpu(1, "00000000:86:00.0", 0x73),
        ];
        for (i, g) in gpus.iter_mut().enumerate() {
            g.index = i as u32;
        }
        Inventory {
            source: Source::Procfs,
            driver_version: "550.54.15".into(),
            cuda_version: None,
            gpus,
        }
    }

    fn minor_from_name(p: &Path) -> Result<u32, ResolveError> {
        let name = p.file_name().unwrap().to_str().unwrap();
        name.strip_prefix("nvidia-cap")
            .or_else(|| name.strip_prefix("nvidia"))
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| ResolveError::Device {
                path: p.to_owned(),
                reason: "not a GPU".into(),
            })
    }

    fn table(conf: &str, node: &str) -> Vec<NodeGpu> {
        let c = GresConf::parse(conf, Path::new("/etc/slurm/gres.conf")).unwrap();
        let auto = c.autodetect_for_node(node).is_some_and(|a| a.is_on());
        let devs = c.gpus_for_node(node).unwrap();
        node_table(&devs, minor_from_name, Some(&inventory()), auto).unwrap()
    }

    fn minors(gpus: &[&NodeGpu]) -> Vec<u32> {
        gpus.iter().map(|g| g.minor).collect()
    }

    #[test]
    fn indices_are_positions_in_file_order() {
        let t = table(
            "Name=gpu File=/dev/nvidia[3,1],/dev/nvidia0\nName=gpu File=/dev/nvidia2\n",
            "n1",
        );
        let s = select(&t, &[0, 1, 2, 3], "n1").unwrap();
        assert_eq!(minors(&s), vec![3, 1, 0, 2]);
        let s = select(&t, &[3, 1], "n1").unwrap();
        // Ascending index order, whatever order the list had.
        assert_eq!(minors(&s), vec![1, 2]);
        assert_eq!(
            s[0].uuid.as_deref(),
            Some("GPU-00000000-0000-0000-0000-000000000073")
        );
        assert_eq!(s[0].pci_bus_id.as_deref(), Some("00000000:86:00.0"));
    }

    #[test]
    fn node_filters_apply() {
        let conf = "NodeName=a[1-2] Name=gpu File=/dev/nvidia[0-1]\nNodeName=b1 Name=gpu File=/dev/nvidia[2-3]\nName=gpu Type=x File=/dev/nvidia1\n";
        // nvidia1 twice for a1 (its own line and the all-nodes line): refused, since two
        // indices on one device would let two jobs share it.
        let c = GresConf::parse(conf, Path::new("/g")).unwrap();
        let e = c.gpus_for_node("a1").unwrap_err().to_string();
        assert!(e.contains("twice"), "{e}");
        let conf = "NodeName=a[1-2] Name=gpu File=/dev/nvidia[0-1]\nNodeName=b1 Name=gpu File=/dev/nvidia[2-3]\n";
        assert_eq!(
            minors(&select(&table(conf, "b1"), &[0, 1], "b1").unwrap()),
            vec![2, 3]
        );
        assert_eq!(
            minors(&select(&table(conf, "a2"), &[1], "a2").unwrap()),
            vec![1]
        );
        let e = select(&table(conf, "a2"), &[2], "a2")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("index 2") && e.contains("\"a2\"") && e.contains("2 GPU"),
            "{e}"
        );
    }

    #[test]
    fn autodetect_sorts_by_pci_bus() {
        let t = table("AutoDetect=nvml\nName=gpu File=/dev/nvidia[0-3]\n", "n");
        // PCI order of the fake node is minors 2, 0, 3, 1.
        assert_eq!(
            minors(&select(&t, &[0, 1, 2, 3], "n").unwrap()),
            vec![2, 0, 3, 1]
        );
        let t = table_from_inventory(&inventory(), Path::new("/dev"));
        assert_eq!(t[1].file, PathBuf::from("/dev/nvidia0"));
        assert_eq!(
            t.iter().map(|g| g.minor).collect::<Vec<_>>(),
            vec![2, 0, 3, 1]
        );
    }

    #[test]
    fn env_for_a_shuffled_selection() {
        // gres.conf not in PCI order: index 0 = nvidia1 (86:00), 1 = nvidia2 (1b:00),
        // 2 = nvidia0 (3d:00).
        let t = table("Name=gpu File=/dev/nvidia[1,2,0,3]\n", "n");
        let s = select(&t, &[0, 1, 2], "n").unwrap();
        let e = gpu_env(&s);
        assert_eq!(
            e.gres_oci_gpus,
            "GPU-00000000-0000-0000-0000-000000000073,GPU-00000000-0000-0000-0000-000000000070,GPU-00000000-0000-0000-0000-000000000071"
        );
        assert_eq!(e.nvidia_visible_devices, e.gres_oci_gpus);
        // Outer ordinal 0 is 86:00, the last by bus id among the three: rank 2.
        assert_eq!(e.container_cvd.as_deref(), Some("2,0,1"));
        let none = gpu_env(&[]);
        assert_eq!(none.gres_oci_gpus, "");
        assert_eq!(none.nvidia_visible_devices, "void");
        assert_eq!(none.container_cvd, None);
    }

    #[test]
    fn mig_devices_as_autodetect_writes_them() {
        // Two slices of nvidia0 and the whole nvidia1, the way Slurm's AutoDetect lists MIG
        // devices: the parent node, then the GPU and compute instance capability nodes.
        let conf = "Name=gpu Type=1g.10gb UniqueId=MIG-5c89e3b2-0a1f-5d6e-8b7c-9d0e1f2a3b4c \
                    MultipleFiles=/dev/nvidia0,/dev/nvidia-caps/nvidia-cap22,/dev/nvidia-caps/nvidia-cap21\n\
                    Name=gpu Type=1g.10gb MultipleFiles=/dev/nvidia0,/dev/nvidia-caps/nvidia-cap30,/dev/nvidia-caps/nvidia-cap31\n\
                    Name=gpu Type=h100 File=/dev/nvidia1\n";
        let t = table(conf, "n");
        assert_eq!(t[0].caps, vec![21, 22]);
        assert_eq!(t[1].caps, vec![30, 31]);
        assert!(t[2].caps.is_empty());
        let s = select(&t, &[1, 0], "n").unwrap();
        let e = gpu_env(&s);
        assert_eq!(e.gres_oci_gpus, "mig:0/21/22,mig:0/30/31");
        // NVIDIA's hook needs the slice's own UUID; the second has none, so it gets nothing.
        assert_eq!(e.nvidia_visible_devices, "void");
        assert_eq!(e.container_cvd.as_deref(), Some("0,1"));
        let one = gpu_env(&select(&t, &[0], "n").unwrap());
        assert_eq!(
            one.nvidia_visible_devices,
            "MIG-5c89e3b2-0a1f-5d6e-8b7c-9d0e1f2a3b4c"
        );
        // A slice and a whole GPU: the whole one is named as before.
        let mixed = gpu_env(&select(&t, &[1, 2], "n").unwrap());
        assert_eq!(
            mixed.gres_oci_gpus,
            "mig:0/30/31,GPU-00000000-0000-0000-0000-000000000073"
        );
    }

    #[test]
    fn mps_shares() {
        assert_eq!(mps_percentage(None).unwrap(), None);
        assert_eq!(mps_percentage(Some("")).unwrap(), None);
        assert_eq!(mps_percentage(Some("50")).unwrap(), Some(50));
        assert_eq!(mps_percentage(Some("0")).unwrap(), Some(0));
        for bad in ["101", "-1", "5x", "€", "1e2"] {
            let e = mps_percentage(Some(bad)).unwrap_err().to_string();
            assert!(
                e.contains("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn env_without_procfs() {
        let c = GresConf::parse("Name=gpu File=/dev/nvidia[3,1]\n", Path::new("/g")).unwrap();
        let t = node_table(&c.gpus_for_node("n").unwrap(), minor_from_name, None, false).unwrap();
        let s = select(&t, &[0, 1], "n").unwrap();
        let e = gpu_env(&s);
        assert_eq!(e.gres_oci_gpus, "minor:3,minor:1");
        assert_eq!(e.nvidia_visible_devices, "void");
        assert_eq!(e.container_cvd.as_deref(), Some("1,0"));
    }

    #[test]
    fn minor_errors_name_the_file() {
        let c = GresConf::parse("Name=gpu File=/dev/sda\n", Path::new("/g")).unwrap();
        let e = node_table(&c.gpus_for_node("n").unwrap(), minor_from_name, None, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("/dev/sda"), "{e}");
    }

    #[test]
    fn bad_lists_name_the_variable() {
        let e = parse_list("SLURM_STEP_GPUS", "0,x")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("SLURM_STEP_GPUS=\"0,x\""), "{e}");
        assert_eq!(
            parse_list("SLURM_STEP_GPUS", "0-2,5").unwrap(),
            vec![0, 1, 2, 5]
        );
    }

    #[test]
    fn tres_bind_parsing() {
        for (s, want) in [
            ("gpu:per_task:1", GpuBind::PerTask(1)),
            (
                "gpu:single:2",
                GpuBind::Closest {
                    tasks_per_gres: Some(2),
                },
            ),
            (
                "gpu:single:x",
                GpuBind::Closest {
                    tasks_per_gres: Some(1),
                },
            ),
            (
                "gpu:closest",
                GpuBind::Closest {
                    tasks_per_gres: None,
                },
            ),
            ("gpu:verbose,map_gpu:3,1", GpuBind::Map("3,1".into())),
            ("gpu:mask_gpu:0x3,0xc", GpuBind::Mask("0x3,0xc".into())),
            ("gpu:none", GpuBind::None),
            ("", GpuBind::None),
        ] {
            assert_eq!(GpuBind::parse(s), want, "{s}");
        }
        assert!(GpuBind::parse("gpu:per_task:0").is_none());
        // A multi-byte character where a fixed-width prefix is compared is no binding.
        for s in [
            "gpu:abcdefg€",
            "gpu:verbose€,map_gpu:1",
            "gpu:€€€",
            "gpu:single€",
        ] {
            assert_eq!(GpuBind::parse(s), GpuBind::None, "{s}");
        }
        assert_eq!(
            GpuBind::parse("gpu:map_gpu:1,€"),
            GpuBind::Map("1,€".into())
        );
    }

    /// Text from the job's environment, with multi-byte characters and (as a lossy conversion
    /// of the raw bytes gives them) replacement characters.
    fn env_text() -> impl Strategy<Value = String> {
        prop_oneof![
            "(gpu:|verbose,|map_gpu:|mask_gpu:|single:|per_task:|closest|[0-9x,*;:-]|€|ü|𐍈|\u{fffd}){0,12}",
            proptest::collection::vec(any::<u8>(), 0..40)
                .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
            ".{0,40}",
        ]
    }

    proptest! {
        /// Whatever `SLURMD_TRES_BIND` and the GPU lists hold: a value or an error, never a
        /// panic inside slurmstepd.
        #[test]
        fn job_env_parsers_never_panic(bind in env_text(), list in env_text(), id in 0u32..8) {
            let b = GpuBind::parse(&bind);
            let _ = task_usable(&b, &[0, 1, 2, 3], 4, id);
            let _ = parse_list("SLURM_STEP_GPUS", &list);
        }
    }

    #[test]
    fn usable_sets_follow_slurm() {
        let all = [0, 1, 2, 3];
        let u = |b: &str, step: &[usize], id| task_usable(&GpuBind::parse(b), step, 4, id);
        assert_eq!(u("gpu:map_gpu:3,1", &all, 0), Some(vec![3]));
        assert_eq!(u("gpu:map_gpu:3,1", &all, 1), Some(vec![1]));
        // The list repeats.
        assert_eq!(u("gpu:map_gpu:3,1", &all, 2), Some(vec![3]));
        assert_eq!(u("gpu:map_gpu:2*2,0", &all, 1), Some(vec![2]));
        assert_eq!(u("gpu:map_gpu:2*2,0", &all, 2), Some(vec![0]));
        // Outside the allocation: first allocated GPU.
        assert_eq!(u("gpu:map_gpu:0", &[2, 3], 0), Some(vec![2]));
        assert_eq!(u("gpu:mask_gpu:0x3,0xc", &all, 1), Some(vec![2, 3]));
        assert_eq!(u("gpu:per_task:1", &[2, 3], 1), Some(vec![3]));
        assert_eq!(u("gpu:per_task:2", &all, 1), Some(vec![2, 3]));
        assert_eq!(u("gpu:single:1", &[0, 1], 1), Some(vec![1]));
        assert_eq!(u("gpu:single:2", &[0, 1], 1), Some(vec![0]));
        assert_eq!(u("gpu:closest", &[0, 1], 1), Some(vec![0, 1]));
        assert_eq!(u("", &all, 0), None);
    }

    #[test]
    fn task_resolution() {
        // Global numbering (no ConstrainDevices): Slurm's per-task value stands.
        assert_eq!(
            task_gpus(&[3], &[0, 1, 2, 3], Some(&[3]), Some(false), "b").unwrap(),
            vec![3]
        );
        // ConstrainDevices: both tasks see "0"; the binding says which GPU it is.
        assert_eq!(
            task_gpus(&[0], &[0, 1, 2, 3], Some(&[3]), Some(true), "b").unwrap(),
            vec![3]
        );
        assert_eq!(
            task_gpus(&[0], &[2, 3], Some(&[3]), Some(true), "b").unwrap(),
            vec![3]
        );
        // Unknown mode: a value equal to the computed set, or positions within it.
        assert_eq!(
            task_gpus(&[1], &[0, 1], Some(&[1]), None, "b").unwrap(),
            vec![1]
        );
        assert_eq!(
            task_gpus(&[0], &[0, 1], Some(&[1]), None, "b").unwrap(),
            vec![1]
        );
        assert!(task_gpus(&[7], &[0, 1], Some(&[1]), None, "b").is_err());
        assert!(task_gpus(&[5], &[0, 1], None, Some(false), "b").is_err());
    }
    #[test]
    fn step_names_match_slurmstepd_titles() {
        assert_eq!(step_name(0), "0");
        assert_eq!(step_name(12), "12");
        assert_eq!(step_name(BATCH_STEP), "batch");
        assert_eq!(step_name(EXTERN_STEP), "extern");
        assert_eq!(step_name(INTERACTIVE_STEP), "interactive");
    }

    #[test]
    fn step_vars_by_kind() {
        let env = GpuEnv {
            gres_oci_gpus: "GPU-a,GPU-b".into(),
            nvidia_visible_devices: "GPU-a,GPU-b".into(),
            container_cvd: Some("1,0".into()),
        };
        let mut step = StepKind {
            container: false,
            caps: None,
            mps: Some(25),
        };
        let names = |s: &StepKind| -> Vec<String> {
            step_vars(&env, s).into_iter().map(|(k, _)| k).collect()
        };
        assert_eq!(
            names(&step),
            vec!["GRES_OCI_GPUS", "NVIDIA_VISIBLE_DEVICES"]
        );
        step.container = true;
        step.caps = Some("compute");
        assert_eq!(
            step_vars(&env, &step),
            vec![
                ("GRES_OCI_GPUS".to_owned(), "GPU-a,GPU-b".to_owned()),
                (
                    "NVIDIA_VISIBLE_DEVICES".to_owned(),
                    "GPU-a,GPU-b".to_owned()
                ),
                ("CUDA_VISIBLE_DEVICES".to_owned(), "1,0".to_owned()),
                ("CUDA_DEVICE_ORDER".to_owned(), "PCI_BUS_ID".to_owned()),
                (
                    "NVIDIA_DRIVER_CAPABILITIES".to_owned(),
                    "compute".to_owned()
                ),
                (
                    "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE".to_owned(),
                    "25".to_owned()
                ),
            ]
        );
    }

    #[test]
    fn constrained_devices_from_proc_self_cgroup() {
        let v1 = "5:devices:/slurm_n1/uid_0/job_7/step_0/task_1\n4:memory:/\n";
        assert_eq!(devices_constrained_in(v1), Some(true));
        assert_eq!(devices_constrained_in("5:devices:/\n0::/\n"), Some(false));
        assert_eq!(
            devices_constrained_in("3:cpu,devices:/user.slice\n"),
            Some(false)
        );
        // cgroup v2 only: no devices controller line to tell.
        assert_eq!(
            devices_constrained_in("0::/system.slice/slurmstepd.scope/job_7\n"),
            None
        );
    }

    #[test]
    fn task_list_and_choice() {
        let t = table("Name=gpu File=/dev/nvidia[0-3]\n", "n");
        // No binding: the step's list.
        assert_eq!(task_list(&[0, 1], 4, "", "", 1, None).unwrap(), [0, 1]);
        // map_gpu without ConstrainDevices: Slurm hands the task its global index.
        assert_eq!(
            task_list(&[0, 1], 4, "gpu:map_gpu:0,1", "1", 1, Some(false)).unwrap(),
            [1]
        );
        assert!(task_list(&[0, 1], 4, "gpu:map_gpu:0,1", "x", 1, None).is_err());
        let c = choose(&t, &[1], "n").unwrap();
        assert_eq!(c.ids, [t[1].physical_id()]);
        assert_eq!(c.env, gpu_env(&[&t[1]]));
    }
}
