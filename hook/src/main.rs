//! `gres-oci-hook`: the OCI prestart hook, a drop-in for NVIDIA's hook as Sarus and podman
//! wire it (`-config=PATH prestart`, OCI state on stdin), plus `plan` and `info` for admins.

mod apply;
mod cdi_cmd;
mod cgroup;
mod gather;
mod ns;
mod proc_mask;
mod state;
mod update_ldcache;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use gres_oci::config::{Config, Ldconfig};
use gres_oci::driver::DriverRoot;
use gres_oci::nvidia_env::{Capabilities, Capability};
use gres_oci::plan::Plan;

const USAGE: &str = "\
Usage: gres-oci-hook [-config=PATH] [-debug] COMMAND [ARGS]

Commands (COMMAND --help for details):
  prestart                 OCI prestart hook: state on stdin, injects the GPUs the container asks for
  plan --bundle DIR        print, as JSON, every edit prestart would make for that bundle
  info [--json] [--source procfs|nvml]
                           print the driver, the GPUs and the driver files per capability
  cdi generate [--vendor V --class C] [--format json|yaml] [--output FILE] [--capabilities LIST]
                           write a CDI spec for this node's GPUs and driver (cdi --help)
  cdi validate FILE        check a CDI spec against the schema of its cdiVersion
  update-ldcache [--link PATH::TARGET]... [--folder DIR]...
                           OCI createContainer hook of generated CDI specs: soname links
                           and the linker cache
  poststart, poststop, …   any other hook stage: do nothing, exit 0

Options (before the command, Go-flag style: -x, --x, -x=V, -x V):
  -config PATH   config file (default /etc/gres-oci/config.toml, then
                 /etc/nvidia-container-runtime/config.toml)
  -debug         log at debug level to stderr as well
  -version       print the version
  -help          this text
";

struct Args {
    config: Option<PathBuf>,
    debug: bool,
    command: String,
    rest: Vec<String>,
}

/// Go `flag` semantics, as NVIDIA's hook parses them: flags only before the command, one or
/// two dashes, `=` or a separate value.
fn parse_args(argv: &[String]) -> Result<Option<Args>> {
    let mut a = Args {
        config: None,
        debug: false,
        command: String::new(),
        rest: Vec::new(),
    };
    let mut i = 0;
    while i < argv.len() {
        let arg = &argv[i];
        let Some(flag) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) else {
            a.command = arg.clone();
            a.rest = argv[i + 1..].to_vec();
            return Ok(Some(a));
        };
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) => (n, Some(v.to_owned())),
            None => (flag, None),
        };
        match name {
            "config" => {
                let v = match inline {
                    Some(v) => v,
                    None => {
                        i += 1;
                        argv.get(i)
                            .cloned()
                            .context("flag needs an argument: -config")?
                    }
                };
                a.config = Some(PathBuf::from(v));
            }
            "debug" => a.debug = inline.is_none_or(|v| v != "false"),
            "version" => {
                println!(
                    "gres-oci-hook {} (plugin built for Slurm {})",
                    env!("CARGO_PKG_VERSION"),
                    gres_oci::SLURM_VERSION.unwrap_or("unknown")
                );
                return Ok(None);
            }
            "h" | "help" => {
                print!("{USAGE}");
                return Ok(None);
            }
            _ => bail!("flag provided but not defined: -{name}"),
        }
        i += 1;
    }
    bail!("no command given (try -help)")
}

/// Flags of a subcommand: `--name value` or `--name=value`.
fn sub_flag(rest: &[String], name: &str) -> Result<Option<String>> {
    let mut i = 0;
    while i < rest.len() {
        let a = rest[i].trim_start_matches('-');
        if rest[i].starts_with('-') {
            if let Some(v) = a.strip_prefix(name).and_then(|r| r.strip_prefix('=')) {
                return Ok(Some(v.to_owned()));
            }
            if a == name {
                return rest
                    .get(i + 1)
                    .cloned()
                    .map(Some)
                    .with_context(|| format!("--{name} needs a value"));
            }
        }
        i += 1;
    }
    Ok(None)
}

fn has_flag(rest: &[String], name: &str) -> bool {
    rest.iter()
        .any(|a| a.starts_with('-') && a.trim_start_matches('-') == name)
}

