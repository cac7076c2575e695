//! Compiles the V2 gRPC proto with protox (pure Rust), so building needs no
//! `protoc` on the machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/inference.proto");
    let fds = protox::compile(["proto/inference.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .bytes(".")
        // prost with a bound check in front of ModelInferRequest (grpc/wire.rs).
        .codec_path("crate::grpc::wire::ScanCodec")
        .compile_fds(fds)?;
    Ok(())
}
