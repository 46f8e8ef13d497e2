//! Catalog domain types. Each is parsed from untrusted input once and keeps its invariant
//! from then on; parsing collects every field error so a client can fix all at once.

mod money;
mod product;

pub use money::{Currency, Money};
pub use product::{NewProduct, ProductChanges, ProductName, Sku, Stock};
