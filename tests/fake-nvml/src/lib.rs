//! Fake `libnvidia-ml.so` for tests: the exported NVML C ABI, backed by a JSON GPU description.
//!
//! The description is read by `nvmlInit*` from the file named by `GRES_OCI_FAKE_NVML`, or
//! else from `fake-nvml.json` next to the loaded shared object (the path `dladdr` reports,
//! so a symlink's directory counts). A missing or malformed file makes init return
//! `NVML_ERROR_DRIVER_NOT_LOADED`. NVML indices follow PCI bus order, as with real NVML.
//! Nothing here prints, and no panic crosses the C boundary.
#![allow(non_snake_case)]

mod config;
mod locate;

pub use locate::{built_cdylib, CDYLIB_NAME};

use std::ffi::{c_char, c_int, c_uint, c_void, CStr, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use config::{Config, Gpu};

/// `nvmlReturn_t`.
type Ret = c_int;
/// `nvmlDevice_t`: an opaque pointer; here the NVML index plus one.
type Device = *mut c_void;

const SUCCESS: Ret = 0;
const ERROR_UNINITIALIZED: Ret = 1;
const ERROR_INVALID_ARGUMENT: Ret = 2;
const ERROR_NOT_SUPPORTED: Ret = 3;
const ERROR_NOT_FOUND: Ret = 6;
const ERROR_INSUFFICIENT_SIZE: Ret = 7;
const ERROR_DRIVER_NOT_LOADED: Ret = 9;
const ERROR_UNKNOWN: Ret = 999;

/// Environment variable naming the JSON description.
const ENV_PATH: &str = "GRES_OCI_FAKE_NVML";
/// File name looked for next to the shared object.
const SIDECAR_NAME: &str = "fake-nvml.json";

/// Init reference count and the description loaded by the first init.
struct State {
    refcount: u32,
    config: Option<Arc<Config>>,
}

static STATE: Mutex<State> = Mutex::new(State {
    refcount: 0,
    config: None,
});

fn lock() -> MutexGuard<'static, State> {
    STATE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `f`, turning a panic into `NVML_ERROR_UNKNOWN`.
fn guard(f: impl FnOnce() -> Ret) -> Ret {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(ERROR_UNKNOWN)
}

/// Runs `f` with the loaded description, or returns `NVML_ERROR_UNINITIALIZED`.
fn with_config(f: impl FnOnce(&Config) -> Ret) -> Ret {
    guard(|| {
        let config = lock().config.clone();
        match config {
            Some(c) => f(&c),
            None => ERROR_UNINITIALIZED,
        }
    })
}

/// Runs `f` with the GPU behind `dev` and its index; checks init and the handle.
fn with_device(dev: Device, f: impl FnOnce(&Gpu, usize) -> Ret) -> Ret {
    with_config(|c| {
        match (dev as usize)
            .checked_sub(1)
            .and_then(|i| c.gpus.get(i).map(|g| (g, i)))
        {
            Some((g, i)) => f(g, i),
            None => ERROR_INVALID_ARGUMENT,
        }
    })
}

fn handle_for(index: usize) -> Device {
    (index + 1) as Device
}

/// Path of this shared object as the dynamic loader knows it.
fn own_path() -> Option<PathBuf> {
    let mut info = libc::Dl_info {
        dli_fname: std::ptr::null(),
        dli_fbase: std::ptr::null_mut(),
        dli_sname: std::ptr::null(),
        dli_saddr: std::ptr::null_mut(),
    };
    let addr = own_path as fn() -> Option<PathBuf> as *const c_void;
    // SAFETY: `addr` points into this object's code and `info` is a valid, writable Dl_info.
    let rc = unsafe { libc::dladdr(addr, &mut info) };
    if rc == 0 || info.dli_fname.is_null() {
        return None;
    }
    // SAFETY: on success dli_fname is a NUL-terminated string owned by the loader,
    // alive while this object stays loaded (it is: we are running its code).
    let name = unsafe { CStr::from_ptr(info.dli_fname) };
    Some(PathBuf::from(OsStr::from_bytes(name.to_bytes())))
}

fn config_path() -> Option<PathBuf> {
    match std::env::var_os(ENV_PATH) {
        Some(p) if !p.is_empty() => Some(PathBuf::from(p)),
        _ => Some(own_path()?.parent()?.join(SIDECAR_NAME)),
    }
}

fn init() -> Ret {
    guard(|| {
        let mut st = lock();
        if st.config.is_none() {
            match config_path().and_then(|p| Config::load(&p)) {
                Some(c) => st.config = Some(Arc::new(c)),
                None => return ERROR_DRIVER_NOT_LOADED,
            }
        }
        st.refcount = st.refcount.saturating_add(1);
        SUCCESS
    })
}

/// Writes `s` and a NUL into the caller's buffer.
///
/// # Safety
/// `buf` must be null or valid for writes of `len` bytes.
unsafe fn put_str(s: &str, buf: *mut c_char, len: c_uint) -> Ret {
    if buf.is_null() {
        return ERROR_INVALID_ARGUMENT;
    }
    if (len as usize) < s.len() + 1 {
        return ERROR_INSUFFICIENT_SIZE;
    }
    // SAFETY: the caller guarantees `len` writable bytes at `buf`, and s.len() + 1 <= len;
    // a fresh &str cannot overlap the caller's buffer.
    unsafe {
        std::ptr::copy_nonoverlapping(s.as_ptr(), buf.cast::<u8>(), s.len());
        buf.add(s.len()).write(0);
    }
    SUCCESS
}

/// Writes `v` through `out`.
///
/// # Safety
/// `out` must be null or valid for a write of `T`.
unsafe fn put<T>(out: *mut T, v: T) -> Ret {
    if out.is_null() {
        return ERROR_INVALID_ARGUMENT;
    }
    // SAFETY: non-null, and the caller guarantees it is valid for writes.
    unsafe { out.write(v) };
    SUCCESS
}

/// Reads a C string argument as UTF-8.
///
/// # Safety
/// `s` must be null or a valid NUL-terminated string.
unsafe fn arg_str<'a>(s: *const c_char) -> Option<&'a str> {
    if s.is_null() {
        return None;
    }
    // SAFETY: non-null, and the caller guarantees it is NUL-terminated and readable.
    unsafe { CStr::from_ptr(s) }.to_str().ok()
}

/// `nvmlInit_v2`: loads the JSON description on the first call.
#[no_mangle]
pub extern "C" fn nvmlInit_v2() -> Ret {
    init()
}

/// `nvmlInit` (v1): same as `nvmlInit_v2`.
#[no_mangle]
pub extern "C" fn nvmlInit() -> Ret {
    init()
}

/// `nvmlInitWithFlags`: flags are ignored.
#[no_mangle]
pub extern "C" fn nvmlInitWithFlags(_flags: c_uint) -> Ret {
    init()
}

/// `nvmlShutdown`: drops the description once every init is matched.
#[no_mangle]
pub extern "C" fn nvmlShutdown() -> Ret {
    guard(|| {
        let mut st = lock();
        if st.refcount == 0 {
            return ERROR_UNINITIALIZED;
        }
        st.refcount -= 1;
        if st.refcount == 0 {
            st.config = None;
        }
        SUCCESS
    })
}

/// `nvmlErrorString`: a static description of a return code.
#[no_mangle]
pub extern "C" fn nvmlErrorString(result: c_int) -> *const c_char {
    let s: &'static CStr = match result {
        SUCCESS => c"Success",
        ERROR_UNINITIALIZED => c"Uninitialized",
        ERROR_INVALID_ARGUMENT => c"Invalid Argument",
        ERROR_NOT_SUPPORTED => c"Not Supported",
        ERROR_NOT_FOUND => c"Not Found",
        ERROR_INSUFFICIENT_SIZE => c"Insufficient Size",
        ERROR_DRIVER_NOT_LOADED => c"Driver Not Loaded",
        _ => c"Unknown Error",
    };
    s.as_ptr()
}

