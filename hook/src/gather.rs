//! Gathers the plan's inputs from the host and the bundle: the request from config.json, the
//! GPU inventory (procfs first, NVML only when needed), the driver files and device nodes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use gres_oci::allocation::{
    allowed_gpus, identify, narrow, needs_mig_listing, task_gpus_from_environ, Grant, StepRef,
};
use gres_oci::config::{Config, CudaCompatMode};
use gres_oci::cudacompat::{self, CompatLibs};
use gres_oci::driver::{resolve_in, DriverRoot};
use gres_oci::fabric::Fabric;
use gres_oci::inventory::{
    read_mig_minors, read_nvml, read_procfs, scan_dev_root, Inventory, InventoryError,
};
use gres_oci::ldcache::{native_arch, LdCache};
use gres_oci::nvidia_env::Capability;
use gres_oci::plan::{plan, Allocation, HostDevices, Inputs, Layout, Plan};
use gres_oci::proc_mask::{HostFile, HostProcDriver};
use gres_oci::request::{choose_inventory, env_map, PhysicalId, Request};
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

/// The inventory for `request` (see [`choose_inventory`]): procfs when it can answer, else
/// NVML, loaded only then. `mig_grant`: the container's Slurm step holds MIG devices.
///
/// # Errors
/// Neither source works, or NVML does not where only NVML can answer.
pub fn inventory(
    config: &Config,
    cache: &LdCache,
    request: Option<&Request>,
    mig_grant: bool,
) -> Result<Inventory> {
    let nvml = || match nvml_library(config, cache) {
        Some(l) => read_nvml(&l),
        None => Err(InventoryError::NoNvmlLibrary {
            cache: config.driver_root.join("etc/ld.so.cache"),
        }),
    };
    Ok(choose_inventory(
        read_procfs(&config.proc_root),
        request,
        mig_grant,
        nvml,
    )?)
}

/// What the node has, for a plan or a CDI spec: the driver root's linker cache, the GPU
/// inventory, the dev root's nodes and, where a GPU has MIG devices, the driver's
/// `mig-minors`.
pub struct NodeFacts {
    pub cache: LdCache,
    pub inv: Inventory,
    pub devices: HostDevices,
    pub mig_minors: BTreeMap<String, u32>,
}

