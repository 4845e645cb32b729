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

use std::path::PathBuf;

mod read;
mod write;

use read::*;
pub use write::{dl_cache_libcmp, ldconfig_order, updated_cache, GENERATOR};

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
    #[error("{}: cannot read ld.so.cache", .path.display())]
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
