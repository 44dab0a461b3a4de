//! The parts of the epigrid binary that tests and benchmarks use too: the demo city builder
//! and the file importers. The CLI itself is `main.rs`.

pub mod bench;
pub mod demo;
pub mod import;
