//! `gres-oci-hook info`: the driver, the GPUs and the driver files per capability, for admins.

use anyhow::{bail, Context, Result};
use gres_oci::config::Config;
use gres_oci::driver::DriverRoot;
use gres_oci::nvidia_env::{Capabilities, Capability};

use crate::cli::Flags;
use crate::gather;

pub const HELP: &str = "\
Usage: gres-oci-hook [-config=PATH] info [--json] [--source procfs|nvml] [--config PATH]

Prints the driver version, the CUDA driver version (NVML), each GPU (NVML index, minor number,
UUID, PCI bus id) and the driver files found per capability. --source picks the inventory
(default: NVML when it loads, else procfs); --json prints the same as JSON.
";

/// `info [--json] [--source procfs|nvml] [--config PATH]`; `load_config` is given the
/// `--config` after the command.
pub fn run(
    rest: &[String],
    load_config: impl FnOnce(Option<&str>) -> Result<Config>,
) -> Result<()> {
    let f = Flags::parse(rest, &["source", "config"], &["json", "help", "h"])?;
    if f.has("help") || f.has("h") {
        print!("{HELP}");
        return Ok(());
    }
    if let Some(p) = f.positional.first() {
        bail!("info takes no argument {p:?}");
    }
    show(
        &load_config(f.last("config"))?,
        f.last("source"),
        f.has("json"),
    )
}

fn show(config: &Config, source: Option<&str>, json: bool) -> Result<()> {
    let cache = gather::driver_cache(config)?;
    let inv = match source {
        Some("procfs") => gres_oci::inventory::read_procfs(&config.proc_root)?,
        Some("nvml") => {
            let lib = gather::nvml_library(config, &cache)
                .context("libnvidia-ml.so.1 not found in the driver root")?;
            gres_oci::inventory::read_nvml(&lib)?
        }
        Some(s) => bail!("--source must be procfs or nvml, not {s:?}"),
        None => gather::inventory(config, &cache, None, false)?,
    };
    let root = DriverRoot::new(config, &cache, &inv.driver_version);
    let per_cap: Vec<(Capability, _)> = Capability::ALL
        .iter()
        .map(|&c| {
            (
                c,
                root.discover(&std::iter::once(c).collect::<Capabilities>()),
            )
        })
        .collect();
    if json {
        let files: serde_json::Map<String, serde_json::Value> = per_cap
            .iter()
            .map(|(c, f)| {
                (
                    c.as_str().to_owned(),
                    serde_json::to_value(f).unwrap_or_default(),
                )
            })
            .collect();
        let out = serde_json::json!({ "inventory": inv, "files": files });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!("Driver version:      {}", inv.driver_version);
    println!(
        "CUDA driver version: {}",
        inv.cuda_version.as_deref().unwrap_or("unknown (procfs)")
    );
    println!("Inventory source:    {:?}", inv.source);
    println!("GPUs:                {}", inv.gpus.len());
    for g in &inv.gpus {
        println!(
            "  GPU {}: minor {}, {}, PCI {}{}",
            g.index,
            g.minor,
            g.uuid.as_deref().unwrap_or("UUID unknown"),
            g.pci_bus_id,
            g.model
                .as_deref()
                .map(|m| format!(", {m}"))
                .unwrap_or_default()
        );
    }
    for (cap, f) in &per_cap {
        println!("Capability {}:", cap.as_str());
        for l in &f.libraries {
            println!(
                "  lib  {}{}",
                l.host_path.display(),
                if l.compat32 { " (32-bit)" } else { "" }
            );
        }
        for b in f.binaries.iter().chain(&f.firmware).chain(&f.ipc) {
            println!(
                "  file {} -> {}",
                b.host_path.display(),
                b.container_path.display()
            );
        }
        if !f.missing.is_empty() {
            println!("  missing: {}", f.missing.join(" "));
        }
    }
    Ok(())
}
