//! `sandboxd`: the lifecycle orchestrator. For now it only reports its version.

fn main() {
    println!("{}", execd::orchestrator::banner());
}
