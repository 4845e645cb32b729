//! `ld.so.cache` against glibc's own tools: caches the real `ldconfig` writes (new, compat and
//! old formats, from shared objects built with gcc) read as `ldconfig -p` lists them, fuzzed
//! reading that never panics, and the writer's output byte for byte what ldconfig writes and
//! resolved by the real dynamic loader as ldconfig's would be. Needs gcc and ldconfig
//! (`make deps`).

use std::cmp::Ordering;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use gres_oci::ldcache::*;
use proptest::prelude::*;

const LDCONFIG: &str = "/usr/sbin/ldconfig";
const OLD_MAGIC: &[u8] = b"ld.so-1.7.0";
const NEW_MAGIC: &[u8] = b"glibc-ld.so.cache";
const NEW_MAGIC_VERSION: &[u8] = b"glibc-ld.so.cache1.1";
/// `sizeof (struct file_entry)` of the old format: the smallest entry of any format.
const OLD_ENTRY_LEN: usize = 12;
/// `cache_extension_magic` and `cache_extension_tag_generator` of glibc's `dl-cache.h`.
const EXTENSION_MAGIC: u32 = 0xeaa4_2174;
const EXTENSION_TAG_GENERATOR: u32 = 0;

fn p() -> &'static Path {
    Path::new("/etc/ld.so.cache")
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

// ---- caches written by the real ldconfig ----

fn have_tools() -> bool {
    let gcc = Command::new("gcc").arg("--version").output();
    let ok = Path::new(LDCONFIG).exists() && gcc.is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("skipping: needs gcc and {LDCONFIG}");
    }
    ok
}

fn gcc_so(out: &Path, soname: &str, extra: &[&str]) -> bool {
    let mut child = Command::new("gcc")
        .args(["-shared", "-fPIC", "-x", "c", "-", "-x", "none", "-o"])
        .arg(out)
        .arg(format!("-Wl,-soname,{soname}"))
        .args(extra)
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"int f(void){return 1;}\n")
        .unwrap();
    child.wait_with_output().unwrap().status.success()
}

