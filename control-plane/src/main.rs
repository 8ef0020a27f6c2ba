//! `tokenrouter`: the control plane (`serve`) and its command line. Everything lives in the
//! library; see [`tokenrouter_control_plane::cli`].

fn main() -> std::process::ExitCode {
    tokenrouter_control_plane::cli::main()
}
