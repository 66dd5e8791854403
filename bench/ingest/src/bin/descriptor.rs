//! Writes the Loopline wire contract (`proto/proto/loopline.proto`) as a serialized protobuf
//! `FileDescriptorSet`, compiled by protox when this crate was built. The Python baseline
//! loads it into the pure-Python protobuf runtime's descriptor pool, so no `protoc` is needed.

use anyhow::Context;

const DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/loopline.fds"));

fn main() -> anyhow::Result<()> {
    let Some(path) = std::env::args_os().nth(1) else {
        anyhow::bail!("usage: loopline-bench-descriptor <output file>");
    };
    std::fs::write(&path, DESCRIPTORS)
        .with_context(|| format!("writing {}", std::path::Path::new(&path).display()))?;
    Ok(())
}
