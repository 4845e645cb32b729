//! Writing `ld.so.cache` in glibc's new format, byte for byte as ldconfig lays it out, and
//! the container's updated cache built from the image's.

use std::path::Path;

use super::*;

// ---- writer: the new format as glibc's ldconfig writes it ----
//
// The hook used to run the host's ldconfig over the whole image to add a few driver
// libraries to the container's linker cache; that costs 7-18 ms per container and grows with
// the image. Adding entries to the image's own cache in-process takes tens of microseconds
// for a small image and about 0.3-0.5 ms for a 550-entry cache (release build). The
// layout and order below follow glibc 2.36's elf/cache.c (`save_cache`, `compare`,
// `write_extensions`) and elf/stringtable.c, so that a cache built from the same entries is
// byte for byte what ldconfig writes, apart from the generator string.

/// `cache_extension_magic` of `dl-cache.h` (`(uint32_t) -358342284`).
const EXTENSION_MAGIC: u32 = 0xeaa4_2174;
/// `cache_extension_tag_generator`.
const EXTENSION_TAG_GENERATOR: u32 = 0;
/// `cache_extension_tag_glibc_hwcaps`.
const EXTENSION_TAG_GLIBC_HWCAPS: u32 = 1;
/// `DL_CACHE_HWCAP_ISA_LEVEL_MASK`: ISA-level bits above bit 32 of an extension hwcap.
const HWCAP_ISA_LEVEL_MASK: u64 = 0x3ff;
/// `cache_file_new_flags_endian_current`.
const ENDIAN_CURRENT: u8 = if cfg!(target_endian = "big") {
    3
} else {
    ENDIAN_LITTLE
};

/// What [`LdCache::to_bytes`] records as the cache's generator (ldconfig records its own
/// version there; `ldconfig -p` prints it). `ld.so` never reads it.
pub const GENERATOR: &str = concat!("gres-oci ", env!("CARGO_PKG_VERSION"));

/// Whether `hwcap` marks a glibc-hwcaps entry, as `dl_cache_hwcap_extension` decides it: the
/// extension bit and nothing else above bit 32 except the ISA level.
fn is_hwcaps_extension(hwcap: u64) -> bool {
    (hwcap >> 32) & !HWCAP_ISA_LEVEL_MASK == HWCAP_EXTENSION >> 32
}

/// A string as C sees it: up to its first NUL.
fn c_bytes(s: &str) -> &[u8] {
    let b = s.as_bytes();
    b.iter().position(|&c| c == 0).map_or(b, |n| &b[..n])
}

/// The glibc-hwcaps subdirectory of an extension entry: the directory its file is in.
/// ldconfig always stores such an entry as `<dir>/glibc-hwcaps/<name>/<file>`, so the name
/// is the value's parent directory; this is what lets the writer rebuild the extension
/// section from the entries alone.
fn hwcaps_name(e: &LdCacheEntry) -> &[u8] {
    let v = c_bytes(&e.value);
    let dir = v.rsplitn(2, |&c| c == b'/').nth(1).unwrap_or_default();
    dir.rsplit(|&c| c == b'/').next().unwrap_or_default()
}

/// glibc's `_dl_cache_libcmp`: like `strcmp`, but runs of digits compare as numbers, a digit
/// sorts after any other character, and characters compare as C `char` (signed on x86).
///
/// The one departure: glibc accumulates each digit run in an `int` and returns the
/// difference, which overflows for runs of ten or more digits and then is not a consistent
/// order at all. Here the (wrapped) run values are compared rather than subtracted, so the
/// result is always a total order (which `sort_by` needs) and agrees with glibc whenever
/// glibc's own order is consistent.
pub fn dl_cache_libcmp(p1: &[u8], p2: &[u8]) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    let at = |s: &[u8], i: usize| s.get(i).copied().unwrap_or(0);
    // `as c_char` reproduces the platform's char signedness, as the C code sees it.
    let ch = |b: u8| i32::from(b as std::ffi::c_char);
    let number = |s: &[u8], i: &mut usize| {
        let mut v: i32 = 0;
        while at(s, *i).is_ascii_digit() {
            v = v.wrapping_mul(10).wrapping_add(i32::from(at(s, *i) - b'0'));
            *i += 1;
        }
        v
    };
    let (mut i, mut j) = (0, 0);
    while at(p1, i) != 0 {
        let (c1, c2) = (at(p1, i), at(p2, j));
        match (c1.is_ascii_digit(), c2.is_ascii_digit()) {
            (true, true) => {
                let v1 = number(p1, &mut i);
                let v2 = number(p2, &mut j);
                if v1 != v2 {
                    return v1.cmp(&v2);
                }
            }
            (true, false) => return Ordering::Greater,
            (false, true) => return Ordering::Less,
            (false, false) if c1 != c2 => return ch(c1).cmp(&ch(c2)),
            (false, false) => {
                i += 1;
                j += 1;
            }
        }
    }
    ch(at(p1, i)).cmp(&ch(at(p2, j)))
}

