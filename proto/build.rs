//! Compiles `proto/loopline.proto` with protox (a protobuf compiler written in Rust), so a
//! machine with only cargo builds the wire contract: no `protoc` binary is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/loopline.proto");
    let descriptors = protox::compile(["loopline.proto"], ["proto"])?;
    prost_build::Config::new().compile_fds(descriptors)?;
    Ok(())
}
