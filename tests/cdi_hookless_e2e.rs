//! End-to-end: a CDI spec applied the way an engine that runs no CDI hook applies it
//! (Apptainer's `--device`: env, mounts and device nodes only), to real runc and crun bundles.
//! A dynamically linked glibc program in the container must find the fake driver's
//! `libcuda.so.1` (a real ELF object with that SONAME) with no hook and no linker cache.

mod support;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};
use support::*;

fn spec(node: &FakeNode, extra: &[&str]) -> Value {
    let o = Command::new(hook_bin())
        .arg(format!("-config={}", node.config().display()))
        .args(["cdi", "generate"])
        .args(extra)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// Applies the spec's common edits and device `dev`'s edits to the bundle, as an engine that
/// ignores hooks does: env entries replace the image's, mounts are bind mounts, device nodes
/// become `linux.devices` with an allow rule. Hooks are skipped.
fn apply_without_hooks(b: &mut Bundle, spec: &Value, dev: &str) {
    let device = spec["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == dev)
        .unwrap();
    for edits in [&spec["containerEdits"], &device["containerEdits"]] {
        for e in edits["env"].as_array().into_iter().flatten() {
            let e = e.as_str().unwrap();
            let name = e.split('=').next().unwrap();
            let env = b.spec["process"]["env"].as_array_mut().unwrap();
            env.retain(|x| x.as_str().unwrap().split('=').next() != Some(name));
            env.push(json!(e));
        }
        for m in edits["mounts"].as_array().into_iter().flatten() {
            b.spec["mounts"].as_array_mut().unwrap().push(json!({
                "destination": m["containerPath"], "source": m["hostPath"],
                "type": "bind", "options": m["options"],
            }));
        }
        for n in edits["deviceNodes"].as_array().into_iter().flatten() {
            let host = n["hostPath"].as_str().unwrap();
            let rdev = std::fs::metadata(host).unwrap().rdev();
            let (major, minor) = (libc::major(rdev), libc::minor(rdev));
            if b.spec["linux"]["devices"].is_null() {
                b.spec["linux"]["devices"] = json!([]);
            }
            b.spec["linux"]["devices"]
                .as_array_mut()
                .unwrap()
                .push(json!({
                    "path": n["path"], "type": "c", "major": major, "minor": minor, "fileMode": 438,
                }));
            b.spec["linux"]["resources"]["devices"]
                .as_array_mut()
                .unwrap()
                .push(json!({"allow": true, "type": "c", "major": major, "minor": minor, "access": "rwm"}));
        }
    }
    b.write();
}

/// The host's glibc loader and libc in the rootfs, at Debian's paths, and `/bin/usecuda`,
/// a program linked against the driver's libcuda (its NEEDED entry is `libcuda.so.1`).
fn glibc_program(rootfs: &Path, libcuda: &Path) {
    for (host, ctr) in [
        ("/lib64/ld-linux-x86-64.so.2", "lib64/ld-linux-x86-64.so.2"),
        (
            "/lib/x86_64-linux-gnu/libc.so.6",
            "lib/x86_64-linux-gnu/libc.so.6",
        ),
    ] {
        let to = rootfs.join(ctr);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(host, &to).unwrap();
    }
    let src = tempfile::tempdir().unwrap();
    let c = src.path().join("usecuda.c");
    std::fs::write(
        &c,
        "#include <stdio.h>\nextern int gres_oci_fake(void);\nint main(void) { printf(\"libcuda answered %d\\n\", gres_oci_fake()); return 0; }\n",
    )
    .unwrap();
    let st = Command::new("cc")
        .arg(&c)
        .arg(libcuda)
        .arg("-o")
        .arg(rootfs.join("bin/usecuda"))
        .status()
        .unwrap();
    assert!(st.success());
}

const SCRIPT: &str =
    "/bin/usecuda 2>&1; for n in /dev/nvidia*; do [ -c $n ] && echo node $n; done; echo probe-done";

fn run(spec: &Value, libcuda: &Path, rt: Runtime) -> String {
    let mut b = Bundle::new(BundleOpts {
        script: SCRIPT,
        ..Default::default()
    });
    glibc_program(&b.rootfs(), libcuda);
    apply_without_hooks(&mut b, spec, "0");
    let o = b.run(rt);
    assert!(o.status.success(), "{}", text(&o));
    let s = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(s.contains("probe-done"), "{}", text(&o));
    s
}

#[test]
fn hookless_spec_lets_the_loader_find_libcuda() {
    require_root();
    prepare_cgroups_for_crun();
    // Debian's loader searches /usr/lib/x86_64-linux-gnu by default but not /usr/lib64: the
    // rhel layout needs the spec's LD_LIBRARY_PATH, the debian one its pre-linked names.
    for (layout, libdir) in [
        ("debian", "usr/lib/x86_64-linux-gnu"),
        ("rhel", "usr/lib64"),
    ] {
        let node = FakeNode::new(&["--layout", layout]);
        let libcuda = node
            .path()
            .join("driver")
            .join(libdir)
            .join("libcuda.so.550.54.15");
        let hookless = spec(&node, &["--disable-hook", "all"]);
        assert!(hookless["containerEdits"]["hooks"].is_null(), "{hookless}");
        let with_hooks = spec(&node, &[]);
        assert!(with_hooks["containerEdits"]["hooks"].is_array());
        for rt in [Runtime::Runc, Runtime::Crun] {
            let ctx = format!("{layout} {}", rt.name());
            let out = run(&hookless, &libcuda, rt);
            assert!(out.contains("libcuda answered 0"), "{ctx}: {out}");
            // Device "0" is NVML index 0: minor 2 on the fake node.
            for n in ["/dev/nvidia2", "/dev/nvidiactl"] {
                assert!(out.contains(&format!("node {n}\n")), "{ctx}: {out}");
            }
            assert!(!out.contains("node /dev/nvidia0\n"), "{ctx}: {out}");

            // The spec for hook-running engines, its hooks skipped: no libcuda.so.1 at all.
            let out = run(&with_hooks, &libcuda, rt);
            assert!(
                out.contains("libcuda.so.1: cannot open shared object file"),
                "{ctx}: {out}"
            );
        }
        // The search path is what makes the rhel layout work in a Debian image.
        let mut no_env = hookless.clone();
        no_env["containerEdits"]["env"]
            .as_array_mut()
            .unwrap()
            .retain(|e| !e.as_str().unwrap().starts_with("LD_LIBRARY_PATH="));
        let out = run(&no_env, &libcuda, Runtime::Runc);
        assert_eq!(
            out.contains("libcuda answered 0"),
            layout == "debian",
            "{layout} without LD_LIBRARY_PATH: {out}"
        );
    }
}
