//! Native reader of glibc's `ld.so.cache`.
//!
//! This module owns decoding the binary cache that `ldconfig` writes to
//! `/etc/ld.so.cache`, so that driver discovery can map sonames to library
//! paths without executing anything: it never runs `ldconfig -p`. Spawning a
//! binary from a prestart hook would tie us to whichever `ldconfig` is on the
//! path, to its human-oriented output format, and to a fork/exec on every
//! container start.
//!
//! The layouts come from glibc's `sysdeps/generic/dl-cache.h`:
//!
//! - the stand-alone new format (`"glibc-ld.so.cache" "1.1"`), the only one
//!   `ldconfig` writes by default since glibc 2.32;
//! - the old format (`"ld.so-1.7.0"`) followed by the new one
//!   (`ldconfig -c compat`, the default before 2.32); like `ld.so`, we use the
//!   new part when it is present;
//! - the old format alone (`ldconfig -c old`).
//!
//! Byte order: the cache is read in the host's byte order, as `ld.so` does,
//! because `ldconfig` only ever writes caches for the machine it runs on. A
//! new-format header that declares the other byte order is rejected with
//! [`LdCacheError::ForeignByteOrder`] instead of being misread; the old format
//! carries no byte-order marker, so it is assumed native.
//!
//! The file may come from an untrusted place (a container image), so every
//! count and offset read from it is bounds-checked against the buffer before
//! use, entry counts are checked against the file size before anything is
//! allocated, and malformed input yields an [`LdCacheError`], never a panic.

use std::io::Read;
use std::path::{Path, PathBuf};

/// Mask of the library-type bits of an entry's flags.
pub const FLAG_TYPE_MASK: i32 = 0x00ff;
/// Type bits of an ELF library that is not linked against a known libc.
pub const FLAG_ELF: i32 = 0x0001;
/// Type bits of an ELF library linked against glibc (`libc.so.6`).
pub const FLAG_ELF_LIBC6: i32 = 0x0003;
/// Mask of the architecture/ABI bits of an entry's flags.
pub const FLAG_REQUIRED_MASK: i32 = 0xff00;

/// Architecture bits of i386 libraries, and of any library of an ABI that
/// glibc gives no arch bits (such as 32-bit PowerPC or 31-bit s390).
pub const ARCH_I386: i32 = 0x0000;
/// `FLAG_SPARC_LIB64`.
pub const ARCH_SPARC64: i32 = 0x0100;
/// `FLAG_IA64_LIB64`.
pub const ARCH_IA64: i32 = 0x0200;
/// `FLAG_X8664_LIB64`.
pub const ARCH_X86_64: i32 = 0x0300;
/// `FLAG_S390_LIB64`.
pub const ARCH_S390X: i32 = 0x0400;
/// `FLAG_POWERPC_LIB64` (both byte orders).
pub const ARCH_PPC64: i32 = 0x0500;
/// `FLAG_MIPS64_LIBN32`.
pub const ARCH_MIPS64_N32: i32 = 0x0600;
/// `FLAG_MIPS64_LIBN64`.
pub const ARCH_MIPS64_N64: i32 = 0x0700;
/// `FLAG_X8664_LIBX32`.
pub const ARCH_X32: i32 = 0x0800;
/// `FLAG_ARM_LIBHF`.
pub const ARCH_ARMHF: i32 = 0x0900;
/// `FLAG_AARCH64_LIB64`.
pub const ARCH_AARCH64: i32 = 0x0a00;
/// `FLAG_ARM_LIBSF`.
pub const ARCH_ARMSF: i32 = 0x0b00;
/// `FLAG_MIPS_LIB32_NAN2008`.
pub const ARCH_MIPS32_NAN2008: i32 = 0x0c00;
/// `FLAG_MIPS64_LIBN32_NAN2008`.
pub const ARCH_MIPS64_N32_NAN2008: i32 = 0x0d00;
/// `FLAG_MIPS64_LIBN64_NAN2008`.
pub const ARCH_MIPS64_N64_NAN2008: i32 = 0x0e00;
/// `FLAG_RISCV_FLOAT_ABI_SOFT`.
pub const ARCH_RISCV_SOFT: i32 = 0x0f00;
/// `FLAG_RISCV_FLOAT_ABI_DOUBLE`.
pub const ARCH_RISCV_DOUBLE: i32 = 0x1000;
/// `FLAG_LARCH_FLOAT_ABI_SOFT`.
pub const ARCH_LOONGARCH_SOFT: i32 = 0x1100;
/// `FLAG_LARCH_FLOAT_ABI_DOUBLE`.
pub const ARCH_LOONGARCH_DOUBLE: i32 = 0x1200;