/// ldconfig's `compare` (elf/cache.c, glibc 2.36) as an ordering: `Less` when `a` comes first
/// in the file. Keys sort in descending `_dl_cache_libcmp` order (ld.so's binary search relies
/// on it); for one key, higher flags first, then glibc-hwcaps entries (by subdirectory name)
/// before plain ones (ld.so stops at the first plain entry once it has a match), then legacy
/// hwcaps by most bits set and highest value, then highest OS version. Entries equal in all
/// of these keep their relative order, as ldconfig's insertion sort keeps insertion order.
pub fn ldconfig_order(a: &LdCacheEntry, b: &LdCacheEntry) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    dl_cache_libcmp(c_bytes(&b.key), c_bytes(&a.key))
        .then_with(|| b.flags.cmp(&a.flags))
        .then_with(|| {
            match (is_hwcaps_extension(a.hwcap), is_hwcaps_extension(b.hwcap)) {
                (true, false) => Ordering::Less,
                (false, true) => Ordering::Greater,
                (true, true) => hwcaps_name(a).cmp(hwcaps_name(b)),
                // ldconfig keeps legacy hwcap bits (none for glibc-hwcaps entries) apart.
                (false, false) => b
                    .hwcap
                    .count_ones()
                    .cmp(&a.hwcap.count_ones())
                    .then_with(|| b.hwcap.cmp(&a.hwcap)),
            }
        })
        .then_with(|| b.os_version.cmp(&a.os_version))
}

/// glibc's string table (elf/stringtable.c `stringtable_finalize`): distinct strings sorted
/// by their reversed bytes, descending, so that a string that is a suffix of the one before
/// it shares its bytes (tail merging). Returns the table and the offset of each input string,
/// by position. Equal strings sort next to each other and each is a suffix of the one before,
/// so they share one copy without a separate de-duplication pass.
fn string_table(strings: &[&[u8]]) -> (Vec<u8>, Vec<u32>) {
    // Sort reversed copies (one buffer) so that comparisons are plain memcmp, descending.
    let mut reversed: Vec<u8> = Vec::with_capacity(strings.iter().map(|s| s.len()).sum());
    let mut spans: Vec<(usize, usize)> = Vec::with_capacity(strings.len());
    for s in strings {
        spans.push((reversed.len(), s.len()));
        reversed.extend(s.iter().rev());
    }
    let rev = |i: u32| {
        let (at, len) = spans[i as usize];
        &reversed[at..at + len]
    };
    let mut order: Vec<u32> = (0..strings.len() as u32).collect();
    order.sort_unstable_by(|&l, &r| rev(r).cmp(rev(l)));
    let mut offsets = vec![0u32; strings.len()];
    let mut table: Vec<u8> = Vec::new();
    let mut prev: Option<(&[u8], usize)> = None;
    for i in order {
        let s = strings[i as usize];
        let at = match prev {
            Some((p, at)) if p.ends_with(s) => at + p.len() - s.len(),
            _ => {
                let at = table.len();
                table.extend_from_slice(s);
                table.push(0);
                at
            }
        };
        // The whole file is far below 4 GiB: each string comes from an entry of a cache
        // read under MAX_CACHE_SIZE, or from the caller.
        offsets[i as usize] = u32::try_from(at).unwrap_or(u32::MAX);
        prev = Some((s, at));
    }
    (table, offsets)
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_ne_bytes());
}

impl LdCache {
    /// The entries in the order ldconfig writes them (see [`LdCache::to_bytes`]).
    pub fn sorted(&self) -> LdCache {
        let mut entries = self.entries.clone();
        // Stable: ties keep their order, as in ldconfig's insertion sort.
        entries.sort_by(ldconfig_order);
        LdCache { entries }
    }

