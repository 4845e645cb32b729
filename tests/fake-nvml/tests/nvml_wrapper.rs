//! Loads the built fake `libnvidia-ml.so` through the real `nvml-wrapper` and checks what it reports.
//!
//! The cdylib is found by `fake_nvml::built_cdylib` (`cargo test -p fake-nvml` builds it).
//! Each test copies it into its own temporary directory, so each gets its own NVML state.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use nvml_wrapper::enum_wrappers::device::Brand;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::{Device, Nvml};

const DRIVER: &str = "550.54.15";

/// Serialises tests: `GRES_OCI_FAKE_NVML` is process-wide.
static ENV_LOCK: Mutex<()> = Mutex::new(());

fn env_lock() -> MutexGuard<'static, ()> {
    ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn built_so() -> PathBuf {
    fake_nvml::built_cdylib().unwrap_or_else(|| {
        panic!(
            "{} not found next to the test binary: run `cargo build -p fake-nvml` (or set FAKE_NVML_SO)",
            fake_nvml::CDYLIB_NAME
        )
    })
}

/// A fake driver directory: `lib/libnvidia-ml.so.<ver>` plus `lib/libnvidia-ml.so.1` -> it.
struct Driver {
    dir: tempfile::TempDir,
}

impl Driver {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let lib = dir.path().join("lib");
        fs::create_dir(&lib).expect("mkdir lib");
        let real = lib.join(format!("libnvidia-ml.so.{DRIVER}"));
        fs::copy(built_so(), &real).expect("copy cdylib");
        std::os::unix::fs::symlink(&real, lib.join("libnvidia-ml.so.1")).expect("symlink");
        Self { dir }
    }

    fn lib_dir(&self) -> PathBuf {
        self.dir.path().join("lib")
    }

    fn write_sidecar(&self, text: &str) {
        fs::write(self.lib_dir().join("fake-nvml.json"), text).expect("write json");
    }

    fn init(&self) -> Result<Nvml, NvmlError> {
        init_at(&self.lib_dir().join("libnvidia-ml.so.1"))
    }
}

fn init_at(path: &Path) -> Result<Nvml, NvmlError> {
    let os: OsString = path.as_os_str().to_owned();
    Nvml::builder().lib_path(&os).init()
}

/// Three GPUs listed out of PCI order, with mixed domain widths and case.
const THREE: &str = r#"{
  "driver_version": "550.54.15",
  "cuda_driver_version": 12040,
  "gpus": [
    {"uuid": "GPU-cccccccc-0000-0000-0000-000000000003", "minor": 0, "pci_bus_id": "0000:9A:00.0"},
    {"uuid": "GPU-3f9a2c1e-7b44-5d0e-9a1b-2c3d4e5f6a7b", "minor": 2, "pci_bus_id": "0000:1b:00.0",
     "name": "NVIDIA H100 80GB HBM3", "pci_device_id": 590418142, "compute_capability": [9, 0], "brand": 2},
    {"uuid": "GPU-aaaaaaaa-0000-0000-0000-000000000002", "minor": 1, "pci_bus_id": "00000000:4c:00.0",
     "name": "NVIDIA A100-SXM4-40GB", "pci_device_id": 539234526, "compute_capability": [8, 0], "brand": 5}
  ]
}"#;

