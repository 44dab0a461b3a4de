//! epigrid's domain: validated types, the privacy vault, the `Store` port.
//!
//! Nothing here knows about HTTP or SQL. Handlers and the CLI turn raw input into the types
//! of [`validate`], decide with the functions here, and persist through [`store::Store`].

pub mod area;
pub mod divisions;
pub mod i18n;
pub mod model;
pub mod person;
pub mod register;
pub mod rng;
pub mod store;
pub mod trace;
pub mod validate;
pub mod vault;

pub use i18n::Lang;
