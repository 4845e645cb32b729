//! `gres-oci-hook prestart`: the OCI prestart hook. Reads the state, plans, and applies the
//! plan to the container: device cgroup, then the mount namespace.

use std::path::Path;

use anyhow::{Context, Result};
use gres_oci::config::{Config, Ldconfig};
use gres_oci::plan::Plan;

use crate::{apply, cgroup, gather, ns, state};

pub const HELP: &str = "\
Usage: gres-oci-hook [-config=PATH] [-debug] prestart < STATE

OCI prestart hook. Reads the OCI state (JSON with `bundle` and `pid`) on stdin and the bundle's
config.json, then injects the GPUs and driver files the container asks for (NVIDIA_VISIBLE_DEVICES,
NVIDIA_DRIVER_CAPABILITIES, NVIDIA_REQUIRE_*, GRES_OCI_GPUS) into its mount namespace.
Exit 0 on success or for a container that asks for no GPU; 1 with one line on stderr otherwise.
";

/// Prints the help for `prestart --help`; `true` when it did. Other arguments are ignored,
/// as runtimes may pass some.
pub fn help(rest: &[String]) -> Result<bool> {
    let asked = rest
        .iter()
        .any(|a| matches!(a.as_str(), "-h" | "--h" | "-help" | "--help"));
    if asked {
        print!("{HELP}");
    }
    Ok(asked)
}

pub fn run(config: &Config) -> Result<()> {
    for k in &config.ignored_keys {
        tracing::debug!(key = %k, "config key accepted and ignored");
    }
    let state = state::State::read(std::io::stdin().lock())?;
    let bundle_dir = state.bundle().context("no bundle")?.to_owned();
    let pid = state.pid.context("no pid")?;
    let bundle = state::Bundle::load(&bundle_dir)?;
    let Some(plan) = gather::build_plan(config, &bundle, &state.id, Some(pid))? else {
        tracing::debug!(id = %state.id, "not a GPU container");
        return Ok(());
    };
    apply_plan(config, &plan, pid, &bundle)?;
    tracing::info!(
        id = %plan.container_id,
        job = bundle.env.iter().find_map(|e| e.strip_prefix("SLURM_JOB_ID=")).unwrap_or("-"),
        step = bundle.env.iter().find_map(|e| e.strip_prefix("SLURM_STEP_ID=")).unwrap_or("-"),
        gpus = %plan.gpus.iter().map(|g| format!("{}(minor {})", g.uuid.as_deref().unwrap_or(&g.pci_bus_id), g.minor)).collect::<Vec<_>>().join(","),
        capabilities = %plan.capabilities,
        devices = plan.device_nodes.len(),
        mounts = plan.mounts.len(),
        links = plan.symlinks.len(),
        inventory = ?plan.inventory,
        "injected"
    );
    Ok(())
}

fn apply_plan(config: &Config, plan: &Plan, pid: i32, bundle: &state::Bundle) -> Result<()> {
    if !plan.cgroup_rules.is_empty() {
        let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .with_context(|| format!("/proc/{pid}/cgroup: cannot read"))?;
        let mi = std::fs::read_to_string("/proc/self/mountinfo").context("/proc/self/mountinfo")?;
        match cgroup::locate(&cg, &mi)? {
            cgroup::DeviceCgroup::V1(dir) => cgroup::allow_v1(&dir, &plan.cgroup_rules)?,
            cgroup::DeviceCgroup::V2 => {
                cgroup::check_v2(&plan.cgroup_rules, &bundle.device_rules)?;
            }
        }
    }
    let ldconfig_fd = match (&config.ldconfig, &plan.ldcache) {
        (Ldconfig::Host(p), Some(_)) => Some(ns::open_host_binary(
            &gres_oci::config::host_ldconfig_binary(p, Path::exists),
        )?),
        _ => None,
    };
    let ops = gres_oci::plan::ops(plan, |p| p.is_dir());
    let rootfs = plan.rootfs.clone();
    ns::in_mount_ns(pid, move || {
        let mut sys = apply::RealSys::new(&rootfs, ldconfig_fd)?;
        apply::execute(&ops, &mut sys)
    })
}
