//! Reading `ld.so.cache`: the old, compat and new formats, every offset bounds-checked.

use std::io::Read;
use std::path::Path;

use super::*;

impl LdCache {
    /// Decodes a cache held in memory. `path` is only used in error messages.
    pub fn parse(bytes: &[u8], path: &Path) -> Result<LdCache, LdCacheError> {
        if bytes.is_empty() {
            return Err(LdCacheError::Empty {
                path: path.to_path_buf(),
            });
        }
        // A buffer that is a strict prefix of a magic is reported as truncated
        // rather than as "bad magic": it is a cut-off cache, not another file.
        if bytes.starts_with(NEW_MAGIC) || NEW_MAGIC.starts_with(bytes) {
            parse_new(bytes, 0, path)
        } else if bytes.starts_with(OLD_MAGIC) || OLD_MAGIC.starts_with(bytes) {
            parse_old(bytes, path)
        } else {
            Err(LdCacheError::BadMagic {
                path: path.to_path_buf(),
            })
        }
    }

    /// Reads and decodes the cache at `path`.
    ///
    /// Symlinks are followed, as with any open; a caller looking inside an
    /// untrusted root must resolve the path safely itself (and may then use
    /// [`LdCache::parse`] on bytes it read).
    pub fn read(path: &Path) -> Result<LdCache, LdCacheError> {
        use std::os::unix::fs::OpenOptionsExt;

        let io = |source| LdCacheError::Io {
            path: path.to_path_buf(),
            source,
        };
        // O_NONBLOCK: opening a FIFO planted at the cache path would otherwise
        // hang the hook until a writer appears. It has no effect on the reads
        // of a regular file, the only kind accepted below.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .map_err(io)?;
        let meta = file.metadata().map_err(io)?;
        if !meta.is_file() {
            return Err(LdCacheError::NotRegularFile {
                path: path.to_path_buf(),
            });
        }
        let too_large = || LdCacheError::TooLarge {
            path: path.to_path_buf(),
            max: MAX_CACHE_SIZE,
        };
        if meta.len() > MAX_CACHE_SIZE {
            return Err(too_large());
        }
        let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
        // The limit also covers a file that grows between fstat and read.
        file.take(MAX_CACHE_SIZE + 1)
            .read_to_end(&mut bytes)
            .map_err(io)?;
        if bytes.len() as u64 > MAX_CACHE_SIZE {
            return Err(too_large());
        }
        Self::parse(&bytes, path)
    }

    /// ELF libc6 entries of that arch whose key starts with `prefix`, in file
    /// order (which is `ld.so`'s order of preference).
    pub fn lookup_prefix<'a>(
        &'a self,
        prefix: &'a str,
        arch: i32,
    ) -> impl Iterator<Item = &'a LdCacheEntry> + 'a {
        self.entries
            .iter()
            .filter(move |e| e.is_elf() && e.arch() == arch && e.key.starts_with(prefix))
    }
}

pub(super) fn read_array<const N: usize>(bytes: &[u8], at: usize) -> Option<[u8; N]> {
    bytes.get(at..at.checked_add(N)?)?.try_into().ok()
}

pub(super) fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    read_array(bytes, at).map(u32::from_ne_bytes)
}

pub(super) fn read_i32(bytes: &[u8], at: usize) -> Option<i32> {
    read_array(bytes, at).map(i32::from_ne_bytes)
}

pub(super) fn read_u64(bytes: &[u8], at: usize) -> Option<u64> {
    read_array(bytes, at).map(u64::from_ne_bytes)
}