    /// The cache in glibc's stand-alone new format (`glibc-ld.so.cache1.1`), the format
    /// ldconfig writes by default since glibc 2.32 and which every `ld.so` since glibc 2.2
    /// reads.
    ///
    /// Entries are written in ldconfig's order (they need not be sorted in `self`), and the
    /// string table, header and extension section are laid out as ldconfig 2.36 lays them
    /// out, with [`GENERATOR`] as the generator string: for the entries ldconfig would write,
    /// the result equals its file byte for byte except for that string.
    ///
    /// glibc-hwcaps entries (hwcap with [`HWCAP_EXTENSION`]) get their subdirectory from
    /// their value's parent directory, which is how ldconfig names them; their hwcap index is
    /// renumbered for the rewritten section, and their ISA-level bits are kept. Strings are
    /// cut at a NUL byte, as C reads them.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.to_bytes_with_generator(GENERATOR)
    }

    /// [`LdCache::to_bytes`] recording `generator` (ldconfig's own string makes the result
    /// comparable byte for byte with what ldconfig writes).
    pub fn to_bytes_with_generator(&self, generator: &str) -> Vec<u8> {
        // The merge leaves entries sorted; only sort (a copy) when they are not.
        if self
            .entries
            .is_sorted_by(|a, b| ldconfig_order(a, b).is_le())
        {
            write_sorted(&self.entries, generator)
        } else {
            write_sorted(&self.sorted().entries, generator)
        }
    }

    /// This cache with `new` entries added, in ldconfig's order.
    ///
    /// A new entry replaces every existing entry with the same key, flags and hwcap word, so
    /// that `ld.so` resolves that key to the new entry only (ldconfig would list both, the
    /// command-line directory first, and `ld.so` takes the first); among new entries with
    /// the same key, flags and hwcap, the first wins. Otherwise a new entry goes where
    /// ldconfig's sort puts it, ahead of existing entries it ties with; existing entries
    /// keep their order.
    pub fn with_entries(&self, new: impl IntoIterator<Item = LdCacheEntry>) -> LdCache {
        LdCache {
            entries: merge(self.entries.clone(), new),
        }
    }
}

/// [`LdCache::with_entries`] on owned entries.
fn merge(
    mut entries: Vec<LdCacheEntry>,
    new: impl IntoIterator<Item = LdCacheEntry>,
) -> Vec<LdCacheEntry> {
    let same = |a: &LdCacheEntry, b: &LdCacheEntry| {
        a.key == b.key && a.flags == b.flags && a.hwcap == b.hwcap
    };
    let mut added: Vec<LdCacheEntry> = Vec::new();
    for e in new {
        if !added.iter().any(|a| same(a, &e)) {
            added.push(e);
        }
    }
    entries.retain(|e| !added.iter().any(|a| same(a, e)));
    // New entries first, then a stable sort: they land ahead of existing entries they tie
    // with, and the (already sorted) existing entries keep their order.
    added.append(&mut entries);
    added.sort_by(ldconfig_order);
    added
}

/// The file for `entries`, which must be in ldconfig's order (see [`LdCache::to_bytes`]).
fn write_sorted(entries: &[LdCacheEntry], generator: &str) -> Vec<u8> {
    // The glibc-hwcaps subdirectories in use, sorted by name as `assign_glibc_hwcaps_indices`
    // sorts them; an entry's index is its name's position.
    let mut names: Vec<&[u8]> = entries
        .iter()
        .filter(|e| is_hwcaps_extension(e.hwcap))
        .map(hwcaps_name)
        .collect();
    names.sort_unstable();
    names.dedup();

    // String slots: key and value of entry i at 2i and 2i+1, then the names.
    let mut strings: Vec<&[u8]> = Vec::with_capacity(2 * entries.len() + names.len());
    for e in entries {
        strings.push(c_bytes(&e.key));
        strings.push(c_bytes(&e.value));
    }
    strings.extend_from_slice(&names);
    let (table, offsets) = string_table(&strings);
    let u32_of = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    let header_len = to_usize(NEW_HEADER_LEN + entries.len() as u64 * NEW_ENTRY_LEN);
    // String offsets count from the start of the new-format header, here the file start.
    let str_at = |slot: usize| u32_of(header_len).wrapping_add(offsets[slot]);
    let extension_at = (header_len + table.len()).next_multiple_of(4);

    let mut out = Vec::with_capacity(extension_at + 64 + 4 * names.len() + generator.len());
    out.extend_from_slice(NEW_MAGIC_VERSION);
    put_u32(&mut out, u32_of(entries.len()));
    put_u32(&mut out, u32_of(table.len()));
    out.extend_from_slice(&[ENDIAN_CURRENT, 0, 0, 0]);
    put_u32(&mut out, u32_of(extension_at));
    out.extend_from_slice(&[0; 12]);
    for (i, e) in entries.iter().enumerate() {
        out.extend_from_slice(&e.flags.to_ne_bytes());
        put_u32(&mut out, str_at(2 * i));
        put_u32(&mut out, str_at(2 * i + 1));
        put_u32(&mut out, e.os_version);
        let hwcap = if is_hwcaps_extension(e.hwcap) {
            let index = names.binary_search(&hwcaps_name(e)).unwrap_or_default();
            (e.hwcap & !0xffff_ffff) | index as u64
        } else {
            e.hwcap
        };
        out.extend_from_slice(&hwcap.to_ne_bytes());
    }
    out.extend_from_slice(&table);
    out.resize(extension_at, 0);

    // Extension directory: the generator section, then the glibc-hwcaps section (string
    // offsets of the names, by index) when any entry uses one; data follows the directory.
    let sections = if names.is_empty() { 1 } else { 2 };
    let data_at = extension_at + 8 + 16 * sections;
    let hwcaps_len = 4 * names.len();
    put_u32(&mut out, EXTENSION_MAGIC);
    put_u32(&mut out, u32_of(sections));
    for v in [
        EXTENSION_TAG_GENERATOR,
        0,
        u32_of(data_at + hwcaps_len),
        u32_of(generator.len()),
    ] {
        put_u32(&mut out, v);
    }
    if !names.is_empty() {
        for v in [
            EXTENSION_TAG_GLIBC_HWCAPS,
            0,
            u32_of(data_at),
            u32_of(hwcaps_len),
        ] {
            put_u32(&mut out, v);
        }
        for k in 0..names.len() {
            put_u32(&mut out, str_at(2 * entries.len() + k));
        }
    }
    out.extend_from_slice(generator.as_bytes());
    out
}