fn run_ldconfig(args: &[&str]) {
    let out = Command::new(LDCONFIG).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ldconfig {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

struct Root {
    dir: tempfile::TempDir,
    /// Whether an i386 libc6 library made it into the cache.
    has_i386: bool,
}

impl Root {
    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
    fn root(&self) -> &str {
        self.dir.path().to_str().unwrap()
    }
}

/// A root with native libraries in two directories, a glibc-hwcaps
/// variant, and (when `gcc -m32` can link) an i386 library; its
/// `etc/ld.so.cache` is written by `ldconfig -r`.
fn build_root() -> Root {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    for d in [
        "etc",
        "usr/lib/x86_64-linux-gnu/glibc-hwcaps/x86-64-v3",
        "usr/lib64",
        "usr/lib32",
        "fakelibc32",
    ] {
        std::fs::create_dir_all(r.join(d)).unwrap();
    }
    let multiarch = r.join("usr/lib/x86_64-linux-gnu");
    assert!(gcc_so(
        &multiarch.join("libfoo.so.1.2.3"),
        "libfoo.so.1",
        &[]
    ));
    assert!(gcc_so(
        &multiarch.join("glibc-hwcaps/x86-64-v3/libfoo.so.1.2.3"),
        "libfoo.so.1",
        &[]
    ));
    assert!(gcc_so(
        &r.join("usr/lib64/libbar.so.2.0"),
        "libbar.so.2",
        &[]
    ));
    // Without a 32-bit libgcc/libc, link -nostdlib against a stub
    // libc.so.6 so that ldconfig still classifies the library as libc6.
    let stub = r.join("fakelibc32/libc.so.6");
    let has_i386 = cfg!(target_arch = "x86_64")
        && gcc_so(&stub, "libc.so.6", &["-m32", "-nostdlib"])
        && gcc_so(
            &r.join("usr/lib32/libt32.so.1.0"),
            "libt32.so.1",
            &[
                "-m32",
                "-nostdlib",
                "-Wl,--no-as-needed",
                stub.to_str().unwrap(),
            ],
        );
    if !has_i386 {
        eprintln!("note: gcc -m32 unavailable, no i386 library in the real cache");
    }
    std::fs::write(
        r.join("etc/ld.so.conf"),
        "/usr/lib/x86_64-linux-gnu\n/usr/lib64\n/usr/lib32\n",
    )
    .unwrap();
    let root = Root { dir, has_i386 };
    run_ldconfig(&["-r", root.root()]);
    root
}

/// `(key, description, value)` lines of `ldconfig -p`.
fn ldconfig_p(cache: &Path) -> Vec<(String, String, String)> {
    let out = Command::new(LDCONFIG)
        .arg("-p")
        .arg("-C")
        .arg(cache)
        .output()
        .unwrap();
    assert!(out.status.success());
    // Lossy: glibc 2.36 prints garbage for the hwcaps name of compat caches.
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix('\t'))
        .map(|l| {
            let (key, rest) = l.split_once(" (").unwrap();
            let (desc, value) = rest.rsplit_once(") => ").unwrap();
            (key.to_owned(), desc.to_owned(), value.to_owned())
        })
        .collect()
}

/// The start of ldconfig's description of an entry (`print_entry`).
fn describe(e: &LdCacheEntry) -> String {
    let kind = match e.flags & FLAG_TYPE_MASK {
        FLAG_ELF => "ELF",
        FLAG_ELF_LIBC6 => "libc6",
        other => panic!("unexpected type {other:#x}"),
    };
    let arch = match e.arch() {
        ARCH_I386 => "",
        ARCH_X86_64 => ",x86-64",
        ARCH_AARCH64 => ",AArch64",
        ARCH_X32 => ",x32",
        ARCH_PPC64 | ARCH_S390X => ",64bit",
        other => panic!("arch {other:#x} not covered by this test"),
    };
    format!("{kind}{arch}")
}

fn assert_matches_ldconfig(cache: &LdCache, file: &Path) {
    let printed = ldconfig_p(file);
    assert!(!printed.is_empty());
    assert_eq!(cache.entries.len(), printed.len(), "{printed:?}");
    for (e, (key, desc, value)) in cache.entries.iter().zip(&printed) {
        assert_eq!(&e.key, key);
        assert_eq!(&e.value, value);
        let expected = describe(e);
        assert!(
            desc == &expected || desc.starts_with(&format!("{expected}, ")),
            "{key}: ldconfig says {desc:?}, we say {expected:?}"
        );
        assert_eq!(e.hwcap != 0, desc.contains("hwcap"), "{key}: {desc}");
    }
}

#[test]
fn real_new_format_cache_matches_ldconfig_p() {
    if !have_tools() {
        return;
    }
    let root = build_root();
    let file = root.path("etc/ld.so.cache");
    let bytes = std::fs::read(&file).unwrap();
    assert!(
        bytes.starts_with(NEW_MAGIC_VERSION),
        "glibc >= 2.32 writes new format only"
    );
    let cache = LdCache::read(&file).unwrap();
    assert_matches_ldconfig(&cache, &file);

    let foo: Vec<&LdCacheEntry> = cache.lookup_prefix("libfoo", native_arch()).collect();
    assert_eq!(foo.len(), 2, "{foo:?}");
    // ldconfig sorts the glibc-hwcaps variant first, as ld.so prefers it.
    assert_eq!(foo[0].hwcap & HWCAP_EXTENSION, HWCAP_EXTENSION);
    assert_eq!(
        foo[0].value,
        "/usr/lib/x86_64-linux-gnu/glibc-hwcaps/x86-64-v3/libfoo.so.1.2.3"
    );
    assert_eq!(foo[1].hwcap, 0);
    assert_eq!(foo[1].value, "/usr/lib/x86_64-linux-gnu/libfoo.so.1");
    assert_eq!(foo[1].key, "libfoo.so.1");
    let bar: Vec<&str> = cache
        .lookup_prefix("libbar.so.", native_arch())
        .map(|e| e.value.as_str())
        .collect();
    assert_eq!(bar, ["/usr/lib64/libbar.so.2"]);
    // The soname links ldconfig made are what the values point at.
    assert!(root.path("usr/lib64/libbar.so.2").exists());

    let t32: Vec<&str> = cache
        .lookup_prefix("libt32", ARCH_I386)
        .map(|e| e.value.as_str())
        .collect();
    if root.has_i386 {
        assert_eq!(compat32_arch(), Some(ARCH_I386));
        assert_eq!(t32, ["/usr/lib32/libt32.so.1"]);
        assert_eq!(cache.lookup_prefix("libt32", native_arch()).count(), 0);
        assert_eq!(cache.lookup_prefix("libfoo", ARCH_I386).count(), 0);
    } else {
        assert!(t32.is_empty());
    }
}

fn supports_format(format: &str) -> bool {
    let help = Command::new(LDCONFIG).arg("--help").output().unwrap();
    let ok = String::from_utf8_lossy(&help.stdout).contains(format);
    if !ok {
        eprintln!("skipping: ldconfig has no -c {format}");
    }
    ok
}

#[test]
fn real_compat_cache_uses_new_part() {
    if !have_tools() || !supports_format("compat") {
        return;
    }
    let root = build_root();
    // -C is taken relative to the -r root.
    run_ldconfig(&[
        "-c",
        "compat",
        "-r",
        root.root(),
        "-C",
        "/etc/ld.so.cache.compat",
    ]);
    let file = root.path("etc/ld.so.cache.compat");
    let bytes = std::fs::read(&file).unwrap();
    assert!(bytes.starts_with(OLD_MAGIC));
    let compat = LdCache::parse(&bytes, &file).unwrap();
    assert_matches_ldconfig(&compat, &file);
    // Only the new part can carry the glibc-hwcaps entry.
    assert!(compat
        .entries
        .iter()
        .any(|e| e.hwcap & HWCAP_EXTENSION != 0));
    let new = LdCache::read(&root.path("etc/ld.so.cache")).unwrap();
    assert_eq!(compat, new);
}

#[test]
fn real_old_format_cache() {
    if !have_tools() || !supports_format("old") {
        return;
    }
    let root = build_root();
    run_ldconfig(&["-c", "old", "-r", root.root(), "-C", "/etc/ld.so.cache.old"]);
    let file = root.path("etc/ld.so.cache.old");
    let bytes = std::fs::read(&file).unwrap();
    assert!(bytes.starts_with(OLD_MAGIC));
    assert!(!bytes.windows(NEW_MAGIC.len()).any(|w| w == NEW_MAGIC));
    let old = LdCache::parse(&bytes, &file).unwrap();
    assert_matches_ldconfig(&old, &file);
    let foo: Vec<&str> = old
        .lookup_prefix("libfoo", native_arch())
        .map(|e| e.value.as_str())
        .collect();
    // The old format has no hwcap word: the glibc-hwcaps variant is listed
    // like a plain library, still first.
    assert_eq!(
        foo,
        [
            "/usr/lib/x86_64-linux-gnu/glibc-hwcaps/x86-64-v3/libfoo.so.1.2.3",
            "/usr/lib/x86_64-linux-gnu/libfoo.so.1"
        ]
    );
    assert!(old
        .entries
        .iter()
        .all(|e| e.hwcap == 0 && e.os_version == 0));
}

// ---- robustness ----

/// Valid caches to mutate: real ones (the unit tests mutate hand-made ones).
fn seeds() -> &'static [Vec<u8>] {
    static SEEDS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    SEEDS.get_or_init(|| {
        let mut seeds = Vec::new();
        if have_tools() {
            let root = build_root();
            seeds.push(std::fs::read(root.path("etc/ld.so.cache")).unwrap());
            if supports_format("compat") {
                run_ldconfig(&["-c", "compat", "-r", root.root(), "-C", "/etc/c"]);
                seeds.push(std::fs::read(root.path("etc/c")).unwrap());
            }
        }
        seeds
    })
}

