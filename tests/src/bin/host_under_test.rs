//! The host's entry point, built under the tests' package so Cargo hands its
//! path to the tests and benches. Identical to host/src/main.rs.
fn main() -> std::process::ExitCode {
    bitnet_host::cli::main()
}
