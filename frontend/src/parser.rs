//! Dockerfile text → syntax tree (BuildKit's AST shape, printable in the conformance `result` format)
//! → typed instructions.
