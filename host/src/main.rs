//! The `postern` binary.

fn main() -> std::process::ExitCode {
    postern::cli::main()
}
