//! Compiles every `.proto` under `proto/` with protox (no system `protoc`) and writes the
//! descriptor set next to the generated code, for gRPC reflection.

use std::path::{Path, PathBuf};

use prost::Message;

fn collect_protos(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_protos(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "proto") {
            out.push(path);
        }
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // tonic-prost-build 0.14 does not print this itself.
    println!("cargo:rerun-if-changed=proto");
    let mut files = Vec::new();
    collect_protos(Path::new("proto"), &mut files)?;
    files.sort();
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    let fds = protox::compile(&files, ["proto"])?;
    // compile_fds does not write the descriptor set; reflection needs it.
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptors = fds.encode_to_vec();
    std::fs::write(out_dir.join("cco_descriptor.bin"), &descriptors)?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Well-known types from pbjson-types, so that they serialise to canonical JSON too.
        .compile_well_known_types(true)
        .extern_path(".google.protobuf", "::pbjson_types")
        .compile_fds(fds)?;
    // serde impls following the proto3 JSON mapping (enum names, RFC 3339 times), for --json.
    pbjson_build::Builder::new()
        .register_descriptors(&descriptors)?
        .preserve_proto_field_names()
        .emit_fields()
        .build(&[".cco"])?;
    Ok(())
}
