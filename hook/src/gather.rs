//! Gathers the plan's inputs from the host and the bundle: the request from config.json, the
//! GPU inventory (procfs first, NVML only when needed), the driver files and device nodes.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use gres_oci::allocation::{allowed_gpus, find_step, StepRef};
use gres_oci::config::{Config, OutsideSlurm};
use gres_oci::driver::{resolve_in, DriverRoot};
use gres_oci::inventory::{read_mig_minors, read_nvml, read_procfs, scan_dev_root, Inventory};
use gres_oci::ldcache::{native_arch, LdCache};
use gres_oci::plan::{plan, Allocation, Inputs, Layout, Plan};
use gres_oci::request::{env_map, PhysicalId, Request};
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

/// What the container at `pid` may have: its Slurm step's recorded GPUs when a root-owned
/// slurmstepd is among its ancestors, else the node's `outside-slurm` policy. Without a pid
/// (`plan --bundle`) nothing is restricted. `Ok(None)` for the allowed list means the node
/// has no state dir at all: the plugin is not deployed there, so the hook cannot know the
/// allocation and leaves it to Slurm's device cgroup (ConstrainDevices).
fn allocation(
    config: &Config,
    pid: Option<i32>,
) -> Result<(Option<StepRef>, Option<Vec<PhysicalId>>)> {
    // The real /proc, not `proc-root`: the pid is a live process, and `proc-root` only relocates
    // the driver's files (tests point it at a fake tree).
    let Some(step) = pid.and_then(|p| find_step(Path::new("/proc"), p)) else {
        return Ok((None, None));
    };
    if !config.state_dir.exists() {
        tracing::warn!(dir = %config.state_dir.display(), "no gres-oci state dir: Slurm allocation not enforced by the hook");
        return Ok((Some(step), None));
    }
    let ids = allowed_gpus(&config.state_dir, &step)?;
    Ok((Some(step), Some(ids)))
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
    let (step, allowed) = allocation(config, pid)?;
    let allocation = match (&step, config.outside_slurm) {
        (Some(_), _) => allowed
            .as_deref()
            .map_or(Allocation::Unrestricted, Allocation::Step),
        (None, _) if pid.is_none() => Allocation::Unrestricted,
        (None, OutsideSlurm::Allow) => Allocation::Unrestricted,
        (None, OutsideSlurm::Deny) => Allocation::Denied,
    };
    if let Some(s) = &step {
        tracing::debug!(job = s.job, step = %s.step, allowed = ?allowed, "container is in a Slurm step");
    }
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
    })
    .map_err(|e| match &step {
        Some(s) => anyhow::Error::from(e).context(format!("job {} step {}", s.job, s.step)),
        None => e.into(),
    })?;
    Ok(Some(p))
}
