//! gres-oci's core: everything the OCI hook and the SPANK plugin decide, on plain data.
//!
//! The data flow is `Config` + `Request` + `Inventory` + `DriverFiles` → [`plan::plan`] →
//! [`plan::Plan`]; the binaries only gather those inputs and carry the plan out.

/// An error and its causes on one line, `outer: inner: …`, as the hook prints them: messages
/// never repeat their cause, which lives only in `source()`.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

pub mod allocation;
pub mod atomic;
pub mod cdi;
pub mod config;
pub mod cudacompat;
pub mod driver;
pub mod elf;
pub mod fabric;
pub mod gres;
pub mod ids;
pub mod imex;
pub mod inventory;
pub mod ldcache;
pub mod nodes;
pub mod nvidia_env;
pub mod plan;
pub mod plugin_args;
pub mod proc_cgroup;
pub mod proc_mask;
pub mod request;
pub mod slurm_step;

/// The `env` of every OCI hook entry gres-oci writes or ships (CDI specs, hooks.d files, the
/// bundle patched by the plugin). runc before 1.3 runs a `createContainer` hook whose entry has
/// no `env` (or an empty one) with the **container's** environment, before pivot_root: an image
/// `LD_PRELOAD` would then load the image's code into a root process on the host
/// (CVE-2025-23266). The dynamic loader acts before the hook's `main`, so only the entry can
/// keep the image's variables away; it must be non-empty, and holds nothing the loader reads.
pub const HOOK_ENV: [&str; 1] = ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"];

/// The Slurm release whose headers this build saw (`major.minor.micro`), if any.
pub const SLURM_VERSION: Option<&str> = option_env!("GRES_OCI_SLURM_VERSION");

#[cfg(test)]
mod tests {
    #[test]
    fn error_chain_names_each_cause_once() {
        let e = crate::gres::GresConf::read(std::path::Path::new("/nonexistent/gres.conf"))
            .unwrap_err();
        assert_eq!(
            crate::error_chain(&e),
            "cannot read /nonexistent/gres.conf: No such file or directory (os error 2)"
        );
    }
}
