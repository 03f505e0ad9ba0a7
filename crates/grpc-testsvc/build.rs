//! Compiles the protos with protox (pure Rust, no protoc) and generates the tonic code from the
//! resulting descriptor set. Two encoded sets are written to OUT_DIR, with custom options (the
//! `google.api.http` extension inside `MethodOptions`) kept: protox's
//! `encode_file_descriptor_set` re-encodes them through prost-reflect, while a decoded
//! `prost_types::FileDescriptorSet` would have dropped them as unknown fields.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    println!("cargo:rerun-if-changed=proto");

    let mut shop = protox::Compiler::new(["proto"])?;
    shop.include_imports(true).include_source_info(false);
    shop.open_file("shop/v1/shop.proto")?;
    std::fs::write(
        out.join("descriptors_shop.bin"),
        shop.encode_file_descriptor_set(),
    )?;

    let mut all = protox::Compiler::new(["proto"])?;
    all.include_imports(true).include_source_info(false);
    all.open_files(["shop/v1/shop.proto", "shop/v1/extra.proto"])?;
    std::fs::write(
        out.join("descriptors_all.bin"),
        all.encode_file_descriptor_set(),
    )?;

    // Code generation needs no options: the decoded set is enough. google.rpc.Status is in no
    // service's imports (it travels in `grpc-status-details-bin`), so it is added here only.
    let mut code = protox::Compiler::new(["proto"])?;
    code.include_imports(true).include_source_info(false);
    code.open_files([
        "shop/v1/shop.proto",
        "shop/v1/extra.proto",
        "google/rpc/status.proto",
    ])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(code.file_descriptor_set())?;
    Ok(())
}
