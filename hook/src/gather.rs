//! Gathers the plan's inputs from the host and the bundle: the request from config.json, the
//! GPU inventory (procfs first, NVML only when needed), the driver files and device nodes.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use gres_oci::allocation::{allowed_gpus, identify, narrow, Grant, StepRef};
use gres_oci::config::{Config, OutsideSlurm};
use gres_oci::driver::{resolve_in, DriverRoot};
use gres_oci::inventory::{read_mig_minors, read_nvml, read_procfs, scan_dev_root, Inventory};
use gres_oci::ldcache::{native_arch, LdCache};
use gres_oci::plan::{plan, Allocation, Inputs, Layout, Plan};
use gres_oci::proc_mask::{HostFile, HostProcDriver};
use gres_oci::request::{env_map, PhysicalId, Request, GPUS_VAR};
use rustix::fs::{Mode, OFlags, ResolveFlags};

use crate::state::Bundle;

/// The driver root's linker cache.
///
/// # Errors
/// It cannot be read or parsed.
pub fn driver_cache(config: &Config) -> Result<LdCache> {
    let p = config.driver_root.join("etc/ld.so.cache");
    Ok(LdCache::read(&p)?)
}

/// The NVML library to load: the configured one, else `libnvidia-ml.so.1` from the driver
/// root's cache, resolved inside the driver root.
pub fn nvml_library(config: &Config, cache: &LdCache) -> Option<PathBuf> {
    if let Some(p) = &config.nvml_library {
        return Some(p.clone());
    }
    cache
        .lookup_prefix("libnvidia-ml.so.1", native_arch())
        .find_map(|e| resolve_in(&config.driver_root, Path::new(&e.value)))
}

/// The inventory for `request`: procfs when it can answer, else NVML.
///
/// # Errors
/// Neither source works.
pub fn inventory(config: &Config, cache: &LdCache, request: Option<&Request>) -> Result<Inventory> {
    let procfs = read_procfs(&config.proc_root);
    if let Ok(inv) = &procfs {
        if request.is_some_and(|r| r.procfs_suffices(inv)) {
            return Ok(inv.clone());
        }
    }
    let lib = nvml_library(config, cache);
    let nvml = match &lib {
        Some(l) => read_nvml(l).map_err(anyhow::Error::from),
        None => Err(anyhow::anyhow!(
            "libnvidia-ml.so.1 not found in {}",
            config.driver_root.join("etc/ld.so.cache").display()
        )),
    };
    // Requirements on cuda, arch or brand can only be judged with NVML's facts: judging them
    // on procfs would count the unknown values as satisfied and let the container through.
    let needs_nvml_facts =
        request.is_some_and(|r| r.requirements.iter().any(|q| q.needs_nvml_facts()));
    match (nvml, procfs) {
        (Ok(inv), _) => Ok(inv),
        (Err(e), Ok(_)) if needs_nvml_facts => {
            Err(e.context("the container's NVIDIA_REQUIRE_* conditions need NVML"))
        }
        // Without NVML, procfs still serves requests that need no NVML-only facts; the plan
        // then fails on what it lacks (an unknown UUID) with a precise message.
        (Err(e), Ok(inv)) => {
            tracing::debug!(error = %format!("{e:#}"), "NVML unavailable, using procfs");
            Ok(inv)
        }
        (Err(n), Err(p)) => Err(n.context(format!("no GPU inventory ({p})"))),
    }
}

