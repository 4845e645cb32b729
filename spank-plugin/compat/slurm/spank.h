/*
 * gres-oci: a thin wrapper around the system's <slurm/spank.h>, used only when building
 * slurm-spank's bindings (CPATH points here, see .cargo/config.toml). slurm-spank 0.4 binds
 * spank_prepend_task_argv(), which Slurm added in 23.11; older headers lack the prototype, so
 * the crate would not compile. The declaration below only lets the bindings compile: gres-oci
 * never calls the function, the linker drops the unused wrapper, and the built plugin has no
 * reference to it (tests/slurm checks `nm -D --undefined-only`).
 */
#include_next <slurm/spank.h>

#if SLURM_VERSION_NUMBER < SLURM_VERSION_NUM(23, 11, 0)
extern spank_err_t spank_prepend_task_argv(spank_t spank, int argc, const char *argv[]);
#endif