/// Converts an offset already checked against a buffer length to `usize`.
pub(super) fn to_usize(n: u64) -> usize {
    // Callers only pass values <= some slice length, which fits in usize.
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// The fixed-size part of one entry, before its strings are resolved.
pub(super) struct RawEntry {
    flags: i32,
    key: u32,
    value: u32,
    os_version: u32,
    hwcap: u64,
}

/// Old format: `struct cache_file` then `nlibs` × `struct file_entry`, then
/// either the string table or (compat) a new-format cache.
pub(super) fn parse_old(bytes: &[u8], path: &Path) -> Result<LdCache, LdCacheError> {
    let len = bytes.len() as u64;
    let nlibs = read_u32(bytes, OLD_NLIBS_AT).ok_or_else(|| LdCacheError::Truncated {
        path: path.to_path_buf(),
        what: "old-format header",
        end: OLD_HEADER_LEN,
        len,
    })?;
    let entries_end = OLD_HEADER_LEN + u64::from(nlibs) * OLD_ENTRY_LEN;
    if entries_end > len {
        return Err(LdCacheError::TooManyEntries {
            path: path.to_path_buf(),
            nlibs,
            end: entries_end,
            len,
        });
    }

    // glibc places the new part at ALIGN_CACHE(end of old entries), i.e.
    // aligned to __alignof__(struct cache_file_new): 8 on most targets but 4
    // on i386, so look at both spots. Like ld.so, require the full magic and
    // version there, and otherwise fall back to the old entries.
    for start in [entries_end, (entries_end + 7) & !7] {
        let start = to_usize(start);
        let magic_end = start.saturating_add(NEW_MAGIC_VERSION.len());
        if bytes.get(start..magic_end) == Some(NEW_MAGIC_VERSION) {
            return parse_new(bytes, start, path);
        }
    }

    // In the old format, string offsets count from the end of the entries.
    let strings = &bytes[to_usize(entries_end)..];
    let raw = (0..to_usize(u64::from(nlibs))).map(|i| {
        let at = to_usize(OLD_HEADER_LEN) + i * to_usize(OLD_ENTRY_LEN);
        // In bounds: checked against entries_end above.
        RawEntry {
            flags: read_i32(bytes, at).unwrap_or(0),
            key: read_u32(bytes, at + 4).unwrap_or(0),
            value: read_u32(bytes, at + 8).unwrap_or(0),
            os_version: 0,
            hwcap: 0,
        }
    });
    collect_entries(raw, strings, entries_end, path)
}

/// New format starting at `base`: `struct cache_file_new` then `nlibs` ×
/// `struct file_entry_new`; string offsets count from `base`.
pub(super) fn parse_new(bytes: &[u8], base: usize, path: &Path) -> Result<LdCache, LdCacheError> {
    let len = bytes.len() as u64;
    let cache = bytes.get(base..).unwrap_or_default();
    if (cache.len() as u64) < NEW_HEADER_LEN {
        return Err(LdCacheError::Truncated {
            path: path.to_path_buf(),
            what: "new-format header",
            end: base as u64 + NEW_HEADER_LEN,
            len,
        });
    }
    let version = &cache[NEW_MAGIC.len()..NEW_MAGIC_VERSION.len()];
    if version != NEW_VERSION {
        return Err(LdCacheError::UnsupportedVersion {
            path: path.to_path_buf(),
            version: version.escape_ascii().to_string(),
        });
    }

    match cache[NEW_FLAGS_AT] & ENDIAN_MASK {
        // Caches written before glibc 2.32 leave the field unset; they are in
        // the writer's (= this host's) byte order.
        ENDIAN_UNSET => {}
        ENDIAN_INVALID => {
            return Err(LdCacheError::InvalidByteOrder {
                path: path.to_path_buf(),
            })
        }
        flag => {
            let cache_endian = if flag == ENDIAN_LITTLE {
                "little"
            } else {
                "big"
            };
            if cache_endian != HOST_ENDIAN {
                return Err(LdCacheError::ForeignByteOrder {
                    path: path.to_path_buf(),
                    cache: cache_endian,
                    host: HOST_ENDIAN,
                });
            }
        }
    }

    // Header length checked above, so the count is readable.
    let nlibs = read_u32(cache, NEW_NLIBS_AT).unwrap_or(0);
    let entries_end = NEW_HEADER_LEN + u64::from(nlibs) * NEW_ENTRY_LEN;
    if entries_end > cache.len() as u64 {
        return Err(LdCacheError::TooManyEntries {
            path: path.to_path_buf(),
            nlibs,
            end: base as u64 + entries_end,
            len,
        });
    }
    let raw = (0..to_usize(u64::from(nlibs))).map(|i| {
        let at = to_usize(NEW_HEADER_LEN) + i * to_usize(NEW_ENTRY_LEN);
        // In bounds: checked against entries_end above.
        RawEntry {
            flags: read_i32(cache, at).unwrap_or(0),
            key: read_u32(cache, at + 4).unwrap_or(0),
            value: read_u32(cache, at + 8).unwrap_or(0),
            os_version: read_u32(cache, at + 12).unwrap_or(0),
            hwcap: read_u64(cache, at + 16).unwrap_or(0),
        }
    });
    // Like ld.so, bound strings by the end of the file rather than by
    // len_strings: that is what the loader trusts, so it is what we mirror.
    collect_entries(raw, cache, base as u64, path)
}

/// Resolves the strings of `raw` entries within `strings`, which starts at
/// byte `strings_at` of the file (used for messages only).
pub(super) fn collect_entries(
    raw: impl ExactSizeIterator<Item = RawEntry>,
    strings: &[u8],
    strings_at: u64,
    path: &Path,
) -> Result<LdCache, LdCacheError> {
    // The count was checked against the file size, so this is bounded by it.
    let mut entries = Vec::with_capacity(raw.len());
    for (index, r) in raw.enumerate() {
        let key = c_string(strings, r.key, strings_at, index, "key", path)?;
        let value = c_string(strings, r.value, strings_at, index, "value", path)?;
        // Paths and sonames are bytes on Linux. One that is not UTF-8 cannot
        // be a library we look for or inject by name, so skip it rather than
        // failing the whole cache (or mangling it into a path that does not
        // exist).
        let (Ok(key), Ok(value)) = (std::str::from_utf8(key), std::str::from_utf8(value)) else {
            tracing::debug!(
                path = %path.display(),
                index,
                "skipping ld.so.cache entry whose key or value is not UTF-8"
            );
            continue;
        };
        entries.push(LdCacheEntry {
            key: key.to_owned(),
            value: value.to_owned(),
            flags: r.flags,
            os_version: r.os_version,
            hwcap: r.hwcap,
        });
    }
    Ok(LdCache { entries })
}

/// The NUL-terminated string at `offset` in `strings`, without its NUL.
pub(super) fn c_string<'a>(
    strings: &'a [u8],
    offset: u32,
    strings_at: u64,
    index: usize,
    field: &'static str,
    path: &Path,
) -> Result<&'a [u8], LdCacheError> {
    let file_offset = strings_at + u64::from(offset);
    let tail = match strings.get(to_usize(u64::from(offset))..) {
        Some(tail) if !tail.is_empty() => tail,
        _ => {
            return Err(LdCacheError::StringOutOfRange {
                path: path.to_path_buf(),
                index,
                field,
                offset: file_offset,
            })
        }
    };
    let nul =
        tail.iter()
            .position(|&b| b == 0)
            .ok_or_else(|| LdCacheError::UnterminatedString {
                path: path.to_path_buf(),
                index,
                field,
                offset: file_offset,
            })?;
    Ok(&tail[..nul])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn p() -> &'static Path {
        Path::new("/test/ld.so.cache")
    }

    fn host_endian_flag() -> u8 {
        if cfg!(target_endian = "big") {
            3
        } else {
            ENDIAN_LITTLE
        }
    }

    /// A stand-alone new-format cache, laid out like ldconfig does.
    fn new_cache(entries: &[(i32, &str, &str, u64)]) -> Vec<u8> {
        let strings_at = NEW_HEADER_LEN as usize + entries.len() * NEW_ENTRY_LEN as usize;
        let mut strings = Vec::new();
        let mut table = Vec::new();
        for &(flags, key, value, hwcap) in entries {
            let k = strings_at + strings.len();
            strings.extend_from_slice(key.as_bytes());
            strings.push(0);
            let v = strings_at + strings.len();
            strings.extend_from_slice(value.as_bytes());
            strings.push(0);
            table.extend_from_slice(&flags.to_ne_bytes());
            table.extend_from_slice(&(k as u32).to_ne_bytes());
            table.extend_from_slice(&(v as u32).to_ne_bytes());
            table.extend_from_slice(&0u32.to_ne_bytes());
            table.extend_from_slice(&hwcap.to_ne_bytes());
        }
        let mut out = NEW_MAGIC_VERSION.to_vec();
        out.extend_from_slice(&(entries.len() as u32).to_ne_bytes());
        out.extend_from_slice(&(strings.len() as u32).to_ne_bytes());
        out.extend_from_slice(&[host_endian_flag(), 0, 0, 0]);
        out.extend_from_slice(&[0; 16]); // extension_offset, unused[3]
        assert_eq!(out.len(), NEW_HEADER_LEN as usize);
        out.extend_from_slice(&table);
        out.extend_from_slice(&strings);
        out
    }

    /// An old-format-only cache.
    fn old_cache(entries: &[(i32, &str, &str)]) -> Vec<u8> {
        let mut strings = Vec::new();
        let mut table = Vec::new();
        for &(flags, key, value) in entries {
            let k = strings.len() as u32;
            strings.extend_from_slice(key.as_bytes());
            strings.push(0);
            let v = strings.len() as u32;
            strings.extend_from_slice(value.as_bytes());
            strings.push(0);
            table.extend_from_slice(&flags.to_ne_bytes());
            table.extend_from_slice(&k.to_ne_bytes());
            table.extend_from_slice(&v.to_ne_bytes());
        }
        let mut out = OLD_MAGIC.to_vec();
        out.push(0);
        out.extend_from_slice(&(entries.len() as u32).to_ne_bytes());
        out.extend_from_slice(&table);
        out.extend_from_slice(&strings);
        out
    }

    fn sample_new() -> Vec<u8> {
        new_cache(&[
            (
                FLAG_ELF_LIBC6 | ARCH_X86_64,
                "libcuda.so.1",
                "/usr/lib64/libcuda.so.1",
                0,
            ),
            (
                FLAG_ELF_LIBC6 | ARCH_I386,
                "libcuda.so.1",
                "/usr/lib32/libcuda.so.1",
                0,
            ),
            (
                FLAG_ELF_LIBC6 | ARCH_X32,
                "libcuda.so.1",
                "/usr/libx32/libcuda.so.1",
                0,
            ),
            (
                FLAG_ELF | ARCH_X86_64,
                "libcuda.so.1",
                "/opt/elf-only/libcuda.so.1",
                0,
            ),
            (
                FLAG_ELF_LIBC6 | ARCH_AARCH64,
                "libcuda.so",
                "/usr/lib/aarch64/libcuda.so",
                0,
            ),
            (
                FLAG_ELF_LIBC6 | ARCH_X86_64,
                "libcudart.so.12",
                "/usr/lib64/libcudart.so.12",
                0,
            ),
            (
                FLAG_ELF_LIBC6 | ARCH_X86_64,
                "libc.so.6",
                "/lib64/libc.so.6",
                0,
            ),
        ])
    }

    fn entry(flags: i32, key: &str, value: &str) -> LdCacheEntry {
        LdCacheEntry {
            key: key.into(),
            value: value.into(),
            flags,
            os_version: 0,
            hwcap: 0,
        }
    }

    #[test]
    fn parses_handmade_new_format() {
        let cache = LdCache::parse(&sample_new(), p()).unwrap();
        assert_eq!(cache.entries.len(), 7);
        assert_eq!(
            cache.entries[1],
            entry(
                FLAG_ELF_LIBC6 | ARCH_I386,
                "libcuda.so.1",
                "/usr/lib32/libcuda.so.1"
            )
        );
        let x86_64: Vec<&str> = cache
            .lookup_prefix("libcuda", ARCH_X86_64)
            .map(|e| e.value.as_str())
            .collect();
        // ELF-only, x32, i386 and aarch64 entries are excluded; order kept.
        assert_eq!(
            x86_64,
            ["/usr/lib64/libcuda.so.1", "/usr/lib64/libcudart.so.12"]
        );
        let i386: Vec<&str> = cache
            .lookup_prefix("libcuda.so", ARCH_I386)
            .map(|e| e.value.as_str())
            .collect();
        assert_eq!(i386, ["/usr/lib32/libcuda.so.1"]);
        assert_eq!(cache.lookup_prefix("libcuda", ARCH_AARCH64).count(), 1);
        assert_eq!(cache.lookup_prefix("libnvidia", ARCH_X86_64).count(), 0);
        assert!(cache.entries[3].arch() == ARCH_X86_64 && !cache.entries[3].is_elf());
    }

    #[test]
    fn parses_handmade_old_format() {
        let bytes = old_cache(&[
            (
                FLAG_ELF_LIBC6 | ARCH_X86_64,
                "libfoo.so.1",
                "/usr/lib64/libfoo.so.1",
            ),
            (FLAG_ELF_LIBC6, "libfoo.so.1", "/usr/lib32/libfoo.so.1"),
        ]);
        let cache = LdCache::parse(&bytes, p()).unwrap();
        assert_eq!(
            cache.entries,
            [
                entry(
                    FLAG_ELF_LIBC6 | ARCH_X86_64,
                    "libfoo.so.1",
                    "/usr/lib64/libfoo.so.1"
                ),
                entry(FLAG_ELF_LIBC6, "libfoo.so.1", "/usr/lib32/libfoo.so.1"),
            ]
        );
    }

    #[test]
    fn compat_prefers_new_part_at_either_alignment() {
        // One old entry: its end (28) is 4 mod 8, so the new part sits at 28
        // (i386 alignment) or 32 (8-byte alignment). Old and new disagree so
        // that using the wrong part is caught.
        let old_strings_dummy = (FLAG_ELF_LIBC6, "old", "/old");
        let new = new_cache(&[(FLAG_ELF_LIBC6 | ARCH_X86_64, "new", "/new", 0)]);
        for pad in [0usize, 4] {
            let mut bytes = old_cache(&[old_strings_dummy]);
            // Drop the old strings: in compat the new part follows the entries.
            bytes.truncate(OLD_HEADER_LEN as usize + OLD_ENTRY_LEN as usize);
            bytes.extend(std::iter::repeat_n(0, pad));
            bytes.extend_from_slice(&new);
            let cache = LdCache::parse(&bytes, p()).unwrap();
            assert_eq!(
                cache.entries,
                [entry(FLAG_ELF_LIBC6 | ARCH_X86_64, "new", "/new")],
                "pad {pad}"
            );
        }
    }

    #[test]
    fn malformed_inputs_are_errors() {
        let good = sample_new();
        let mut nlibs_huge = good.clone();
        nlibs_huge[NEW_NLIBS_AT..NEW_NLIBS_AT + 4].copy_from_slice(&u32::MAX.to_ne_bytes());
        let mut nlibs_one_too_many = good.clone();
        let n = read_u32(&good, NEW_NLIBS_AT).unwrap();
        // Each entry is 24 bytes and the strings are ~260: push well past them.
        nlibs_one_too_many[NEW_NLIBS_AT..NEW_NLIBS_AT + 4]
            .copy_from_slice(&(n + 100).to_ne_bytes());
        let key_at = NEW_HEADER_LEN as usize + 4;
        let mut key_far = good.clone();
        key_far[key_at..key_at + 4].copy_from_slice(&0xffff_fff0u32.to_ne_bytes());
        let mut key_at_end = good.clone();
        key_at_end[key_at..key_at + 4].copy_from_slice(&(good.len() as u32).to_ne_bytes());
        let mut no_nul = good.clone();
        no_nul.pop(); // the last value's NUL
        let mut big_endian = good.clone();
        big_endian[NEW_FLAGS_AT] = if cfg!(target_endian = "big") { 2 } else { 3 };
        let mut invalid_endian = good.clone();
        invalid_endian[NEW_FLAGS_AT] = 1;
        let mut version = good.clone();
        version[17..20].copy_from_slice(b"2.0");
        let mut old_huge = old_cache(&[(FLAG_ELF_LIBC6, "a", "b")]);
        old_huge[OLD_NLIBS_AT..OLD_NLIBS_AT + 4].copy_from_slice(&u32::MAX.to_ne_bytes());
        let mut old_key_far = old_cache(&[(FLAG_ELF_LIBC6, "a", "b")]);
        old_key_far[20..24].copy_from_slice(&1000u32.to_ne_bytes());

        type Check = fn(&LdCacheError) -> bool;
        let cases: Vec<(&str, Vec<u8>, Check)> = vec![
            ("empty", vec![], |e| matches!(e, LdCacheError::Empty { .. })),
            (
                "bad magic",
                b"\x7fELF\x02\x01\x01\0 not a cache at all".to_vec(),
                |e| matches!(e, LdCacheError::BadMagic { .. }),
            ),
            ("truncated new magic", b"glibc-ld.so".to_vec(), |e| {
                matches!(e, LdCacheError::Truncated { .. })
            }),
            ("truncated new header", good[..40].to_vec(), |e| {
                matches!(
                    e,
                    LdCacheError::Truncated {
                        end: 48,
                        len: 40,
                        ..
                    }
                )
            }),
            ("truncated old magic", b"ld.so-1.7".to_vec(), |e| {
                matches!(e, LdCacheError::Truncated { .. })
            }),
            (
                "truncated old header",
                b"ld.so-1.7.0\0\x01\0".to_vec(),
                |e| matches!(e, LdCacheError::Truncated { .. }),
            ),
            ("nlibs u32::MAX", nlibs_huge, |e| {
                matches!(
                    e,
                    LdCacheError::TooManyEntries {
                        nlibs: u32::MAX,
                        ..
                    }
                )
            }),
            ("nlibs past the end", nlibs_one_too_many, |e| {
                matches!(e, LdCacheError::TooManyEntries { .. })
            }),
            ("entries cut off", good[..60].to_vec(), |e| {
                matches!(e, LdCacheError::TooManyEntries { .. })
            }),
            ("key offset far out", key_far, |e| {
                matches!(
                    e,
                    LdCacheError::StringOutOfRange {
                        index: 0,
                        field: "key",
                        ..
                    }
                )
            }),
            ("key offset at end", key_at_end, |e| {
                matches!(
                    e,
                    LdCacheError::StringOutOfRange {
                        index: 0,
                        field: "key",
                        ..
                    }
                )
            }),
            ("missing NUL", no_nul, |e| {
                matches!(
                    e,
                    LdCacheError::UnterminatedString {
                        index: 6,
                        field: "value",
                        ..
                    }
                )
            }),
            ("foreign byte order", big_endian, |e| {
                matches!(e, LdCacheError::ForeignByteOrder { .. })
            }),
            ("invalid byte order", invalid_endian, |e| {
                matches!(e, LdCacheError::InvalidByteOrder { .. })
            }),
            ("unknown version", version, |e| {
                matches!(e, LdCacheError::UnsupportedVersion { .. })
            }),
            ("old nlibs u32::MAX", old_huge, |e| {
                matches!(e, LdCacheError::TooManyEntries { .. })
            }),
            ("old key offset out of range", old_key_far, |e| {
                matches!(e, LdCacheError::StringOutOfRange { .. })
            }),
        ];
        for (name, bytes, check) in cases {
            match LdCache::parse(&bytes, p()) {
                Ok(c) => panic!("{name}: parsed into {} entries", c.entries.len()),
                Err(e) => {
                    assert!(check(&e), "{name}: unexpected error {e:?}");
                    let msg = e.to_string();
                    assert!(msg.starts_with("/test/ld.so.cache: "), "{name}: {msg}");
                }
            }
        }
    }

    #[test]
    fn bad_magic_message() {
        let e = LdCache::parse(b"hello world", p()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "/test/ld.so.cache: not a glibc ld.so.cache (bad magic)"
        );
    }

    #[test]
    fn every_strict_prefix_is_an_error() {
        for bytes in [sample_new(), old_cache(&[(FLAG_ELF_LIBC6, "a", "/b")])] {
            for cut in 0..bytes.len() {
                assert!(
                    LdCache::parse(&bytes[..cut], p()).is_err(),
                    "prefix of {cut} bytes parsed"
                );
            }
            assert!(LdCache::parse(&bytes, p()).is_ok());
        }
    }

    #[test]
    fn non_utf8_entries_are_skipped() {
        let mut bytes = new_cache(
            &[
                (
                    FLAG_ELF_LIBC6 | ARCH_X86_64,
                    "libbad.so.1",
                    "/x/libbad.so.1",
                ),
                (FLAG_ELF_LIBC6 | ARCH_X86_64, "libok.so.1", "/x/libok.so.1"),
            ]
            .map(|(f, k, v)| (f, k, v, 0)),
        );
        let at = bytes.windows(6).position(|w| w == b"libbad").unwrap();
        bytes[at + 3] = 0xff;
        let cache = LdCache::parse(&bytes, p()).unwrap();
        assert_eq!(
            cache.entries,
            [entry(
                FLAG_ELF_LIBC6 | ARCH_X86_64,
                "libok.so.1",
                "/x/libok.so.1"
            )]
        );
    }

    #[test]
    fn read_errors_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let e = LdCache::read(&missing).unwrap_err();
        assert!(matches!(e, LdCacheError::Io { .. }), "{e:?}");
        assert!(e
            .to_string()
            .starts_with(&format!("{}: ", missing.display())));

        let e = LdCache::read(dir.path()).unwrap_err();
        assert!(matches!(e, LdCacheError::NotRegularFile { .. }), "{e:?}");

        // A FIFO must be refused without blocking on open.
        let fifo = dir.path().join("fifo");
        if Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .is_ok_and(|s| s.success())
        {
            let e = LdCache::read(&fifo).unwrap_err();
            assert!(matches!(e, LdCacheError::NotRegularFile { .. }), "{e:?}");
        }

        let file = dir.path().join("ld.so.cache");
        std::fs::write(&file, sample_new()).unwrap();
        assert_eq!(
            LdCache::read(&file).unwrap(),
            LdCache::parse(&sample_new(), p()).unwrap()
        );
    }

    #[test]
    fn arch_of_this_build() {
        if cfg!(all(target_arch = "x86_64", target_pointer_width = "64")) {
            assert_eq!(native_arch(), 0x0300);
            assert_eq!(compat32_arch(), Some(0));
        }
        if cfg!(target_arch = "aarch64") {
            assert_eq!(native_arch(), 0x0a00);
            assert_eq!(compat32_arch(), None);
        }
    }

    // ---- robustness (mutations of real caches: tests/ldcache_glibc.rs) ----

    fn check_no_panic(bytes: &[u8]) {
        if let Ok(cache) = LdCache::parse(bytes, p()) {
            // Entries can only come from the buffer: no more than fit in it.
            assert!(cache.entries.len() <= bytes.len() / OLD_ENTRY_LEN as usize);
            let _ = cache.lookup_prefix("lib", native_arch()).count();
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
            check_no_panic(&bytes);
        }

        #[test]
        fn random_bytes_after_magic_never_panic(
            old in proptest::prelude::any::<bool>(),
            rest in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600),
        ) {
            let mut bytes = if old { b"ld.so-1.7.0\0".to_vec() } else { NEW_MAGIC_VERSION.to_vec() };
            bytes.extend_from_slice(&rest);
            check_no_panic(&bytes);
        }

        #[test]
        fn mutated_handmade_caches_never_panic(
            old in proptest::prelude::any::<bool>(),
            bytes_set in proptest::collection::vec((proptest::prelude::any::<proptest::sample::Index>(), proptest::prelude::any::<u8>()), 0..8),
            cut in proptest::option::of(proptest::prelude::any::<proptest::sample::Index>()),
        ) {
            let mut bytes = if old {
                old_cache(&[(FLAG_ELF_LIBC6, "libx.so.1", "/lib/libx.so.1")])
            } else {
                sample_new()
            };
            for (at, b) in bytes_set {
                let i = at.index(bytes.len());
                bytes[i] = b;
            }
            if let Some(cut) = cut {
                let n = cut.index(bytes.len() + 1);
                bytes.truncate(n);
            }
            check_no_panic(&bytes);
        }
    }
}
