//! Lowering: typed instructions of the stages a target needs → one LLB `Definition` plus the image
//! config each stage produces.