/// Gathers [`NodeFacts`]; `request` and `mig_grant` as for [`inventory`].
///
/// # Errors
/// A source that cannot be read.
pub fn node_facts(
    config: &Config,
    request: Option<&Request>,
    mig_grant: bool,
) -> Result<NodeFacts> {
    let cache = driver_cache(config)?;
    let inv = inventory(config, &cache, request, mig_grant)?;
    let devices = scan_dev_root(&config.dev_root)?;
    let mig_minors = if inv.gpus.iter().any(|g| !g.migs.is_empty()) {
        read_mig_minors(&config.proc_root)?
    } else {
        Default::default()
    };
    Ok(NodeFacts {
        cache,
        inv,
        devices,
        mig_minors,
    })
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

/// The image's CUDA forward-compat libraries (`/usr/local/cuda/compat`), when NVIDIA's rule
/// says to put them first for a host driver `host_driver`. Read inside the rootfs without
/// following links out of it or onto other mounts; only a regular file is opened for reading
/// (checked through an `O_PATH` descriptor first), and only its ELF headers and note are read.
/// Anything odd: not used.
pub fn cuda_compat(rootfs: &Path, host_driver: &str) -> Option<CompatLibs> {
    let how = ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS | ResolveFlags::NO_XDEV;
    let root = rustix::fs::open(
        rootfs,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    let rel = cudacompat::COMPAT_DIR.trim_start_matches('/');
    let dir = rustix::fs::openat2(
        &root,
        rel,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        how,
    )
    .ok()?;
    let mut names = Vec::new();
    for e in rustix::fs::Dir::read_from(&dir).ok()?.flatten().take(4096) {
        if let Ok(n) = e.file_name().to_str() {
            names.push(n.to_owned());
        }
    }
    let libcudas: Vec<&String> = names
        .iter()
        .filter(|n| cudacompat::libcuda_version(n).is_some())
        .collect();
    let [lib] = libcudas[..] else {
        if libcudas.len() > 1 {
            tracing::warn!(found = ?libcudas, "several CUDA compat libcuda files; compat not used");
        }
        return None;
    };
    let version = cudacompat::libcuda_version(lib)?.to_owned();
    // O_PATH first: opening an image's device node or FIFO for reading could have effects on
    // the host (a watchdog, a tape) or block; only a regular file is then opened for reading.
    let path_fd = rustix::fs::openat2(
        &dir,
        lib.as_str(),
        OFlags::PATH | OFlags::CLOEXEC,
        Mode::empty(),
        how,
    )
    .ok()?;
    let st = rustix::fs::fstat(&path_fd).ok()?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
        return None;
    }
    let fd = rustix::fs::openat(
        rustix::fs::CWD,
        format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&path_fd)
        ),
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    let file = std::fs::File::from(fd);
    let note = gres_oci::elf::note_section(&file, cudacompat::NOTE_SECTION)
        .and_then(|s| cudacompat::parse_note(&s));
    if !cudacompat::use_compat(&version, note.as_ref(), host_driver) {
        tracing::debug!(compat = %version, host = %host_driver, note = note.is_some(), "CUDA compat libraries not used");
        return None;
    }
    let mut libraries: Vec<(String, PathBuf)> = names
        .iter()
        .filter(|n| cudacompat::is_soname(n))
        .map(|n| (n.clone(), Path::new(cudacompat::COMPAT_DIR).join(n)))
        .collect();
    libraries.sort();
    Some(CompatLibs { version, libraries })
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
        return Ok(Standing::Outside(
            config.outside_slurm.refusal(&config.state_dir, deployed),
        ));
    };
    let grant = allowed_gpus(&config.state_dir, proc, &step)?;
    let task_gpus = grant
        .task_pid
        .and_then(|p| std::fs::read(proc.join(p.to_string()).join("environ")).ok())
        .and_then(|environ| task_gpus_from_environ(&environ));
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
    let mig_grant = match &standing {
        Standing::InStep { grant, .. } => needs_mig_listing(&request, &grant.ids),
        _ => false,
    };
    let NodeFacts {
        cache,
        inv,
        devices,
        mig_minors,
    } = node_facts(config, Some(&request), mig_grant)?;
    let root = DriverRoot::new(config, &cache, &inv.driver_version);
    let mut driver = root.discover(&request.capabilities);
    if request.fabric.contains(&Fabric::Gds) {
        root.add_gds_files(&mut driver);
    }
    if let Standing::InStep { grant, .. } = &standing {
        if grant.mps {
            root.add_mps_log_dir(&request.capabilities, &mut driver);
        }
    }
    for m in &driver.missing {
        tracing::debug!(file = %m, "driver file not found");
    }
    let compat = match config.cuda_compat {
        CudaCompatMode::Ldconfig if request.capabilities.contains(Capability::Compute) => {
            cuda_compat(&bundle.rootfs, &inv.driver_version)
        }
        _ => None,
    };
    let imex_major = match &request.imex {
        Some(_) => gres_oci::imex::read_major(&config.proc_root)?,
        None => None,
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
                &mig_minors,
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
        imex_major,
        imex_allowed: match &standing {
            Standing::InStep { grant, .. } => Some(&grant.imex_channels),
            _ => None,
        },
        nics_allowed: match &standing {
            _ if !config.mofed_step_nics => None,
            Standing::InStep { grant, .. } => Some(&grant.nics),
            // Denied GPUs, denied adapters.
            Standing::Outside(Some(_)) => Some(&[]),
            Standing::NoContainer | Standing::Outside(None) => None,
        },
        cuda_compat: compat.as_ref(),
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
