//! Docker's shell-word lexer: variable expansion (`$x`, `${x:-w}`, …) and word splitting, with the
//! Dockerfile's escape character.
