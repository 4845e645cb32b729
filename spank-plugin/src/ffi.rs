//! The symbols Slurm's plugin loader looks up (`plugin_name`, `plugin_type`,
//! `plugin_version`, `slurm_spank_*`), written out instead of with `SPANK_PLUGIN!` so that each
//! callback can first learn whether plugstack.conf loaded us as `required` or `optional`.
//!
//! SPANK has no call for that, yet the contract depends on it (a one-line message for
//! the user under `required`, a log line only under `optional`). slurmstepd calls every
//! callback as `fn(handle, sp->ac, sp->argv)`, where the handle (`struct spank_handle`,
//! `src/common/plugstack.c`) starts with a magic number and a pointer to the plugin's record
//! (`struct spank_plugin { name, fq_path, plugin, required, ac, argv, … }`). [`required`]
//! reads `required` only after checking the magic, that `name` is our own `plugin_name`
//! symbol (Slurm stores the dlsym result there) and that `ac`/`argv` are exactly what we were
//! called with; should any check fail (another Slurm layout) it answers "unknown", and
//! unknown is treated as `required`, the safe side (the user sees the message).
//!
//! Everything else goes through slurm-spank's handle and its panic-catching wrapper.

use std::os::raw::{c_char, c_int, c_uint, c_void};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicI8, Ordering};

use slurm_spank::spank_sys::spank_t;

use crate::GresOci;

/// `plugin_name`: a byte array, not a pointer (Slurm reads the symbol's bytes).
#[no_mangle]
#[allow(non_upper_case_globals)]
pub static plugin_name: [u8; 9] = *b"gres-oci\0";

#[no_mangle]
#[allow(non_upper_case_globals)]
pub static plugin_type: [u8; 6] = *b"spank\0";

/// Must equal the running Slurm's major.minor; taken from the headers at build time.
#[no_mangle]
#[allow(non_upper_case_globals)]
pub static plugin_version: c_uint = crate::SLURM_VERSION_NUMBER;

const SPANK_MAGIC: c_int = 0x00a5_a500;

#[repr(C)]
struct RawHandle {
    magic: c_int,
    plugin: *const RawPlugin,
}

#[repr(C)]
struct RawPlugin {
    name: *const c_char,
    fq_path: *const c_char,
    plugin: *const c_void,
    /// C `bool`; read as a byte so an unexpected value cannot be an invalid Rust `bool`.
    required: u8,
    ac: c_int,
    argv: *const *const c_char,
}

/// -1 unknown, 0 optional, 1 required: how the current callback's plugin line reads.
static REQUIRED: AtomicI8 = AtomicI8::new(-1);

/// Whether plugstack.conf marked us `required` for the current callback (`None`: unknown).
pub fn required() -> Option<bool> {
    match REQUIRED.load(Ordering::Relaxed) {
        0 => Some(false),
        1 => Some(true),
        _ => None,
    }
}

/// See the module doc.
///
/// # Safety
/// `spank` must be the handle Slurm passed to the current callback (or null).
unsafe fn sniff_required(spank: spank_t, ac: c_int, argv: *const *const c_char) -> Option<bool> {
    if spank.is_null() {
        return None;
    }
    // SAFETY: Slurm passes a live `struct spank_handle *`, whose first two members (an int
    // magic and a plugin pointer) have had this layout since SPANK's first release; only those
    // two are read before the magic is checked.
    let h = unsafe { &*(spank as *const RawHandle) };
    if h.magic != SPANK_MAGIC || h.plugin.is_null() {
        return None;
    }
    // SAFETY: with the magic right, `plugin` points at the calling plugin's record, which
    // lives as long as the plugin stack; its leading members are checked against values we
    // know before `required` is trusted.
    let p = unsafe { &*h.plugin };
    let ours = p.name == plugin_name.as_ptr().cast::<c_char>();
    if !ours || p.ac != ac || p.argv != argv || p.required > 1 {
        return None;
    }
    Some(p.required == 1)
}

#[derive(Clone, Copy)]
enum Callback {
    Init,
    InitPostOpt,
    UserInit,
    TaskInitPrivileged,
    TaskInit,
    Exit,
    JobProlog,
    JobEpilog,
}

fn dispatch(spank: spank_t, ac: c_int, argv: *const *const c_char, cb: Callback) -> c_int {
    // SAFETY: these are the arguments Slurm gave this callback.
    let req = unsafe { sniff_required(spank, ac, argv) };
    REQUIRED.store(
        match req {
            Some(false) => 0,
            Some(true) => 1,
            None => -1,
        },
        Ordering::Relaxed,
    );
    let raw = AssertUnwindSafe((spank, argv));
    // slurm-spank catches panics (logging them and returning -1) and owns the option cache
    // that registered options report into.
    slurm_spank::spank_callback_with_globals::<GresOci, _>(move |plugin, options, _setup| {
        let AssertUnwindSafe((spank, argv)) = raw;
        let mut h = slurm_spank::init_spank_handle(spank, ac, argv, options);
        match cb {
            Callback::Init => plugin.init(&mut h),
            Callback::InitPostOpt => plugin.init_post_opt(&mut h),
            Callback::UserInit => plugin.user_init(&mut h),
            Callback::TaskInitPrivileged => plugin.task_init_privileged(&mut h),
            Callback::TaskInit => plugin.task_init(&mut h),
            Callback::Exit => plugin.exit(&mut h),
            Callback::JobProlog => plugin.job_prolog(&mut h),
            Callback::JobEpilog => plugin.job_epilog(&mut h),
        }
    })
}