fn check_no_panic(bytes: &[u8]) {
    if let Ok(cache) = LdCache::parse(bytes, p()) {
        // Entries can only come from the buffer: no more than fit in it.
        assert!(cache.entries.len() <= bytes.len() / OLD_ENTRY_LEN);
        let _ = cache.lookup_prefix("lib", native_arch()).count();
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn mutated_caches_never_panic(
        seed in any::<proptest::sample::Index>(),
        bytes_set in proptest::collection::vec((any::<proptest::sample::Index>(), any::<u8>()), 0..8),
        words_set in proptest::collection::vec((any::<proptest::sample::Index>(), any::<u32>()), 0..4),
        cut in proptest::option::of(any::<proptest::sample::Index>()),
    ) {
        let seeds = seeds();
        let mut bytes = seeds[seed.index(seeds.len())].clone();
        for (at, b) in bytes_set {
            let i = at.index(bytes.len());
            bytes[i] = b;
        }
        // Whole words hit counts and offsets with extreme values.
        for (at, w) in words_set {
            let i = at.index(bytes.len() / 4) * 4;
            bytes[i..i + 4].copy_from_slice(&w.to_ne_bytes());
        }
        if let Some(cut) = cut {
            let n = cut.index(bytes.len() + 1);
            bytes.truncate(n);
        }
        check_no_panic(&bytes);
    }
}

/// A real ELF shared object with that soname (ldconfig ignores anything else).
fn so(root: &Path, rel: &str, soname: &str, extra: &[&str]) -> bool {
    let out = root.join(rel.trim_start_matches('/'));
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    gcc_so(&out, soname, extra)
}

/// The entry lines of `ldconfig -p -C file`, in order (the generator line left out).
fn listing(file: &Path) -> Vec<String> {
    let out = Command::new(LDCONFIG)
        .arg("-p")
        .arg("-C")
        .arg(file)
        .output()
        .unwrap();
    assert!(out.status.success(), "ldconfig -p {}", file.display());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with('\t'))
        .map(str::to_owned)
        .collect()
}

