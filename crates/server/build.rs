fn main() {
    // The crate's tests run the generator and the embedder, so they link libtorch.
    torch_link::link_executables();
}
