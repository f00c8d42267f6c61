//! Command line of the benchmark: prints one JSON line per measured figure.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let opts = missive_bench::Options::parse();
    let bench = missive_bench::Bench::new(opts)?;
    bench.run().await?;
    Ok(())
}