#[test]
fn reports_system_and_devices_in_pci_order() {
    let _g = env_lock();
    std::env::remove_var("GRES_OCI_FAKE_NVML");
    let d = Driver::new();
    d.write_sidecar(THREE);
    let nvml = d.init().expect("init");

    assert_eq!(nvml.sys_driver_version().expect("driver"), DRIVER);
    assert_eq!(nvml.sys_cuda_driver_version().expect("cuda"), 12040);
    assert_eq!(nvml.sys_nvml_version().expect("nvml"), "12.550.54.15");
    assert_eq!(nvml.device_count().expect("count"), 3);

    let want = [
        (
            "GPU-3f9a2c1e-7b44-5d0e-9a1b-2c3d4e5f6a7b",
            2,
            "00000000:1B:00.0",
            0x1b,
        ),
        (
            "GPU-aaaaaaaa-0000-0000-0000-000000000002",
            1,
            "00000000:4C:00.0",
            0x4c,
        ),
        (
            "GPU-cccccccc-0000-0000-0000-000000000003",
            0,
            "00000000:9A:00.0",
            0x9a,
        ),
    ];
    for (i, (uuid, minor, bus_id, bus)) in want.iter().enumerate() {
        let idx = u32::try_from(i).expect("small");
        let dev = nvml.device_by_index(idx).expect("device_by_index");
        assert_eq!(dev.uuid().expect("uuid"), *uuid, "index {i}");
        assert_eq!(dev.minor_number().expect("minor"), *minor, "index {i}");
        assert_eq!(dev.index().expect("index"), idx);
        let pci = dev.pci_info().expect("pci_info");
        assert_eq!(pci.bus_id, *bus_id, "index {i}");
        assert_eq!((pci.domain, pci.bus, pci.device), (0, *bus, 0));
        assert_eq!(pci.pci_sub_system_id, Some(0));
        assert!(matches!(dev.mig_mode(), Err(NvmlError::NotSupported)));

        let by_uuid = nvml.device_by_uuid(*uuid).expect("by uuid");
        assert_eq!(by_uuid.index().expect("index"), idx);
        let by_bus = nvml
            .device_by_pci_bus_id(bus_id.to_ascii_lowercase().replacen("0000", "", 1))
            .expect("by bus id");
        assert_eq!(by_bus.index().expect("index"), idx);
    }

    let h100 = nvml.device_by_index(0).expect("dev 0");
    assert_eq!(h100.name().expect("name"), "NVIDIA H100 80GB HBM3");
    assert_eq!(h100.pci_info().expect("pci").pci_device_id, 590_418_142);
    let cc = h100.cuda_compute_capability().expect("cc");
    assert_eq!((cc.major, cc.minor), (9, 0));
    assert_eq!(h100.brand().expect("brand"), Brand::Tesla);
    let a100 = nvml.device_by_index(1).expect("dev 1");
    assert_eq!(a100.name().expect("name"), "NVIDIA A100-SXM4-40GB");
    assert_eq!(a100.cuda_compute_capability().expect("cc").minor, 0);
    assert_eq!(a100.cuda_compute_capability().expect("cc").major, 8);
    assert_eq!(a100.brand().expect("brand"), Brand::GeForce);
    // Defaults for a GPU that leaves the optional fields out.
    let plain = nvml.device_by_index(2).expect("dev 2");
    assert_eq!(plain.name().expect("name"), "NVIDIA H100 80GB HBM3");
    assert_eq!(plain.brand().expect("brand"), Brand::Tesla);

    assert!(matches!(
        nvml.device_by_index(3),
        Err(NvmlError::InvalidArg)
    ));
    assert!(matches!(
        nvml.device_by_uuid("GPU-nope"),
        Err(NvmlError::NotFound)
    ));
    assert!(matches!(
        nvml.device_by_pci_bus_id("0000:02:00.0"),
        Err(NvmlError::NotFound)
    ));
    nvml.shutdown().expect("shutdown");
}

#[test]
fn sidecar_is_found_next_to_a_symlink() {
    let _g = env_lock();
    std::env::remove_var("GRES_OCI_FAKE_NVML");
    let d = Driver::new();
    let other = d.dir.path().join("other");
    fs::create_dir(&other).expect("mkdir");
    let link = other.join("libnvidia-ml.so.1");
    std::os::unix::fs::symlink(d.lib_dir().join(format!("libnvidia-ml.so.{DRIVER}")), &link)
        .expect("symlink");
    fs::write(other.join("fake-nvml.json"), THREE).expect("write json");
    let nvml = init_at(&link).expect("init through symlink");
    assert_eq!(nvml.device_count().expect("count"), 3);
}

