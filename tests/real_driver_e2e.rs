//! End-to-end on NVIDIA's real userspace driver: 535.261.03 from Debian 12's non-free
//! component, unpacked into a driver root by `tests/fixtures/real-driver.sh` (which
//! `.ci/install-deps` runs; these tests run it too, cached, and fail without it), and a real
//! glibc image (Debian 12 minbase). Real runc and crun containers, the real hook; the only
//! fakes are the device nodes and `/proc/driver/nvidia` (fake-node.sh), since no kernel module
//! is loaded. Inside the container the real libraries load and answer as they do on a machine
//! without the module.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use support::*;

const VERSION: &str = "535.261.03";

/// Dlopens the real libcuda and NVML the way CUDA applications do and prints their answers.
const PROBE_C: &str = r#"
#include <dlfcn.h>
#include <stdio.h>
int main(void) {
    void *cuda = dlopen("libcuda.so.1", RTLD_NOW);
    if (!cuda) { printf("cuda-dlopen-failed %s\n", dlerror()); }
    else {
        int (*get)(int *) = (int (*)(int *))dlsym(cuda, "cuDriverGetVersion");
        int v = 0, rc = get ? get(&v) : -1;
        printf("cuDriverGetVersion rc=%d version=%d\n", rc, v);
    }
    void *nvml = dlopen("libnvidia-ml.so.1", RTLD_NOW);
    if (!nvml) { printf("nvml-dlopen-failed %s\n", dlerror()); }
    else {
        int (*init)(void) = (int (*)(void))dlsym(nvml, "nvmlInit_v2");
        printf("nvmlInit_v2 rc=%d\n", init ? init() : -1);
    }
    return 0;
}
"#;

const SCRIPT: &str = r#"
/probe
nvidia-smi >/tmp/smi.out 2>&1; echo "nvidia-smi exit=$?"
head -1 /tmp/smi.out | sed 's/^/nvidia-smi says /'
for f in /usr/lib/x86_64-linux-gnu/lib*nvidia* /usr/lib/x86_64-linux-gnu/libcuda*; do [ -e "$f" ] && echo "lib ${f##*/}"; done
[ -e /usr/bin/nvidia-smi ] && echo "bin nvidia-smi"
echo probe-done
"#;

/// The driver root and image, built once per machine (cached under target/).
fn real() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let o = Command::new("bash")
            .arg(repo().join("tests/fixtures/real-driver.sh"))
            .arg(repo().join("target/real-driver"))
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "tests/fixtures/real-driver.sh failed (it needs the Debian mirror and debootstrap): {}",
            text(&o)
        );
        repo().join("target/real-driver")
    })
}

/// A fake node (device nodes, procfs) whose driver root is the real one.
fn node() -> FakeNode {
    require_root();
    prepare_cgroups_for_crun();
    let node = FakeNode::new(&["--driver", VERSION]);
    let cfg = std::fs::read_to_string(node.config()).unwrap();
    let fake_root = format!("root = \"{}\"", node.path().join("driver").display());
    assert!(cfg.contains(&fake_root), "{cfg}");
    let cfg = cfg.replace(
        &fake_root,
        &format!("root = \"{}\"", real().join("driver").display()),
    );
    std::fs::write(node.config(), cfg).unwrap();
    node
}

/// The probe, built on the host (same glibc as the image).
fn probe() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        let dir = repo().join("target/real-driver/probe");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("probe.c"), PROBE_C).unwrap();
        let o = Command::new("gcc")
            .arg("-o")
            .arg(dir.join("probe"))
            .arg(dir.join("probe.c"))
            .output()
            .unwrap();
        assert!(o.status.success(), "gcc: {}", text(&o));
        dir.join("probe")
    })
}

/// A bundle running the probe script in a fresh copy of the glibc image, with the probe in it.
fn image_bundle(env: &[&str], hook_config: Option<&Path>) -> Bundle {
    let b = Bundle::new(BundleOpts {
        env,
        script: SCRIPT,
        hook_config,
        ..BundleOpts::default()
    });
    let rootfs = b.rootfs();
    std::fs::remove_dir_all(&rootfs).unwrap();
    let o = Command::new("cp")
        .args(["-a", "--reflink=auto"])
        .arg(real().join("image"))
        .arg(&rootfs)
        .output()
        .unwrap();
    assert!(o.status.success(), "copying the image: {}", text(&o));
    std::fs::copy(probe(), rootfs.join("probe")).unwrap();
    b
}

