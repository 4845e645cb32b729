//! Fake `libnvidia-ml.so` for tests: the exported NVML C ABI, backed by a JSON GPU description.
//!
//! The description is read by `nvmlInit*` from the file named by `GRES_OCI_FAKE_NVML`, or
//! else from `fake-nvml.json` next to the loaded shared object (the path `dladdr` reports,
//! so a symlink's directory counts). A missing or malformed file makes init return
//! `NVML_ERROR_DRIVER_NOT_LOADED`. NVML indices follow PCI bus order, as with real NVML.
//! A GPU may list MIG devices; their handles are distinct from GPU handles and work with
//! the MIG calls and, as in NVML, with a subset of the per-device queries.
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

use config::{Config, Gpu, Mig};

/// `nvmlReturn_t`.
type Ret = c_int;
/// `nvmlDevice_t`: an opaque pointer. A GPU's is its NVML index plus one; a MIG device's
/// has [`MIG_TAG`] set, its parent's NVML index above bit [`MIG_SHIFT`] and its MIG index below.
type Device = *mut c_void;

/// Top bit: marks a MIG device handle.
const MIG_TAG: usize = 1 << (usize::BITS - 1);
/// Bits of a MIG handle holding the MIG index.
const MIG_SHIFT: u32 = 16;

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

/// What a device handle refers to.
#[derive(Clone, Copy)]
struct Target<'a> {
    /// The GPU, or the MIG device's parent GPU.
    gpu: &'a Gpu,
    /// NVML index of `gpu`.
    index: usize,
    /// For a MIG handle: the MIG device and its index within `gpu`.
    mig: Option<(&'a Mig, usize)>,
}

/// Decodes `dev` against `c`; `None` if it names no GPU or MIG device.
fn resolve(c: &Config, dev: Device) -> Option<Target<'_>> {
    let raw = dev as usize;
    if raw & MIG_TAG == 0 {
        let index = raw.checked_sub(1)?;
        let gpu = c.gpus.get(index)?;
        return Some(Target {
            gpu,
            index,
            mig: None,
        });
    }
    let index = (raw & !MIG_TAG) >> MIG_SHIFT;
    let mig_index = raw & ((1 << MIG_SHIFT) - 1);
    let gpu = c.gpus.get(index)?;
    let mig = gpu.mig.as_ref()?.get(mig_index)?;
    Some(Target {
        gpu,
        index,
        mig: Some((mig, mig_index)),
    })
}

/// Runs `f` with what `dev` refers to; checks init and the handle.
fn with_target(dev: Device, f: impl FnOnce(Target<'_>) -> Ret) -> Ret {
    with_config(|c| match resolve(c, dev) {
        Some(t) => f(t),
        None => ERROR_INVALID_ARGUMENT,
    })
}

/// Runs `f` with the GPU behind `dev` and its index; checks init and the handle.
/// A MIG handle is `NVML_ERROR_INVALID_ARGUMENT`.
fn with_device(dev: Device, f: impl FnOnce(&Gpu, usize) -> Ret) -> Ret {
    with_target(dev, |t| match t.mig {
        None => f(t.gpu, t.index),
        Some(_) => ERROR_INVALID_ARGUMENT,
    })
}

/// Runs `f` with the GPU behind `dev`, or for a MIG handle its parent, and the GPU's index.
fn with_device_or_parent(dev: Device, f: impl FnOnce(&Gpu, usize) -> Ret) -> Ret {
    with_target(dev, |t| f(t.gpu, t.index))
}

/// Runs `f` with the MIG device behind `dev`; a GPU handle is `NVML_ERROR_INVALID_ARGUMENT`.
fn with_mig(dev: Device, f: impl FnOnce(&Mig) -> Ret) -> Ret {
    with_target(dev, |t| match t.mig {
        Some((m, _)) => f(m),
        None => ERROR_INVALID_ARGUMENT,
    })
}

fn handle_for(index: usize) -> Device {
    (index + 1) as Device
}

/// Handle of MIG device `mig_index` of GPU `index`. Config bounds both: the MIG index
/// by `MAX_MIG_DEVICES`, the GPU index by the address space holding the GPU list.
fn mig_handle_for(index: usize, mig_index: usize) -> Device {
    (MIG_TAG | (index << MIG_SHIFT) | mig_index) as Device
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
        let handle = match (c.index_by_uuid(uuid), c.mig_by_uuid(uuid)) {
            (Some(i), _) => handle_for(i),
            (None, Some((i, m))) => mig_handle_for(i, m),
            (None, None) => return ERROR_NOT_FOUND,
        };
        // SAFETY: forwarded caller contract.
        unsafe { put(device, handle) }
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

/// `nvmlDeviceGetUUID`: `GPU-...` for a GPU, `MIG-...` for a MIG device.
///
/// # Safety
/// `uuid` must be null or valid for `length` bytes.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetUUID(dev: Device, uuid: *mut c_char, length: c_uint) -> Ret {
    with_target(dev, |t| {
        let s = t.mig.map_or(&t.gpu.uuid, |(m, _)| &m.uuid);
        // SAFETY: forwarded caller contract.
        unsafe { put_str(s, uuid, length) }
    })
}

/// `nvmlDeviceGetName`: for a MIG device, the parent's name.
///
/// # Safety
/// `name` must be null or valid for `length` bytes.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetName(dev: Device, name: *mut c_char, length: c_uint) -> Ret {
    // SAFETY: forwarded caller contract.
    with_device_or_parent(dev, |g, _| unsafe { put_str(&g.name, name, length) })
}

