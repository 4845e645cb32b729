//! Finding the built fake library from a test binary, for this crate's and its users' tests.

use std::path::PathBuf;

/// File name cargo gives the cdylib.
pub const CDYLIB_NAME: &str = "libfake_nvml.so";

/// Path of the built fake `libnvidia-ml.so`, seen from a test binary in `<target>/<profile>/deps/`.
///
/// Tries, in order: `$FAKE_NVML_SO`; `<target>/<profile>/deps/libfake_nvml.so`, which cargo
/// builds whenever `fake-nvml` is tested or is a (dev-)dependency; and
/// `<target>/<profile>/libfake_nvml.so`, which `cargo build -p fake-nvml` leaves.
/// `None` if none of them is a file.
pub fn built_cdylib() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("FAKE_NVML_SO") {
        return Some(PathBuf::from(p)).filter(|p| p.is_file());
    }
    let exe = std::env::current_exe().ok()?;
    let deps = exe.parent()?;
    [deps.join(CDYLIB_NAME), deps.parent()?.join(CDYLIB_NAME)]
        .into_iter()
        .find(|p| p.is_file())
}
