//! `einhorn-master`: see the library documentation, or run `einhorn-master --help`.

fn main() -> std::process::ExitCode {
    einhorn_master::main_with_args(std::env::args_os())
}
