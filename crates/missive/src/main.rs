fn main() {
    missive::cli::main()
}