/// Whether the image is laid out the Debian way, read inside the rootfs without following
/// links out of it.
fn layout(rootfs: &Path) -> Layout {
    let found = rustix::fs::open(
        rootfs,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .and_then(|root| {
        rustix::fs::openat2(
            &root,
            "etc/debian_version",
            OFlags::PATH | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
        )
    })
    .is_ok();
    if found {
        Layout::Debian
    } else {
        Layout::Other
    }
}

/// How the container stands to Slurm.
enum Standing {
    /// `plan --bundle`: no container, nothing to restrict.
    NoContainer,
    /// In no Slurm job; the string says why it gets nothing, or `None` when it may have
    /// what it asks for.
    Outside(Option<String>),
    /// In a Slurm step: what the records grant, and the task's narrowing inputs.
    InStep {
        step: StepRef,
        grant: Grant,
        task_gpus: Option<Vec<PhysicalId>>,
        devices_list: Option<String>,
    },
}

/// Where the container at `pid` stands: its job, step and task from its cgroups (or, where
/// Slurm keeps none, its root-owned slurmstepd ancestor), and what the plugin's records grant
/// there. A container in no job follows the node's `outside-slurm` policy.
///
/// # Errors
/// A container in a job that no live record vouches for, or contradicting cgroups.
fn standing(config: &Config, pid: Option<i32>) -> Result<Standing> {
    let Some(pid) = pid else {
        return Ok(Standing::NoContainer);
    };
    // The real /proc, not `proc-root`: the pid is a live process, and `proc-root` only relocates
    // the driver's files (tests point it at a fake tree).
    let proc = Path::new("/proc");
    let Some(step) = identify(proc, pid)? else {
        let deployed = config.state_dir.exists();
        let why = match config.outside_slurm {
            OutsideSlurm::Allow => None,
            OutsideSlurm::Auto if !deployed => None,
            OutsideSlurm::Auto => Some(format!(
                "this node runs gres-oci's Slurm plugin ({} exists)",
                config.state_dir.display()
            )),
            OutsideSlurm::Deny => Some("the node's policy (outside-slurm = \"deny\")".into()),
        };
        return Ok(Standing::Outside(why));
    };
    let grant = allowed_gpus(&config.state_dir, proc, &step)?;
    // The plugin's per-task list, as slurmstepd handed it to the task at exec. It only ever
    // narrows within the grant, so the user's ability to re-exec with other values gains
    // nothing.
    let task_gpus = grant
        .task_pid
        .and_then(|p| std::fs::read(proc.join(p.to_string()).join("environ")).ok())
        .and_then(|environ| {
            let prefix = format!("{GPUS_VAR}=");
            environ
                .split(|b| *b == 0)
                .find_map(|e| e.strip_prefix(prefix.as_bytes()).map(<[u8]>::to_vec))
        })
        .and_then(|v| String::from_utf8(v).ok())
        .and_then(|v| {
            v.split(',')
                .filter(|s| !s.is_empty())
                .map(PhysicalId::parse)
                .collect::<Result<Vec<_>, _>>()
                .ok()
        });
    let devices_list = step
        .devices_cgroup
        .as_deref()
        .map(read_devices_list)
        .transpose()
        .with_context(|| step.to_string())?;
    tracing::debug!(job = step.job, step = %step.step, task = ?step.task_id, granted = ?grant.ids, task_gpus = ?task_gpus, "container is in a Slurm step");
    Ok(Standing::InStep {
        step,
        grant,
        task_gpus,
        devices_list,
    })
}

/// Slurm's v1 `devices.list` of the task's (or step's) cgroup, found through this process's
/// mounts.
fn read_devices_list(rel: &str) -> Result<String> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .context("/proc/self/mountinfo: cannot read")?;
    match crate::cgroup::locate(&format!("0:devices:{rel}"), &mountinfo)? {
        crate::cgroup::DeviceCgroup::V1(dir) => {
            let list = dir.join("devices.list");
            std::fs::read_to_string(&list).with_context(|| {
                format!("{}: cannot read the task's device cgroup", list.display())
            })
        }
        crate::cgroup::DeviceCgroup::V2 => bail!("devices cgroup {rel} is not a v1 hierarchy"),
    }
}