fn listing_of(bytes: &[u8]) -> Vec<String> {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), bytes).unwrap();
    listing(f.path())
}

/// The generator string of a new-format cache written by ldconfig.
fn generator_of(bytes: &[u8]) -> String {
    let ext = read_u32(bytes, 32).unwrap() as usize;
    assert_eq!(read_u32(bytes, ext), Some(EXTENSION_MAGIC));
    let count = read_u32(bytes, ext + 4).unwrap() as usize;
    for i in 0..count {
        let at = ext + 8 + 16 * i;
        if read_u32(bytes, at) == Some(EXTENSION_TAG_GENERATOR) {
            let off = read_u32(bytes, at + 8).unwrap() as usize;
            let size = read_u32(bytes, at + 12).unwrap() as usize;
            return String::from_utf8(bytes[off..off + size].to_vec()).unwrap();
        }
    }
    panic!("no generator section")
}

/// An image-like root: libraries in several ld.so.conf dirs, sonames whose numbers sort
/// differently as numbers and as text, two glibc-hwcaps subdirectories, the same soname
/// in two dirs, a library not linked against libc, a symlinked dir, and (when gcc can)
/// an i386 library. Its cache is written by `ldconfig -r`.
fn image_root() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    let ma = "/usr/lib/x86_64-linux-gnu";
    for (rel, soname) in [
        (format!("{ma}/libz.so.1.2.13"), "libz.so.1"),
        (format!("{ma}/libz9.so.9.0"), "libz9.so.9"),
        (format!("{ma}/libz10.so.10.0"), "libz10.so.10"),
        (format!("{ma}/libfoo.so.2.0"), "libfoo.so.2"),
        (format!("{ma}/libfoo.so.10.0"), "libfoo.so.10"),
        (format!("{ma}/libfoo.so.9.1"), "libfoo.so.9"),
        (
            format!("{ma}/glibc-hwcaps/x86-64-v3/libfoo.so.2.0"),
            "libfoo.so.2",
        ),
        (
            format!("{ma}/glibc-hwcaps/x86-64-v2/libfoo.so.2.0"),
            "libfoo.so.2",
        ),
        (
            format!("{ma}/glibc-hwcaps/x86-64-v2/libz.so.1.2.13"),
            "libz.so.1",
        ),
        (format!("{ma}/libA_B-c.so.0"), "libA_B-c.so.0"),
        ("/usr/local/lib/libfoo.so.2.5".into(), "libfoo.so.2"),
        ("/usr/local/lib/libloc.so.1".into(), "libloc.so.1"),
        ("/opt/app/lib/libapp.so.3".into(), "libapp.so.3"),
    ] {
        assert!(so(r, &rel, soname, &[]));
    }
    assert!(so(
        r,
        "/opt/nolibc/libbare.so.1",
        "libbare.so.1",
        &["-nostdlib"]
    ));
    std::fs::create_dir_all(r.join("opt/link")).unwrap();
    std::os::unix::fs::symlink("../app/lib", r.join("opt/link/lib")).unwrap();
    // i386: link -nostdlib against a stub libc.so.6 (no 32-bit libc is installed).
    let stub = r.join("stub32/libc.so.6");
    let i386 = cfg!(target_arch = "x86_64")
        && so(r, "/stub32/libc.so.6", "libc.so.6", &["-m32", "-nostdlib"])
        && so(
            r,
            "/usr/lib32/libt32.so.1.0",
            "libt32.so.1",
            &["-m32", "-nostdlib", stub.to_str().unwrap()],
        );
    let mut conf = format!("/usr/local/lib\n{ma}\n/opt/app/lib\n/opt/nolibc\n");
    if i386 {
        conf.push_str("/usr/lib32\n");
    }
    std::fs::create_dir_all(r.join("etc")).unwrap();
    std::fs::write(r.join("etc/ld.so.conf"), conf).unwrap();
    run_ldconfig(&["-r", r.to_str().unwrap()]);
    dir
}

