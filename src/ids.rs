//! The shapes of NVIDIA device ids, in one place: UUIDs (`GPU-`/`MIG-` + 8-4-4-4-12 hex) and
//! PCI bus ids (`[domain:]bus:device[.function]` in hex, written as NVML's
//! `dddddddd:bb:dd.f`).

const UUID_SHAPE: &[u8] = b"xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx";

/// Whether `s` matches the start of the UUID shape: the whole of it (`full`), or a non-empty
/// strict prefix (what NVIDIA accepted after `GPU-` before 2019).
pub fn uuid_shape(s: &str, full: bool) -> bool {
    let len_ok = if full {
        s.len() == UUID_SHAPE.len()
    } else {
        !s.is_empty() && s.len() < UUID_SHAPE.len()
    };
    len_ok
        && s.bytes().zip(UUID_SHAPE).all(|(c, &shape)| {
            if shape == b'-' {
                c == b'-'
            } else {
                c.is_ascii_hexdigit()
            }
        })
}

/// `prefix` then a full UUID, as NVML and procfs print it; lower-cased. `None` otherwise.
pub fn prefixed_uuid(v: &str, prefix: &str) -> Option<String> {
    let rest = v.strip_prefix(prefix)?;
    uuid_shape(rest, true).then(|| format!("{prefix}{}", rest.to_ascii_lowercase()))
}

/// A PCI address as written: the domain and the function may be left out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciAddr {
    pub domain: Option<u32>,
    pub bus: u32,
    pub device: u32,
    pub function: Option<u32>,
}

impl PciAddr {
    /// `[domain:]bus:device[.function]`, hex fields of at most 8, 2, 2 and 1 digits, no signs
    /// or spaces.
    pub fn parse(s: &str) -> Option<PciAddr> {
        let (rest, function) = match s.rsplit_once('.') {
            Some((r, f)) => (r, Some(hex(f, 1)?)),
            None => (s, None),
        };
        let mut parts = rest.split(':');
        let (a, b, c) = (parts.next()?, parts.next()?, parts.next());
        if parts.next().is_some() {
            return None;
        }
        let (domain, bus, device) = match c {
            Some(dev) => (Some(hex(a, 8)?), hex(b, 2)?, hex(dev, 2)?),
            None => (None, hex(a, 2)?, hex(b, 2)?),
        };
        Some(PciAddr {
            domain,
            bus,
            device,
            function,
        })
    }

    /// NVML's form, `dddddddd:bb:dd.f`, lower case; a missing domain or function is 0.
    pub fn canonical(&self) -> String {
        format!(
            "{:08x}:{:02x}:{:02x}.{:x}",
            self.domain.unwrap_or(0),
            self.bus,
            self.device,
            self.function.unwrap_or(0)
        )
    }
}

fn hex(s: &str, max_len: usize) -> Option<u32> {
    if s.is_empty() || s.len() > max_len || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(s, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids() {
        let u = "3f9a2c1e-7b44-5d0e-9a1b-2c3d4e5f6A70";
        assert!(uuid_shape(u, true));
        assert!(!uuid_shape(u, false));
        assert!(uuid_shape("3f9a2c1e-7b", false));
        assert!(!uuid_shape("3f9a2c1e7b", false));
        assert!(!uuid_shape("", false));
        assert_eq!(
            prefixed_uuid(&format!("GPU-{u}"), "GPU-").as_deref(),
            Some("GPU-3f9a2c1e-7b44-5d0e-9a1b-2c3d4e5f6a70")
        );
        assert_eq!(prefixed_uuid(&format!("MIG-{u}"), "GPU-"), None);
    }

    #[test]
    fn pci_addresses() {
        let p = PciAddr::parse("0000:1B:00.0").unwrap();
        assert_eq!(p.canonical(), "00000000:1b:00.0");
        assert_eq!(PciAddr::parse("1b:00").unwrap().domain, None);
        assert_eq!(
            PciAddr::parse("1b:00.3").unwrap().canonical(),
            "00000000:1b:00.3"
        );
        for bad in [
            "",
            "1b",
            "0:1:2:3",
            "+1:00.0",
            "0000:1b:00.10",
            "0000:1b:00.",
            "x:1b:00.0",
        ] {
            assert_eq!(PciAddr::parse(bad), None, "{bad}");
        }
    }
}