/// Runs the probe in a fresh copy of the glibc image under `rt`; returns its output lines.
fn run(node: &FakeNode, env: &[&str], rt: Runtime) -> Vec<String> {
    let cfg = node.config();
    let b = image_bundle(env, Some(&cfg));
    let o = b.run(rt);
    assert!(
        o.status.success(),
        "{} {env:?}: {}\n{}",
        rt.name(),
        text(&o),
        node.log()
    );
    let lines: Vec<String> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    assert!(lines.iter().any(|l| l == "probe-done"), "{}", text(&o));
    lines
}

#[test]
fn real_libraries_load_and_answer_in_the_container() {
    let node = node();
    for rt in [Runtime::Runc, Runtime::Crun] {
        let l = run(
            &node,
            &[
                "NVIDIA_VISIBLE_DEVICES=0",
                "NVIDIA_DRIVER_CAPABILITIES=compute,utility",
            ],
            rt,
        );
        let has = |s: &str| l.iter().any(|x| x == s);
        // CUDA 12.2 is what 535 speaks; NVML finds no kernel module (NVML_ERROR_DRIVER_NOT_LOADED).
        assert!(
            has("cuDriverGetVersion rc=0 version=12020"),
            "{}: {l:#?}",
            rt.name()
        );
        assert!(has("nvmlInit_v2 rc=9"), "{}: {l:#?}", rt.name());
        assert!(has("nvidia-smi exit=9"), "{}: {l:#?}", rt.name());
        assert!(
            l.iter()
                .any(|x| x.contains("couldn't communicate with the NVIDIA driver")),
            "{}: {l:#?}",
            rt.name()
        );
        for lib in [
            "libcuda.so.1",
            &format!("libcuda.so.{VERSION}"),
            "libnvidia-ml.so.1",
            &format!("libnvidia-ptxjitcompiler.so.{VERSION}"),
        ] {
            assert!(has(&format!("lib {lib}")), "{} {lib}: {l:#?}", rt.name());
        }
    }
}

#[test]
fn capability_filtering_holds_on_the_real_files() {
    let node = node();
    // utility only: NVML and nvidia-smi, no CUDA.
    let l = run(
        &node,
        &[
            "NVIDIA_VISIBLE_DEVICES=0",
            "NVIDIA_DRIVER_CAPABILITIES=utility",
        ],
        Runtime::Runc,
    );
    let has = |l: &[String], s: &str| l.iter().any(|x| x == s);
    assert!(has(&l, "nvmlInit_v2 rc=9"), "{l:#?}");
    assert!(has(&l, "bin nvidia-smi"), "{l:#?}");
    assert!(
        l.iter().any(|x| x.starts_with("cuda-dlopen-failed")),
        "{l:#?}"
    );
    assert!(!l.iter().any(|x| x.starts_with("lib libcuda")), "{l:#?}");
    // compute only: CUDA and its JIT, no nvidia-smi (NVML is compute's too, as NVIDIA lists it).
    let l = run(
        &node,
        &[
            "NVIDIA_VISIBLE_DEVICES=0",
            "NVIDIA_DRIVER_CAPABILITIES=compute",
        ],
        Runtime::Crun,
    );
    assert!(has(&l, "cuDriverGetVersion rc=0 version=12020"), "{l:#?}");
    assert!(!has(&l, "bin nvidia-smi"), "{l:#?}");
    assert!(has(&l, "nvidia-smi exit=127"), "{l:#?}");
}

/// A stand-in for NVIDIA's `cuda-compat` libcuda: SONAME `libcuda.so.1`, a
/// `.note.cuda.fwd_compatibility` note naming the host majors it supports (when `majors` is
/// given), and a `cuDriverGetVersion` that answers 12090, so the probe tells which libcuda the
/// loader picked.
fn compat_lib(dir: &Path, version: &str, majors: Option<&str>) {
    std::fs::create_dir_all(dir).unwrap();
    let note = majors
        .map(|m| {
            let desc = format!(
                r#"{{"format": 1, "CUDA version": "12.9", "driver": [{m}], "device": []}}"#
            );
            format!(
                r#"struct note {{ unsigned namesz, descsz, type; char name[20]; char desc[{n}]; }};
__attribute__((section(".note.cuda.fwd_compatibility"), aligned(4), used))
static const struct note cuda_note = {{ 19, {n}, 1, "NVIDIA Corporation", {desc:?} }};
"#,
                n = desc.len() + 1
            )
        })
        .unwrap_or_default();
    let src = dir.join("compat.c");
    std::fs::write(
        &src,
        format!("{note}int cuDriverGetVersion(int *v) {{ *v = 12090; return 0; }}\n"),
    )
    .unwrap();
    let lib = dir.join(format!("libcuda.so.{version}"));
    let o = Command::new("gcc")
        .args(["-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o"])
        .arg(&lib)
        .arg(&src)
        .output()
        .unwrap();
    assert!(o.status.success(), "gcc: {}", text(&o));
    std::fs::remove_file(&src).unwrap();
    std::os::unix::fs::symlink(format!("libcuda.so.{version}"), dir.join("libcuda.so.1")).unwrap();
}

