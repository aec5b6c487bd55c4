fn main() {
    torch_link::link_executables();
}