#[test]
fn env_var_overrides_sidecar() {
    let _g = env_lock();
    let d = Driver::new();
    d.write_sidecar("not json");
    let json = d.dir.path().join("elsewhere.json");
    fs::write(
        &json,
        r#"{"driver_version": "535.1.2", "cuda_driver_version": 12020,
            "gpus": [{"uuid": "GPU-x", "minor": 7, "pci_bus_id": "0001:03:00.0"}]}"#,
    )
    .expect("write json");
    std::env::set_var("GRES_OCI_FAKE_NVML", &json);
    let res = d.init();
    std::env::remove_var("GRES_OCI_FAKE_NVML");
    let nvml = res.expect("init from env");
    assert_eq!(nvml.sys_driver_version().expect("driver"), "535.1.2");
    assert_eq!(nvml.sys_cuda_driver_version().expect("cuda"), 12020);
    let dev = nvml.device_by_index(0).expect("dev");
    assert_eq!(dev.minor_number().expect("minor"), 7);
    assert_eq!(dev.pci_info().expect("pci").bus_id, "00000001:03:00.0");
    assert_eq!(
        nvml.device_by_pci_bus_id("0001:03:00.0")
            .expect("by bus")
            .uuid()
            .expect("uuid"),
        "GPU-x"
    );
}

#[test]
fn missing_json_fails_init() {
    let _g = env_lock();
    std::env::remove_var("GRES_OCI_FAKE_NVML");
    let d = Driver::new();
    assert!(matches!(d.init(), Err(NvmlError::DriverNotLoaded)));
}

#[test]
fn garbage_json_fails_init() {
    let _g = env_lock();
    std::env::remove_var("GRES_OCI_FAKE_NVML");
    let d = Driver::new();
    d.write_sidecar("{\"driver_version\": 5, garbage");
    assert!(matches!(d.init(), Err(NvmlError::DriverNotLoaded)));
    d.write_sidecar(
        r#"{"driver_version": "1", "gpus": [{"uuid": "GPU-a", "minor": 0, "pci_bus_id": "bad"}]}"#,
    );
    assert!(matches!(d.init(), Err(NvmlError::DriverNotLoaded)));
}

#[test]
fn init_is_reference_counted() {
    let _g = env_lock();
    std::env::remove_var("GRES_OCI_FAKE_NVML");
    let d = Driver::new();
    d.write_sidecar(THREE);
    let first = d.init().expect("first init");
    let second = d.init().expect("second init");
    drop(first);
    assert_eq!(second.device_count().expect("count after one shutdown"), 3);
}

const MIG_0: &str = "MIG-3f9a2c1e-7b44-5d0e-9a1b-2c3d4e5f6a7b";
const MIG_1: &str = "MIG-11111111-2222-3333-4444-555555555555";
const MIG_2: &str = "MIG-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee";

/// NVML index 0: MIG on with two devices; 1: MIG off (`"mig": []`); 2: no MIG support;
/// 3: MIG on with one device.
const MIG: &str = r#"{
  "driver_version": "550.54.15",
  "gpus": [
    {"uuid": "GPU-00000000-0000-0000-0000-000000000004", "minor": 3, "pci_bus_id": "0000:d0:00.0",
     "mig": [{"uuid": "MIG-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee", "gi": 7, "ci": 0}]},
    {"uuid": "GPU-00000000-0000-0000-0000-000000000001", "minor": 0, "pci_bus_id": "0000:1b:00.0",
     "mig": [{"uuid": "MIG-3f9a2c1e-7b44-5d0e-9a1b-2c3d4e5f6a7b", "gi": 1, "ci": 0},
             {"uuid": "MIG-11111111-2222-3333-4444-555555555555", "gi": 2, "ci": 1}]},
    {"uuid": "GPU-00000000-0000-0000-0000-000000000002", "minor": 1, "pci_bus_id": "0000:4c:00.0",
     "mig": []},
    {"uuid": "GPU-00000000-0000-0000-0000-000000000003", "minor": 2, "pci_bus_id": "0000:9a:00.0"}
  ]
}"#;

/// `NVML_SUCCESS` and `NVML_ERROR_INVALID_ARGUMENT` as the raw bindings return them.
const RAW_SUCCESS: u32 = 0;
const RAW_INVALID_ARGUMENT: u32 = 2;