/// `nvmlSystemGetDriverVersion`.
///
/// # Safety
/// `version` must be null or valid for `length` bytes.
#[no_mangle]
pub unsafe extern "C" fn nvmlSystemGetDriverVersion(version: *mut c_char, length: c_uint) -> Ret {
    // SAFETY: forwarded caller contract.
    with_config(|c| unsafe { put_str(&c.driver_version, version, length) })
}

/// `nvmlSystemGetNVMLVersion`: `<cuda major>.<driver version>`.
///
/// # Safety
/// `version` must be null or valid for `length` bytes.
#[no_mangle]
pub unsafe extern "C" fn nvmlSystemGetNVMLVersion(version: *mut c_char, length: c_uint) -> Ret {
    // SAFETY: forwarded caller contract.
    with_config(|c| unsafe { put_str(&c.nvml_version(), version, length) })
}

/// `nvmlSystemGetCudaDriverVersion`.
///
/// # Safety
/// `out` must be null or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn nvmlSystemGetCudaDriverVersion(out: *mut c_int) -> Ret {
    // SAFETY: forwarded caller contract.
    unsafe { cuda_driver_version(out) }
}

/// `nvmlSystemGetCudaDriverVersion_v2`.
///
/// # Safety
/// `out` must be null or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn nvmlSystemGetCudaDriverVersion_v2(out: *mut c_int) -> Ret {
    // SAFETY: forwarded caller contract.
    unsafe { cuda_driver_version(out) }
}

