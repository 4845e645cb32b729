//! The in-process linker-cache update against the real dynamic loader: a program run in a
//! chroot resolves its libraries the same way, step for step, with the cache that
//! `gres_oci::ldcache::updated_cache` writes as with the one the real ldconfig writes.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use gres_oci::ldcache::{native_arch, updated_cache, LdCache};

const LDCONFIG: &str = "/usr/sbin/ldconfig";

/// Root (chroot), gcc, ldconfig and an x86-64 glibc host; the test is skipped otherwise.
fn usable() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let ok = root
        && cfg!(all(target_arch = "x86_64", target_os = "linux"))
        && Path::new(LDCONFIG).exists()
        && Path::new("/lib64/ld-linux-x86-64.so.2").exists()
        && Command::new("gcc")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("skipping: needs root, gcc, {LDCONFIG} and an x86-64 glibc host");
    }
    ok
}

fn gcc(args: &[&str], source: &str) {
    let mut child = Command::new("gcc")
        .args(["-x", "c", "-"])
        .args(args)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(source.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "gcc {args:?}");
}

/// A shared object whose `name_<fn>()` returns `tag`, with that soname, at `root/rel`.
fn lib(root: &Path, rel: &str, soname: &str, func: &str, tag: &str) {
    let out = root.join(rel);
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    gcc(
        &[
            "-shared",
            "-fPIC",
            &format!("-Wl,-soname,{soname}"),
            "-o",
            out.to_str().unwrap(),
        ],
        &format!("const char *{func}(void) {{ return \"{tag}\"; }}\n"),
    );
}

fn link(root: &Path, rel: &str, target: &str) {
    let p = root.join(rel);
    let _ = std::fs::remove_file(&p);
    std::os::unix::fs::symlink(target, p).unwrap();
}

fn ldconfig(args: &[&str]) {
    let st = Command::new(LDCONFIG).args(args).status().unwrap();
    assert!(st.success(), "ldconfig {args:?}");
}

/// Runs `/prog` in the chroot with `LD_DEBUG=libs`; returns its stdout and the loader's
/// trace with the pid prefixes removed.
fn run(root: &Path) -> (Output, Vec<String>) {
    let out = Command::new("/usr/sbin/chroot")
        .arg(root)
        .arg("/prog")
        .env_clear()
        .env("LD_DEBUG", "libs")
        .output()
        .unwrap();
    let trace = String::from_utf8_lossy(&out.stderr)
        .lines()
        .map(|l| {
            l.trim_start()
                .split_once(':')
                .map_or(l, |(_, rest)| rest)
                .trim()
                .to_owned()
        })
        .filter(|l| !l.is_empty() && !l.contains("calling init") && !l.contains("calling fini"))
        .collect();
    (out, trace)
}

