//! Finds the Slurm headers the plugin is built for and records their `SLURM_VERSION_NUMBER`,
//! which becomes `plugin_version` (Slurm refuses a plugin whose major.minor differs from its
//! own). `SLURM_INCLUDE_DIR` overrides `/usr/include`; slurm-spank's bindgen then also needs
//! `BINDGEN_EXTRA_CLANG_ARGS=-I$SLURM_INCLUDE_DIR` (the crate checks that both agree).

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=SLURM_INCLUDE_DIR");
    println!("cargo:rerun-if-env-changed=BINDGEN_EXTRA_CLANG_ARGS");
    let (dir, from_env) = match std::env::var_os("SLURM_INCLUDE_DIR") {
        Some(d) => (PathBuf::from(d), true),
        None => (PathBuf::from("/usr/include"), false),
    };
    let header = dir.join("slurm/slurm_version.h");
    println!("cargo:rerun-if-changed={}", header.display());
    let text = match std::fs::read_to_string(&header) {
        Ok(t) => t,
        Err(e) => {
            let how = if from_env {
                "SLURM_INCLUDE_DIR points at a directory without it"
            } else {
                "install Slurm's development headers (Debian: libslurm-dev) or set \
                 SLURM_INCLUDE_DIR to the directory holding slurm/slurm_version.h \
                 (and BINDGEN_EXTRA_CLANG_ARGS=-I$SLURM_INCLUDE_DIR)"
            };
            eprintln!(
                "error: gres-oci-spank: cannot read {}: {e}; {how}",
                header.display()
            );
            std::process::exit(1);
        }
    };
    if !dir.join("slurm/spank.h").exists() {
        eprintln!(
            "error: gres-oci-spank: {} has slurm_version.h but no spank.h",
            dir.join("slurm").display()
        );
        std::process::exit(1);
    }
    let number = text.lines().find_map(|l| {
        let v = l.strip_prefix("#define SLURM_VERSION_NUMBER")?.trim();
        let hex = v.strip_prefix("0x")?;
        u32::from_str_radix(hex, 16).ok().map(|_| v.to_owned())
    });
    let Some(number) = number else {
        eprintln!(
            "error: gres-oci-spank: {} has no `#define SLURM_VERSION_NUMBER 0x…` line",
            header.display()
        );
        std::process::exit(1);
    };
    println!("cargo:rustc-env=GRES_OCI_SPANK_SLURM_VERSION={number}");
}