/// Where the new-format part of a parseable cache starts, if it has one.
fn new_part_start(bytes: &[u8]) -> Option<usize> {
    if bytes.starts_with(NEW_MAGIC_VERSION) {
        return Some(0);
    }
    let nlibs = read_u32(bytes, OLD_NLIBS_AT)?;
    let entries_end = OLD_HEADER_LEN + u64::from(nlibs) * OLD_ENTRY_LEN;
    [entries_end, (entries_end + 7) & !7]
        .into_iter()
        .map(to_usize)
        .find(|&s| {
            bytes.get(s..s.saturating_add(NEW_MAGIC_VERSION.len())) == Some(NEW_MAGIC_VERSION)
        })
}

/// The glibc-hwcaps subdirectory names of a new-format cache starting at `base`, by index,
/// as `ld.so` reads them from the extension section (`None`: no such section).
fn read_hwcaps_names(bytes: &[u8], base: usize) -> Result<Option<Vec<Vec<u8>>>, String> {
    let ext = read_u32(bytes, base + 32).unwrap_or(0);
    if ext == 0 {
        return Ok(None);
    }
    let ext = to_usize(u64::from(ext));
    if read_u32(bytes, ext) != Some(EXTENSION_MAGIC) {
        return Err("bad extension magic".into());
    }
    let count = read_u32(bytes, ext + 4).ok_or("extension directory truncated")?;
    for i in 0..to_usize(u64::from(count)) {
        let at = ext + 8 + 16 * i;
        let (Some(tag), Some(off), Some(size)) = (
            read_u32(bytes, at),
            read_u32(bytes, at + 8),
            read_u32(bytes, at + 12),
        ) else {
            return Err("extension directory truncated".into());
        };
        if tag != EXTENSION_TAG_GLIBC_HWCAPS {
            continue;
        }
        let (off, size) = (to_usize(u64::from(off)), to_usize(u64::from(size)));
        if size % 4 != 0 || off.checked_add(size).is_none_or(|end| end > bytes.len()) {
            return Err("glibc-hwcaps section out of range".into());
        }
        let mut names = Vec::with_capacity(size / 4);
        for k in 0..size / 4 {
            // ld.so reads a name at this offset from the start of the file
            // (`glibc_hwcaps_compare` in dl-cache.c), whereas ldconfig writes it relative to
            // the new-format header. They agree only in a stand-alone new-format file; in a
            // compat file ld.so sees other bytes and never uses those entries, and reading
            // them its way makes `check_rewritable` refuse such a file.
            let s = read_u32(bytes, off + 4 * k).unwrap_or(u32::MAX);
            let tail = bytes
                .get(to_usize(u64::from(s))..)
                .ok_or("glibc-hwcaps name out of range")?;
            let nul = tail
                .iter()
                .position(|&c| c == 0)
                .ok_or("glibc-hwcaps name not terminated")?;
            names.push(tail[..nul].to_vec());
        }
        return Ok(Some(names));
    }
    Ok(None)
}

