//! The `postern` binary.

/// mimalloc instead of glibc malloc: the daemon allocates and frees small
/// buffers from many threads (sessions, plugin stores), where glibc's
/// arenas showed up as ~8% of CPU under load.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    postern::cli::main()
}
