//! What the plugin reads of the node in slurmstepd: its name, gres.conf and the device files
//! it names, the driver's procfs, the step's IMEX channels and NICs. The decisions on what it
//! reads are the core's (`gres_oci::slurm_step`).

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use gres_oci::config::Config;
use gres_oci::gres::{GresConf, GresError};
use gres_oci::inventory::Inventory;
use gres_oci::plan::DevNum;
use gres_oci::slurm_step::{self as resolve, NodeGpu};
use slurm_spank::LogLevel;

use crate::{log, PluginError};

/// This node's name as slurmd knows it: slurmstepd's own `SLURMD_NODENAME`, else the short
/// host name (the job environment's copy is empty under srun and wrong on other nodes of a
/// batch job).
pub fn node_name() -> String {
    if let Ok(n) = std::env::var("SLURMD_NODENAME") {
        if !n.is_empty() {
            return n;
        }
    }
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its whole length; gethostname NUL-terminates on success
    // when the name fits, and the last byte stays 0 regardless.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len() - 1) };
    if rc != 0 {
        return String::new();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let full = String::from_utf8_lossy(&buf[..end]).into_owned();
    full.split('.').next().unwrap_or("").to_owned()
}

/// The minor of a GPU device file named in gres.conf, from the file itself.
pub fn device_minor(path: &Path) -> Result<u32, resolve::ResolveError> {
    device_rdev(path).map(|d| libc::minor(d))
}

/// A character device file's number; anything else is an error naming it.
pub fn device_rdev(path: &Path) -> Result<u64, resolve::ResolveError> {
    let m = std::fs::metadata(path).map_err(|e| resolve::ResolveError::Device {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    if !m.file_type().is_char_device() {
        return Err(resolve::ResolveError::Device {
            path: path.to_owned(),
            reason: "not a character device".into(),
        });
    }
    Ok(m.rdev())
}

/// The node's GPU table from gres.conf (`conf`, read from `config.gres_conf`), the device
/// files and procfs.
pub fn node_gpus(
    config: &Config,
    conf: &GresConf,
    node: &str,
) -> Result<Vec<NodeGpu>, PluginError> {
    for skipped in conf.skipped_for_node(node) {
        log(
            LogLevel::Info,
            &format!("ignoring another node's malformed gres.conf line: {skipped}"),
        );
    }
    let inventory = gres_oci::inventory::read_procfs(&config.proc_root);
    let autodetect = conf.autodetect_for_node(node).is_some_and(|a| a.is_on());
    match conf.gpus_for_node(node) {
        Ok(devices) => {
            let inv: Option<&Inventory> = inventory.as_ref().ok();
            if let Err(e) = &inventory {
                if !devices.is_empty() {
                    log(
                        LogLevel::Verbose,
                        &format!(
                            "no procfs inventory ({}); naming GPUs by minor",
                            gres_oci::error_chain(e)
                        ),
                    );
                }
            }
            Ok(resolve::node_table(
                &devices,
                device_minor,
                inv,
                autodetect,
            )?)
        }
        Err(e) if matches!(e.kind(), GresError::AutoDetectWithoutFiles { .. }) => {
            // Slurm took the list from NVML, i.e. PCI bus order, which procfs also gives.
            let inv = inventory.map_err(|source| PluginError::Inventory {
                what: format!(
                    "gres.conf {} relies on AutoDetect for node {node:?}, which needs the driver's procfs",
                    config.gres_conf.display()
                ),
                source,
            })?;
            // Slurm's list then holds the MIG devices, which procfs cannot number: refuse
            // rather than hand out a whole parent GPU for one slice's index.
            if let Some(g) = inv
                .gpus
                .iter()
                .find(|g| gres_oci::inventory::has_mig_instances(&config.proc_root, g.minor))
            {
                return Err(PluginError::MigWithoutFiles {
                    conf: config.gres_conf.clone(),
                    node: node.to_owned(),
                    minor: g.minor,
                });
            }
            Ok(resolve::table_from_inventory(&inv, &config.dev_root))
        }
        Err(e) => Err(e.into()),
    }
}

/// Whether this process's devices are constrained by Slurm (cgroup v1 devices controller
/// under a `job_N` cgroup). `None` when there is no v1 devices controller to tell.
pub fn devices_constrained() -> Option<bool> {
    resolve::devices_constrained_in(&std::fs::read_to_string("/proc/self/cgroup").ok()?)
}

/// The IMEX channels this step's processes can open: the channel nodes in slurmstepd's own
/// view of `dev-root` (switch/nvidia_imex mounts a private tmpfs there holding the job's
/// channel), on the major the driver registered. None where the driver has no IMEX.
pub fn step_imex_channels(config: &Config) -> Vec<u32> {
    match gres_oci::imex::read_major(&config.proc_root) {
        Ok(Some(major)) => gres_oci::inventory::scan_dev_root(&config.dev_root)
            .map(|d| gres_oci::imex::channels_on_node(&d, major))
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}

/// The step's gres/nic adapters as device numbers: Slurm's list (`var`, `value`, not empty)
/// through this node's `Name=nic` files in gres.conf, each file stat'ed.
pub fn step_nics(
    conf: &GresConf,
    node: &str,
    var: &'static str,
    value: &str,
) -> Result<Vec<DevNum>, PluginError> {
    let table = conf.nics_for_node(node)?;
    resolve::step_nic_files(var, value, &table, node)?
        .iter()
        .map(|f| {
            let rdev = device_rdev(f)?;
            Ok(DevNum {
                major: libc::major(rdev),
                minor: libc::minor(rdev),
            })
        })
        .collect()
}