/// `nvmlDeviceGetCount_v2`.
///
/// # Safety
/// `count` must be null or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetCount_v2(count: *mut c_uint) -> Ret {
    // SAFETY: forwarded caller contract.
    unsafe { device_count(count) }
}

/// `nvmlDeviceGetCount` (v1).
///
/// # Safety
/// `count` must be null or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetCount(count: *mut c_uint) -> Ret {
    // SAFETY: forwarded caller contract.
    unsafe { device_count(count) }
}

/// `nvmlDeviceGetHandleByIndex_v2`: index is the position in PCI bus order.
///
/// # Safety
/// `device` must be null or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetHandleByIndex_v2(index: c_uint, device: *mut Device) -> Ret {
    // SAFETY: forwarded caller contract.
    unsafe { handle_by_index(index, device) }
}

/// `nvmlDeviceGetHandleByIndex` (v1).
///
/// # Safety
/// `device` must be null or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetHandleByIndex(index: c_uint, device: *mut Device) -> Ret {
    // SAFETY: forwarded caller contract.
    unsafe { handle_by_index(index, device) }
}

/// `nvmlDeviceGetHandleByUUID`.
///
/// # Safety
/// `uuid` must be null or NUL-terminated; `device` null or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetHandleByUUID(
    uuid: *const c_char,
    device: *mut Device,
) -> Ret {
    with_config(|c| {
        // SAFETY: forwarded caller contract.
        let Some(uuid) = (unsafe { arg_str(uuid) }) else {
            return ERROR_INVALID_ARGUMENT;
        };
        if device.is_null() {
            return ERROR_INVALID_ARGUMENT;
        }
        match c.index_by_uuid(uuid) {
            // SAFETY: forwarded caller contract.
            Some(i) => unsafe { put(device, handle_for(i)) },
            None => ERROR_NOT_FOUND,
        }
    })
}

/// `nvmlDeviceGetHandleByPciBusId_v2`: matches case-insensitively, any domain width.
///
/// # Safety
/// `bus_id` must be null or NUL-terminated; `device` null or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetHandleByPciBusId_v2(
    bus_id: *const c_char,
    device: *mut Device,
) -> Ret {
    // SAFETY: forwarded caller contract.
    unsafe { handle_by_pci_bus_id(bus_id, device) }
}

/// `nvmlDeviceGetHandleByPciBusId` (v1).
///
/// # Safety
/// As `nvmlDeviceGetHandleByPciBusId_v2`.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetHandleByPciBusId(
    bus_id: *const c_char,
    device: *mut Device,
) -> Ret {
    // SAFETY: forwarded caller contract.
    unsafe { handle_by_pci_bus_id(bus_id, device) }
}

/// `nvmlDeviceGetUUID`.
///
/// # Safety
/// `uuid` must be null or valid for `length` bytes.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetUUID(dev: Device, uuid: *mut c_char, length: c_uint) -> Ret {
    // SAFETY: forwarded caller contract.
    with_device(dev, |g, _| unsafe { put_str(&g.uuid, uuid, length) })
}

/// `nvmlDeviceGetName`.
///
/// # Safety
/// `name` must be null or valid for `length` bytes.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetName(dev: Device, name: *mut c_char, length: c_uint) -> Ret {
    // SAFETY: forwarded caller contract.
    with_device(dev, |g, _| unsafe { put_str(&g.name, name, length) })
}