/// The plan for one bundle; `None` for a container that asks for no GPU. `pid` is the
/// container's, when there is one.
///
/// # Errors
/// Any input that is missing or malformed, or a request the node cannot satisfy.
pub fn build_plan(
    config: &Config,
    bundle: &Bundle,
    container_id: &str,
    pid: Option<i32>,
) -> Result<Option<Plan>> {
    let env = env_map(&bundle.env).context("config.json")?;
    let Some(request) = Request::from_env(&env, config)? else {
        return Ok(None);
    };
    let standing = standing(config, pid)?;
    let cache = driver_cache(config)?;
    let inv = inventory(config, &cache, Some(&request))?;
    let driver =
        DriverRoot::new(config, &cache, &inv.driver_version).discover(&request.capabilities);
    for m in &driver.missing {
        tracing::debug!(file = %m, "driver file not found");
    }
    let devices = scan_dev_root(&config.dev_root)?;
    let mig_minors = if inv.gpus.iter().any(|g| !g.migs.is_empty()) {
        read_mig_minors(&config.proc_root)?
    } else {
        Default::default()
    };
    let proc_driver = if config.mask_proc_driver {
        read_proc_driver(&config.proc_root)?
    } else {
        None
    };
    let allowed: Vec<PhysicalId>;
    let (allocation, step) = match &standing {
        Standing::NoContainer | Standing::Outside(None) => (Allocation::Unrestricted, None),
        Standing::Outside(Some(why)) => (Allocation::Denied(why), None),
        Standing::InStep {
            step,
            grant,
            task_gpus,
            devices_list,
        } => {
            allowed = narrow(
                &grant.ids,
                task_gpus.as_deref(),
                devices_list.as_deref(),
                &inv,
                &devices,
            );
            (Allocation::Step(&allowed), Some(step))
        }
    };
    let p = plan(&Inputs {
        container_id,
        rootfs: &bundle.rootfs,
        layout: layout(&bundle.rootfs),
        request: &request,
        inventory: &inv,
        driver: &driver,
        devices: &devices,
        mig_minors: &mig_minors,
        allocation,
        config,
        proc_driver: proc_driver.as_ref(),
    })
    .map_err(|e| match step {
        Some(s) => anyhow::Error::from(e).context(s.to_string()),
        None => e.into(),
    })?;
    Ok(Some(p))
}

/// The host's `<proc-root>/driver/nvidia` as the masking needs it; `None` when the directory
/// does not exist (no driver loaded: nothing to mask).
///
/// # Errors
/// The directory exists but cannot be read.
pub fn read_proc_driver(proc_root: &Path) -> Result<Option<HostProcDriver>> {
    use std::os::unix::fs::PermissionsExt;
    let dir = proc_root.join("driver/nvidia");
    if !dir.is_dir() {
        return Ok(None);
    }
    let mut host = HostProcDriver {
        dir: dir.clone(),
        ..Default::default()
    };
    for name in gres_oci::proc_mask::COPIED {
        let p = dir.join(name);
        match std::fs::read(&p) {
            Ok(bytes) => {
                let mode = std::fs::metadata(&p)
                    .with_context(|| format!("{}: cannot stat", p.display()))?
                    .permissions()
                    .mode();
                host.files.insert(
                    name.to_owned(),
                    HostFile {
                        contents: String::from_utf8_lossy(&bytes).into_owned(),
                        mode,
                    },
                );
            }
            // NVIDIA skips a missing one with a warning.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::debug!(file = %p.display(), "not found; not shown in the container")
            }
            Err(e) => return Err(e).with_context(|| format!("{}: cannot read", p.display())),
        }
    }
    if let Ok(rd) = std::fs::read_dir(dir.join("gpus")) {
        for e in rd.flatten() {
            if let Some(n) = e.file_name().to_str() {
                host.gpu_dirs.insert(n.to_owned());
            }
        }
    }
    // capabilities/gpuN/mig/giG/access and …/giG/ciC/access: a few levels, never followed
    // through links.
    fn walk(base: &Path, rel: &Path, depth: u32, out: &mut std::collections::BTreeSet<PathBuf>) {
        let Ok(rd) = std::fs::read_dir(base.join(rel)) else {
            return;
        };
        for e in rd.flatten() {
            let r = rel.join(e.file_name());
            match e.file_type() {
                Ok(t) if t.is_dir() && depth < 6 => walk(base, &r, depth + 1, out),
                Ok(t) if t.is_file() => {
                    out.insert(r);
                }
                _ => {}
            }
        }
    }
    walk(
        &dir,
        Path::new("capabilities"),
        0,
        &mut host.capability_files,
    );
    Ok(Some(host))
}