#[test]
fn round_trip_of_real_caches_is_byte_identical() {
    if !have_tools() {
        return;
    }
    let root = image_root();
    let file = root.path().join("etc/ld.so.cache");
    let bytes = std::fs::read(&file).unwrap();
    let cache = LdCache::parse(&bytes, &file).unwrap();
    assert!(cache.entries.len() >= 14, "{cache:?}");
    assert!(cache.entries.iter().any(|e| e.hwcap & HWCAP_EXTENSION != 0));
    // Nothing in it stops a faithful rewrite.
    updated_cache(Some(&bytes), &[], native_arch()).unwrap();
    // Already in ldconfig's order.
    assert_eq!(cache.sorted(), cache);
    assert_eq!(
        cache.to_bytes_with_generator(&generator_of(&bytes)),
        bytes,
        "round trip differs"
    );
    let ours = cache.to_bytes();
    assert_eq!(listing_of(&ours), listing(&file));
    assert_eq!(generator_of(&ours), GENERATOR);
    assert_eq!(LdCache::parse(&ours, p()).unwrap(), cache);

    // The empty cache too.
    let empty = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(empty.path().join("etc")).unwrap();
    run_ldconfig(&["-r", empty.path().to_str().unwrap()]);
    let bytes = std::fs::read(empty.path().join("etc/ld.so.cache")).unwrap();
    assert_eq!(
        LdCache::default().to_bytes_with_generator(&generator_of(&bytes)),
        bytes
    );
    // The writer sorts: reversed input gives the same file, but for ties (same key,
    // flags and hwcaps), whose order is the input's, as in ldconfig.
    let mut reversed = cache.clone();
    reversed.entries.reverse();
    let again = LdCache::parse(&reversed.to_bytes(), p()).unwrap();
    assert_eq!(again.entries.len(), cache.entries.len());
    for (a, b) in again.entries.iter().zip(&cache.entries) {
        assert_eq!(ldconfig_order(a, b), Ordering::Equal, "{a:?} {b:?}");
    }
}

/// Puts a driver library into `root` the way the hook does (the file under its full
/// name, then the soname link) and returns `(soname, soname link path)`.
fn inject(root: &Path, dir: &str, file: &str, soname: &str) -> (String, String) {
    assert!(so(root, &format!("{dir}/{file}"), soname, &[]));
    if file != soname {
        let link = root.join(dir.trim_start_matches('/')).join(soname);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(file, &link).unwrap();
    }
    (soname.to_owned(), format!("{dir}/{soname}"))
}

