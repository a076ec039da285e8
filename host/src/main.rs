fn main() -> std::process::ExitCode {
    bitnet_host::cli::main()
}
