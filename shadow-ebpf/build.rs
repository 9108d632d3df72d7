//! Rebuild the eBPF object when bpf-linker changes (it decides the code generation).
fn main() {
    println!("cargo:rerun-if-env-changed=PATH");
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
