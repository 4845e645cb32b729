//! Property tests over every parser that reads user- or site-controlled bytes and lives outside
//! a module with its own (ldcache, gres.conf and the selection grammar carry theirs): arbitrary
//! input must give a value or an error, never a panic. `PROPTEST_CASES=50000 cargo test --test
//! fuzz_parsers` runs them longer.

use std::path::Path;

use gres_oci::config::Config;
use gres_oci::inventory::{normalize_pci_bus_id, parse_information, parse_version_file};
use gres_oci::request::{env_map, PhysicalId, Request};
use proptest::prelude::*;

/// Strings shaped like the inputs, so mutations reach deep into the parsers.
fn env_entry() -> impl Strategy<Value = String> {
    prop_oneof![
        "NVIDIA_VISIBLE_DEVICES=[0-9a-zA-Z:,. -]{0,40}",
        "NVIDIA_DRIVER_CAPABILITIES=[a-z, ]{0,30}",
        "NVIDIA_REQUIRE_[A-Z]{0,5}=[a-z0-9<>=!., ]{0,30}",
        "CUDA_VERSION=[0-9.]{0,8}",
        "NVIDIA_DISABLE_REQUIRE=[a-zA-Z01]{0,5}",
        "GRES_OCI_GPUS=[0-9a-fA-Fminor:GPU, -]{0,60}",
        ".{0,40}",
    ]
}

proptest! {
    #[test]
    fn config_toml_never_panics(text in ".{0,400}") {
        let _ = Config::parse(&text, Path::new("fuzz.toml"));
    }

    #[test]
    fn config_toml_shaped_never_panics(
        table in prop_oneof![Just("[gres-oci]"), Just("[nvidia-container-cli]"), Just("")],
        key in "[a-z-]{1,20}",
        value in prop_oneof!["\"[ -~]{0,20}\"", "[0-9]{1,5}", Just("true".to_string()), "\\[\"[a-z/]{0,10}\"\\]"],
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
    fn procfs_files_never_panic(text in "([A-Za-z ]{0,14}:[ -~]{0,50}\n){0,12}") {
        let _ = parse_information(&text);
        let _ = parse_version_file(&text);
    }

    #[test]
    fn ids_never_panic(s in "[0-9a-fA-FGPUMIminor:.x -]{0,50}") {
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