fn init_logging(config: &Config, debug: bool) {
    use tracing_subscriber::fmt::writer::MakeWriterExt;
    let level = if debug {
        tracing::Level::DEBUG
    } else {
        config.log_level.parse().unwrap_or(tracing::Level::INFO)
    };
    // One O_APPEND handle: each event is written with a single write(2), so lines from
    // concurrent hooks do not interleave. A log that cannot be opened never stops the hook.
    let file = config.log_file.as_ref().and_then(|p| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .ok()
    });
    let builder = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_target(false)
        .with_max_level(level);
    let _ = match (file, debug) {
        (Some(f), true) => builder
            .with_writer(std::sync::Mutex::new(f).and(std::io::stderr))
            .try_init(),
        (Some(f), false) => builder.with_writer(std::sync::Mutex::new(f)).try_init(),
        (None, true) => builder.with_writer(std::io::stderr).try_init(),
        (None, false) => Ok(()),
    };
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    match run(&argv) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("gres-oci-hook: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// The `--help` text of the commands whose flags this file parses.
fn command_help(command: &str) -> Option<&'static str> {
    Some(match command {
        "prestart" => {
            "\
Usage: gres-oci-hook [-config=PATH] [-debug] prestart < STATE

OCI prestart hook. Reads the OCI state (JSON with `bundle` and `pid`) on stdin and the bundle's
config.json, then injects the GPUs and driver files the container asks for (NVIDIA_VISIBLE_DEVICES,
NVIDIA_DRIVER_CAPABILITIES, NVIDIA_REQUIRE_*, GRES_OCI_GPUS) into its mount namespace.
Exit 0 on success or for a container that asks for no GPU; 1 with one line on stderr otherwise.
"
        }
        "plan" => {
            "\
Usage: gres-oci-hook [-config=PATH] plan --bundle DIR [--config PATH]

Prints, as JSON, every edit prestart would make for the bundle in DIR: GPUs, device nodes,
mounts, links, device cgroup rules and the linker-cache update. Changes nothing.
"
        }
        "info" => {
            "\
Usage: gres-oci-hook [-config=PATH] info [--json] [--source procfs|nvml] [--config PATH]

Prints the driver version, the CUDA driver version (NVML), each GPU (NVML index, minor number,
UUID, PCI bus id) and the driver files found per capability. --source picks the inventory
(default: NVML when it loads, else procfs); --json prints the same as JSON.
"
        }
        _ => return None,
    })
}

fn run(argv: &[String]) -> Result<()> {
    let args = match parse_args(argv) {
        Ok(Some(a)) => a,
        Ok(None) => return Ok(()),
        Err(e) => {
            eprint!("{USAGE}");
            return Err(e);
        }
    };
    if let Some(help) = command_help(&args.command) {
        if has_flag(&args.rest, "help") || has_flag(&args.rest, "h") {
            print!("{help}");
            return Ok(());
        }
    }
    // `plan` and `info` also take `--config` after the command, as admins tend to type it.
    let load_config = || -> Result<Config> {
        let after = sub_flag(&args.rest, "config")?;
        let path = args.config.as_deref().or(after.as_deref().map(Path::new));
        let config = Config::load(path)?;
        init_logging(&config, args.debug);
        Ok(config)
    };
    match args.command.as_str() {
        "prestart" => prestart(&load_config()?),
        "plan" => {
            let config = load_config()?;
            let bundle = sub_flag(&args.rest, "bundle")?.context("plan needs --bundle DIR")?;
            let b = state::Bundle::load(Path::new(&bundle))?;
            let plan = gather::build_plan(&config, &b, "plan", None)?;
            println!("{}", serde_json::to_string_pretty(&plan)?);
            Ok(())
        }
        "info" => info(
            &load_config()?,
            sub_flag(&args.rest, "source")?.as_deref(),
            has_flag(&args.rest, "json"),
        ),
        "cdi" => cdi_cmd::run(args.config.as_deref(), &args.rest),
        "update-ldcache" => update_ldcache::run(&args.rest),
        // Every other stage is a no-op, so one hook entry can be listed for several stages.
        _ => Ok(()),
    }
}

fn prestart(config: &Config) -> Result<()> {
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

fn info(config: &Config, source: Option<&str>, json: bool) -> Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn go_flag_forms() {
        for form in [
            &["-config=/c.toml", "prestart"][..],
            &["--config", "/c.toml", "prestart"],
            &["-config", "/c.toml", "-debug", "prestart", "ignored"],
        ] {
            let a = parse_args(&args(form)).unwrap().unwrap();
            assert_eq!(a.config, Some(PathBuf::from("/c.toml")));
            assert_eq!(a.command, "prestart");
        }
        assert!(parse_args(&args(&["-bogus", "prestart"])).is_err());
        assert!(parse_args(&args(&["-config"])).is_err());
        assert!(parse_args(&args(&[])).is_err());
        let a = parse_args(&args(&["poststop"])).unwrap().unwrap();
        assert_eq!(a.command, "poststop");
    }

    #[test]
    fn subcommand_flags() {
        let r = args(&["--bundle", "/b", "--config=/c"]);
        assert_eq!(sub_flag(&r, "bundle").unwrap().as_deref(), Some("/b"));
        assert_eq!(sub_flag(&r, "config").unwrap().as_deref(), Some("/c"));
        assert_eq!(sub_flag(&r, "source").unwrap(), None);
        assert!(sub_flag(&args(&["--bundle"]), "bundle").is_err());
    }
}