/// `listing` as ldconfig orders it when `dir` is scanned before the others: within each
/// run of lines that tie (same key and description), entries in `dir` move first.
fn promote_dir(listing: &[String], dir: &str) -> Vec<String> {
    let tie = |l: &String| l.split(" => ").next().unwrap().to_owned();
    let in_dir = |l: &String| {
        let v = l.split(" => ").nth(1).unwrap();
        v.rsplit_once('/').unwrap().0 == dir
    };
    let mut out = Vec::new();
    for run in listing.chunk_by(|a, b| tie(a) == tie(b)) {
        out.extend(run.iter().filter(|l| in_dir(l)).cloned());
        out.extend(run.iter().filter(|l| !in_dir(l)).cloned());
    }
    out
}

#[test]
fn merge_equals_ldconfig_on_the_injected_tree() {
    if !have_tools() {
        return;
    }
    let root = image_root();
    let r = root.path();
    let rs = r.to_str().unwrap();
    let image = std::fs::read(r.join("etc/ld.so.cache")).unwrap();
    let ma = "/usr/lib/x86_64-linux-gnu";
    let libs: Vec<(String, String)> = [
        ("libcuda.so.550.54.15", "libcuda.so.1"),
        ("libnvidia-ml.so.550.54.15", "libnvidia-ml.so.1"),
        (
            "libnvidia-ptxjitcompiler.so.550.54.15",
            "libnvidia-ptxjitcompiler.so.1",
        ),
        ("libnvidia-nvvm.so.550.54.15", "libnvidia-nvvm.so.4"),
        (
            "libnvidia-glcore.so.550.54.15",
            "libnvidia-glcore.so.550.54.15",
        ),
        ("libEGL_nvidia.so.550.54.15", "libEGL_nvidia.so.0"),
    ]
    .iter()
    .map(|(f, s)| inject(r, ma, f, s))
    .collect();

    let ours = updated_cache(Some(&image), &libs, native_arch()).unwrap();

    // What a full `ldconfig -r` of the tree writes: the same list in the same order.
    run_ldconfig(&["-r", rs, "-C", "/etc/full.cache"]);
    let full = std::fs::read(r.join("etc/full.cache")).unwrap();
    assert_eq!(listing_of(&ours), listing(&r.join("etc/full.cache")));
    // The hook's old command (`-X`, the library dir on the command line) differs in one
    // way only: it scans that dir first, so the image's own libfoo.so.2 there now beats
    // the one in /usr/local/lib that the image's ld.so.conf puts first. The merge keeps
    // the image's choice.
    run_ldconfig(&["-r", rs, "-X", "-C", "/etc/hook.cache", ma]);
    let hook = listing(&r.join("etc/hook.cache"));
    assert_ne!(listing_of(&ours), hook);
    assert_eq!(promote_dir(&listing_of(&ours), ma), hook);
    // And byte for byte, but for the generator string.
    let parsed = LdCache::parse(&ours, p()).unwrap();
    assert_eq!(parsed.to_bytes_with_generator(&generator_of(&full)), full);

    // Starting again from our output adds nothing twice.
    let again = updated_cache(Some(&ours), &libs, native_arch()).unwrap();
    assert_eq!(again, ours);
}

#[test]
fn injected_library_shadows_the_images_copy() {
    if !have_tools() {
        return;
    }
    let root = image_root();
    let r = root.path();
    // The image has its own libcuda.so.1 (a CUDA forward-compat copy, say) in an
    // ld.so.conf dir that comes first.
    assert!(so(r, "/usr/local/lib/libcuda.so.1", "libcuda.so.1", &[]));
    run_ldconfig(&["-r", r.to_str().unwrap()]);
    let image = std::fs::read(r.join("etc/ld.so.cache")).unwrap();
    let ma = "/usr/lib/x86_64-linux-gnu";
    let libs = vec![inject(r, ma, "libcuda.so.550.54.15", "libcuda.so.1")];
    let ours = updated_cache(Some(&image), &libs, native_arch()).unwrap();
    let parsed = LdCache::parse(&ours, p()).unwrap();
    let cuda: Vec<&str> = parsed
        .lookup_prefix("libcuda.so.1", native_arch())
        .map(|e| e.value.as_str())
        .collect();
    assert_eq!(cuda, [format!("{ma}/libcuda.so.1")]);
    // The hook's ldconfig lists both, the injected dir first: ld.so takes the first, so
    // lookups agree, and every other line is the same.
    run_ldconfig(&["-r", r.to_str().unwrap(), "-X", "-C", "/etc/hook.cache", ma]);
    let hook = listing(&r.join("etc/hook.cache"));
    let shadowed: Vec<&String> = hook
        .iter()
        .filter(|l| l.ends_with("=> /usr/local/lib/libcuda.so.1"))
        .collect();
    assert_eq!(shadowed.len(), 1);
    let first = hook
        .iter()
        .position(|l| l.contains("libcuda.so.1"))
        .unwrap();
    assert!(hook[first].ends_with(&format!("=> {ma}/libcuda.so.1")));
    let without: Vec<String> = hook
        .iter()
        .filter(|l| !l.ends_with("=> /usr/local/lib/libcuda.so.1"))
        .cloned()
        .collect();
    assert_eq!(promote_dir(&listing_of(&ours), ma), without);
}