/// # Safety
/// Called by Slurm with a valid handle and plugstack.conf's arguments.
#[no_mangle]
pub unsafe extern "C" fn slurm_spank_init(
    s: spank_t,
    ac: c_int,
    av: *const *const c_char,
) -> c_int {
    dispatch(s, ac, av, Callback::Init)
}

/// # Safety
/// As [`slurm_spank_init`].
#[no_mangle]
pub unsafe extern "C" fn slurm_spank_init_post_opt(
    s: spank_t,
    ac: c_int,
    av: *const *const c_char,
) -> c_int {
    dispatch(s, ac, av, Callback::InitPostOpt)
}

/// # Safety
/// As [`slurm_spank_init`].
#[no_mangle]
pub unsafe extern "C" fn slurm_spank_user_init(
    s: spank_t,
    ac: c_int,
    av: *const *const c_char,
) -> c_int {
    dispatch(s, ac, av, Callback::UserInit)
}

/// # Safety
/// As [`slurm_spank_init`].
#[no_mangle]
pub unsafe extern "C" fn slurm_spank_task_init_privileged(
    s: spank_t,
    ac: c_int,
    av: *const *const c_char,
) -> c_int {
    dispatch(s, ac, av, Callback::TaskInitPrivileged)
}

/// # Safety
/// As [`slurm_spank_init`].
#[no_mangle]
pub unsafe extern "C" fn slurm_spank_exit(
    s: spank_t,
    ac: c_int,
    av: *const *const c_char,
) -> c_int {
    dispatch(s, ac, av, Callback::Exit)
}

/// # Safety
/// As [`slurm_spank_init`].
#[no_mangle]
pub unsafe extern "C" fn slurm_spank_task_init(
    s: spank_t,
    ac: c_int,
    av: *const *const c_char,
) -> c_int {
    dispatch(s, ac, av, Callback::TaskInit)
}

/// # Safety
/// As [`slurm_spank_init`]. Run by slurmd's prolog (`slurmstepd spank prolog`), as root.
#[no_mangle]
pub unsafe extern "C" fn slurm_spank_job_prolog(
    s: spank_t,
    ac: c_int,
    av: *const *const c_char,
) -> c_int {
    dispatch(s, ac, av, Callback::JobProlog)
}

/// # Safety
/// As [`slurm_spank_init`]. Run by slurmd's epilog, as root.
#[no_mangle]
pub unsafe extern "C" fn slurm_spank_job_epilog(
    s: spank_t,
    ac: c_int,
    av: *const *const c_char,
) -> c_int {
    dispatch(s, ac, av, Callback::JobEpilog)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handle(magic: c_int, p: &RawPlugin) -> RawHandle {
        RawHandle {
            magic,
            plugin: p as *const RawPlugin,
        }
    }

    #[test]
    fn required_flag_is_read_only_from_our_own_record() {
        let arg = c"config=/x".as_ptr();
        let argv = [arg];
        let ours = |required: u8| RawPlugin {
            name: plugin_name.as_ptr().cast(),
            fq_path: std::ptr::null(),
            plugin: std::ptr::null(),
            required,
            ac: 1,
            argv: argv.as_ptr(),
        };
        let sniff = |h: &RawHandle, ac: c_int| {
            // SAFETY: `h` is a live, correctly laid out stand-in for Slurm's handle.
            unsafe { sniff_required(h as *const RawHandle as spank_t, ac, argv.as_ptr()) }
        };
        let (req, opt) = (ours(1), ours(0));
        assert_eq!(sniff(&handle(SPANK_MAGIC, &req), 1), Some(true));
        assert_eq!(sniff(&handle(SPANK_MAGIC, &opt), 1), Some(false));
        // Wrong magic, other argc, another plugin's name, a non-bool: unknown.
        assert_eq!(sniff(&handle(0x1234, &req), 1), None);
        assert_eq!(sniff(&handle(SPANK_MAGIC, &req), 2), None);
        let other = RawPlugin {
            name: c"other".as_ptr(),
            ..ours(1)
        };
        assert_eq!(sniff(&handle(SPANK_MAGIC, &other), 1), None);
        assert_eq!(sniff(&handle(SPANK_MAGIC, &ours(7)), 1), None);
        // SAFETY: a null handle is checked before anything is read.
        let null = unsafe { sniff_required(std::ptr::null_mut(), 0, std::ptr::null()) };
        assert_eq!(null, None);
    }
}
