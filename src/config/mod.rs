//! Configuration: `models.toml` (which models wick knows and where they come from).
//! Command-line flags live with the binary.

pub mod launcher;
pub mod models;

pub use launcher::LauncherArgs;
pub use models::{ModelEntry, ModelsConfig};
