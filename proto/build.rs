//! Compiles `tokenrouter/**/*.proto` with a pure-Rust protobuf parser (no `protoc` needed).
//! gRPC stubs are generated only with the `grpc` feature, so the wasm filter gets bare messages.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "tokenrouter/config/v1/config.proto",
        "tokenrouter/sync/v1/sync.proto",
        "tokenrouter/admin/v1/admin.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["."])?;
    let grpc = std::env::var_os("CARGO_FEATURE_GRPC").is_some();
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    if grpc {
        // Descriptor set for gRPC server reflection.
        std::fs::write(
            out.join("tokenrouter_descriptor.bin"),
            prost::Message::encode_to_vec(&fds),
        )?;
    }
    tonic_prost_build::configure()
        .build_server(grpc)
        .build_client(grpc)
        .build_transport(grpc)
        .compile_fds(fds)?;
    Ok(())
}
