//! Build-script helper for every package whose executables (binaries, tests, benches,
//! examples) link libtorch.
//!
//! Two things tch's own build does not do for downstream executables:
//! * an rpath to libtorch's folder, so they start without `LD_LIBRARY_PATH`;
//! * a hard dependency on `libtorch_cuda`: nothing references its symbols directly, so the
//!   linker's default `--as-needed` drops it and CUDA is silently unavailable at run time.
//!
//! Use from `build.rs` of a package that depends on `torch-sys` directly (only direct
//! dependents see `DEP_TCH_LIBTORCH_LIB`):
//! ```no_run
//! torch_link::link_executables(); // every executable of the package
//! torch_link::link_binary("fedsyn-ml"); // or: one binary, plus tests, benches and examples
//! ```

use std::path::PathBuf;

/// The variable torch-sys (`links = "tch"`) exports to its direct dependents' build scripts.
const LIBTORCH_LIB_VAR: &str = "DEP_TCH_LIBTORCH_LIB";

/// Links every executable of the calling package to libtorch (rpath + libtorch_cuda).
pub fn link_executables() {
    emit_link_args(&["rustc-link-arg="]);
}

/// Links only the binary `bin` (and the package's tests, benches and examples), so that the
/// package's other binaries stay free of libtorch and start in milliseconds.
pub fn link_binary(bin: &str) {
    let mut prefixes = vec![format!("rustc-link-arg-bin={bin}=")];
    // Cargo refuses per-kind arguments for target kinds the package does not have; the
    // conventional folders tell which it has.
    let package_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    for (folder, kind) in [
        ("tests", "tests"),
        ("benches", "benches"),
        ("examples", "examples"),
    ] {
        if package_dir.join(folder).is_dir() {
            prefixes.push(format!("rustc-link-arg-{kind}="));
        }
    }
    let prefixes: Vec<&str> = prefixes.iter().map(String::as_str).collect();
    emit_link_args(&prefixes);
}

fn emit_link_args(prefixes: &[&str]) {
    println!("cargo:rerun-if-env-changed={LIBTORCH_LIB_VAR}");
    let Some(lib_dir) = std::env::var_os(LIBTORCH_LIB_VAR).map(PathBuf::from) else {
        panic!(
            "{LIBTORCH_LIB_VAR} is not set: the package calling torch_link must depend on \
             torch-sys directly"
        );
    };
    let mut args = vec![format!("-Wl,-rpath,{}", lib_dir.display())];
    if lib_dir.join("libtorch_cuda.so").exists() {
        // Position matters: these come after the objects, so the library is kept even though
        // nothing refers to it.
        args.extend(["-Wl,--no-as-needed", "-ltorch_cuda", "-Wl,--as-needed"].map(String::from));
    }
    for prefix in prefixes {
        for arg in &args {
            println!("cargo:{prefix}{arg}");
        }
    }
}
