fn main() {
    // Only `fedsyn-ml` links libtorch; `fedsyn` itself must start in milliseconds.
    torch_link::link_binary("fedsyn-ml");
}