/// Checks that writing `cache` (parsed from `bytes`) back changes nothing `ld.so` sees: no
/// entry was skipped by the reader, and every glibc-hwcaps entry's subdirectory, as the file
/// names it, is the one [`LdCache::to_bytes`] derives from its path.
fn check_rewritable(bytes: &[u8], cache: &LdCache, path: &Path) -> Result<(), LdCacheError> {
    let fail = |reason: String| LdCacheError::NotRewritable {
        path: path.to_path_buf(),
        reason,
    };
    let (nlibs, base) = match new_part_start(bytes) {
        Some(base) => (read_u32(bytes, base + NEW_NLIBS_AT), Some(base)),
        None => (read_u32(bytes, OLD_NLIBS_AT), None),
    };
    let nlibs = nlibs.unwrap_or_default() as usize;
    if nlibs != cache.entries.len() {
        return Err(fail(format!(
            "{} of its {nlibs} entries have a key or path that is not UTF-8",
            nlibs - cache.entries.len().min(nlibs)
        )));
    }
    if !cache.entries.iter().any(|e| is_hwcaps_extension(e.hwcap)) {
        return Ok(());
    }
    let names = base
        .map(|b| read_hwcaps_names(bytes, b))
        .transpose()
        .map_err(fail)?
        .flatten()
        .unwrap_or_default();
    for e in cache
        .entries
        .iter()
        .filter(|e| is_hwcaps_extension(e.hwcap))
    {
        let index = to_usize(e.hwcap & 0xffff_ffff);
        match names.get(index) {
            Some(n) if n.as_slice() == hwcaps_name(e) => {}
            other => {
                return Err(fail(format!(
                    "glibc-hwcaps entry {} names subdirectory {:?}, not its directory",
                    e.value,
                    other.map(|n| String::from_utf8_lossy(n).into_owned())
                )))
            }
        }
    }
    Ok(())
}

/// The container's new linker cache: the image's cache with the injected libraries added,
/// in glibc's new format, ready to be bind-mounted over the container's `/etc/ld.so.cache`.
///
/// - `image_cache`: the bytes of the image's `/etc/ld.so.cache`; `None` (or an empty file,
///   which `ld.so` ignores) starts from an empty cache. Any format the reader knows is
///   accepted (new, compat, old); the result is always the new format.
/// - `libs`: `(soname, container path)` of each injected library. The path should be the
///   soname link (`<libdir>/<soname>`), which is what ldconfig stores. Each becomes an entry
///   with flags `FLAG_ELF_LIBC6 | arch` and no hwcap, replacing the image's entries for that
///   soname and arch (see [`LdCache::with_entries`]).
/// - `arch`: the `ARCH_*` bits of these libraries: [`native_arch`], or [`ARCH_I386`] for the
///   compat32 ones (call again on the result to add a second arch).
///
/// # Errors
/// Any [`LdCacheError`] from parsing the image's cache (unknown magic or version, foreign
/// byte order, corruption), [`LdCacheError::NotRewritable`] when rewriting it could change a
/// lookup (entries with non-UTF-8 strings, glibc-hwcaps names that do not match their
/// paths) or when a lib has an empty soname, a `/` or NUL in it, or a path that is not
/// absolute or has a NUL. In all these cases the caller should fall back to ldconfig.
/// Messages name `/etc/ld.so.cache`.
pub fn updated_cache(
    image_cache: Option<&[u8]>,
    libs: &[(String, String)],
    arch: i32,
) -> Result<Vec<u8>, LdCacheError> {
    let path = Path::new("/etc/ld.so.cache");
    let base = match image_cache {
        None | Some([]) => LdCache::default(),
        Some(bytes) => {
            let cache = LdCache::parse(bytes, path)?;
            check_rewritable(bytes, &cache, path)?;
            cache
        }
    };
    for (soname, value) in libs {
        if soname.is_empty() || soname.contains(['/', '\0']) {
            return Err(LdCacheError::NotRewritable {
                path: path.to_path_buf(),
                reason: format!("{soname:?} is not a soname"),
            });
        }
        if !value.starts_with('/') || value.contains('\0') {
            return Err(LdCacheError::NotRewritable {
                path: path.to_path_buf(),
                reason: format!("{value:?} is not an absolute path"),
            });
        }
    }
    let flags = FLAG_ELF_LIBC6 | (arch & FLAG_REQUIRED_MASK);
    let entries = merge(
        base.entries,
        libs.iter().map(|(key, value)| LdCacheEntry {
            key: key.clone(),
            value: value.clone(),
            flags,
            os_version: 0,
            hwcap: 0,
        }),
    );
    Ok(write_sorted(&entries, GENERATOR))
}

#[cfg(test)]
mod tests {
    //! The writer against glibc's own ldconfig: round trips, merges and ld.so's lookup order.

    use super::*;
    use proptest::prelude::*;
    use std::cmp::Ordering;

