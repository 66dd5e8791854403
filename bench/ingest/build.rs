//! Compiles `proto/proto/loopline.proto` into a serialized `FileDescriptorSet` with protox, the
//! same compiler `loopline-proto` builds with. `loopline-bench-descriptor` writes it out, so
//! that the Python baseline decodes batches with the pure-Python protobuf runtime and no
//! `protoc` binary.

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto/proto");
    println!(
        "cargo:rerun-if-changed={}",
        dir.join("loopline.proto").display()
    );
    let descriptors = protox::compile(["loopline.proto"], [&dir])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("loopline.fds");
    std::fs::write(out, descriptors.encode_to_vec())?;
    Ok(())
}
