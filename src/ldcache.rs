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
