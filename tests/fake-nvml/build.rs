//! Build script of the fake NVML: gives the cdylib the SONAME of the real library.

fn main() {
    // ldconfig names the `libnvidia-ml.so.1` link after the SONAME, so the fake
    // must carry the same one as the real driver library.
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libnvidia-ml.so.1");
    println!("cargo:rerun-if-changed=build.rs");
}
