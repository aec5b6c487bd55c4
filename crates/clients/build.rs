fn main() {
    // The crate's tests run the sentence embedder, so they link libtorch.
    torch_link::link_executables();
}
