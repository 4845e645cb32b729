//! gres-oci's core: everything the OCI hook and the SPANK plugin decide, on plain data.
//!
//! The data flow is `Config` + `Request` + `Inventory` + `DriverFiles` → [`plan::plan`] →
//! [`plan::Plan`]; the binaries only gather those inputs and carry the plan out.

pub mod allocation;
pub mod cdi;
pub mod config;
pub mod driver;
pub mod elf;
pub mod gres;
pub mod inventory;
pub mod ldcache;
pub mod plan;
pub mod request;
pub mod selection;

/// The Slurm release whose headers this build saw (`major.minor.micro`), if any.
pub const SLURM_VERSION: Option<&str> = option_env!("GRES_OCI_SLURM_VERSION");
