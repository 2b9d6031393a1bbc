//! Rendering: tables and heat-coloured text for people, JSON for machines. Every function takes
//! a writer and never prints by itself.

pub mod document;
pub mod heatmap;
pub mod html;
pub mod json;
pub mod palette;
pub mod table;
pub mod text;

pub use document::{Document, Stream, TableCtx, emit};
pub use palette::Palette;
