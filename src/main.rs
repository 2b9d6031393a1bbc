fn main() -> std::process::ExitCode {
    ntv::app::run()
}