/// Bit of [`LdCacheEntry::hwcap`] (glibc's `DL_CACHE_HWCAP_EXTENSION`) marking
/// an entry for a `glibc-hwcaps/<subdir>/` variant of a library; the low bits
/// then index the subdirectory names in the cache's extension section.
pub const HWCAP_EXTENSION: u64 = 1 << 62;

/// Largest file [`LdCache::read`] accepts. Real caches are well under a
/// megabyte even on large systems; the cap keeps a hostile or mistaken path
/// from making the hook read an unbounded file into memory.
pub const MAX_CACHE_SIZE: u64 = 64 << 20;

const OLD_MAGIC: &[u8] = b"ld.so-1.7.0";
/// `struct cache_file`: 11 magic bytes, padded to 12 for the `nlibs` word.
const OLD_HEADER_LEN: u64 = 16;
const OLD_NLIBS_AT: usize = 12;
/// `struct file_entry`: i32 flags, u32 key, u32 value.
const OLD_ENTRY_LEN: u64 = 12;

const NEW_MAGIC: &[u8] = b"glibc-ld.so.cache";
const NEW_VERSION: &[u8] = b"1.1";
const NEW_MAGIC_VERSION: &[u8] = b"glibc-ld.so.cache1.1";
/// `struct cache_file_new` up to its entries.
const NEW_HEADER_LEN: u64 = 48;
const NEW_NLIBS_AT: usize = 20;
const NEW_FLAGS_AT: usize = 28;
/// `struct file_entry_new`: i32 flags, u32 key, u32 value, u32 osversion,
/// u64 hwcap.
const NEW_ENTRY_LEN: u64 = 24;

/// Low two bits of the new header's `flags` byte: the writer's byte order.
const ENDIAN_MASK: u8 = 3;
const ENDIAN_UNSET: u8 = 0;
const ENDIAN_INVALID: u8 = 1;
const ENDIAN_LITTLE: u8 = 2;

const HOST_ENDIAN: &str = if cfg!(target_endian = "big") {
    "big"
} else {
    "little"
};

/// Why an `ld.so.cache` could not be read. Every message starts with the path.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LdCacheError {
    #[error("{}: cannot read ld.so.cache: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: not a regular file, refusing to read it as ld.so.cache", .path.display())]
    NotRegularFile { path: PathBuf },
    #[error("{}: larger than {max} bytes, refusing to read it as ld.so.cache", .path.display())]
    TooLarge { path: PathBuf, max: u64 },
    #[error("{}: empty file, not a glibc ld.so.cache", .path.display())]
    Empty { path: PathBuf },
    #[error("{}: not a glibc ld.so.cache (bad magic)", .path.display())]
    BadMagic { path: PathBuf },
    #[error("{}: unsupported glibc ld.so.cache version {version:?} (only 1.1 is known)", .path.display())]
    UnsupportedVersion { path: PathBuf, version: String },
    #[error("{}: truncated ld.so.cache: the {what} ends at byte {end} but the file has {len} bytes", .path.display())]
    Truncated {
        path: PathBuf,
        what: &'static str,
        end: u64,
        len: u64,
    },
    #[error("{}: ld.so.cache claims {nlibs} entries, which would end at byte {end}, past the end of the file ({len} bytes)", .path.display())]
    TooManyEntries {
        path: PathBuf,
        nlibs: u32,
        end: u64,
        len: u64,
    },
    #[error("{}: ld.so.cache header marks its byte order as invalid", .path.display())]
    InvalidByteOrder { path: PathBuf },
    #[error("{}: ld.so.cache was written for a {cache}-endian machine but this host is {host}-endian", .path.display())]
    ForeignByteOrder {
        path: PathBuf,
        cache: &'static str,
        host: &'static str,
    },
    #[error("{}: ld.so.cache entry {index}: {field} string offset {offset} is past the end of the file", .path.display())]
    StringOutOfRange {
        path: PathBuf,
        index: usize,
        field: &'static str,
        offset: u64,
    },
    #[error("{}: ld.so.cache entry {index}: {field} string at byte {offset} is not NUL-terminated", .path.display())]
    UnterminatedString {
        path: PathBuf,
        index: usize,
        field: &'static str,
        offset: u64,
    },
    /// The cache reads fine but [`updated_cache`] cannot rewrite it without
    /// changing what `ld.so` resolves; the caller should run `ldconfig`.
    #[error("{}: cannot rewrite this ld.so.cache in place: {reason}", .path.display())]
    NotRewritable { path: PathBuf, reason: String },
}