/// `nvmlDeviceGetMinorNumber`: for a MIG device, the parent's.
///
/// # Safety
/// `minor` must be null or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetMinorNumber(dev: Device, minor: *mut c_uint) -> Ret {
    // SAFETY: forwarded caller contract.
    with_device_or_parent(dev, |g, _| unsafe { put(minor, g.minor) })
}

/// `nvmlDeviceGetIndex`: for a MIG device, as in NVML, its index within the parent.
///
/// # Safety
/// `index` must be null or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetIndex(dev: Device, index: *mut c_uint) -> Ret {
    with_target(dev, |t| {
        match c_uint::try_from(t.mig.map_or(t.index, |(_, m)| m)) {
            // SAFETY: forwarded caller contract.
            Ok(i) => unsafe { put(index, i) },
            Err(_) => ERROR_UNKNOWN,
        }
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

/// `nvmlDeviceGetPciInfo_v3`: for a MIG device, the parent's.
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

/// `nvmlDeviceGetCudaComputeCapability`: for a MIG device, the parent's.
///
/// # Safety
/// `major` and `minor` must each be null or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetCudaComputeCapability(
    dev: Device,
    major: *mut c_int,
    minor: *mut c_int,
) -> Ret {
    with_device_or_parent(dev, |g, _| {
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

/// `nvmlDeviceGetBrand`: for a MIG device, the parent's.
///
/// # Safety
/// `brand` must be null or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetBrand(dev: Device, brand: *mut c_int) -> Ret {
    // SAFETY: forwarded caller contract.
    with_device_or_parent(dev, |g, _| unsafe { put(brand, g.brand) })
}

/// `nvmlDeviceGetMigMode`: enabled (1, 1) for a GPU with a non-empty `mig` list, disabled
/// (0, 0) for `"mig": []`, `NVML_ERROR_NOT_SUPPORTED` without a `mig` key.
/// A MIG handle is `NVML_ERROR_INVALID_ARGUMENT`.
///
/// # Safety
/// `current` and `pending` must each be null or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetMigMode(
    dev: Device,
    current: *mut c_uint,
    pending: *mut c_uint,
) -> Ret {
    with_device(dev, |g, _| {
        if current.is_null() || pending.is_null() {
            return ERROR_INVALID_ARGUMENT;
        }
        let Some(migs) = &g.mig else {
            return ERROR_NOT_SUPPORTED;
        };
        let mode = c_uint::from(!migs.is_empty());
        // SAFETY: both non-null; forwarded caller contract.
        unsafe {
            current.write(mode);
            pending.write(mode);
        }
        SUCCESS
    })
}

/// `nvmlDeviceGetMaxMigDeviceCount`: the length of the GPU's `mig` list;
/// `NVML_ERROR_NOT_SUPPORTED` when MIG is off (no `mig` key, or an empty list).
/// A MIG handle is `NVML_ERROR_INVALID_ARGUMENT`.
///
/// # Safety
/// `count` must be null or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetMaxMigDeviceCount(dev: Device, count: *mut c_uint) -> Ret {
    with_device(dev, |g, _| {
        match g.mig_enabled().map(|m| c_uint::try_from(m.len())) {
            // SAFETY: forwarded caller contract.
            Some(Ok(n)) => unsafe { put(count, n) },
            Some(Err(_)) => ERROR_UNKNOWN,
            None => ERROR_NOT_SUPPORTED,
        }
    })
}

/// `nvmlDeviceGetMigDeviceHandleByIndex`: `NVML_ERROR_NOT_FOUND` past the end of the
/// `mig` list (so always for `"mig": []`), `NVML_ERROR_NOT_SUPPORTED` without a `mig` key,
/// `NVML_ERROR_INVALID_ARGUMENT` for a MIG handle.
///
/// # Safety
/// `mig_device` must be null or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetMigDeviceHandleByIndex(
    dev: Device,
    index: c_uint,
    mig_device: *mut Device,
) -> Ret {
    with_device(dev, |g, i| {
        if mig_device.is_null() {
            return ERROR_INVALID_ARGUMENT;
        }
        let Some(migs) = &g.mig else {
            return ERROR_NOT_SUPPORTED;
        };
        let m = index as usize;
        if m >= migs.len() {
            return ERROR_NOT_FOUND;
        }
        // SAFETY: forwarded caller contract.
        unsafe { put(mig_device, mig_handle_for(i, m)) }
    })
}

