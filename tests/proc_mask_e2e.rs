//! End-to-end: the masked `/proc/driver/nvidia` in real runc and crun containers with the real
//! hook. These machines run no NVIDIA kernel module, so the container's procfs has no driver
//! directory, and neither runc nor crun lets a bundle mount anything at `/proc/driver/nvidia`.
//! One test shows the hook leaves such a procfs alone. The others give the container its
//! procfs at `/hostproc` instead (the image links `/proc/self` there, which runc's init needs)
//! and an image directory at `/proc/driver/nvidia` holding a decoy of the host's tree (every
//! GPU, `ModifyDeviceFiles: 1`): the hook masks it with the same code that masks the driver's
//! directory on a real node, and the container must see only the mask.

mod support;

use serde_json::json;
use support::*;

const PROBE: &str = r#"
d=/proc/driver/nvidia
echo "top $(ls $d | tr '\n' ' ')"
echo "gpus $(ls $d/gpus | tr '\n' ' ')"
grep -h '^ModifyDeviceFiles' $d/params | sed 's/^/param /'
grep -h 'Device Minor' $d/gpus/*/information | sed 's/^/info /'
grep -q DECOY $d/params && echo decoy-visible
if touch $d/params $d/new 2>/dev/null; then echo writable; fi
echo probe-done
"#;

/// A bundle whose container gets no procfs, with `decoy` at the image's `/proc/driver/nvidia`.
fn bundle_without_procfs(node: &FakeNode, env: &[&str], script: &str) -> Bundle {
    let mut b = Bundle::new(BundleOpts {
        env,
        script,
        hook_config: Some(&node.config()),
        ..Default::default()
    });
    b.spec["mounts"]
        .as_array_mut()
        .unwrap()
        .retain(|m| m["destination"] != "/proc");
    // Those name procfs paths; with no procfs there is nothing to mask or make read-only.
    b.spec["linux"]["maskedPaths"] = json!([]);
    b.spec["linux"]["readonlyPaths"] = json!([]);
    // runc's init closes inherited descriptors through /proc/self/fd, which must be on a
    // procfs: the container gets one elsewhere, and the image links /proc/self to it.
    b.spec["mounts"]
        .as_array_mut()
        .unwrap()
        .push(json!({"destination": "/hostproc", "type": "proc", "source": "proc"}));
    b.write();
    std::fs::create_dir_all(b.rootfs().join("proc")).unwrap();
    std::os::unix::fs::symlink("/hostproc/self", b.rootfs().join("proc/self")).unwrap();
    b
}

fn decoy(b: &Bundle) {
    let d = b.rootfs().join("proc/driver/nvidia");
    for bus in [
        "0000:1b:00.0",
        "0000:3d:00.0",
        "0000:5e:00.0",
        "0000:86:00.0",
    ] {
        let g = d.join("gpus").join(bus);
        std::fs::create_dir_all(&g).unwrap();
        std::fs::write(g.join("information"), "Device Minor:    9\n").unwrap();
    }
    std::fs::write(d.join("params"), "ModifyDeviceFiles: 1\nDECOY\n").unwrap();
    std::fs::write(d.join("warnings"), "DECOY\n").unwrap();
}

fn run_ok(b: &Bundle, rt: Runtime) -> Vec<String> {
    let o = b.run(rt);
    assert!(o.status.success(), "{}: {}", rt.name(), text(&o));
    let s = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(s.contains("probe-done"), "{}", text(&o));
    s.lines().map(str::to_owned).collect()
}

fn line<'a>(lines: &'a [String], prefix: &str) -> &'a str {
    lines
        .iter()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} line in {lines:?}"))
        .trim_end()
}

#[test]
fn the_container_sees_only_its_gpus_and_no_node_modification() {
    require_root();
    prepare_cgroups_for_crun();
    let node = FakeNode::new(&[]);
    // NVML indices 1 and 3: minors 0 and 1, at buses 3d and 86.
    let cases: &[(&str, &str, &[&str])] = &[
        ("1,3", "0000:3d:00.0 0000:86:00.0", &["0", "1"]),
        ("0", "0000:1b:00.0", &["2"]),
        ("none", "", &[]),
    ];
    for rt in [Runtime::Runc, Runtime::Crun] {
        for (nvd, gpus, minors) in cases {
            let env = [format!("NVIDIA_VISIBLE_DEVICES={nvd}")];
            let env: Vec<&str> = env.iter().map(String::as_str).collect();
            let b = bundle_without_procfs(&node, &env, PROBE);
            decoy(&b);
            let seen = run_ok(&b, rt);
            let ctx = format!("{} {nvd}: {seen:?}", rt.name());
            assert_eq!(line(&seen, "top "), "gpus params registry version", "{ctx}");
            assert_eq!(line(&seen, "gpus "), *gpus, "{ctx}");
            assert_eq!(line(&seen, "param "), "ModifyDeviceFiles: 0", "{ctx}");
            let info: Vec<_> = seen
                .iter()
                .filter_map(|l| l.strip_prefix("info Device Minor:"))
                .map(str::trim)
                .collect();
            assert_eq!(info, *minors, "{ctx}");
            assert!(!seen.iter().any(|l| l == "decoy-visible"), "{ctx}");
            assert!(!seen.iter().any(|l| l == "writable"), "{ctx}");
            // The image's tree under the mask is as it was.
            let params = std::fs::read_to_string(b.rootfs().join("proc/driver/nvidia/params"));
            assert_eq!(params.unwrap(), "ModifyDeviceFiles: 1\nDECOY\n");
        }
    }

    // Switched off: the container sees what lies there (on a real node, the host's tree).
    node.edit_config(|c| format!("{c}mask-proc-driver = false\n"));
    for rt in [Runtime::Runc, Runtime::Crun] {
        let b = bundle_without_procfs(&node, &["NVIDIA_VISIBLE_DEVICES=1"], PROBE);
        decoy(&b);
        let seen = run_ok(&b, rt);
        let ctx = format!("{}: {seen:?}", rt.name());
        assert_eq!(
            line(&seen, "gpus "),
            "0000:1b:00.0 0000:3d:00.0 0000:5e:00.0 0000:86:00.0",
            "{ctx}"
        );
        assert_eq!(line(&seen, "param "), "ModifyDeviceFiles: 1", "{ctx}");
        assert!(seen.iter().any(|l| l == "decoy-visible"), "{ctx}");
    }
}

/// The test machines' kernels have no NVIDIA module: the container's own procfs has no
/// `driver/nvidia`, so the hook masks nothing, says so in its log, and the container starts.
#[test]
fn a_procfs_without_the_driver_directory_is_left_alone() {
    require_root();
    prepare_cgroups_for_crun();
    let node = FakeNode::new(&[]);
    // Said at debug level: there is nothing to hide.
    node.edit_config(|c| c.replacen("[gres-oci]\n", "[gres-oci]\nlog-level = \"debug\"\n", 1));
    for rt in [Runtime::Runc, Runtime::Crun] {
        let b = Bundle::new(BundleOpts {
            env: &["NVIDIA_VISIBLE_DEVICES=0"],
            script: "grep -q ' /proc proc ' /proc/mounts && echo procfs; \
                     [ -e /proc/driver/nvidia ] || echo no-driver-dir; \
                     grep -c ' /proc/driver' /proc/mounts; echo probe-done",
            hook_config: Some(&node.config()),
            ..Default::default()
        });
        let seen = run_ok(&b, rt);
        assert_eq!(seen[..3], ["procfs", "no-driver-dir", "0"], "{}", rt.name());
        assert!(
            node.log()
                .contains("no NVIDIA driver directory in the container's /proc; /proc/driver/nvidia not masked"),
            "{}",
            node.log()
        );
    }
}

/// An image link at `/proc` or at `/proc/driver/nvidia` would point the mask at another
/// directory of the image: refused, and the link's target is left as it was.
#[test]
fn image_links_at_the_mask_target_are_refused() {
    require_root();
    prepare_cgroups_for_crun();
    let node = FakeNode::new(&[]);
    for rt in [Runtime::Runc, Runtime::Crun] {
        for (link, target, why) in [
            (
                "proc/driver/nvidia",
                "/etc",
                "/proc/driver/nvidia: a link; refusing to mask it",
            ),
            (
                "proc",
                "/etc",
                "/proc: a link in the image; refusing to mask it",
            ),
        ] {
            let b = bundle_without_procfs(
                &node,
                &["NVIDIA_VISIBLE_DEVICES=0"],
                "ls /etc; echo probe-done",
            );
            let p = b.rootfs().join(link);
            if p.exists() {
                std::fs::remove_dir_all(&p).unwrap();
            }
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::os::unix::fs::symlink(target, &p).unwrap();
            let before = tree(&b.rootfs().join("etc"));
            let o = b.run(rt);
            assert!(!o.status.success(), "{} {link}: {}", rt.name(), text(&o));
            assert!(
                node.log().contains(why),
                "{} {link}: {}",
                rt.name(),
                node.log()
            );
            assert_eq!(tree(&b.rootfs().join("etc")), before);
        }
    }
}