/// A decoded `ld.so.cache`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct LdCache {
    /// All entries, in file order. `ldconfig` sorts them so that `ld.so`
    /// picks the first match, so file order is also preference order.
    pub entries: Vec<LdCacheEntry>,
}

/// One library of the cache.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LdCacheEntry {
    /// Usually the soname, e.g. `libcuda.so.1`.
    pub key: String,
    /// Path of the library, as `ldconfig` saw it (relative to its `-r` root).
    pub value: String,
    /// Type bits ([`FLAG_TYPE_MASK`]) and arch bits ([`FLAG_REQUIRED_MASK`]).
    pub flags: i32,
    /// The `osversion` word of the new format; 0 in the old format.
    pub os_version: u32,
    /// Hardware-capability word of the new format; 0 in the old format and
    /// for the default variant of a library. See [`HWCAP_EXTENSION`].
    pub hwcap: u64,
}

impl LdCacheEntry {
    /// Whether this is an ELF library linked against glibc, the only kind
    /// `ld.so` itself will load from the cache.
    pub fn is_elf(&self) -> bool {
        self.flags & FLAG_TYPE_MASK == FLAG_ELF_LIBC6
    }

    /// The architecture/ABI bits, comparable with the `ARCH_*` constants.
    pub fn arch(&self) -> i32 {
        self.flags & FLAG_REQUIRED_MASK
    }
}

/// The arch flag of native libraries on the machine this is compiled for:
/// its 64-bit libraries on 64-bit targets. Unknown targets get 0, the flag of
/// ABIs that glibc marks with no arch bits.
pub const fn native_arch() -> i32 {
    if cfg!(all(target_arch = "x86_64", target_pointer_width = "64")) {
        ARCH_X86_64
    } else if cfg!(all(target_arch = "x86_64", target_pointer_width = "32")) {
        ARCH_X32
    } else if cfg!(target_arch = "aarch64") {
        ARCH_AARCH64
    } else if cfg!(all(target_arch = "arm", target_abi = "eabihf")) {
        ARCH_ARMHF
    } else if cfg!(target_arch = "arm") {
        ARCH_ARMSF
    } else if cfg!(target_arch = "powerpc64") {
        ARCH_PPC64
    } else if cfg!(target_arch = "s390x") {
        ARCH_S390X
    } else if cfg!(all(target_arch = "riscv64", target_feature = "d")) {
        ARCH_RISCV_DOUBLE
    } else if cfg!(target_arch = "riscv64") {
        ARCH_RISCV_SOFT
    } else if cfg!(all(target_arch = "loongarch64", target_feature = "d")) {
        ARCH_LOONGARCH_DOUBLE
    } else if cfg!(target_arch = "loongarch64") {
        ARCH_LOONGARCH_SOFT
    } else if cfg!(target_arch = "sparc64") {
        ARCH_SPARC64
    } else {
        ARCH_I386
    }
}

/// The arch flag of the 32-bit companion libraries (compat32), if any.
///
/// Only x86-64 has one: it is the only platform for which NVIDIA ships 32-bit
/// user-space driver libraries (i386, for 32-bit applications such as games
/// under Wine or Steam). Elsewhere any 32-bit library found would not belong
/// to the driver, so there is nothing to look for.
pub const fn compat32_arch() -> Option<i32> {
    if cfg!(all(target_arch = "x86_64", target_pointer_width = "64")) {
        Some(ARCH_I386)
    } else {
        None
    }
}

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

