//! The Dockerfile frontend: parser (directives, heredocs, escape char, flags, JSON and shell forms),
//! ARG/ENV expansion, the stage graph and ONBUILD, and lowering to an LLB `Definition` plus the image
//! config of each stage. It knows nothing about execution or the store.
//!
//! The pipeline is `parser` (text → syntax tree → typed `instructions`) → `shell` (variable
//! expansion, applied during lowering with the environment in effect at each step) → `lower`.

pub mod instructions;
pub mod lower;
pub mod parser;
pub mod shell;
