fn main() {
    // Every executable of this package links libtorch: rpath, and libtorch_cuda when present.
    torch_link::link_executables();
}