/// Raw `nvmlDeviceGetGpuInstanceId` and `nvmlDeviceGetComputeInstanceId` results:
/// `Ok((gi, ci))`, or the two return codes.
fn raw_instance_ids(nvml: &Nvml, dev: &Device<'_>) -> Result<(u32, u32), (u32, u32)> {
    let (mut gi, mut ci) = (u32::MAX, u32::MAX);
    // SAFETY: the handle comes from a live `Device` of this `nvml`, and `gi` and `ci` are
    // valid for writes; the fake exports both symbols, so the bindings' lookups succeed.
    let rcs = unsafe {
        let h = dev.handle();
        (
            nvml.lib().nvmlDeviceGetGpuInstanceId(h, &mut gi),
            nvml.lib().nvmlDeviceGetComputeInstanceId(h, &mut ci),
        )
    };
    match rcs {
        (RAW_SUCCESS, RAW_SUCCESS) => Ok((gi, ci)),
        other => Err(other),
    }
}

/// The raw handle, for comparing devices.
fn raw_handle(dev: &Device<'_>) -> usize {
    // SAFETY: only the pointer value is read; it is never dereferenced.
    unsafe { dev.handle() as usize }
}

#[test]
fn mig_devices() {
    let _g = env_lock();
    std::env::remove_var("GRES_OCI_FAKE_NVML");
    let d = Driver::new();
    d.write_sidecar(MIG);
    let nvml = d.init().expect("init");
    // MIG devices are not NVML-indexed devices.
    assert_eq!(nvml.device_count().expect("count"), 4);

    let gpu = nvml.device_by_index(0).expect("dev 0");
    let mode = gpu.mig_mode().expect("mig mode");
    assert_eq!((mode.current, mode.pending), (1, 1));
    assert_eq!(gpu.mig_device_count().expect("mig count"), 2);
    assert!(!gpu.mig_is_mig_device_handle().expect("is mig"));
    assert!(matches!(
        gpu.mig_parent_device(),
        Err(NvmlError::InvalidArg)
    ));
    assert_eq!(
        raw_instance_ids(&nvml, &gpu),
        Err((RAW_INVALID_ARGUMENT, RAW_INVALID_ARGUMENT))
    );

    let want = [(MIG_0, 1, 0), (MIG_1, 2, 1)];
    let mut handles = vec![raw_handle(&gpu)];
    for (i, (uuid, gi, ci)) in want.iter().enumerate() {
        let idx = u32::try_from(i).expect("small");
        let mig = gpu.mig_device_by_index(idx).expect("mig by index");
        handles.push(raw_handle(&mig));
        assert_eq!(mig.uuid().expect("mig uuid"), *uuid, "mig {i}");
        assert!(mig.mig_is_mig_device_handle().expect("is mig"));
        assert_eq!(raw_instance_ids(&nvml, &mig), Ok((*gi, *ci)), "mig {i}");
        assert_eq!(mig.index().expect("mig index"), idx);
        let parent = mig.mig_parent_device().expect("parent");
        assert_eq!(raw_handle(&parent), raw_handle(&gpu));
        assert_eq!(parent.uuid().expect("uuid"), gpu.uuid().expect("uuid"));
        // Parent values for minor number and PCI info.
        assert_eq!(mig.minor_number().expect("minor"), 0);
        assert_eq!(mig.pci_info().expect("pci").bus_id, "00000000:1B:00.0");
        // GPU-only calls refuse a MIG handle.
        assert!(matches!(mig.mig_mode(), Err(NvmlError::InvalidArg)));
        assert!(matches!(mig.mig_device_count(), Err(NvmlError::InvalidArg)));
        assert!(matches!(
            mig.mig_device_by_index(0),
            Err(NvmlError::InvalidArg)
        ));
        // Lookup by MIG UUID gives the same handle.
        let by_uuid = nvml.device_by_uuid(*uuid).expect("by mig uuid");
        assert_eq!(raw_handle(&by_uuid), raw_handle(&mig));
        assert!(by_uuid.mig_is_mig_device_handle().expect("is mig"));
    }
    assert!(matches!(
        gpu.mig_device_by_index(2),
        Err(NvmlError::NotFound)
    ));

    // The last GPU's single MIG device has a handle unlike any other.
    let last = nvml.device_by_index(3).expect("dev 3");
    assert_eq!(last.mig_device_count().expect("mig count"), 1);
    let mig = last.mig_device_by_index(0).expect("mig 0");
    assert_eq!(mig.uuid().expect("uuid"), MIG_2);
    assert_eq!(raw_instance_ids(&nvml, &mig), Ok((7, 0)));
    assert_eq!(mig.minor_number().expect("minor"), 3);
    assert_eq!(mig.pci_info().expect("pci").bus_id, "00000000:D0:00.0");
    assert_eq!(
        mig.mig_parent_device()
            .expect("parent")
            .index()
            .expect("index"),
        3
    );
    handles.push(raw_handle(&last));
    handles.push(raw_handle(&mig));
    let mut distinct = handles.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), handles.len(), "handles {handles:x?}");

    // `"mig": []`: supported but disabled.
    let off = nvml.device_by_index(1).expect("dev 1");
    let mode = off.mig_mode().expect("mig mode");
    assert_eq!((mode.current, mode.pending), (0, 0));
    assert!(matches!(
        off.mig_device_count(),
        Err(NvmlError::NotSupported)
    ));
    assert!(matches!(
        off.mig_device_by_index(0),
        Err(NvmlError::NotFound)
    ));
    assert!(!off.mig_is_mig_device_handle().expect("is mig"));
    assert_eq!(
        raw_instance_ids(&nvml, &off),
        Err((RAW_INVALID_ARGUMENT, RAW_INVALID_ARGUMENT))
    );

    // No `mig` key: not supported.
    let plain = nvml.device_by_index(2).expect("dev 2");
    assert!(matches!(plain.mig_mode(), Err(NvmlError::NotSupported)));
    assert!(matches!(
        plain.mig_device_count(),
        Err(NvmlError::NotSupported)
    ));
    assert!(matches!(
        plain.mig_device_by_index(0),
        Err(NvmlError::NotSupported)
    ));
    assert!(!plain.mig_is_mig_device_handle().expect("is mig"));

    assert!(matches!(
        nvml.device_by_uuid("MIG-00000000-0000-0000-0000-000000000000"),
        Err(NvmlError::NotFound)
    ));
    nvml.shutdown().expect("shutdown");
}

