//! The test executable itself proves the link set-up of crates/torch-link: it starts without
//! LD_LIBRARY_PATH (rpath) and has libtorch_cuda mapped whenever the wheel ships it.

use std::path::PathBuf;

#[test]
fn starts_without_ld_library_path_and_computes() {
    let from_env = std::env::var("LD_LIBRARY_PATH").unwrap_or_default();
    let found_via_env: Vec<&str> = from_env
        .split(':')
        .filter(|dir| !dir.is_empty() && PathBuf::from(dir).join("libtorch_cpu.so").exists())
        .collect();
    assert!(
        found_via_env.is_empty(),
        "LD_LIBRARY_PATH provides libtorch ({found_via_env:?}); the rpath must suffice"
    );
    let t = tch::Tensor::from_slice(&[1.0f32, 2.0, 3.0]);
    assert_eq!(f64::try_from(t.sum(tch::Kind::Float)).unwrap(), 6.0);
}

#[test]
fn libtorch_cuda_is_linked_when_present() {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let libtorch = maps
        .lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .find(|path| path.ends_with("libtorch_cpu.so"))
        .map(PathBuf::from)
        .expect("libtorch_cpu.so is mapped");
    let cuda = libtorch.with_file_name("libtorch_cuda.so");
    if cuda.exists() {
        assert!(
            models::device::libtorch_has_cuda(),
            "{} exists but is not loaded: the --no-as-needed link was lost",
            cuda.display()
        );
    }
}
