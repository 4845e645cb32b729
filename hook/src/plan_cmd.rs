//! `gres-oci-hook plan --bundle DIR`: every edit prestart would make, as JSON, changing nothing.

use std::path::Path;

use anyhow::{bail, Context, Result};
use gres_oci::config::Config;

use crate::cli::Flags;
use crate::{gather, state};

pub const HELP: &str = "\
Usage: gres-oci-hook [-config=PATH] plan --bundle DIR [--config PATH]

Prints, as JSON, every edit prestart would make for the bundle in DIR: GPUs, device nodes,
mounts, links, device cgroup rules and the linker-cache update. Changes nothing.
";

/// `plan --bundle DIR [--config PATH]`; `load_config` is given the `--config` after the
/// command.
pub fn run(
    rest: &[String],
    load_config: impl FnOnce(Option<&str>) -> Result<Config>,
) -> Result<()> {
    let f = Flags::parse(rest, &["bundle", "config"], &["help", "h"])?;
    if f.has("help") || f.has("h") {
        print!("{HELP}");
        return Ok(());
    }
    if let Some(p) = f.positional.first() {
        bail!("plan takes no argument {p:?}");
    }
    let config = load_config(f.last("config"))?;
    let bundle = f.last("bundle").context("plan needs --bundle DIR")?;
    let b = state::Bundle::load(Path::new(bundle))?;
    let plan = gather::build_plan(&config, &b, "plan", None)?;
    println!("{}", serde_json::to_string_pretty(&plan)?);
    Ok(())
}