/// Runs the probe with `prepare` applied to the fresh image first.
fn run_with(
    node: &FakeNode,
    config: &Path,
    rt: Runtime,
    prepare: impl FnOnce(&Path),
) -> Vec<String> {
    let env = [
        "NVIDIA_VISIBLE_DEVICES=0",
        "NVIDIA_DRIVER_CAPABILITIES=compute,utility",
    ];
    let b = image_bundle(&env, Some(config));
    prepare(&b.rootfs());
    let o = b.run(rt);
    assert!(
        o.status.success(),
        "{}: {}\n{}",
        rt.name(),
        text(&o),
        node.log()
    );
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// CUDA forward compatibility, by NVIDIA's rule, against the real 535 driver: an image's newer
/// compat libcuda whose note lists the host's major comes first; one whose note does not, an
/// older one, or any with `cuda-compat-mode = "disabled"`, leaves the host's libcuda; without a
/// note only a newer major counts. A compat dir that is a link out of the image reaches
/// nothing.
#[test]
fn cuda_forward_compat_follows_nvidias_rule() {
    let node = node();
    let cfg = node.config();
    let compat = |l: &[String]| {
        l.iter()
            .any(|x| x == "cuDriverGetVersion rc=0 version=12090")
    };
    let host = |l: &[String]| {
        l.iter()
            .any(|x| x == "cuDriverGetVersion rc=0 version=12020")
    };
    let at = |r: &Path| r.join("usr/local/cuda/compat");
    for rt in [Runtime::Runc, Runtime::Crun] {
        let l = run_with(&node, &cfg, rt, |r| {
            compat_lib(&at(r), "575.57.08", Some("535, 550"))
        });
        assert!(compat(&l), "{}: {l:#?}\n{}", rt.name(), node.log());
        let l = run_with(&node, &cfg, rt, |r| {
            compat_lib(&at(r), "575.57.08", Some("550"))
        });
        assert!(host(&l), "{}: {l:#?}", rt.name());
    }
    let l = run_with(&node, &cfg, Runtime::Runc, |r| {
        compat_lib(&at(r), "535.104.05", Some("535"))
    });
    assert!(host(&l), "older compat: {l:#?}");
    let l = run_with(&node, &cfg, Runtime::Runc, |r| {
        compat_lib(&at(r), "545.23.08", None)
    });
    assert!(compat(&l), "no note, newer major: {l:#?}");
    let l = run_with(&node, &cfg, Runtime::Runc, |r| {
        compat_lib(&at(r), "535.300.01", None)
    });
    assert!(host(&l), "no note, same major: {l:#?}");
    // The key turns it off.
    let off = node.path().join("compat-off.toml");
    let text_cfg = std::fs::read_to_string(&cfg).unwrap().replacen(
        "[gres-oci]\n",
        "[gres-oci]\ncuda-compat-mode = \"disabled\"\n",
        1,
    );
    std::fs::write(&off, text_cfg).unwrap();
    let l = run_with(&node, &off, Runtime::Runc, |r| {
        compat_lib(&at(r), "575.57.08", Some("535"))
    });
    assert!(host(&l), "disabled: {l:#?}");
    // Not a regular file: a FIFO (opening it for reading would block) and a device node.
    for kind in ["p", "c"] {
        let l = run_with(&node, &cfg, Runtime::Runc, |r| {
            std::fs::create_dir_all(at(r)).unwrap();
            let mut mknod = Command::new("mknod");
            mknod.arg(at(r).join("libcuda.so.575.57.08")).arg(kind);
            if kind == "c" {
                mknod.args(["1", "3"]);
            }
            let o = mknod.output().unwrap();
            assert!(o.status.success(), "mknod: {}", text(&o));
        });
        assert!(host(&l), "{kind}: {l:#?}");
    }
    // A compat dir linking to a host directory that holds a usable compat library.
    let outside = tempfile::tempdir().unwrap();
    compat_lib(outside.path(), "575.57.08", Some("535"));
    let l = run_with(&node, &cfg, Runtime::Runc, |r| {
        std::fs::create_dir_all(r.join("usr/local/cuda")).unwrap();
        std::os::unix::fs::symlink(outside.path(), at(r)).unwrap();
    });
    assert!(host(&l), "a link out of the image: {l:#?}");
}

/// The same rule in the CDI path: the `update-ldcache` createContainer hook of generated specs
/// gets `--host-driver-version` and puts a suitable compat dir first (here the only place
/// libcuda.so.1 exists, so the probe loads the compat one or none).
#[test]
fn cdi_linker_cache_hook_applies_the_compat_rule() {
    require_root();
    prepare_cgroups_for_crun();
    let run = |majors: &str| {
        let mut b = image_bundle(&[], None);
        compat_lib(
            &b.rootfs().join("usr/local/cuda/compat"),
            "575.57.08",
            Some(majors),
        );
        b.spec["hooks"] = serde_json::json!({"createContainer": [{
            "path": hook_bin(),
            "args": ["gres-oci-hook", "update-ldcache", "--folder", "/usr/lib/x86_64-linux-gnu",
                     "--host-driver-version", VERSION],
            "env": gres_oci::HOOK_ENV,
        }]});
        b.write();
        let o = b.run(Runtime::Runc);
        assert!(o.status.success(), "{}", text(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let out = run("535");
    assert!(
        out.contains("cuDriverGetVersion rc=0 version=12090"),
        "{out}"
    );
    let out = run("550");
    assert!(out.contains("cuda-dlopen-failed"), "{out}");
}

/// Apptainer's `--device` applies a CDI spec's env, mounts and device nodes but not its hooks.
/// Done here the same way (the spec's edits written into a runc bundle, its hooks left out):
/// with `cdi generate --soname-mounts` the real libcuda loads by its soname; without, it does
/// not, since nothing makes the links or the cache.
#[test]
fn cdi_spec_without_its_hooks_still_finds_the_driver() {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let node = node();
    let generate = |extra: &[&str]| -> serde_json::Value {
        let o = Command::new(hook_bin())
            .arg(format!("-config={}", node.config().display()))
            .args(["cdi", "generate", "--format", "json"])
            .args(extra)
            .output()
            .unwrap();
        assert!(o.status.success(), "cdi generate: {}", text(&o));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let run = |spec: &serde_json::Value| {
        let mut b = image_bundle(&[], None);
        let dev0 = spec["devices"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["name"] == "0")
            .expect("device 0");
        for edits in [&spec["containerEdits"], &dev0["containerEdits"]] {
            for m in edits["mounts"].as_array().into_iter().flatten() {
                let mut options = m["options"].clone();
                options.as_array_mut().unwrap().push("rbind".into());
                b.spec["mounts"]
                    .as_array_mut()
                    .unwrap()
                    .push(serde_json::json!({
                        "destination": m["containerPath"], "source": m["hostPath"],
                        "type": "bind", "options": options,
                    }));
            }
            for d in edits["deviceNodes"].as_array().into_iter().flatten() {
                let host = d["hostPath"].as_str().or(d["path"].as_str()).unwrap();
                let meta = std::fs::metadata(host).unwrap();
                assert!(meta.file_type().is_char_device(), "{host}");
                let (major, minor) = (libc::major(meta.rdev()), libc::minor(meta.rdev()));
                b.spec["linux"]["devices"]
                    .as_array_mut()
                    .map(|a| a.push(serde_json::json!({"path": d["path"], "type": "c", "major": major, "minor": minor})))
                    .unwrap_or_else(|| {
                        b.spec["linux"]["devices"] = serde_json::json!([{"path": d["path"], "type": "c", "major": major, "minor": minor}]);
                    });
                b.spec["linux"]["resources"]["devices"]
                    .as_array_mut()
                    .unwrap()
                    .push(serde_json::json!({"allow": true, "type": "c", "major": major, "minor": minor, "access": "rwm"}));
            }
            for e in edits["env"].as_array().into_iter().flatten() {
                b.spec["process"]["env"]
                    .as_array_mut()
                    .unwrap()
                    .push(e.clone());
            }
        }
        b.write();
        let o = b.run(Runtime::Runc);
        assert!(o.status.success(), "{}", text(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let out = run(&generate(&["--soname-mounts"]));
    assert!(
        out.contains("cuDriverGetVersion rc=0 version=12020"),
        "{out}"
    );
    assert!(out.contains("nvmlInit_v2 rc=9"), "{out}");
    let out = run(&generate(&[]));
    assert!(out.contains("cuda-dlopen-failed"), "{out}");
}
