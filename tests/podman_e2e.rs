//! End-to-end with real podman (crun): a CDI spec made by `gres-oci-hook cdi generate` for a
//! fake GPU node, requested with `--device KIND=NAME`, and the shipped podman hooks.d file.
//! Asserts what the container itself sees. podman must be installed: these tests fail, not
//! skip, without it.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use serde_json::Value;
use support::*;

/// What the container reports: device nodes, open() results (ENXIO = allowed by the device
/// cgroup but no driver, EPERM = denied), library files and links, the environment, and a
/// copy of its linker cache in /out.
const PROBE: &str = r#"
for n in /dev/nvidia* /dev/nvidia-caps/* /dev/nvidia-caps-imex-channels/* /dev/infiniband/* /dev/gdrdrv; do [ -c "$n" ] && echo "node $n"; done
for n in /dev/nvidia* /hostdev/nvidia* /dev/nvidia-caps-imex-channels/* /dev/infiniband/*; do
  [ -c "$n" ] || continue
  if cat "$n" </dev/null >/dev/null 2>/tmp/err; then echo "open $n ok"; else echo "open $n $(cat /tmp/err)"; fi
done
for d in /usr/lib/x86_64-linux-gnu /usr/bin /lib/firmware/nvidia/*; do
  [ -d "$d" ] || continue
  for f in "$d"/*; do
    if [ -L "$f" ]; then echo "link $f -> $(readlink "$f")"; elif [ -f "$f" ]; then echo "file $f"; fi
  done
done
[ -f /etc/ld.so.cache ] && cat /etc/ld.so.cache > /out/ld.so.cache
echo "env NVIDIA_VISIBLE_DEVICES=${NVIDIA_VISIBLE_DEVICES-unset}"
echo probe-done
"#;

const LIBDIR: &str = "/usr/lib/x86_64-linux-gnu";
const CONTROL: [&str; 3] = ["nvidiactl", "nvidia-uvm", "nvidia-uvm-tools"];
const ENXIO: &str = "No such device or address";
const EPERM: &str = "Operation not permitted";

static SEQ: AtomicU32 = AtomicU32::new(0);

fn seq() -> u32 {
    SEQ.fetch_add(1, Ordering::SeqCst)
}

fn podman_installed() {
    let ok = Command::new("podman")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "podman is not installed (apt-get install --no-install-recommends podman); these tests need it"
    );
}

fn setup() -> FakeNode {
    require_root();
    podman_installed();
    prepare_cgroups_for_crun();
    FakeNode::new(&[])
}

/// A spec file in /var/run/cdi (podman 4.3 reads only there and /etc/cdi), removed on drop,
/// also when the test panics. Each has its own kind, so tests running at once (or a node's
/// real `nvidia.com/gpu` spec) never conflict.
struct CdiSpec {
    path: PathBuf,
    kind: String,
}

impl CdiSpec {
    fn generate(node: &FakeNode, format: &str) -> CdiSpec {
        CdiSpec::generate_mode(node, format, "gpu")
    }

    /// A spec of `cdi generate --mode MODE`.
    fn generate_mode(node: &FakeNode, format: &str, mode: &str) -> CdiSpec {
        let n = seq();
        let class = format!("{mode}{}n{n}", std::process::id());
        std::fs::create_dir_all("/var/run/cdi").unwrap();
        let path = PathBuf::from(format!(
            "/var/run/cdi/gres-oci-test-{}-{n}.{format}",
            std::process::id()
        ));
        let spec = CdiSpec {
            path,
            kind: format!("gres-oci.test/{class}"),
        };
        let o = Command::new(hook_bin())
            .arg(format!("-config={}", node.config().display()))
            .args(["cdi", "generate", "--mode", mode])
            .args(["--vendor", "gres-oci.test", "--class"])
            .arg(&class)
            .args(["--format", format, "--output"])
            .arg(&spec.path)
            .output()
            .unwrap();
        assert!(o.status.success(), "cdi generate: {}", text(&o));
        let o = Command::new(hook_bin())
            .args(["cdi", "validate"])
            .arg(&spec.path)
            .output()
            .unwrap();
        assert!(o.status.success(), "cdi validate: {}", text(&o));
        spec
    }

    fn device(&self, name: &str) -> String {
        format!("{}={name}", self.kind)
    }
}

impl Drop for CdiSpec {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A podman run's probe output, with the dirs it must outlive.
struct PodmanSeen {
    seen: Seen,
    out: tempfile::TempDir,
    _rootfs: tempfile::TempDir,
}

impl std::ops::Deref for PodmanSeen {
    type Target = Seen;
    fn deref(&self) -> &Seen {
        &self.seen
    }
}

/// `podman [global] run … --rootfs <fresh busybox rootfs> /bin/sh -c PROBE` with the node's
/// device dir at /hostdev and an output dir at /out.
fn podman_run(node: &FakeNode, global: &[&str], run_args: &[String]) -> (Output, PodmanSeen) {
    podman_run_in(node, global, run_args, busybox_dir())
}

/// [`podman_run`], with `prepare` applied to the rootfs first.
fn podman_run_with(
    node: &FakeNode,
    global: &[&str],
    run_args: &[String],
    prepare: impl FnOnce(&Path),
) -> (Output, PodmanSeen) {
    let rootfs = busybox_dir();
    prepare(rootfs.path());
    podman_run_in(node, global, run_args, rootfs)
}

fn busybox_dir() -> tempfile::TempDir {
    let rootfs = tempfile::Builder::new()
        .prefix("gres-oci-podman-rootfs")
        .tempdir()
        .unwrap();
    busybox_rootfs(rootfs.path(), true);
    rootfs
}

/// [`podman_run`] with a rootfs the caller prepared.
fn podman_run_in(
    node: &FakeNode,
    global: &[&str],
    run_args: &[String],
    rootfs: tempfile::TempDir,
) -> (Output, PodmanSeen) {
    let out = tempfile::tempdir().unwrap();
    let o = Command::new("podman")
        .args(global)
        .args([
            "run",
            "--rm",
            "--network",
            "none",
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
            "-v",
        ])
        .arg(format!("{}:/hostdev", node.dev().display()))
        .arg("-v")
        .arg(format!("{}:/out", out.path().display()))
        .args(run_args)
        .arg("--rootfs")
        .arg(rootfs.path())
        .args(["/bin/sh", "-c", PROBE])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let lines = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    (
        o,
        PodmanSeen {
            seen: Seen { lines },
            out,
            _rootfs: rootfs,
        },
    )
}

/// A podman run with CDI devices and an empty hooks dir, so no hook installed on the host
/// takes part.
fn run_cdi(node: &FakeNode, devices: &[String]) -> PodmanSeen {
    let hooks = tempfile::tempdir().unwrap();
    let hooks_dir = hooks.path().display().to_string();
    let args: Vec<String> = devices
        .iter()
        .flat_map(|d| ["--device".to_owned(), d.clone()])
        .collect();
    let (o, seen) = podman_run(node, &["--hooks-dir", &hooks_dir], &args);
    assert!(o.status.success(), "podman {devices:?}: {}", text(&o));
    assert!(seen.has("probe-done"), "{}", text(&o));
    seen
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// The node's GPU nodes are exactly `gpus` (plus the control nodes), those open to ENXIO and
/// the node's other GPUs are denied by the device cgroup.
fn check_gpus(seen: &PodmanSeen, gpus: &[&str], what: &str) {
    let mut want = set(gpus);
    want.extend(CONTROL.iter().map(|s| s.to_string()));
    assert_eq!(seen.nodes(), want, "{what}: {:#?}", seen.lines);
    for m in 0..4 {
        let name = format!("nvidia{m}");
        let host = seen.open(&format!("/hostdev/{name}"));
        if gpus.contains(&name.as_str()) {
            assert!(host.contains(ENXIO), "{what}: {name}: {host}");
            let own = seen.open(&format!("/dev/{name}"));
            assert!(own.contains(ENXIO), "{what}: {own}");
        } else {
            assert!(
                host.contains(EPERM),
                "{what}: {name} should be denied: {host}"
            );
        }
    }
    assert!(seen.open("/dev/nvidiactl").contains(ENXIO), "{what}");
}

/// The driver files, the soname links made by `update-ldcache`, and a linker cache that
/// knows them.
fn check_driver(seen: &PodmanSeen, what: &str) {
    for l in [
        format!("file {LIBDIR}/libcuda.so.550.54.15"),
        format!("link {LIBDIR}/libcuda.so.1 -> libcuda.so.550.54.15"),
        format!("link {LIBDIR}/libcuda.so -> libcuda.so.550.54.15"),
        format!("file {LIBDIR}/libnvidia-ml.so.550.54.15"),
        format!("link {LIBDIR}/libnvidia-ml.so.1 -> libnvidia-ml.so.550.54.15"),
        format!(
            "link {LIBDIR}/libnvidia-ptxjitcompiler.so.1 -> libnvidia-ptxjitcompiler.so.550.54.15"
        ),
        "file /usr/bin/nvidia-smi".to_owned(),
        "file /lib/firmware/nvidia/550.54.15/gsp_ga10x.bin".to_owned(),
    ] {
        assert!(seen.has(&l), "{what}: missing {l:?}: {:#?}", seen.lines);
    }
    for l in &seen.lines {
        // An older driver's leftovers, another capability's, or a non-driver library.
        for bad in [
            "libcuda.so.470",
            "libcudart",
            "libnvidia-encode",
            "libEGL_nvidia",
        ] {
            assert!(!l.contains(bad), "{what}: unexpected {l}");
        }
    }
    let cache = gres_oci::ldcache::LdCache::read(&seen.out.path().join("ld.so.cache"))
        .unwrap_or_else(|e| panic!("{what}: the container has no linker cache: {e}"));
    let find = |k: &str| {
        cache
            .entries
            .iter()
            .find(|e| e.key == k)
            .map(|e| e.value.clone())
    };
    assert_eq!(
        find("libcuda.so.1"),
        Some(format!("{LIBDIR}/libcuda.so.1")),
        "{what}"
    );
    assert_eq!(
        find("libnvidia-ml.so.1"),
        Some(format!("{LIBDIR}/libnvidia-ml.so.1")),
        "{what}"
    );
}

#[test]
fn cdi_index_device_gets_exactly_that_gpu_and_the_driver() {
    let node = setup();
    let spec = CdiSpec::generate(&node, "json");
    // NVML index 1 of the fake node (PCI order) is /dev/nvidia0.
    let seen = run_cdi(&node, &[spec.device("1")]);
    check_gpus(&seen, &["nvidia0"], "index 1");
    check_driver(&seen, "index 1");
    // The legacy hook's variable is void, so a hook that also runs injects nothing more.
    assert!(
        seen.has("env NVIDIA_VISIBLE_DEVICES=void"),
        "{:#?}",
        seen.lines
    );
}

#[test]
fn cdi_all_uuid_and_several_devices_from_a_yaml_spec() {
    let node = setup();
    let spec = CdiSpec::generate(&node, "yaml");
    let seen = run_cdi(&node, &[spec.device("all")]);
    check_gpus(&seen, &["nvidia0", "nvidia1", "nvidia2", "nvidia3"], "all");
    check_driver(&seen, "all");
    // Index 3's UUID is minor 1.
    let seen = run_cdi(
        &node,
        &[spec.device("GPU-3f9a2c1e-7b44-5d0e-9a1b-2c3d4e5f6a73")],
    );
    check_gpus(&seen, &["nvidia1"], "by UUID");
    let seen = run_cdi(&node, &[spec.device("0"), spec.device("2")]);
    check_gpus(&seen, &["nvidia2", "nvidia3"], "indices 0 and 2");
}

#[test]
fn cdi_unknown_device_fails_the_run() {
    let node = setup();
    let spec = CdiSpec::generate(&node, "json");
    let hooks = tempfile::tempdir().unwrap();
    let dir = hooks.path().display().to_string();
    let (o, _) = podman_run(
        &node,
        &["--hooks-dir", &dir],
        &["--device".to_owned(), spec.device("7")],
    );
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("CDI"),
        "{}",
        text(&o)
    );
}

/// The shipped podman hooks.d file, pointed at the built hook and the fake node's config.
fn hooks_dir_for(node: &FakeNode) -> tempfile::TempDir {
    let shipped = repo().join("slurm-conf/hooks.d/gres-oci-podman.json");
    let mut hook: Value =
        serde_json::from_str(&std::fs::read_to_string(&shipped).unwrap()).unwrap();
    hook["hook"]["path"] = Value::String(hook_bin().display().to_string());
    let args = hook["hook"]["args"].as_array_mut().unwrap();
    let mut replaced = 0;
    for a in args.iter_mut() {
        if a.as_str().is_some_and(|s| s.starts_with("-config=")) {
            *a = Value::String(format!("-config={}", node.config().display()));
            replaced += 1;
        }
    }
    assert_eq!(replaced, 1, "{}: no -config= argument", shipped.display());
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("gres-oci-podman.json"),
        serde_json::to_vec_pretty(&hook).unwrap(),
    )
    .unwrap();
    dir
}

fn hooks_run(node: &FakeNode, dir: &Path, args: &[&str]) -> PodmanSeen {
    let d = dir.display().to_string();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let (o, seen) = podman_run(node, &["--hooks-dir", &d], &args);
    assert!(o.status.success(), "podman {args:?}: {}", text(&o));
    assert!(seen.has("probe-done"), "{}", text(&o));
    seen
}

#[test]
fn podman_hooks_d_file_is_gated_on_the_annotation() {
    let node = setup();
    let dir = hooks_dir_for(&node);
    let seen = hooks_run(
        &node,
        dir.path(),
        &[
            "--annotation",
            "org.gres-oci.gpus=1",
            "-e",
            "NVIDIA_VISIBLE_DEVICES=0",
        ],
    );
    // NVML index 0 is minor 2.
    check_gpus(&seen, &["nvidia2"], "hooks.d, index 0");
    assert!(seen.has(&format!(
        "link {LIBDIR}/libcuda.so.1 -> libcuda.so.550.54.15"
    )));
    assert!(node.log().contains("injected"), "{}", node.log());
    // Without the annotation podman does not run the hook at all.
    let seen = hooks_run(&node, dir.path(), &["-e", "NVIDIA_VISIBLE_DEVICES=0"]);
    assert!(seen.nodes().is_empty(), "{:#?}", seen.lines);
    assert!(
        !seen.lines.iter().any(|l| l.contains("libcuda")),
        "{:#?}",
        seen.lines
    );
}

#[test]
fn cdi_mig_device_gets_its_parent_and_capability_nodes() {
    require_root();
    podman_installed();
    prepare_cgroups_for_crun();
    let mig = "MIG-11111111-2222-3333-4444-555555555555";
    let node = FakeNode::new(&[
        "--gpu",
        "0:0000:1b:00.0:GPU-00000000-0000-0000-0000-000000000001",
        "--mig",
        &format!("0:1:0:{mig}"),
    ]);
    let spec = CdiSpec::generate(&node, "yaml");
    let mut want = set(&[
        "nvidia0",
        "nvidia-caps/nvidia-cap12",
        "nvidia-caps/nvidia-cap13",
    ]);
    want.extend(CONTROL.iter().map(|s| s.to_string()));
    for name in ["0:0", mig] {
        let seen = run_cdi(&node, &[spec.device(name)]);
        assert_eq!(seen.nodes(), want, "{name}: {:#?}", seen.lines);
        assert!(seen.open("/dev/nvidia0").contains(ENXIO), "{name}");
    }
}

/// The hooks.d prestart hook under podman: an image library dir linked onto a `-v` bind mount
/// of a host directory is refused with one line naming the path, and nothing is created in
/// the host directory.
#[test]
fn podman_image_link_onto_a_bind_mount_is_refused() {
    let node = setup();
    let dir = hooks_dir_for(&node);
    let d = dir.path().display().to_string();
    let shm = tempfile::Builder::new()
        .prefix("gres-oci-shm")
        .tempdir()
        .unwrap();
    let args: Vec<String> = [
        "--annotation",
        "org.gres-oci.gpus=1",
        "-e",
        "NVIDIA_VISIBLE_DEVICES=0",
        "-v",
        &format!("{}:/mnt/shm", shm.path().display()),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (o, _seen) = podman_run_with(&node, &["--hooks-dir", &d], &args, |rootfs| {
        std::fs::create_dir_all(rootfs.join("mnt/shm")).unwrap();
        std::fs::create_dir_all(rootfs.join("usr/lib")).unwrap();
        std::os::unix::fs::symlink("/mnt/shm", rootfs.join(&LIBDIR[1..])).unwrap();
    });
    assert!(!o.status.success(), "{}", text(&o));
    let log = node.log();
    assert!(
        log.lines().any(|l| l.contains(" ERROR ")
            && l.contains(&format!("{LIBDIR}/"))
            && l.contains("on another mount than the container's root filesystem")
            && l.contains("refusing to create it")),
        "{log}"
    );
    assert_eq!(
        tree(shm.path()),
        Vec::<String>::new(),
        "host directory changed"
    );
}

/// The image's `LD_PRELOAD`, `LD_AUDIT` and `LD_LIBRARY_PATH` name its own libraries; neither
/// the CDI spec's createContainer hook nor the shipped hooks.d entry may run them, with podman
/// on runc 1.1 (which gives a createContainer hook without `env` the container's environment)
/// and on crun. podman carries each entry's `env` into the bundle.
#[test]
fn image_loader_variables_never_reach_cdi_or_hooks_d_hooks() {
    let node = setup();
    let trap = LoaderTrap::new();
    let control = tempfile::tempdir().unwrap();
    trap.self_test(control.path());
    let spec = CdiSpec::generate(&node, "json");
    let hooks_d = hooks_dir_for(&node);
    let empty = tempfile::tempdir().unwrap();
    for runtime in ["runc", "crun"] {
        for (what, dir, args) in [
            (
                "CDI",
                empty.path(),
                vec!["--device".to_owned(), spec.device("0")],
            ),
            (
                "hooks.d",
                hooks_d.path(),
                vec![
                    "--annotation".to_owned(),
                    "org.gres-oci.gpus=1".to_owned(),
                    "-e".to_owned(),
                    "NVIDIA_VISIBLE_DEVICES=0".to_owned(),
                ],
            ),
        ] {
            let rootfs = busybox_dir();
            let mut args = args.clone();
            for e in trap.install(rootfs.path()) {
                args.extend(["-e".to_owned(), e]);
            }
            let d = dir.display().to_string();
            let (o, seen) = podman_run_in(
                &node,
                &["--runtime", runtime, "--hooks-dir", &d],
                &args,
                rootfs,
            );
            let ctx = format!("podman --runtime {runtime}, {what}");
            assert!(o.status.success(), "{ctx}: {}", text(&o));
            assert!(seen.has("probe-done"), "{ctx}: {}", text(&o));
            // The hook ran: GPU index 0 is minor 2, with its soname links.
            assert!(seen.nodes().contains("nvidia2"), "{ctx}: {:#?}", seen.lines);
            assert!(
                seen.has(&format!(
                    "link {LIBDIR}/libcuda.so.1 -> libcuda.so.550.54.15"
                )),
                "{ctx}: {:#?}",
                seen.lines
            );
            let fired = trap.fired();
            assert!(
                fired.is_empty(),
                "{ctx}: the image's libraries ran on the host: {fired:?}"
            );
        }
    }
}

/// `cdi generate --mode imex` and `--mode mofed|gds`, as NVIDIA names them, applied by podman:
/// an IMEX channel device gives exactly its node (channels on another major are not listed),
/// the MOFED `all` device the verbs nodes and rdma_cm but not umad, GDS its nodes and the
/// cufile config; a mode whose nodes the node lacks is a one-line error.
#[test]
fn cdi_imex_channels_and_fabric_modes() {
    let node = setup();
    let mk = |rel: &str, major: u32, minor: u32| {
        let p = node.dev().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        let o = Command::new("mknod")
            .args(["-m", "666"])
            .arg(&p)
            .args(["c", &major.to_string(), &minor.to_string()])
            .output()
            .unwrap();
        assert!(o.status.success(), "mknod {rel}: {}", text(&o));
    };
    let gds = Command::new(hook_bin())
        .arg(format!("-config={}", node.config().display()))
        .args(["cdi", "generate", "--mode", "gds"])
        .output()
        .unwrap();
    assert!(!gds.status.success());
    let err = text(&gds);
    assert!(err.contains("no gds device nodes in"), "{err}");
    mk("nvidia-caps-imex-channels/channel0", 234, 0);
    mk("nvidia-caps-imex-channels/channel5", 234, 5);
    mk("nvidia-caps-imex-channels/channel6", 240, 6);
    std::fs::write(
        node.path().join("proc/devices"),
        "Character devices:\n195 nvidia-frontend\n234 nvidia-caps-imex-channels\n",
    )
    .unwrap();
    for (rel, major, minor) in [
        ("infiniband/uverbs0", 231, 192),
        ("infiniband/uverbs1", 231, 193),
        ("infiniband/umad0", 231, 0),
        ("infiniband/rdma_cm", 10, 58),
        ("nvidia-fs0", 245, 0),
    ] {
        mk(rel, major, minor);
    }
    std::fs::create_dir_all(node.path().join("driver/etc")).unwrap();
    std::fs::write(node.path().join("driver/etc/cufile.json"), "{}\n").unwrap();

    let imex = CdiSpec::generate_mode(&node, "yaml", "imex");
    let seen = run_cdi(&node, &[imex.device("5")]);
    assert_eq!(seen.nodes(), set(&["nvidia-caps-imex-channels/channel5"]));
    assert!(seen
        .open("/dev/nvidia-caps-imex-channels/channel5")
        .contains(ENXIO));
    let hooks = tempfile::tempdir().unwrap();
    let (o, _) = podman_run(
        &node,
        &["--hooks-dir", &hooks.path().display().to_string()],
        &["--device".to_owned(), imex.device("6")],
    );
    assert!(
        !o.status.success(),
        "channel 6 is on another major: {}",
        text(&o)
    );

    let mofed = CdiSpec::generate_mode(&node, "json", "mofed");
    let seen = run_cdi(&node, &[mofed.device("all")]);
    assert_eq!(
        seen.nodes(),
        set(&[
            "infiniband/rdma_cm",
            "infiniband/uverbs0",
            "infiniband/uverbs1"
        ])
    );
    assert!(seen.open("/dev/infiniband/uverbs1").contains(ENXIO));

    let gds = CdiSpec::generate_mode(&node, "json", "gds");
    let text = std::fs::read_to_string(&gds.path).unwrap();
    assert!(
        text.contains("\"containerPath\": \"/etc/cufile.json\""),
        "{text}"
    );
    let seen = run_cdi(&node, &[gds.device("all")]);
    assert_eq!(seen.nodes(), set(&["nvidia-fs0"]));
}