#[test]
fn the_dynamic_loader_resolves_the_same_with_our_cache() {
    if !usable() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();

    // The image: the host's loader and libc, an application library, and a library with a
    // glibc-hwcaps variant, in ld.so.conf dirs that are not on the loader's default path.
    let ma = "lib/x86_64-linux-gnu";
    std::fs::create_dir_all(r.join(ma)).unwrap();
    std::fs::create_dir_all(r.join("lib64")).unwrap();
    std::fs::create_dir_all(r.join("etc")).unwrap();
    for (from, to) in [
        ("/lib64/ld-linux-x86-64.so.2", "lib64/ld-linux-x86-64.so.2"),
        (
            "/lib/x86_64-linux-gnu/libc.so.6",
            "lib/x86_64-linux-gnu/libc.so.6",
        ),
    ] {
        std::fs::copy(std::fs::canonicalize(from).unwrap(), r.join(to)).unwrap();
    }
    lib(r, "opt/img/libimg.so.1.0", "libimg.so.1", "img", "image");
    lib(r, "opt/img/libhw.so.1.0", "libhw.so.1", "hw", "baseline");
    lib(
        r,
        "opt/img/glibc-hwcaps/x86-64-v2/libhw.so.1.0",
        "libhw.so.1",
        "hw",
        "x86-64-v2",
    );
    // The image ships an old libinj in a dir that comes first in its ld.so.conf.
    lib(
        r,
        "opt/old/libinj.so.1",
        "libinj.so.1",
        "inj",
        "image's own",
    );
    std::fs::write(
        r.join("etc/ld.so.conf"),
        "/opt/old\n/opt/img\n/opt/inj\n/lib/x86_64-linux-gnu\n",
    )
    .unwrap();
    ldconfig(&["-r", r.to_str().unwrap()]);
    let image_cache = std::fs::read(r.join("etc/ld.so.cache")).unwrap();

    // The program, linked by soname only (no rpath): every library comes from the cache.
    let build = tempfile::tempdir().unwrap();
    lib(build.path(), "libinj.so", "libinj.so.1", "inj", "-");
    gcc(
        &[
            "-x",
            "none",
            "-o",
            r.join("prog").to_str().unwrap(),
            &format!("-L{}", r.join("opt/img").display()),
            &format!("-L{}", build.path().display()),
            "-Wl,--no-as-needed",
            r.join("opt/img/libimg.so.1.0").to_str().unwrap(),
            r.join("opt/img/libhw.so.1.0").to_str().unwrap(),
            build.path().join("libinj.so").to_str().unwrap(),
        ],
        "#include <stdio.h>\nconst char *img(void), *hw(void), *inj(void);\n\
         int main(void) { printf(\"%s %s %s\\n\", img(), hw(), inj()); return 0; }\n",
    );

    // Before injection the image resolves libinj.so.1 to its own copy.
    let (out, _) = run(r);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).ends_with("image's own\n"));

    // Inject the driver library the way the hook does: the file, then the soname link.
    lib(
        r,
        "opt/inj/libinj.so.550.54.15",
        "libinj.so.1",
        "inj",
        "injected",
    );
    link(r, "opt/inj/libinj.so.1", "libinj.so.550.54.15");

    // Our cache: the image's cache plus the injected library.
    let libs = [("libinj.so.1".to_owned(), "/opt/inj/libinj.so.1".to_owned())];
    let ours = updated_cache(Some(&image_cache), &libs, native_arch()).unwrap();
    std::fs::write(r.join("etc/ld.so.cache"), &ours).unwrap();
    let (out_ours, trace_ours) = run(r);
    assert!(out_ours.status.success(), "{out_ours:?}");
    let stdout = String::from_utf8_lossy(&out_ours.stdout).into_owned();
    assert!(stdout.starts_with("image "), "{stdout}");
    assert!(stdout.ends_with(" injected\n"), "{stdout}");
    assert!(
        trace_ours
            .iter()
            .any(|l| l == "trying file=/opt/inj/libinj.so.1"),
        "{trace_ours:#?}"
    );

    // The hook's ldconfig command on the same tree (`-X`, the injected dir first): the
    // loader takes the same steps and loads the same files.
    ldconfig(&[
        "-r",
        r.to_str().unwrap(),
        "-X",
        "-C",
        "/etc/ld.so.cache",
        "/opt/inj",
    ]);
    let (out_ldconfig, trace_ldconfig) = run(r);
    assert_eq!(out_ldconfig.stdout, out_ours.stdout);
    assert_eq!(trace_ldconfig, trace_ours);

    // And the parsed caches agree entry for entry, except that ldconfig also keeps the
    // shadowed copy of libinj.so.1 after the injected one, where ld.so never looks.
    let theirs = LdCache::read(&r.join("etc/ld.so.cache")).unwrap();
    let mut theirs_first = theirs.entries.clone();
    theirs_first.retain(|e| e.value != "/opt/old/libinj.so.1");
    assert_eq!(
        LdCache::parse(&ours, Path::new("ours")).unwrap().entries,
        theirs_first
    );
}

/// The cost of the in-process update, for bench/run.sh: the median time of
/// `updated_cache` over the cache at `$GRES_OCI_BENCH_CACHE` (default: this host's) with
/// twenty driver libraries, written as JSON to `$GRES_OCI_BENCH_OUT` (or stderr).
/// Run with `cargo test --release --test ldcache_writer -- --ignored update_cost`.
#[test]
#[ignore = "a measurement, run by bench/run.sh"]
fn update_cost() {
    let path = std::env::var_os("GRES_OCI_BENCH_CACHE").unwrap_or("/etc/ld.so.cache".into());
    let image = std::fs::read(&path).ok();
    let dir = "/usr/lib/x86_64-linux-gnu";
    let libs: Vec<(String, String)> = (0..20)
        .map(|i| {
            let soname = format!("libnvidia-bench{i}.so.1");
            let path = format!("{dir}/{soname}");
            (soname, path)
        })
        .collect();
    let entries = image.as_deref().map_or(0, |b| {
        LdCache::parse(b, Path::new("x")).map_or(0, |c| c.entries.len())
    });
    let mut times = Vec::new();
    let mut size = 0;
    for _ in 0..201 {
        let t = std::time::Instant::now();
        let out = updated_cache(image.as_deref(), &libs, native_arch()).unwrap();
        times.push(t.elapsed().as_secs_f64() * 1e6);
        size = out.len();
    }
    times.sort_by(f64::total_cmp);
    let json = format!(
        "{{\"cache\": {:?}, \"entries\": {entries}, \"added\": {}, \"output_bytes\": {size}, \"median_us\": {:.1}, \"p90_us\": {:.1}}}",
        path.to_string_lossy(),
        libs.len(),
        times[times.len() / 2],
        times[times.len() * 9 / 10]
    );
    match std::env::var_os("GRES_OCI_BENCH_OUT") {
        Some(out) => std::fs::write(out, json).unwrap(),
        None => eprintln!("{json}"),
    }
}
