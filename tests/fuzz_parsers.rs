//! Property tests over every parser that reads user- or site-controlled bytes and lives outside
//! a module with its own (ldcache, gres.conf and the selection grammar carry theirs): arbitrary
//! input must give a value or an error, never a panic. `PROPTEST_CASES=50000 cargo test --test
//! fuzz_parsers` runs them longer.

use std::path::Path;

use gres_oci::config::Config;
use gres_oci::inventory::{normalize_pci_bus_id, parse_information, parse_version_file};
use gres_oci::request::{env_map, PhysicalId, Request};
use proptest::prelude::*;

/// Characters that are more than one byte in UTF-8 (two, three and four bytes, a combining
/// mark, the replacement character that a lossy read of a non-UTF-8 byte gives), so that a
/// parser slicing at a byte offset lands inside one.
const WIDE: &str = "€|ü|𐍈|\u{301}|\u{fffd}";

/// Text as a user may write it: shaped tokens mixed with multi-byte characters, or raw bytes
/// (not UTF-8 at all) read lossily, the way text from a file or an environment reaches a parser.
fn hostile(tokens: &str, max: usize) -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::string::string_regex(&format!("({tokens}|{WIDE}){{0,{max}}}"))
            .expect("a valid pattern"),
        proptest::collection::vec(any::<u8>(), 0..max * 2)
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ]
}

/// Strings shaped like the inputs, so mutations reach deep into the parsers.
fn env_entry() -> impl Strategy<Value = String> {
    prop_oneof![
        hostile("[0-9a-zA-Z:,. -]|GPU-|MIG-|all|void", 40)
            .prop_map(|v| format!("NVIDIA_VISIBLE_DEVICES={v}")),
        hostile("[a-z, ]|compute|utility", 30)
            .prop_map(|v| format!("NVIDIA_DRIVER_CAPABILITIES={v}")),
        hostile("[a-z0-9<>=!., ]|cuda|brand", 30).prop_map(|v| format!("NVIDIA_REQUIRE_X={v}")),
        hostile("[0-9.]", 8).prop_map(|v| format!("CUDA_VERSION={v}")),
        hostile("[a-zA-Z01]", 5).prop_map(|v| format!("NVIDIA_DISABLE_REQUIRE={v}")),
        hostile("[0-9a-fA-F:, -]|minor:|GPU-", 60).prop_map(|v| format!("GRES_OCI_GPUS={v}")),
        hostile(".", 40),
    ]
}

proptest! {
    #[test]
    fn config_toml_never_panics(text in hostile(".|\\[gres-oci\\]|=|\"", 200)) {
        let _ = Config::parse(&text, Path::new("fuzz.toml"));
    }

    /// Files that are not UTF-8 (or are, with multi-byte text) where the site's files go: a
    /// one-line error or a value, never a panic.
    #[test]
    fn site_files_with_any_bytes_never_panic(
        head in hostile("[a-z=\\[\\] \n]|Name=gpu|dev-root", 20),
        raw in proptest::collection::vec(any::<u8>(), 0..40),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("file");
        let mut bytes = head.into_bytes();
        bytes.extend(&raw);
        std::fs::write(&f, &bytes).unwrap();
        if let Err(e) = Config::load(Some(&f)) {
            prop_assert!(!e.to_string().contains('\n'), "{}", e);
        }
        if let Err(e) = gres_oci::gres::GresConf::read(&f) {
            prop_assert!(!e.to_string().contains('\n'), "{}", e);
        }
    }

    #[test]
    fn config_toml_shaped_never_panics(
        table in prop_oneof![Just("[gres-oci]"), Just("[nvidia-container-cli]"), Just("")],
        key in prop_oneof!["[a-z-]{1,20}", hostile("[a-z-]", 10)],
        value in prop_oneof!["\"[ -~]{0,20}\"", "[0-9]{1,5}", Just("true".to_string()), "\\[\"[a-z/]{0,10}\"\\]", hostile("[a-z/\"]", 10).prop_map(|v| format!("\"{v}\""))],
    ) {
        let text = format!("{table}\n{key} = {value}\n");
        if let Err(e) = Config::parse(&text, Path::new("fuzz.toml")) {
            prop_assert!(!e.to_string().contains('\n'));
        }
    }

    #[test]
    fn container_env_never_panics(env in proptest::collection::vec(env_entry(), 0..8)) {
        if let Ok(map) = env_map(&env) {
            let _ = Request::from_env(&map, &Config::default());
        }
    }

    #[test]
    fn procfs_files_never_panic(text in prop_oneof![
        "([A-Za-z ]{0,14}:[ -~]{0,50}\n){0,12}",
        hostile("[A-Za-z :\n]|GPU UUID:|Bus Location:|Device Minor:|NVRM version:", 60),
    ]) {
        let _ = parse_information(&text);
        let _ = parse_version_file(&text);
    }

    #[test]
    fn ids_never_panic(s in hostile("[0-9a-fA-FGPUMIminor:.x -]|GPU-|MIG-|minor:", 50)) {
        let _ = normalize_pci_bus_id(&s);
        let _ = PhysicalId::parse(&s);
    }

    #[test]
    fn elf_reader_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut with_magic = b"\x7fELF\x02\x01".to_vec();
        with_magic.extend(&bytes);
        let _ = gres_oci::elf::soname_of(&bytes);
        let _ = gres_oci::elf::soname_of(&with_magic);
    }
}