#[test]
fn bad_mig_json_fails_init() {
    let _g = env_lock();
    std::env::remove_var("GRES_OCI_FAKE_NVML");
    let d = Driver::new();
    let gpu = |uuid: &str, bus: &str, mig: &str| {
        format!(r#"{{"uuid": "{uuid}", "minor": 0, "pci_bus_id": "{bus}", "mig": {mig}}}"#)
    };
    let one = |uuid: &str| format!(r#"[{{"uuid": "{uuid}", "gi": 1, "ci": 0}}]"#);
    let bad = [
        // Not a MIG UUID.
        vec![gpu("GPU-a", "01:00.0", &one("MIG-3f9a2c1e"))],
        vec![gpu(
            "GPU-a",
            "01:00.0",
            &one("GPU-3f9a2c1e-7b44-5d0e-9a1b-2c3d4e5f6a7b"),
        )],
        // The same MIG UUID on two GPUs.
        vec![
            gpu("GPU-a", "01:00.0", &one(MIG_0)),
            gpu("GPU-b", "02:00.0", &one(MIG_0)),
        ],
        // Not a list.
        vec![gpu("GPU-a", "01:00.0", "7")],
    ];
    for gpus in bad {
        let text = format!(r#"{{"driver_version": "1", "gpus": [{}]}}"#, gpus.join(","));
        d.write_sidecar(&text);
        assert!(
            matches!(d.init(), Err(NvmlError::DriverNotLoaded)),
            "{text}"
        );
    }
}
