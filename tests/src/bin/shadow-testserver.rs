//! The HTTP/1.1 server for shadow's tests, demo and benchmarks ([`shadow_tests::server`]): plays
//! the primary service, a healthy or faulty shadow, or the demo's sample service, and can record
//! every request it receives byte for byte. Its flags are in [`shadow_tests::server::binary`].

fn main() {
    shadow_tests::server::binary::main();
}