/// `nvmlDeviceGetMinorNumber`.
///
/// # Safety
/// `minor` must be null or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetMinorNumber(dev: Device, minor: *mut c_uint) -> Ret {
    // SAFETY: forwarded caller contract.
    with_device(dev, |g, _| unsafe { put(minor, g.minor) })
}

/// `nvmlDeviceGetIndex`.
///
/// # Safety
/// `index` must be null or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetIndex(dev: Device, index: *mut c_uint) -> Ret {
    with_device(dev, |_, i| match c_uint::try_from(i) {
        // SAFETY: forwarded caller contract.
        Ok(i) => unsafe { put(index, i) },
        Err(_) => ERROR_UNKNOWN,
    })
}

/// `nvmlPciInfo_t`.
#[repr(C)]
pub struct NvmlPciInfo {
    pub bus_id_legacy: [c_char; 16],
    pub domain: c_uint,
    pub bus: c_uint,
    pub device: c_uint,
    pub pci_device_id: c_uint,
    pub pci_sub_system_id: c_uint,
    pub bus_id: [c_char; 32],
}

/// Copies `s` into a fixed C char array, NUL-terminated (truncating if needed).
fn fill<const N: usize>(dst: &mut [c_char; N], s: &str) {
    let n = s.len().min(N.saturating_sub(1));
    for (d, b) in dst.iter_mut().zip(s.bytes().take(n)) {
        *d = b as c_char;
    }
    if let Some(end) = dst.get_mut(n) {
        *end = 0;
    }
}

/// `nvmlDeviceGetPciInfo_v3`.
///
/// # Safety
/// `pci` must be null or valid for a write of `nvmlPciInfo_t`.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetPciInfo_v3(dev: Device, pci: *mut NvmlPciInfo) -> Ret {
    // SAFETY: forwarded caller contract.
    unsafe { pci_info(dev, pci) }
}

/// `nvmlDeviceGetPciInfo_v2`: same struct as v3.
///
/// # Safety
/// As `nvmlDeviceGetPciInfo_v3`.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetPciInfo_v2(dev: Device, pci: *mut NvmlPciInfo) -> Ret {
    // SAFETY: forwarded caller contract.
    unsafe { pci_info(dev, pci) }
}

/// `nvmlDeviceGetPciInfo` (v1): same struct as v3.
///
/// # Safety
/// As `nvmlDeviceGetPciInfo_v3`.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetPciInfo(dev: Device, pci: *mut NvmlPciInfo) -> Ret {
    // SAFETY: forwarded caller contract.
    unsafe { pci_info(dev, pci) }
}

/// `nvmlDeviceGetCudaComputeCapability`.
///
/// # Safety
/// `major` and `minor` must each be null or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetCudaComputeCapability(
    dev: Device,
    major: *mut c_int,
    minor: *mut c_int,
) -> Ret {
    with_device(dev, |g, _| {
        if major.is_null() || minor.is_null() {
            return ERROR_INVALID_ARGUMENT;
        }
        let [ma, mi] = g.compute_capability;
        // SAFETY: both non-null; forwarded caller contract.
        unsafe {
            major.write(ma);
            minor.write(mi);
        }
        SUCCESS
    })
}

/// `nvmlDeviceGetBrand`.
///
/// # Safety
/// `brand` must be null or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetBrand(dev: Device, brand: *mut c_int) -> Ret {
    // SAFETY: forwarded caller contract.
    with_device(dev, |g, _| unsafe { put(brand, g.brand) })
}

/// `nvmlDeviceGetMigMode`: the fake GPUs do not support MIG.
#[no_mangle]
pub extern "C" fn nvmlDeviceGetMigMode(
    dev: Device,
    current: *mut c_uint,
    pending: *mut c_uint,
) -> Ret {
    with_device(dev, |_, _| {
        if current.is_null() || pending.is_null() {
            ERROR_INVALID_ARGUMENT
        } else {
            ERROR_NOT_SUPPORTED
        }
    })
}

