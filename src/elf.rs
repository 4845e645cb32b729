//! Reads the `DT_SONAME` of a 64-bit little-endian ELF shared object, for driver libraries
//! found outside the linker cache, and note sections (CUDA's forward-compatibility note).
//! Bounds-checked; any malformed file gives `None`.

use std::path::Path;

/// The SONAME of the shared object at `path`, if it is an ELF64 LE file that has one.
pub fn soname(path: &Path) -> Option<String> {
    // Driver libraries are a few MiB to a few hundred; the dynamic section is near the start,
    // but reading the whole file keeps this simple and it runs only for search-dir fallbacks.
    let bytes = std::fs::read(path).ok()?;
    soname_of(&bytes)
}

fn u16_at(b: &[u8], o: usize) -> Option<u64> {
    Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?) as u64)
}
fn u32_at(b: &[u8], o: usize) -> Option<u64> {
    Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?) as u64)
}
fn u64_at(b: &[u8], o: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?))
}

/// Parses an in-memory ELF image.
pub fn soname_of(b: &[u8]) -> Option<String> {
    // e_ident: magic, class 2 (64-bit), data 1 (little-endian).
    if b.get(0..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let phoff = usize::try_from(u64_at(b, 0x20)?).ok()?;
    let phentsize = u16_at(b, 0x36)? as usize;
    let phnum = u16_at(b, 0x38)? as usize;
    if phentsize < 56 {
        return None;
    }
    let (mut dynamic, mut loads) = (None, Vec::new());
    for i in 0..phnum {
        let p = phoff.checked_add(i.checked_mul(phentsize)?)?;
        let (kind, off, vaddr, filesz) = (
            u32_at(b, p)?,
            u64_at(b, p + 8)?,
            u64_at(b, p + 16)?,
            u64_at(b, p + 32)?,
        );
        match kind {
            1 => loads.push((vaddr, off, filesz)),
            2 => dynamic = Some((off, filesz)),
            _ => {}
        }
    }
    let (doff, dsize) = dynamic?;
    let (mut strtab, mut soname) = (None, None);
    let mut o = usize::try_from(doff).ok()?;
    let end = o.checked_add(usize::try_from(dsize).ok()?)?;
    while o + 16 <= end {
        let (tag, val) = (u64_at(b, o)?, u64_at(b, o + 8)?);
        match tag {
            0 => break,
            5 => strtab = Some(val),
            14 => soname = Some(val),
            _ => {}
        }
        o += 16;
    }
    // DT_STRTAB is a virtual address: map it to a file offset through the PT_LOAD segments.
    let strtab = strtab?;
    let file_off = loads
        .iter()
        .find(|(va, _, sz)| strtab >= *va && strtab < va.saturating_add(*sz))
        .map(|(va, off, _)| strtab - va + off)?;
    let start = usize::try_from(file_off.checked_add(soname?)?).ok()?;
    let rest = b.get(start..)?;
    let len = rest.iter().position(|&c| c == 0)?;
    String::from_utf8(rest[..len].to_vec()).ok()
}

/// The contents of section `name`, if it is a note section (`SHT_NOTE`) of an ELF64 LE file
/// read through `f` (positioned reads only; at most 64 KiB of it, and a few KiB of headers).
/// Anything malformed gives `None`; a hostile image can ship such a file.
pub fn note_section(f: &std::fs::File, name: &str) -> Option<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    const SHT_NOTE: u64 = 7;
    const MAX_NOTE: u64 = 64 * 1024;
    const MAX_SECTIONS: u64 = 4096;
    let read = |off: u64, len: u64| -> Option<Vec<u8>> {
        let mut buf = vec![0u8; usize::try_from(len).ok()?];
        f.read_exact_at(&mut buf, off).ok()?;
        Some(buf)
    };
    let eh = read(0, 64)?;
    if eh.get(0..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let shoff = u64_at(&eh, 0x28)?;
    let shentsize = u16_at(&eh, 0x3a)?;
    let shnum = u16_at(&eh, 0x3c)?;
    let shstrndx = u16_at(&eh, 0x3e)?;
    if shentsize < 64 || shnum > MAX_SECTIONS || shstrndx >= shnum {
        return None;
    }
    let table = read(shoff, shentsize.checked_mul(shnum)?)?;
    let header = |i: u64| {
        let o = usize::try_from(i * shentsize).ok()?;
        // (sh_name, sh_type, sh_offset, sh_size)
        Some((
            u32_at(&table, o)?,
            u32_at(&table, o + 4)?,
            u64_at(&table, o + 0x18)?,
            u64_at(&table, o + 0x20)?,
        ))
    };
    let (_, _, stroff, strsize) = header(shstrndx)?;
    let strtab = read(stroff, strsize.min(MAX_NOTE))?;
    (0..shnum).find_map(|i| {
        let (n, kind, off, size) = header(i)?;
        let s = strtab.get(usize::try_from(n).ok()?..)?;
        let end = s.iter().position(|&b| b == 0)?;
        (kind == SHT_NOTE && &s[..end] == name.as_bytes() && size <= MAX_NOTE)
            .then(|| read(off, size))
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_soname_of_a_real_object() {
        let t = tempfile::tempdir().unwrap();
        let so = t.path().join("libfoo.so.1.2.3");
        let src = t.path().join("f.c");
        std::fs::write(&src, "int f(void){return 1;}\n").unwrap();
        let ok = std::process::Command::new("cc")
            .args(["-shared", "-fPIC", "-Wl,-soname,libfoo.so.1", "-o"])
            .arg(&so)
            .arg(&src)
            .status()
            .unwrap()
            .success();
        assert!(ok, "cc failed");
        assert_eq!(soname(&so).as_deref(), Some("libfoo.so.1"));
        // Any truncation must give None, never panic.
        let bytes = std::fs::read(&so).unwrap();
        for cut in (0..bytes.len()).step_by(97) {
            let _ = soname_of(&bytes[..cut]);
        }
        assert_eq!(soname_of(b"not an elf"), None);
    }
}