fn read_array<const N: usize>(bytes: &[u8], at: usize) -> Option<[u8; N]> {
    bytes.get(at..at.checked_add(N)?)?.try_into().ok()
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    read_array(bytes, at).map(u32::from_ne_bytes)
}

fn read_i32(bytes: &[u8], at: usize) -> Option<i32> {
    read_array(bytes, at).map(i32::from_ne_bytes)
}

fn read_u64(bytes: &[u8], at: usize) -> Option<u64> {
    read_array(bytes, at).map(u64::from_ne_bytes)
}

/// Converts an offset already checked against a buffer length to `usize`.
fn to_usize(n: u64) -> usize {
    // Callers only pass values <= some slice length, which fits in usize.
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// The fixed-size part of one entry, before its strings are resolved.
struct RawEntry {
    flags: i32,
    key: u32,
    value: u32,
    os_version: u32,
    hwcap: u64,
}

/// Old format: `struct cache_file` then `nlibs` × `struct file_entry`, then
/// either the string table or (compat) a new-format cache.
fn parse_old(bytes: &[u8], path: &Path) -> Result<LdCache, LdCacheError> {
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
fn parse_new(bytes: &[u8], base: usize, path: &Path) -> Result<LdCache, LdCacheError> {
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
fn collect_entries(
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
fn c_string<'a>(
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
fn ldconfig_order(a: &LdCacheEntry, b: &LdCacheEntry) -> std::cmp::Ordering {
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

    fn to_bytes_with_generator(&self, generator: &str) -> Vec<u8> {
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
    use super::*;
    use proptest::prelude::*;
    use std::process::Command;
    use std::sync::OnceLock;

    const LDCONFIG: &str = "/usr/sbin/ldconfig";

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

    // ---- caches written by the real ldconfig ----

    pub(super) fn have_tools() -> bool {
        let gcc = Command::new("gcc").arg("--version").output();
        let ok = Path::new(LDCONFIG).exists() && gcc.is_ok_and(|o| o.status.success());
        if !ok {
            eprintln!("skipping: needs gcc and {LDCONFIG}");
        }
        ok
    }

    pub(super) fn gcc_so(out: &Path, soname: &str, extra: &[&str]) -> bool {
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

    pub(super) fn run_ldconfig(args: &[&str]) {
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

    /// Valid caches to mutate: hand-made ones, plus real ones when the tools
    /// are there.
    fn seeds() -> &'static [Vec<u8>] {
        static SEEDS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
        SEEDS.get_or_init(|| {
            let mut seeds = vec![
                sample_new(),
                old_cache(&[(FLAG_ELF_LIBC6, "libx.so.1", "/lib/libx.so.1")]),
            ];
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
            assert!(cache.entries.len() <= bytes.len() / OLD_ENTRY_LEN as usize);
            let _ = cache.lookup_prefix("lib", native_arch()).count();
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            check_no_panic(&bytes);
        }

        #[test]
        fn random_bytes_after_magic_never_panic(
            old in any::<bool>(),
            rest in proptest::collection::vec(any::<u8>(), 0..600),
        ) {
            let mut bytes = if old { b"ld.so-1.7.0\0".to_vec() } else { NEW_MAGIC_VERSION.to_vec() };
            bytes.extend_from_slice(&rest);
            check_no_panic(&bytes);
        }

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
}

#[cfg(test)]
mod writer_tests {
    //! The writer against glibc's own ldconfig: round trips, merges and ld.so's lookup order.

    use super::tests::{gcc_so, have_tools, run_ldconfig};
    use super::*;
    use proptest::prelude::*;
    use std::cmp::Ordering;
    use std::process::Command;

    const LDCONFIG: &str = "/usr/sbin/ldconfig";

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
        let ext = to_usize(u64::from(read_u32(bytes, 32).unwrap()));
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
        assert!(cache.entries.iter().any(|e| is_hwcaps_extension(e.hwcap)));
        check_rewritable(&bytes, &cache, &file).unwrap();
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

    fn p() -> &'static Path {
        Path::new("/test/ld.so.cache")
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