/// `nvmlDeviceIsMigDeviceHandle`: 1 for a MIG handle, 0 for a GPU handle.
///
/// # Safety
/// `is_mig` must be null or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceIsMigDeviceHandle(dev: Device, is_mig: *mut c_uint) -> Ret {
    // SAFETY: forwarded caller contract.
    with_target(dev, |t| unsafe {
        put(is_mig, c_uint::from(t.mig.is_some()))
    })
}

/// `nvmlDeviceGetDeviceHandleFromMigDeviceHandle`: the parent GPU's handle;
/// a GPU handle is `NVML_ERROR_INVALID_ARGUMENT`.
///
/// # Safety
/// `device` must be null or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetDeviceHandleFromMigDeviceHandle(
    mig_device: Device,
    device: *mut Device,
) -> Ret {
    with_target(mig_device, |t| match t.mig {
        // SAFETY: forwarded caller contract.
        Some(_) => unsafe { put(device, handle_for(t.index)) },
        None => ERROR_INVALID_ARGUMENT,
    })
}

/// `nvmlDeviceGetGpuInstanceId`: the MIG device's `gi`; a GPU handle is
/// `NVML_ERROR_INVALID_ARGUMENT`.
///
/// # Safety
/// `id` must be null or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetGpuInstanceId(dev: Device, id: *mut c_uint) -> Ret {
    // SAFETY: forwarded caller contract.
    with_mig(dev, |m| unsafe { put(id, m.gi) })
}

/// `nvmlDeviceGetComputeInstanceId`: the MIG device's `ci`; a GPU handle is
/// `NVML_ERROR_INVALID_ARGUMENT`.
///
/// # Safety
/// `id` must be null or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetComputeInstanceId(dev: Device, id: *mut c_uint) -> Ret {
    // SAFETY: forwarded caller contract.
    with_mig(dev, |m| unsafe { put(id, m.ci) })
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
    with_device_or_parent(dev, |g, _| {
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
    fn handles_resolve() {
        let c = Config::parse(
            r#"{"driver_version": "1", "gpus": [
              {"uuid": "GPU-a", "minor": 0, "pci_bus_id": "01:00.0"},
              {"uuid": "GPU-b", "minor": 1, "pci_bus_id": "02:00.0",
               "mig": [{"uuid": "MIG-3f9a2c1e-7b44-5d0e-9a1b-2c3d4e5f6a7b", "gi": 3, "ci": 1}]}]}"#,
        )
        .expect("valid");
        let gpu = resolve(&c, handle_for(1)).expect("gpu 1");
        assert_eq!(
            (gpu.gpu.uuid.as_str(), gpu.index, gpu.mig),
            ("GPU-b", 1, None)
        );
        let mig = resolve(&c, mig_handle_for(1, 0)).expect("mig 1/0");
        assert_eq!(mig.index, 1);
        assert_eq!(mig.mig.map(|(m, i)| (m.gi, m.ci, i)), Some((3, 1, 0)));
        assert_ne!(mig_handle_for(1, 0), handle_for(1));
        assert!(resolve(&c, std::ptr::null_mut()).is_none());
        assert!(resolve(&c, handle_for(2)).is_none());
        assert!(resolve(&c, mig_handle_for(1, 1)).is_none());
        assert!(resolve(&c, mig_handle_for(0, 0)).is_none());
        assert!(resolve(&c, mig_handle_for(2, 0)).is_none());
    }

    #[test]
    fn fill_terminates() {
        let mut a = [1 as c_char; 4];
        fill(&mut a, "abcdef");
        assert_eq!(a, [b'a' as c_char, b'b' as c_char, b'c' as c_char, 0]);
    }
}
