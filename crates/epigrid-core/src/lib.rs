//! epigrid's domain: validated types, the privacy vault, the `Store` port.
//!
//! Nothing here knows about HTTP or SQL. Handlers and the CLI turn raw input into the types
//! of [`validate`], decide with the functions here, and persist through [`store::Store`].

/// A closed set of values with stable wire names: serde, `as_str`, `parse`, `ALL`, `Display`.
#[macro_export]
macro_rules! wire_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident = $wire:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
        pub enum $name { $(#[serde(rename = $wire)] $variant),+ }
        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            pub fn as_str(self) -> &'static str { match self { $($name::$variant => $wire),+ } }
            pub fn parse(s: &str) -> Option<$name> { match s { $($wire => Some($name::$variant),)+ _ => None } }
        }
        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { f.write_str(self.as_str()) }
        }
    };
}

pub mod area;
pub mod divisions;
pub mod i18n;
pub mod matching;
pub mod model;
pub mod person;
pub mod register;
pub mod rng;
pub mod store;
pub mod trace;
pub mod validate;
pub mod vault;

pub use i18n::Lang;
