//! Records the Slurm release of the headers found at build time, for `--version`. Absent
//! headers are fine here; the SPANK plugin's own build insists on them.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=SLURM_INCLUDE_DIR");
    let dir = std::env::var_os("SLURM_INCLUDE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/include"));
    let header = dir.join("slurm/slurm_version.h");
    println!("cargo:rerun-if-changed={}", header.display());
    let Ok(text) = std::fs::read_to_string(&header) else {
        return;
    };
    let number = text.lines().find_map(|l| {
        let v = l.strip_prefix("#define SLURM_VERSION_NUMBER")?.trim();
        u32::from_str_radix(v.strip_prefix("0x")?, 16).ok()
    });
    if let Some(n) = number {
        let v = format!("{}.{:02}.{}", n >> 16 & 0xff, n >> 8 & 0xff, n & 0xff);
        println!("cargo:rustc-env=GRES_OCI_SLURM_VERSION={v}");
    }
}
