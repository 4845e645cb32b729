//! `gres-oci-hook`: the OCI prestart hook, a drop-in for NVIDIA's hook as Sarus and podman
//! wire it (`-config=PATH prestart`, OCI state on stdin), plus `plan` and `info` for admins.

mod apply;
mod cdi_cmd;
mod cgroup;
mod cli;
mod gather;
mod info;
mod ns;
mod plan_cmd;
mod prestart;
mod proc_mask;
mod state;
mod update_ldcache;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Result};
use cli::Flags;
use gres_oci::config::Config;

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

/// The top-level flags (Go's `flag` package semantics, as NVIDIA's hook has them) and the
/// command; `None` when a flag (`-version`, `-help`) already answered.
fn parse_args(argv: &[String]) -> Result<Option<Args>> {
    let (f, command) = Flags::parse_go(argv, &["config"], &["debug", "version", "h", "help"])?;
    if f.has("version") {
        println!(
            "gres-oci-hook {} (plugin built for Slurm {})",
            env!("CARGO_PKG_VERSION"),
            gres_oci::SLURM_VERSION.unwrap_or("unknown")
        );
        return Ok(None);
    }
    if f.has("h") || f.has("help") {
        print!("{USAGE}");
        return Ok(None);
    }
    let Some((command, rest)) = command else {
        bail!("no command given (try -help)")
    };
    Ok(Some(Args {
        config: f.last("config").map(PathBuf::from),
        debug: f.has("debug"),
        command,
        rest,
    }))
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

fn run(argv: &[String]) -> Result<()> {
    let args = match parse_args(argv) {
        Ok(Some(a)) => a,
        Ok(None) => return Ok(()),
        Err(e) => {
            eprint!("{USAGE}");
            return Err(e);
        }
    };
    // `plan` and `info` also take `--config` after the command, as admins tend to type it.
    let load_config = |after: Option<&str>| -> Result<Config> {
        let path = args.config.as_deref().or(after.map(Path::new));
        let config = Config::load(path)?;
        init_logging(&config, args.debug);
        Ok(config)
    };
    match args.command.as_str() {
        "prestart" => {
            if prestart::help(&args.rest)? {
                return Ok(());
            }
            prestart::run(&load_config(None)?)
        }
        "plan" => plan_cmd::run(&args.rest, load_config),
        "info" => info::run(&args.rest, load_config),
        "cdi" => cdi_cmd::run(args.config.as_deref(), &args.rest),
        "update-ldcache" => update_ldcache::run(&args.rest),
        // Every other stage is a no-op, so one hook entry can be listed for several stages.
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::args;

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
}
