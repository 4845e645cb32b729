//! `gres-oci-hook cdi generate|validate`: writes a CDI spec for this node's GPUs and driver
//! (gathered as the prestart hook gathers them), and checks a spec file against the CDI
//! schema of the version it declares.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use gres_oci::cdi::{self, CdiOptions};
use gres_oci::config::{Config, CudaCompatMode, Ldconfig};
use gres_oci::driver::DriverRoot;
use gres_oci::fabric::Fabric;
use gres_oci::inventory::scan_dev_root;
use gres_oci::nvidia_env::{parse_capabilities, Capability};

use crate::cli::Flags;
use crate::gather;

pub const USAGE: &str = "\
Usage: gres-oci-hook cdi generate [--config PATH] [--mode MODE] [--vendor NAME] [--class NAME]
                                  [--format json|yaml] [--output FILE]
                                  [--capabilities LIST] [--hook-path PATH] [--soname-mounts]
       gres-oci-hook cdi validate FILE

generate  write a CDI spec (cdiVersion 0.5.0) for this node: one device per GPU by NVML
          index and by UUID, one per MIG device (G:M and MIG-UUID), and `all`; the driver
          files for LIST (default utility,compute) and a createContainer hook that runs
          `gres-oci-hook update-ldcache`. Default kind nvidia.com/gpu, JSON on stdout; a
          FILE is written atomically, as YAML when it ends in .yaml or .yml. --hook-path
          defaults to this program's own absolute path. --soname-mounts also mounts each
          library at its soname links' paths, for engines that skip CDI hooks (Apptainer):
          the loader then finds libcuda.so.1 in the library dir without the hook's links
          and cache; engines that run the hook are unaffected.
          --mode (NVIDIA's names) picks what the spec lists: gpu (default; also auto,
          nvml) as above; imex: one device per IMEX channel node in dev-root, named by id
          (class imex-channel); gdrcopy, mofed, gds, nvswitch: the device `all` with that
          kind's nodes (class = the mode; gds adds /run/udev and /etc/cufile.json).
          --capabilities, --hook-path and --soname-mounts go with --mode gpu only.
validate  check FILE (JSON or YAML) against the CDI schema of the cdiVersion it declares.

Specs are read by podman from /etc/cdi and /var/run/cdi; podman 4.x reads cdiVersion up to
0.5.0 only.
";

/// `cdi …`; `global_config` is the `-config=` given before the command.
///
/// # Errors
/// Bad arguments, a node the spec cannot be made for, an invalid spec file.
pub fn run(global_config: Option<&Path>, rest: &[String]) -> Result<()> {
    let Some((sub, rest)) = rest.split_first() else {
        eprint!("{USAGE}");
        bail!("cdi needs a subcommand: generate or validate");
    };
    match sub.as_str() {
        "generate" => {
            let f = Flags::parse(
                rest,
                &[
                    "config",
                    "mode",
                    "vendor",
                    "class",
                    "format",
                    "output",
                    "capabilities",
                    "hook-path",
                ],
                &["help", "h", "soname-mounts"],
            )?;
            if f.has("help") || f.has("h") {
                print!("{USAGE}");
                return Ok(());
            }
            if let Some(p) = f.positional.first() {
                bail!("cdi generate takes no argument {p:?}");
            }
            generate(global_config, &f)
        }
        "validate" => {
            let f = Flags::parse(rest, &[], &["help", "h"])?;
            if f.has("help") || f.has("h") {
                print!("{USAGE}");
                return Ok(());
            }
            let [file] = f.positional.as_slice() else {
                bail!("cdi validate needs exactly one FILE");
            };
            validate(Path::new(file))
        }
        "-h" | "--help" | "-help" | "help" => {
            print!("{USAGE}");
            Ok(())
        }
        other => bail!("unknown cdi subcommand {other:?} (generate or validate)"),
    }
}

