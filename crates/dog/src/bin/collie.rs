fn main() {
    std::process::exit(dog::run())
}