    #[test]
    fn libcmp_orders_like_glibc() {
        let cases: &[(&str, &str, Ordering)] = &[
            ("libfoo.so.10", "libfoo.so.9", Ordering::Greater),
            ("libfoo.so.1", "libfoo.so.1.2", Ordering::Less),
            ("lib01.so", "lib1.so", Ordering::Equal),
            ("liba1", "libab", Ordering::Greater),
            ("libA", "liba", Ordering::Less),
            ("libc.so.6", "libc.so.6", Ordering::Equal),
            ("", "a", Ordering::Less),
            ("a", "", Ordering::Greater),
            ("1", "", Ordering::Greater),
        ];
        for &(a, b, want) in cases {
            assert_eq!(
                dl_cache_libcmp(a.as_bytes(), b.as_bytes()),
                want,
                "{a} vs {b}"
            );
            assert_eq!(dl_cache_libcmp(b.as_bytes(), a.as_bytes()), want.reverse());
        }
        // Bytes >= 0x80 compare as C char: negative where char is signed.
        let signed = (0x80u8 as std::ffi::c_char) < 0;
        let want = if signed {
            Ordering::Less
        } else {
            Ordering::Greater
        };
        assert_eq!(dl_cache_libcmp("é".as_bytes(), b"e"), want);
    }