fn generate(global_config: Option<&Path>, f: &Flags) -> Result<()> {
    let config = Config::load(global_config.or(f.last("config").map(Path::new)))?;
    let format = match (f.last("format"), f.last("output")) {
        (Some("json"), _) => "json",
        (Some("yaml" | "yml"), _) => "yaml",
        (Some(other), _) => bail!("--format must be json or yaml, not {other:?}"),
        (None, Some(o)) if o.ends_with(".yaml") || o.ends_with(".yml") => "yaml",
        (None, _) => "json",
    };
    let mode = f.last("mode").unwrap_or("gpu");
    let fabric = match mode {
        "gpu" | "auto" | "nvml" => None,
        "imex" => Some(None),
        other => Some(Some(
            Fabric::ALL
                .into_iter()
                .find(|k| k.name() == other)
                .with_context(|| {
                    format!("--mode {other:?}: one of gpu, imex, gdrcopy, mofed, gds, nvswitch")
                })?,
        )),
    };
    if let Some(kind) = fabric {
        for flag in ["capabilities", "hook-path"] {
            if f.last(flag).is_some() {
                bail!("--{flag} goes with --mode gpu only");
            }
        }
        if f.has("soname-mounts") {
            bail!("--soname-mounts goes with --mode gpu only");
        }
        let defaults = CdiOptions::default();
        let opts = CdiOptions {
            vendor: f.last("vendor").unwrap_or(&defaults.vendor).to_owned(),
            class: f
                .last("class")
                .unwrap_or(kind.map_or("imex-channel", Fabric::name))
                .to_owned(),
            dev_root: config.dev_root.clone(),
            ..defaults
        };
        let devices = scan_dev_root(&config.dev_root)?;
        let spec = match kind {
            None => {
                let major = gres_oci::imex::read_major(&config.proc_root)?;
                let channels = major
                    .map(|m| gres_oci::imex::channels_on_node(&devices, m))
                    .unwrap_or_default();
                cdi::generate_imex(&channels, &opts)?
            }
            Some(kind) => {
                let gds = if kind == Fabric::Gds {
                    gres_oci::driver::gds_files(&config.driver_root)
                } else {
                    Vec::new()
                };
                cdi::generate_fabric(kind, &devices, &gds, &opts)?
            }
        };
        return emit(&spec, format, f.last("output"));
    }
    let capabilities = parse_capabilities(
        Some(f.last("capabilities").unwrap_or("")),
        false,
        &config.supported_capabilities,
    )
    .context("--capabilities")?;
    let hook_path = match f.last("hook-path") {
        Some(p) => PathBuf::from(p),
        None => std::env::current_exe().context("cannot find this program's own path")?,
    };
    if !hook_path.is_absolute() {
        bail!("--hook-path {}: must be absolute", hook_path.display());
    }

    let gather::NodeFacts {
        cache,
        inv,
        devices,
        mig_minors,
    } = gather::node_facts(&config, None, false)?;
    let driver = DriverRoot::new(&config, &cache, &inv.driver_version).discover(&capabilities);
    let defaults = CdiOptions::default();
    let compat = config.cuda_compat == CudaCompatMode::Ldconfig
        && capabilities.contains(Capability::Compute);
    let opts = CdiOptions {
        vendor: f.last("vendor").unwrap_or(&defaults.vendor).to_owned(),
        class: f.last("class").unwrap_or(&defaults.class).to_owned(),
        driver_root: config.driver_root.clone(),
        dev_root: config.dev_root.clone(),
        capabilities,
        hook_path,
        ldconfig: match &config.ldconfig {
            Ldconfig::Host(p) => Some(p.clone()),
            Ldconfig::Disabled => None,
        },
        mig_minors,
        cuda_compat_host: compat.then(|| inv.driver_version.clone()),
        soname_mounts: f.has("soname-mounts"),
    };
    let spec = cdi::generate(&inv, &driver, &devices, &opts)?;
    emit(&spec, format, f.last("output"))
}

/// Writes `spec` as `format` to `output`, or to stdout.
fn emit(spec: &cdi::Spec, format: &str, output: Option<&str>) -> Result<()> {
    let text = if format == "yaml" {
        cdi::to_yaml(spec)?
    } else {
        cdi::to_json(spec)?
    };
    match output {
        // Whole or not at all: a runtime watching the CDI dir never reads half a spec.
        Some(out) => gres_oci::atomic::replace(Path::new(out), text.as_bytes(), 0o644, None)
            .with_context(|| format!("{out}: cannot write")),
        None => {
            std::io::stdout()
                .write_all(text.as_bytes())
                .context("writing the spec to stdout")?;
            Ok(())
        }
    }
}

fn validate(file: &Path) -> Result<()> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("{}: cannot read", file.display()))?;
    let value = cdi::parse(&text).with_context(|| file.display().to_string())?;
    cdi::validate(&value).with_context(|| file.display().to_string())?;
    println!(
        "{}: valid CDI {} spec for {} ({} devices)",
        file.display(),
        value["cdiVersion"].as_str().unwrap_or("?"),
        value["kind"].as_str().unwrap_or("?"),
        value["devices"].as_array().map_or(0, Vec::len)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_reports_the_file_and_field() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("bad.yaml");
        std::fs::write(
            &p,
            "cdiVersion: 0.5.0\nkind: x/y\ndevices:\n- name: '-a'\n  containerEdits: {}\n",
        )
        .unwrap();
        let e = format!("{:#}", validate(&p).unwrap_err());
        assert!(e.contains("bad.yaml: devices[0].name"), "{e}");
        std::fs::write(
            &p,
            "cdiVersion: 0.5.0\nkind: x/y\ndevices:\n- name: a\n  containerEdits: {}\n",
        )
        .unwrap();
        validate(&p).unwrap();
    }
}