#[test]
fn no_image_cache_starts_empty() {
    if !have_tools() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let dir = "/usr/lib64";
    let libs = vec![
        inject(r, dir, "libcuda.so.550.54.15", "libcuda.so.1"),
        inject(r, dir, "libnvidia-ml.so.550.54.15", "libnvidia-ml.so.1"),
    ];
    std::fs::create_dir_all(r.join("etc")).unwrap();
    run_ldconfig(&[
        "-r",
        r.to_str().unwrap(),
        "-X",
        "-C",
        "/etc/hook.cache",
        dir,
    ]);
    let expected = std::fs::read(r.join("etc/hook.cache")).unwrap();
    for image in [None, Some(&[][..])] {
        let ours = updated_cache(image, &libs, native_arch()).unwrap();
        let parsed = LdCache::parse(&ours, p()).unwrap();
        assert_eq!(
            parsed.to_bytes_with_generator(&generator_of(&expected)),
            expected
        );
    }
}

#[test]
fn compat_and_old_caches_are_rewritten_in_the_new_format() {
    if !have_tools() {
        return;
    }
    let root = image_root();
    let r = root.path();
    let rs = r.to_str().unwrap();
    let libs = vec![(
        "libcuda.so.1".to_owned(),
        "/usr/lib64/libcuda.so.1".to_owned(),
    )];
    let help = Command::new(LDCONFIG).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    let written = |format: &str| {
        let name = format!("/etc/{format}.cache");
        run_ldconfig(&["-c", format, "-r", rs, "-C", &name]);
        std::fs::read(r.join(name.trim_start_matches('/'))).unwrap()
    };
    if help.contains("compat") {
        // With glibc-hwcaps entries: ld.so reads their names at the wrong offset in a
        // compat file and never uses them, so a rewrite would change lookups. Refused.
        let e = updated_cache(Some(&written("compat")), &libs, native_arch()).unwrap_err();
        assert!(matches!(e, LdCacheError::NotRewritable { .. }), "{e:?}");
    }
    if help.contains("old") {
        // The old format has no hwcap word: every entry is a plain one, to ld.so and
        // to the rewrite alike.
        let old = written("old");
        let out = updated_cache(Some(&old), &libs, native_arch()).unwrap();
        assert!(out.starts_with(NEW_MAGIC_VERSION));
        let before = LdCache::parse(&old, p()).unwrap();
        let after = LdCache::parse(&out, p()).unwrap();
        assert_eq!(after.entries.len(), before.entries.len() + 1);
        assert!(after.entries.iter().all(|e| e.hwcap == 0));
    }
    // Without glibc-hwcaps entries, the new part of a compat file has everything.
    std::fs::remove_dir_all(r.join("usr/lib/x86_64-linux-gnu/glibc-hwcaps")).unwrap();
    run_ldconfig(&["-r", rs]);
    let new = std::fs::read(r.join("etc/ld.so.cache")).unwrap();
    let from_new = updated_cache(Some(&new), &libs, native_arch()).unwrap();
    if help.contains("compat") {
        let out = updated_cache(Some(&written("compat")), &libs, native_arch()).unwrap();
        assert_eq!(out, from_new);
    }
}