/// Shared body of `nvmlSystemGetCudaDriverVersion` and its other versions.
///
/// # Safety
/// As `nvmlSystemGetCudaDriverVersion`.
unsafe fn cuda_driver_version(out: *mut c_int) -> Ret {
    // SAFETY: forwarded caller contract.
    with_config(|c| unsafe { put(out, c.cuda_driver_version) })
}

/// Shared body of `nvmlDeviceGetCount_v2` and its other versions.
///
/// # Safety
/// As `nvmlDeviceGetCount_v2`.
unsafe fn device_count(count: *mut c_uint) -> Ret {
    with_config(|c| match c_uint::try_from(c.gpus.len()) {
        // SAFETY: forwarded caller contract.
        Ok(n) => unsafe { put(count, n) },
        Err(_) => ERROR_UNKNOWN,
    })
}

/// Shared body of `nvmlDeviceGetHandleByIndex_v2` and its other versions.
///
/// # Safety
/// As `nvmlDeviceGetHandleByIndex_v2`.
unsafe fn handle_by_index(index: c_uint, device: *mut Device) -> Ret {
    with_config(|c| {
        let i = index as usize;
        if i >= c.gpus.len() {
            return ERROR_INVALID_ARGUMENT;
        }
        // SAFETY: forwarded caller contract.
        unsafe { put(device, handle_for(i)) }
    })
}

/// Shared body of `nvmlDeviceGetHandleByPciBusId_v2` and its other versions.
///
/// # Safety
/// As `nvmlDeviceGetHandleByPciBusId_v2`.
unsafe fn handle_by_pci_bus_id(bus_id: *const c_char, device: *mut Device) -> Ret {
    with_config(|c| {
        // SAFETY: forwarded caller contract.
        let Some(bus_id) = (unsafe { arg_str(bus_id) }) else {
            return ERROR_INVALID_ARGUMENT;
        };
        if device.is_null() {
            return ERROR_INVALID_ARGUMENT;
        }
        match c.index_by_bus_id(bus_id) {
            // SAFETY: forwarded caller contract.
            Some(i) => unsafe { put(device, handle_for(i)) },
            None => ERROR_NOT_FOUND,
        }
    })
}

/// Shared body of `nvmlDeviceGetPciInfo_v3` and its other versions.
///
/// # Safety
/// As `nvmlDeviceGetPciInfo_v3`.
unsafe fn pci_info(dev: Device, pci: *mut NvmlPciInfo) -> Ret {
    with_device(dev, |g, _| {
        let mut info = NvmlPciInfo {
            bus_id_legacy: [0; 16],
            domain: g.pci.domain,
            bus: g.pci.bus,
            device: g.pci.device,
            pci_device_id: g.pci_device_id,
            pci_sub_system_id: 0,
            bus_id: [0; 32],
        };
        fill(&mut info.bus_id_legacy, &g.pci.bus_id_legacy());
        fill(&mut info.bus_id, &g.pci.bus_id());
        // SAFETY: forwarded caller contract.
        unsafe { put(pci, info) }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_str_checks_size() {
        let mut buf = [0x7f as c_char; 4];
        // SAFETY: buf is valid for its length.
        let too_long = unsafe { put_str("abcd", buf.as_mut_ptr(), 4) };
        assert_eq!(too_long, ERROR_INSUFFICIENT_SIZE);
        // SAFETY: buf is valid for its length.
        let fits = unsafe { put_str("abc", buf.as_mut_ptr(), 4) };
        assert_eq!(fits, SUCCESS);
        assert_eq!(buf, [b'a' as c_char, b'b' as c_char, b'c' as c_char, 0]);
        // SAFETY: null is allowed.
        let null = unsafe { put_str("a", std::ptr::null_mut(), 4) };
        assert_eq!(null, ERROR_INVALID_ARGUMENT);
    }

    #[test]
    fn error_strings_are_static() {
        // SAFETY: nvmlErrorString returns a 'static NUL-terminated string.
        let s = unsafe { CStr::from_ptr(nvmlErrorString(ERROR_DRIVER_NOT_LOADED)) };
        assert_eq!(s.to_str(), Ok("Driver Not Loaded"));
    }

    #[test]
    fn fill_terminates() {
        let mut a = [1 as c_char; 4];
        fill(&mut a, "abcdef");
        assert_eq!(a, [b'a' as c_char, b'b' as c_char, b'c' as c_char, 0]);
    }
}