    fn p() -> &'static Path {
        Path::new("/test/ld.so.cache")
    }

    #[test]
    fn unknown_or_damaged_caches_are_errors() {
        let good = updated_cache(None, &[], native_arch()).unwrap();
        let mut version = good.clone();
        version[17..20].copy_from_slice(b"2.0");
        let mut foreign = good.clone();
        foreign[NEW_FLAGS_AT] = if cfg!(target_endian = "big") { 2 } else { 3 };
        let cases: Vec<(&str, Vec<u8>)> = vec![
            (
                "bad magic",
                b"\x7fELF\x02\x01\x01\0 something else".to_vec(),
            ),
            ("unknown version", version),
            ("foreign byte order", foreign),
            ("truncated", good[..30].to_vec()),
        ];
        for (name, bytes) in cases {
            let e = updated_cache(Some(&bytes), &[], native_arch()).unwrap_err();
            assert!(
                !matches!(e, LdCacheError::NotRewritable { .. }),
                "{name}: {e:?}"
            );
            assert!(e.to_string().starts_with("/etc/ld.so.cache: "), "{e}");
        }
    }

    /// A new-format cache with these raw entries and, when given, a glibc-hwcaps section.
    fn raw_cache(entries: &[(i32, &[u8], &[u8], u64)], hwcaps: Option<&[&[u8]]>) -> Vec<u8> {
        let strings_at = to_usize(NEW_HEADER_LEN) + entries.len() * to_usize(NEW_ENTRY_LEN);
        let mut strings = Vec::new();
        let mut table = Vec::new();
        let add = |s: &[u8], strings: &mut Vec<u8>| {
            let at = strings_at + strings.len();
            strings.extend_from_slice(s);
            strings.push(0);
            at as u32
        };
        for &(flags, key, value, hwcap) in entries {
            let k = add(key, &mut strings);
            let v = add(value, &mut strings);
            table.extend_from_slice(&flags.to_ne_bytes());
            table.extend_from_slice(&k.to_ne_bytes());
            table.extend_from_slice(&v.to_ne_bytes());
            table.extend_from_slice(&0u32.to_ne_bytes());
            table.extend_from_slice(&hwcap.to_ne_bytes());
        }
        let names: Vec<u32> = hwcaps
            .unwrap_or_default()
            .iter()
            .map(|n| add(n, &mut strings))
            .collect();
        let ext_at = (strings_at + strings.len()).next_multiple_of(4);
        let mut out = NEW_MAGIC_VERSION.to_vec();
        put_u32(&mut out, entries.len() as u32);
        put_u32(&mut out, strings.len() as u32);
        out.extend_from_slice(&[ENDIAN_CURRENT, 0, 0, 0]);
        put_u32(&mut out, if hwcaps.is_some() { ext_at as u32 } else { 0 });
        out.extend_from_slice(&[0; 12]);
        out.extend_from_slice(&table);
        out.extend_from_slice(&strings);
        if hwcaps.is_some() {
            out.resize(ext_at, 0);
            for v in [EXTENSION_MAGIC, 1, EXTENSION_TAG_GLIBC_HWCAPS, 0] {
                put_u32(&mut out, v);
            }
            put_u32(&mut out, (ext_at + 24) as u32);
            put_u32(&mut out, 4 * names.len() as u32);
            for n in names {
                put_u32(&mut out, n);
            }
        }
        out
    }

    #[test]
    fn caches_that_cannot_be_rewritten_faithfully_are_refused() {
        let f = FLAG_ELF_LIBC6 | ARCH_X86_64;
        let not_utf8 = raw_cache(&[(f, b"lib\xff.so.1", b"/l/lib\xff.so.1", 0)], None);
        let v3 = b"/l/glibc-hwcaps/x86-64-v3/libx.so.1";
        let ext = HWCAP_EXTENSION;
        let good_hwcaps = raw_cache(&[(f, b"libx.so.1", v3, ext)], Some(&[b"x86-64-v3"]));
        let wrong_name = raw_cache(&[(f, b"libx.so.1", v3, ext)], Some(&[b"x86-64-v2"]));
        let no_section = raw_cache(&[(f, b"libx.so.1", v3, ext)], None);
        let index_out = raw_cache(&[(f, b"libx.so.1", v3, ext | 1)], Some(&[b"x86-64-v3"]));
        assert!(updated_cache(Some(&good_hwcaps), &[], native_arch()).is_ok());
        for (name, bytes) in [
            ("not UTF-8", not_utf8),
            ("wrong hwcaps name", wrong_name),
            ("no hwcaps section", no_section),
            ("hwcaps index out of range", index_out),
        ] {
            let e = updated_cache(Some(&bytes), &[], native_arch()).unwrap_err();
            assert!(
                matches!(e, LdCacheError::NotRewritable { .. }),
                "{name}: {e:?}"
            );
        }
        for (soname, path) in [
            ("", "/l/x"),
            ("a/b", "/l/x"),
            ("a\0", "/l/x"),
            ("libx.so.1", "l/x"),
            ("libx.so.1", "/l/\0"),
        ] {
            let libs = [(soname.to_owned(), path.to_owned())];
            let e = updated_cache(None, &libs, native_arch()).unwrap_err();
            assert!(matches!(e, LdCacheError::NotRewritable { .. }), "{e:?}");
        }
    }

    fn e(key: &str, value: &str, flags: i32, hwcap: u64) -> LdCacheEntry {
        LdCacheEntry {
            key: key.into(),
            value: value.into(),
            flags,
            os_version: 0,
            hwcap,
        }
    }

    #[test]
    fn with_entries_replaces_same_key_flags_and_hwcap() {
        let x = FLAG_ELF_LIBC6 | ARCH_X86_64;
        let i = FLAG_ELF_LIBC6 | ARCH_I386;
        let base = LdCache {
            entries: vec![
                e("libcuda.so.1", "/compat/libcuda.so.1", x, 0),
                e("libcuda.so.1", "/usr/lib32/libcuda.so.1", i, 0),
                e("libc.so.6", "/lib/libc.so.6", x, 0),
            ],
        }
        .sorted();
        let merged = base.with_entries([
            e("libcuda.so.1", "/usr/lib64/libcuda.so.1", x, 0),
            e("libcuda.so.1", "/second/libcuda.so.1", x, 0),
            e("libnvidia-ml.so.1", "/usr/lib64/libnvidia-ml.so.1", x, 0),
        ]);
        let list: Vec<(&str, &str)> = merged
            .entries
            .iter()
            .map(|e| (e.key.as_str(), e.value.as_str()))
            .collect();
        assert_eq!(
            list,
            [
                ("libnvidia-ml.so.1", "/usr/lib64/libnvidia-ml.so.1"),
                ("libcuda.so.1", "/usr/lib64/libcuda.so.1"),
                ("libcuda.so.1", "/usr/lib32/libcuda.so.1"),
                ("libc.so.6", "/lib/libc.so.6"),
            ]
        );
        // A tie that is not a replacement (another hwcap word): the new entry goes first.
        let legacy = base.with_entries([e("libcuda.so.1", "/new/libcuda.so.1", x, 0)]);
        let tie = legacy.with_entries([e("libc.so.6", "/tie/libc.so.6", x, 0)]);
        assert_eq!(
            tie.entries.iter().filter(|e| e.key == "libc.so.6").count(),
            1
        );
    }

    /// ld.so's `search_cache` bisection (elf/dl-cache.c): the index of the first entry whose
    /// key compares equal to `name`, if the bisection finds one.
    fn ld_so_search(entries: &[LdCacheEntry], name: &[u8]) -> Option<usize> {
        let (mut left, mut right) = (0i64, entries.len() as i64 - 1);
        while left <= right {
            let middle = (left + right) / 2;
            let key = c_bytes(&entries[middle as usize].key);
            match dl_cache_libcmp(name, key) {
                Ordering::Equal => {
                    let mut m = middle as usize;
                    while m > 0 && dl_cache_libcmp(name, c_bytes(&entries[m - 1].key)).is_eq() {
                        m -= 1;
                    }
                    return Some(m);
                }
                Ordering::Less => left = middle + 1,
                Ordering::Greater => right = middle - 1,
            }
        }
        None
    }

    fn arb_entry() -> impl Strategy<Value = LdCacheEntry> {
        // Multi-byte names too: keys and paths are bytes to glibc, UTF-8 text to the reader.
        let name = "([a-c0-9._é+-]|€|𐍈){1,10}";
        (
            name,
            "(/[a-c0-9]{1,3}){0,3}",
            prop_oneof![Just(None), Just(Some("x86-64-v3")), Just(Some("x86-64-v2"))],
            prop::sample::select(vec![
                FLAG_ELF_LIBC6 | ARCH_X86_64,
                FLAG_ELF_LIBC6 | ARCH_I386,
                FLAG_ELF_LIBC6 | ARCH_X32,
                FLAG_ELF | ARCH_X86_64,
            ]),
            prop_oneof![Just(0u64), 1u64..8, Just(3u64 << 32 | HWCAP_EXTENSION)],
            0u32..3,
            0u64..4,
        )
            .prop_map(|(key, dir, sub, flags, hwcap, os_version, index)| {
                let (value, hwcap) = match sub {
                    Some(s) => (
                        format!("{dir}/glibc-hwcaps/{s}/{key}"),
                        (hwcap & (HWCAP_ISA_LEVEL_MASK << 32)) | HWCAP_EXTENSION | index,
                    ),
                    None => (format!("{dir}/{key}"), hwcap & !(HWCAP_EXTENSION)),
                };
                LdCacheEntry {
                    key,
                    value,
                    flags,
                    os_version,
                    hwcap,
                }
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        #[test]
        fn writer_output_reparses_to_the_same_entries(
            entries in prop::collection::vec(arb_entry(), 0..40),
        ) {
            let cache = LdCache { entries };
            let bytes = cache.to_bytes();
            let back = LdCache::parse(&bytes, p()).unwrap();
            let sorted = cache.sorted();
            prop_assert_eq!(back.entries.len(), sorted.entries.len());
            let names = read_hwcaps_names(&bytes, 0).unwrap().unwrap_or_default();
            for (b, s) in back.entries.iter().zip(&sorted.entries) {
                prop_assert_eq!(&b.key, &s.key);
                prop_assert_eq!(&b.value, &s.value);
                prop_assert_eq!(b.flags, s.flags);
                prop_assert_eq!(b.os_version, s.os_version);
                prop_assert_eq!(b.hwcap >> 32, s.hwcap >> 32);
                if is_hwcaps_extension(s.hwcap) {
                    // Renumbered, but naming the same subdirectory.
                    let i = to_usize(b.hwcap & 0xffff_ffff);
                    prop_assert_eq!(names[i].as_slice(), hwcaps_name(s));
                } else {
                    prop_assert_eq!(b.hwcap, s.hwcap);
                }
            }
            check_rewritable(&bytes, &back, p()).unwrap();
            // Writing what was read gives the same file.
            prop_assert_eq!(back.to_bytes(), bytes.clone());
            // In ldconfig's order, and ld.so's bisection finds every key at its first entry.
            for w in back.entries.windows(2) {
                prop_assert_ne!(ldconfig_order(&w[0], &w[1]), Ordering::Greater);
            }
            for (i, e) in back.entries.iter().enumerate() {
                let first = back
                    .entries
                    .iter()
                    .position(|o| dl_cache_libcmp(c_bytes(&o.key), c_bytes(&e.key)).is_eq())
                    .unwrap();
                prop_assert!(first <= i);
                prop_assert_eq!(ld_so_search(&back.entries, c_bytes(&e.key)), Some(first));
            }
        }

        #[test]
        fn merging_is_sorting_the_union(
            base in prop::collection::vec(arb_entry(), 0..20),
            new in prop::collection::vec(arb_entry(), 0..6),
        ) {
            let base = LdCache { entries: base }.sorted();
            let merged = base.with_entries(new.clone());
            for n in &new {
                let same: Vec<&LdCacheEntry> = merged
                    .entries
                    .iter()
                    .filter(|e| e.key == n.key && e.flags == n.flags && e.hwcap == n.hwcap)
                    .collect();
                prop_assert_eq!(same.len(), 1);
            }
            prop_assert_eq!(merged.sorted(), merged.clone());
            let bytes = merged.to_bytes();
            prop_assert_eq!(LdCache::parse(&bytes, p()).unwrap().to_bytes(), bytes);
        }
    }
}
