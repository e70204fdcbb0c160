//! Writes the seed inputs of every target (`hitl_fuzz::seeds`) to `fuzz/seeds/<target>/`,
//! replacing what is there. Run after a schema, policy or sample changes:
//! `cargo run --manifest-path fuzz/Cargo.toml --example write_seeds`.

fn main() -> std::io::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    let seeds = hitl_fuzz::seeds::all();
    let mut targets: Vec<&str> = seeds.iter().map(|seed| seed.target).collect();
    targets.sort_unstable();
    targets.dedup();
    for target in targets {
        let dir = root.join(target);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir_all(&dir)?;
    }
    for seed in &seeds {
        std::fs::write(root.join(seed.target).join(&seed.name), &seed.bytes)?;
    }
    println!("wrote {} seeds under {}", seeds.len(), root.display());
    Ok(())
}
