//! The parts of the epigrid binary that tests and benchmarks use too: the demo city builder
//! and the file importers. The CLI itself is `main.rs`.

/// `println!` that lets the output be closed early (`epigrid … | head`): what is left to say
/// is dropped instead of the command dying with a panic (exit 101).
#[macro_export]
macro_rules! say {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}

/// [`say!`] on standard error (`eprintln!`).
#[macro_export]
macro_rules! tell {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($t)*);
    }};
}

pub mod bench;
pub mod demo;
pub mod import;
